"""A TCP proxy on 127.0.0.1 that tests control: forward, delay, black-hole, cut."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
import anyio.abc

from .constants import HOST


class FaultProxy:
    """Forwards 127.0.0.1:port to a target port, with faults switched on demand.

    ``mode``: "forward" (default) or "blackhole" (accept and read, never forward, in both
    directions, for new and established connections). ``delay``: seconds added before
    each forwarded chunk. :meth:`cut` closes every connection through it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self.delay = 0.0
        #: Applied to each chunk going from the server to the client (a relaying
        #: attacker); chunk boundaries are the server's writes.
        self.rewrite: Callable[[bytes], bytes] | None = None
        self.port = 0
        self.accepted = 0
        self._streams: set[anyio.abc.ByteStream] = set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        task_status.started(self.port)
        async with listener:
            await listener.serve(self._handle)

    def cut(self) -> None:
        """Abort every connection now (both sides see the connection drop)."""
        for stream in list(self._streams):
            with contextlib.suppress(OSError):  # already closed by its peer
                stream.extra(anyio.abc.SocketAttribute.raw_socket).shutdown(2)
        self._streams.clear()

    async def _handle(self, client: anyio.abc.ByteStream) -> None:
        self.accepted += 1
        self._streams.add(client)
        try:
            if self.mode == "blackhole":
                await self._swallow(client)
                return
            upstream = await anyio.connect_tcp(HOST, self.target_port)
            self._streams.add(upstream)
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
                await self._pump(upstream, client, tg.cancel_scope, rewrite=True)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self._streams.discard(client)
            await anyio.aclose_forcefully(client)

    async def _swallow(self, stream: anyio.abc.ByteStream) -> None:
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def _pump(
        self,
        src: anyio.abc.ByteStream,
        dst: anyio.abc.ByteStream,
        scope: anyio.CancelScope,
        *,
        rewrite: bool = False,
    ) -> None:
        try:
            while True:
                chunk = await src.receive()
                if rewrite and self.rewrite is not None:
                    chunk = self.rewrite(chunk)
                if self.delay:
                    await anyio.sleep(self.delay)
                if self.mode == "forward":
                    await dst.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()
