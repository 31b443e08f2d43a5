"""Freeing a websockets protocol object by reference counting, once its connection ended.

Shared by both connection objects (``server_connection``, ``client_connection``).
"""

from __future__ import annotations

from websockets.protocol import Protocol

__all__ = ["release_protocol"]


def release_protocol(protocol: Protocol) -> None:
    """Break the reference cycles websockets leaves behind, once the connection ended.

    Every protocol object is in a cycle with its parser: ``protocol.parser`` is a
    suspended generator whose frame holds the protocol. And after an end of input
    without a closing handshake, the protocol keeps the EOFError its parser raised,
    whose traceback holds that frame again. Only the cyclic collector would free them,
    and the server makes its full collections rare (at 10 000 connections one stalls the
    loop): closing the generator and dropping the traceback lets reference counting
    free the connection the moment it ends (tests/test_memory.py).
    """
    exc = protocol.parser_exc
    if exc is not None:
        exc.__traceback__ = None
    protocol.parser.close()
