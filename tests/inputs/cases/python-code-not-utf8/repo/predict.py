y = x + len("ÿþ")
