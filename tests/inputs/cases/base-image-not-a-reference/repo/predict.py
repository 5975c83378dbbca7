y = x * 2
