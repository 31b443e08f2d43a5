"""The client's background connection: connect, drive, reconnect, fail over.

One task per :class:`~arraycrypto.CryptoClient`. Each attempt opens a TCP (or TLS)
stream and runs a :class:`~arraycrypto.core.client_connection.ClientConnection` over it
with the shared driver loop; what the connection reports goes to the client's
:class:`~arraycrypto.client.status.ClientStatus` (a :class:`Sink`). Between attempts:
exponential backoff with full jitter, reset after a success, and the next of
``server_urls`` after a failure.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream
from websockets.uri import parse_uri

from ..core.client_connection import (
    Authenticated,
    ClientConnection,
    Event,
    Failed,
    SnapshotAccepted,
    SnapshotRejected,
)
from ..core.config import CryptoConfig, websocket_url
from ..core.exceptions import AuthenticationError, ProtocolError
from ..core.handshake import ClientSession, SnapshotPolicy
from ..core.keys import CHALLENGE_SIZE
from ..net.driver import Driver
from ..net.logs import RateLimitedLog
from ..net.sockets import STREAM_ERRORS

__all__ = ["Connector", "Sink", "backoff"]

logger = logging.getLogger("arraycrypto.client")
#: What is wrong with the client's config, learned at the handshake: a child of the client's
#: logger, so one that silences connection news can still let this through.
config_logger = logging.getLogger("arraycrypto.client.config")

_BACKOFF_BASE: Final = 0.1
_GOODBYE_TIMEOUT: Final = 1.0  # seconds for our close handshake when the client closes
#: Attempts counted after an authentication failure: retried only at the slowest pace.
_AUTH_FAILED_ATTEMPT: Final = 64


def backoff(attempt: int, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempt)] on every delay."""
    return random.uniform(0, min(cap, _BACKOFF_BASE * 2 ** min(attempt, 30)))  # noqa: S311 - jitter, not crypto


class ConnectionFailed(Exception):
    """Why one attempt failed, in words an operator can act on."""


#: OpenSSL's verify codes for "no trusted issuer": self-signed, issuer unknown, or a
#: self-signed certificate in the chain (not an expired or misnamed one).
_UNKNOWN_ISSUER: Final = frozenset({18, 19, 20})


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed attempt: the cause anyio's summary hides."""
    # connect_tcp raises OSError("All connection attempts failed") from the real causes.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if str(exc) == "All connection attempts failed" and isinstance(cause, OSError):
        exc = cause
    if not isinstance(exc, ssl.SSLError) and isinstance(exc.__cause__, ssl.SSLError):
        exc = exc.__cause__  # anyio's TLS stream wraps the handshake's error
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"TLS certificate not trusted: {exc.verify_message}"
        if exc.verify_code in _UNKNOWN_ISSUER:  # a private CA, most likely: say where it goes
            reason += " (a private CA's certificate goes in `ca_file`)"
        return reason
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio words it "Connect call failed (...)" even for a refusal: the errno says.
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__


class Sink(Protocol):
    """What the connector tells its client (:class:`~arraycrypto.client.status.ClientStatus`)."""

    def connecting(self) -> None:
        """An attempt starts."""

    def connected(self, url: str, session_id: str) -> None:
        """The server at ``url`` proved it holds the secret."""

    def accepted(self, event: SnapshotAccepted) -> None:
        """A snapshot passed every check."""

    def rejected(self, reason: str) -> None:
        """A snapshot was dropped."""

    def disconnected(self, url: str, error: BaseException | None) -> None:
        """The attempt at ``url`` ended; ``error`` says why when it failed."""


class _ClientStream:
    """An anyio stream as the driver wants it: TLS has no half-close, so skip it."""

    __slots__ = ("_stream",)

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        if not isinstance(self._stream, TLSStream):
            await self._stream.send_eof()


