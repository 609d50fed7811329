"""Who runs each request, and when: the owner's ledger, the queues, the
stealing policy, time estimates and timers, as a synchronous state machine.

The node feeds it events with an explicit ``now`` and carries out the actions it
returns (run here, grant, steal, reply, requeue); nothing here waits or sleeps.
"""
