"""Rules that decide where a request goes beyond the queues: whether the mesh
can serve it in time or the gateway must (capacity), when to stop calling a
failing gateway (breaker), what the gateway admits, and which node a client
tries first.
"""
