"""The pure core of edgemesh: wire formats and decisions, with no I/O.

Nothing in this package opens a socket, touches asyncio, onnxruntime,
aiohttp or zeroconf, or reads the clock: time comes in as an argument.
That keeps it deterministic and testable in memory; the modules next to
``core`` are the thin edges that feed it bytes and events.
"""
