y = (x
