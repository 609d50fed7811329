"""``edgemesh demo``: a small emulated mesh on loopback, and the helpers that
start and stop edgemesh processes for it (and for the system tests).

Nothing in the node, the gateway or the SDK imports this package.
"""
