"""The client side: MeshClient (asyncio) and Client (blocking), the node pool
they choose from, mDNS discovery of nodes, and the types they return.

Users import these names from :mod:`mesh` itself.
"""
