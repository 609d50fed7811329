"""Who is in the mesh: peer states (alive, suspect, dead), the gossip that
spreads them, and the mDNS adverts nodes announce themselves with."""
