"""The test harness, shared by tests/ and scripts/ (``python -m scripts.NAME``).

- ``constants``: the loopback host and the test secrets
- ``pure``: the pure core's two peers wired together, no sockets
- ``servers``: configs, a server in this event loop, ``arraycrypto serve`` as a process
- ``peers``: a hand-driven WebSocket client on the shared driver loop
- ``frames``: the one hand-written WebSocket frame codec
- ``http``: raw HTTP requests to the shim
- ``hostile``: generated hostile-input cases and their documented outcomes
- ``proxy``: a TCP proxy with faults switched on demand
- ``proc``: /proc probes (descriptors, memory, CPU)
- ``light``: asyncio clients light enough for 10 000 in one process (scripts)
- ``epoll_clients``: plain-TCP clients on one epoll loop, half the CPU (the benchmarks)
- ``lb``: replicas behind the real HAProxy (deploy/haproxy.cfg), clients encrypting through it
"""
