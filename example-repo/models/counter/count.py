# A stateful node: each instance keeps a running count and mean of the values it was sent.
# The state lives in the instance's interpreter, so it survives between requests (and resets
# only when the instance is recreated).
seen = globals().get("seen", 0) + 1
total = globals().get("total", 0.0) + value
mean = total / seen