class Connector:
    """Keeps one connection up for a client, across failures and servers."""

    def __init__(
        self,
        config: CryptoConfig,
        policy: SnapshotPolicy,
        sink: Sink,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.policy = policy
        self._sink = sink
        self._clock = clock
        self._urls = [config.server_url, *config.server_urls]
        self._ssl: ssl.SSLContext | None = None
        self._attempt: anyio.CancelScope | None = None
        self._warnings = RateLimitedLog(logger)
        self._config_warnings = RateLimitedLog(config_logger)

    def reload(self, config: CryptoConfig) -> None:
        """Use ``config`` from the next attempt on (URLs, timeouts, CA bundle)."""
        if config.ca_file != self.config.ca_file:
            self._ssl = None
        self.config = config
        self._urls = [config.server_url, *config.server_urls]

    def restart(self) -> None:
        """End the current attempt (if any): the next one starts at once."""
        if self._attempt is not None:
            self._attempt.cancel()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.config.ca_file)
        return self._ssl

    async def run(self) -> None:
        """Connect, and reconnect after every end, until cancelled."""
        attempt = 0
        index = 0
        while True:
            url = self._urls[index % len(self._urls)]
            self._sink.connecting()
            subscribed = False
            error: BaseException | None = None
            try:
                with anyio.CancelScope() as self._attempt:
                    subscribed = await self._connect_once(url)
                if self._attempt.cancelled_caught:
                    subscribed = True  # restarted on purpose: again at once, same URL
            except AuthenticationError as exc:
                logger.error("%s: %s", url, exc)
                error = exc
                attempt = _AUTH_FAILED_ATTEMPT
            except (*STREAM_ERRORS, ProtocolError, TimeoutError, ssl.SSLError) as exc:
                reason = describe(exc)
                tried = websocket_url(url)
                if isinstance(exc, ProtocolError) and tried != url:
                    reason = f"{tried}: {reason}"  # the URL the server refused
                error = ConnectionFailed(reason)
                logger.debug("%s: connection failed: %s", url, error)
            self._sink.disconnected(url, error)
            if subscribed:
                attempt = 0  # reset after a success; reconnect at once to the same URL
                continue
            index += 1
            if index % len(self._urls) == 0 or isinstance(error, AuthenticationError):
                # A whole round of URLs failed: back off before the next round.
                await anyio.sleep(backoff(attempt, self.config.reconnect_max_delay))
                attempt += 1

    async def _connect_once(self, url: str) -> bool:
        """Connect, authenticate and receive until the connection ends.

        Returns whether the handshake succeeded; raises why the connection failed.
        """
        uri = parse_uri(websocket_url(url))
        with anyio.fail_after(self.config.connect_timeout):
            if uri.secure:
                raw: anyio.abc.ByteStream = await anyio.connect_tcp(
                    uri.host,
                    uri.port,
                    ssl_context=self._ssl_context(),
                    tls_standard_compatible=False,
                )
            else:
                raw = await anyio.connect_tcp(uri.host, uri.port)
        session = ClientSession(self.policy, os.urandom(CHALLENGE_SIZE))
        conn = ClientConnection(
            uri, session, now=self._clock(), connect_timeout=self.config.connect_timeout
        )
        driver = Driver(_ClientStream(raw), conn, self._clock)
        subscribed = False

        def handle(events: Sequence[Event]) -> None:
            nonlocal subscribed
            for event in events:
                if isinstance(event, SnapshotAccepted):
                    self._sink.accepted(event)
                elif isinstance(event, SnapshotRejected):
                    self._sink.rejected(event.reason)
                elif isinstance(event, Authenticated):
                    subscribed = True
                    logger.debug("%s: authenticated (session %s)", url, event.session_id)
                    self._check_drift(url, session)
                    self._sink.connected(url, event.session_id)
                elif isinstance(event, Failed):
                    logger.debug("%s: %s", url, event.error)

        try:
            await driver.run(handle)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(_GOODBYE_TIMEOUT):
                conn.close(self._clock())
                await driver.run(handle)
            raise
        finally:
            conn.release()
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(raw)
        if conn.error is not None:
            raise conn.error
        logger.debug("%s: connection closed", url)
        return subscribed

    def _check_drift(self, url: str, session: ClientSession) -> None:
        """Warn when snapshots expire before the next arrives (once per connection).

        A snapshot may encrypt for ``max_drift`` seconds; a server ticking less often
        leaves a gap each period where encryption waits. Rate-limited: a client that
        reconnects often says it at most every 10 s.
        """
        interval = session.tick_interval
        drift = self.config.max_drift
        if interval is not None and drift < interval:
            self._config_warnings.log(
                logging.WARNING,
                "max_drift",
                "%s: the server ticks every %g s but max_drift is %g s: each snapshot may"
                " encrypt only for %g s, so encryption stalls until the next one; set"
                " max_drift to at least %g (60 is the default)",
                url,
                interval,
                drift,
                drift,
                interval,
            )
