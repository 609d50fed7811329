"""One mesh node (the server side): the Node that wires it all together, routing
(mesh or gateway), work sharing (owning, running and stealing requests) and
membership (dialling peers, gossip)."""
