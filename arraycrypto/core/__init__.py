"""The pure core: everything arraycrypto decides, with no I/O.

No module here imports anyio, a socket or an event loop, or reads a clock (a test
enforces it); time and randomness are passed in. The drivers in ``arraycrypto.server``,
``arraycrypto.client`` and ``arraycrypto.streaming`` only move bytes and time.

- ``keys``: secrets, the key schedule, signed snapshots
- ``envelope``: ``SnapshotCipher``: envelope v1, v2 single with an expiry, new streams
- ``envelope2``: the envelope v2 header and the time rules
- ``stream``: Sans-I/O stream encryptor and decryptor (STREAM segments)
- ``keyring``: which secrets sign and which only decrypt; the decrypt hot path
- ``armor``: any envelope as ASCII text
- ``peek``: what a header claims, read with no secret
- ``isotime``: ISO 8601 text for millisecond times, without ``datetime``
- ``messages``: the wire messages (JSON text frames)
- ``handshake``: the handshake and snapshot rules of one session
- ``server_connection``, ``client_connection``: one connection per side (WebSocket
  framing, the session, what may be sent when), fed bytes, handing bytes back
- ``wsrelease``: freeing a websockets protocol object once its connection ended
- ``admission``: who gets in (every connection, and the unauthenticated pool)
- ``ticks``: when ticks fall due
- ``http``: the HTTP shim's request parser and response builder
- ``config``: server and client configuration, and what makes one valid
- ``loading``: where a config comes from (file, environment, secret file); saving one
- ``exceptions``: every error arraycrypto raises
"""

#: The package's version, in one place: ``arraycrypto.__version__``, pyproject.toml and
#: ``arraycrypto --version`` all read this one.
__version__ = "0.1.0"
