"""The wire, as plain objects: msgpack-RPC framing, the handshake, tensors, the
Open Inference Protocol (V2) messages and the stealing messages between nodes.

Each module turns bytes or decoded msgpack into typed values and back, and
refuses what is malformed with a ProtocolError or InvalidInput that says what
was expected. Nothing here touches a socket.
"""
