"""The anyio drivers shared by the server and the client: streams, TLS, the driver loop.

- ``sockets``: a TCP socket as a byte stream with a synchronous write path
- ``tls``: the server's TLS layer over that stream, with the same surface
- ``driver``: the one loop that moves bytes between a stream and a connection object
"""
