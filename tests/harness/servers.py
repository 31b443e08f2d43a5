"""Servers for tests and scripts: configs, one in this event loop, one as a process.

:class:`ServeProcess` is the one way to start ``python -m arraycrypto serve`` and learn
its port (from its "listening on" log line); everything it prints goes to a log file,
so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
import trustme

from arraycrypto import CryptoConfig, ServerConfig, save_config
from arraycrypto.server import Server

from .constants import HOST, SECRET
from .proc import children

__all__ = [
    "LISTENING",
    "ServeProcess",
    "client_config",
    "fetch_metric",
    "running_server",
    "serve_process",
    "server_config",
    "with_tls",
]

#: The server's log line that names its address: the one place tests read the port from.
LISTENING = re.compile(r"listening on wss?://[^ ]*?:(\d+)/")


def server_config(**overrides: Any) -> ServerConfig:
    """A server config for tests: loopback, any free port, fast ticks."""
    base: dict[str, Any] = {
        "secret_key": SECRET,
        "host": HOST,
        "port": 0,
        "tick_interval": 0.1,
    }
    base.update(overrides)
    return ServerConfig(**base)


def client_config(port: int, **overrides: Any) -> CryptoConfig:
    """A client config for tests: the server on 127.0.0.1:port, short waits."""
    base: dict[str, Any] = {
        "server_url": f"http://{HOST}:{port}",
        "secret_key": SECRET,
        "snapshot_timeout": 5.0,
        "connect_timeout": 5.0,
        "reconnect_max_delay": 0.5,
    }
    base.update(overrides)
    return CryptoConfig(**base)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` alone and checks the host name.

    Not ``ssl.create_default_context()``: that also loads the system's CA bundle (about
    50 ms of CPU per context, some 90 times a run) that no test server is signed by.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ca.configure_trust(context)
    return context


def with_tls(config: ServerConfig, tmp_path: Path) -> tuple[ServerConfig, ssl.SSLContext]:
    """``config`` with a certificate from a throwaway trustme CA, and a client context."""
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = trusting(ca)
    tls = msgspec.structs.replace(config, tls_certfile=str(pem), tls_keyfile=str(pem))
    return tls, context


@asynccontextmanager
async def running_server(
    config: ServerConfig | None = None, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Server]:
    """Run a real server in this event loop; stop it (cancel) on exit.

    ``clock`` is the server's wall clock (a test can run it ahead or behind).
    """
    server = Server(config or server_config(), clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


class ServeProcess:
    """``python -m arraycrypto serve ARGS`` as a child process; restartable on its port.

    ``port`` 0 lets the first start pick one; later starts reuse it. Use as a context
    manager (start, then kill on exit) or call :meth:`start` and :meth:`stop`.
    ``cwd``: the directory it runs in (where a default ``server_config.json`` goes).
    """

    def __init__(
        self,
        *args: str,
        port: int = 0,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], object] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.port = port
        self.env = env
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        if log is None:
            fd, name = tempfile.mkstemp(prefix="arraycrypto-serve-", suffix=".log")
            os.close(fd)
            log = Path(name)
            self._own_log = True
        else:
            self._own_log = False
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0  # where this start's output begins in the log
        self._orphans: list[int] = []  # workers left by kill_supervisor_only()

    def start(self, timeout: float = 30.0) -> int:
        """Start the server and return its port, once it says it listens."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "arraycrypto",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=self.preexec_fn,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.output())
            if found:
                self.port = int(found.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        """What this start of the server has printed so far."""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        """The exit code once the server exited, else None."""
        assert self.proc is not None
        return self.proc.poll()

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the server to exit; return its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server and reap it; with ``--workers``, its workers too."""
        if self.proc is None:
            return
        workers = children(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        # A test ends every process it starts, even the one it means to orphan.
        for pid in workers + self._orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._orphans = []

    def kill_supervisor_only(self) -> list[int]:
        """SIGKILL the server but not its workers (they are killed at :meth:`stop`)."""
        assert self.proc is not None
        self._orphans = children(self.proc.pid)
        self.proc.kill()
        self.proc.wait(timeout=10)
        return self._orphans

    def stop(self) -> None:
        """End the server (killing it if it still runs)."""
        self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_log:
            self.log.unlink(missing_ok=True)


def serve_process(tmp: Path, workers: int = 1, **config: Any) -> ServeProcess:
    """``arraycrypto serve`` (the scripts' runs) with a config written from ``config``.

    The config file and the log go in ``tmp``; restartable on its port.
    """
    path = tmp / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, host=HOST, port=0, **config))
    return ServeProcess("--config", str(path), "--workers", str(workers), log=tmp / "server.log")


def fetch_metric(port: int, prefix: str, ca_file: str | None = None) -> float:
    """Sum of the samples on ``GET /metrics`` whose line starts with ``prefix`` (blocking)."""
    import urllib.request

    scheme, context = "http", None
    if ca_file:
        scheme, context = "https", ssl.create_default_context(cafile=ca_file)
        context.check_hostname = False  # the test certificate names 127.0.0.1 and localhost
    url = f"{scheme}://{HOST}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as r:  # noqa: S310 - ours
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )
