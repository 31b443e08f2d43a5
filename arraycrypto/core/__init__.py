"""The pure core: everything arraycrypto decides, with no I/O.

No module here imports anyio, a socket or an event loop, or reads a clock (a test
enforces it); time and randomness are passed in. The drivers in ``arraycrypto.net``,
``arraycrypto.server`` and ``arraycrypto.client`` only move bytes and time.

- ``keys``: secrets, the key schedule, signed snapshots
- ``envelope``: envelope v1, one AES-256-GCM message under a snapshot's key
- ``keyring``: which secrets sign and which only decrypt; the decrypt hot path
- ``messages``: the wire messages (JSON text frames)
- ``handshake``: the handshake and snapshot rules of one session
- ``http``: the HTTP shim's request parser and response builder
- ``config``: server and client configuration
"""
