"""The fault suite: the daemon against real nats-server processes under faults.

Every scenario injects a bounded number of faults on loopback (kill -9,
wiped stores, a broker down for a while, a stalled TCP path, refusals,
garbage advisories, out-of-band deletes, the daemon itself killed) and then
checks the same invariants (`invariants`): the daemon never deletes or
purges, writes nothing while in sync, never exits on its own, keeps its
memory flat, and loses no acknowledged message. `scale` picks short counts
for CI and long ones for `make chaos` (KANADE_CHAOS_FULL=1); `figures`
collects each scenario's numbers for docs/RELIABILITY.md.
"""
