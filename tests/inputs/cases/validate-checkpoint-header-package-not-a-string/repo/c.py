y = x
