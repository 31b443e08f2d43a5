"""The command line with large inputs, expiry and inspect: the real entry point, real pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arraycrypto import CryptoConfig, Keyring, ServerConfig, save_config
from arraycrypto.cli.crypt import SINGLE_SHOT_LIMIT

from .harness.cli import cli
from .harness.constants import HOST, SECRET
from .harness.servers import ServeProcess

BIG = 3 * SINGLE_SHOT_LIMIT + 12_345  # a stream of 49 segments
#: The CLI's one message for every failure past a recognised header.
OPAQUE = (
    "decryption failed (the ciphertext was changed or cut short, or --associated-data"
    " differs from the sender's)"
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A client config for a server that runs for the whole module."""
    root = tmp_path_factory.mktemp("cli")
    server = root / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, tick_interval=0.2))
    with ServeProcess("--config", str(server)) as running:
        port = running.port
        client = root / "client_config.json"
        save_config(
            client,
            CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET, snapshot_timeout=5),
        )
        yield client


def now_ms() -> int:
    return int(time.time() * 1000)


def test_large_stdin_is_streamed_and_decrypts_through_pipes(config: Path) -> None:
    data = os.urandom(BIG)
    enc = cli("encrypt", "--config", str(config), "--associated-data", "ctx", data=data)
    assert enc.returncode == 0, enc.stderr
    token = enc.stdout
    assert (token[0], token[58], token[67]) == (2, 2, 16)  # v2, stream, 64 KiB segments
    assert enc.stderr == b""  # no progress bar on a pipe
    assert Keyring(SECRET).decrypt(token, b"ctx", now_ms=now_ms()) == data
    dec = cli("decrypt", "--config", str(config), "--associated-data", "ctx", data=token)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == data
    assert dec.stderr == b""


def test_small_input_stays_v1_and_expires_in_makes_v2_single(config: Path) -> None:
    small = cli("encrypt", "--config", str(config), data=b"x" * SINGLE_SHOT_LIMIT)
    assert small.stdout[0] == 1  # exactly the limit: still one v1 envelope
    before = now_ms()
    exp = cli("encrypt", "--config", str(config), "--expires-in", "90", data=b"hello")
    assert exp.returncode == 0, exp.stderr
    token = exp.stdout
    assert (token[0], token[58]) == (2, 1)
    expires_at = int.from_bytes(token[59:67], "big")
    assert before + 90_000 <= expires_at <= now_ms() + 90_000
    dec = cli("decrypt", "--config", str(config), data=token)
    assert dec.stdout == b"hello", dec.stderr
    bad = cli("encrypt", "--config", str(config), "--expires-in", "-3", data=b"x")
    assert bad.returncode == 2
    assert b"positive" in bad.stderr


def test_an_expired_ciphertext_is_refused_and_says_when(config: Path) -> None:
    ring = Keyring(SECRET)
    made = now_ms() - 600_000
    cipher = ring.cipher(ring.new_snapshot(1, bytes(16), made))
    expired_at = made + 60_000  # 9 minutes ago: past the default max_drift of 60 s
    for token in (cipher.encrypt(b"old", expires_at=expired_at), _stream(cipher, expired_at)):
        result = cli("decrypt", "--config", str(config), data=token)
        assert result.returncode == 1
        assert result.stdout == b""
        err = result.stderr.decode()
        assert err.startswith("arraycrypto: ExpiredError: ciphertext expired at 20"), err
        assert "Traceback" not in err


def _stream(cipher: object, expires_at: int) -> bytes:
    from arraycrypto import SnapshotCipher

    assert isinstance(cipher, SnapshotCipher)
    enc = cipher.stream_encryptor(expires_at=expires_at)
    return enc.update(os.urandom(200_000)) + enc.finish()


def test_files_in_and_out_and_nothing_left_on_failure(config: Path, tmp_path: Path) -> None:
    data = os.urandom(BIG)
    plain, sealed, out = tmp_path / "plain", tmp_path / "sealed", tmp_path / "out"
    plain.write_bytes(data)
    enc = cli("encrypt", "--config", str(config), "-i", str(plain), "-o", str(sealed))
    assert enc.returncode == 0, enc.stderr
    dec = cli("decrypt", "--config", str(config), "--input", str(sealed), "--output", str(out))
    assert dec.returncode == 0, dec.stderr
    assert out.read_bytes() == data
    assert (out.stat().st_mode & 0o777) == 0o600
    # a stream cut at a segment boundary: no output file, no temporary left behind
    token = sealed.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(token[: 84 + 20 * (65536 + 16)])
    failed = cli("decrypt", "--config", str(config), "-i", str(cut), "-o", str(tmp_path / "x"))
    assert failed.returncode == 1
    assert failed.stderr.decode().strip() == f"arraycrypto: DecryptionError: {OPAQUE}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "out", "plain", "sealed"]


def test_truncated_stream_to_stdout_warns_that_the_output_is_incomplete(config: Path) -> None:
    data = os.urandom(BIG)
    token = cli("encrypt", "--config", str(config), data=data).stdout
    result = cli("decrypt", "--config", str(config), data=token[: 84 + 20 * (65536 + 16)])
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[-1] == f"arraycrypto: DecryptionError: {OPAQUE}"
    assert "incomplete" in lines[0]
    assert data.startswith(result.stdout)  # only verified segments came out
    assert len(result.stdout) == 19 * 65536  # the 20th is held back: it might have been last


def test_inspect_needs_no_config_and_no_secret(config: Path, tmp_path: Path) -> None:
    token = cli("encrypt", "--config", str(config), "--expires-in", "3600", data=os.urandom(BIG))
    assert token.returncode == 0, token.stderr
    key_id = Keyring(SECRET).primary.key_id.hex()
    result = cli("inspect", data=token.stdout, cwd=tmp_path)  # no config file here
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "envelope     v2, stream" in text
    assert f"key id       {key_id}" in text
    assert f"plaintext    {BIG} B" in text
    assert "expires in 59 min" in text or "expires in 1 h" in text
    assert "NOT AUTHENTICATED" in text
    (tmp_path / "t").write_bytes(token.stdout)
    doc = json.loads(cli("inspect", "--json", "-i", str(tmp_path / "t"), cwd=tmp_path).stdout)
    assert doc["mode"] == "stream"
    assert doc["plaintext_size"] == BIG
    assert doc["segments"] == -(-BIG // 65536)
    assert doc["authenticated"] is False
    garbage = cli("inspect", data=b"hello world", cwd=tmp_path)
    assert garbage.returncode == 1
    assert b"not an arraycrypto envelope" in garbage.stderr


def _with_tty_stderr(*args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return its exit code and that text."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "arraycrypto", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return code, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal_with_a_known_size(config: Path, tmp_path: Path) -> None:
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    plain.write_bytes(os.urandom(BIG))
    code, shown = _with_tty_stderr(
        "encrypt", "--config", str(config), "-i", str(plain), "-o", str(sealed)
    )
    assert code == 0, shown
    assert "encrypt 100% [" in shown
    assert shown.endswith("\n") or shown.endswith("\r\n")
    code, shown = _with_tty_stderr(
        "decrypt", "--config", str(config), "-i", str(sealed), "-o", str(tmp_path / "d")
    )
    assert code == 0, shown
    assert "decrypt 100% [" in shown
    assert (tmp_path / "d").read_bytes() == plain.read_bytes()
    # the same to a pipe: nothing at all on stderr
    piped = cli("decrypt", "--config", str(config), "-i", str(sealed), "-o", str(tmp_path / "e"))
    assert piped.returncode == 0
    assert piped.stderr == b""
