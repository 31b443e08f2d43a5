"""ASCII armor: the pure codec (no sockets), and the CLI's --armor, detection and tty rule."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arraycrypto import CryptoConfig, Keyring, ServerConfig, encrypt_file, save_config
from arraycrypto.core.armor import (
    BEGIN,
    END,
    ArmorDecoder,
    ArmorEncoder,
    ArmorError,
    armor,
    dearmor,
    is_armored,
)

from .harness.cli import cli
from .harness.constants import HOST, SECRET
from .harness.servers import ServeProcess
from .harness.tty import cli_on_tty

# -- the pure codec ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 47, 48, 49, 95, 96, 97, 1000, 100_000])
def test_round_trip_whatever_the_pieces(size: int) -> None:
    data = os.urandom(size)
    text = armor(data)
    assert dearmor(text) == data
    assert dearmor(text.decode()) == data
    lines = text.split(b"\n")
    assert lines[0] == BEGIN
    assert lines[-2] == END
    assert lines[-1] == b""
    assert all(len(line) == 64 for line in lines[1:-3])
    assert 1 <= len(lines[-3]) <= 64
    for step in (1, 7, 64, 65, 4096):
        encoder = ArmorEncoder()
        pieces = [encoder.update(data[i : i + step]) for i in range(0, size, step)]
        assert b"".join(pieces) + encoder.finish() == text
        decoder = ArmorDecoder()
        out = [decoder.update(text[i : i + step]) for i in range(0, len(text), step)]
        assert b"".join(out) + decoder.finish() == data


def test_crlf_and_surrounding_whitespace_are_accepted() -> None:
    data = os.urandom(200)
    text = armor(data)
    assert dearmor(text.replace(b"\n", b"\r\n")) == data
    assert dearmor(b"\n  \n" + text + b"\n\n  ") == data
    assert dearmor(text.rstrip(b"\n")) == data  # no newline after END


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t.replace(BEGIN, b"-----BEGIN PGP MESSAGE-----"), "expected -----BEGIN"),
        (lambda t: t.replace(END + b"\n", b""), "no END line"),
        (lambda t: t[: len(t) // 2], "no END line"),
        (lambda t: t + b"more\n", "after the END line"),
        (lambda t: t.replace(b"\n" + t.split(b"\n")[2], t.split(b"\n")[2]), "characters"),
        (lambda t: t.replace(t.split(b"\n")[1], t.split(b"\n")[1][:60]), "after a short"),
        (lambda t: t.replace(t.split(b"\n")[1], b"!" * 64), "not base64"),
        (lambda t: t.replace(t.split(b"\n")[1], t.split(b"\n")[1][:63]), "characters"),
        (lambda t: BEGIN + b"\n" + END + b"\n", "no data"),
        (lambda t: b"", "no BEGIN line"),
    ],
)
def test_malformed_armor_is_refused_saying_where(mangle: object, message: str) -> None:
    text = armor(os.urandom(300))
    assert callable(mangle)
    with pytest.raises(ArmorError, match=message):
        dearmor(mangle(text))


def test_padding_only_at_the_very_end() -> None:
    # Two valid armors glued line-wise: padding in the middle is refused.
    first = armor(b"x").split(b"\n")[1]  # "eA=="
    with pytest.raises(ArmorError):
        dearmor(BEGIN + b"\n" + first + b"\n" + first + b"\n" + END + b"\n")


def test_an_endless_line_is_refused_in_constant_memory() -> None:
    decoder = ArmorDecoder()
    decoder.update(BEGIN + b"\n")
    decoder.update(b"A" * 60)  # a line may arrive in pieces
    with pytest.raises(ArmorError, match="longer than 64"):
        decoder.update(b"A" * 1000)  # held back at most one line: refused at once


def test_detection_by_the_first_line() -> None:
    assert is_armored(armor(b"x")) is True
    assert is_armored(b"\n \t" + armor(b"x")) is True
    assert is_armored(b"-----BEGIN ARRAY") is None  # too short to tell
    assert is_armored(b"") is None
    assert is_armored(b"\x01\x02") is False
    assert is_armored(b"-----BEGIN PGP MESSAGE-----") is False
    assert is_armored(b"AQIDBAUGBwg=") is False


# -- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A client config for a server that runs for the whole module."""
    root = tmp_path_factory.mktemp("armor")
    server = root / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, tick_interval=0.2))
    with ServeProcess("--config", str(server)) as running:
        client = root / "client_config.json"
        url = f"http://{HOST}:{running.port}"
        save_config(client, CryptoConfig(server_url=url, secret_key=SECRET, snapshot_timeout=5))
        yield client


def test_encrypt_armor_and_decrypt_detects_it(config: Path) -> None:
    enc = cli("encrypt", "--config", str(config), "--armor", data=b"hi\n")
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout.startswith(b"-----BEGIN ARRAYCRYPTO MESSAGE-----\n")
    assert enc.stdout.endswith(b"-----END ARRAYCRYPTO MESSAGE-----\n")
    enc.stdout.decode("ascii")  # text only
    assert Keyring(SECRET).decrypt(dearmor(enc.stdout)) == b"hi\n"
    dec = cli("decrypt", "--config", str(config), data=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == b"hi\n"
    # pasted from an email: CRLF and indentation around it
    pasted = b"\r\n  " + enc.stdout.replace(b"\n", b"\r\n")
    assert cli("decrypt", "--config", str(config), data=pasted).stdout == b"hi\n"


def test_a_large_stream_armored_in_and_out(config: Path, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    sealed = tmp_path / "sealed.asc"
    enc = cli("encrypt", "--config", str(config), "--armor", "-i", str(plain), "-o", str(sealed))
    assert enc.returncode == 0, enc.stderr
    envelope = dearmor(sealed.read_bytes())
    assert envelope[0] == 2  # a v2 stream inside
    assert Keyring(SECRET).decrypt(envelope, now_ms=int(time.time() * 1000)) == data
    dec = cli("decrypt", "--config", str(config), "-i", str(sealed))
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == data
    info = json.loads(cli("inspect", "--json", "-i", str(sealed)).stdout)
    assert info["mode"] == "stream"
    assert info["plaintext_size"] == len(data)
    assert info["armored"] is True


def test_broken_armor_is_one_line(config: Path) -> None:
    text = armor(Keyring(SECRET).encrypt(Keyring(SECRET).new_snapshot(1, bytes(16), 1), b"x"))
    result = cli("decrypt", "--config", str(config), data=text[:-40])
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "arraycrypto: invalid armor: no END line: the armored text is cut short"
    )


def test_inspect_reads_armor(tmp_path: Path) -> None:
    ring = Keyring(SECRET)
    cipher = ring.cipher(ring.new_snapshot(7, bytes(16), int(time.time() * 1000)))
    sink = io.BytesIO()
    encrypt_file(cipher, io.BytesIO(b"x" * 200_000), sink)
    result = cli("inspect", data=armor(sink.getvalue()))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "envelope     v2, stream (armored)" in text
    assert "plaintext    200000 B" in text


def test_binary_is_not_written_to_a_terminal(config: Path) -> None:
    code, shown, errors = cli_on_tty("encrypt", "--config", str(config), data=b"hi\n")
    assert code == 2
    assert shown == b""
    assert errors.decode().strip() == (
        "arraycrypto: refusing to write binary ciphertext to a terminal:"
        " use --armor for text, -o FILE, a pipe, or --force"
    )
    code, shown, errors = cli_on_tty("encrypt", "--config", str(config), "--armor", data=b"hi\n")
    assert code == 0, errors
    assert shown.startswith(b"-----BEGIN ARRAYCRYPTO MESSAGE-----")
    code, shown, errors = cli_on_tty("encrypt", "--config", str(config), "--force", data=b"hi\n")
    assert code == 0, errors
    assert shown[0] == 1  # v1, raw, as asked


def test_decrypt_writes_text_to_a_terminal_but_not_binary(tmp_path: Path) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    ring = Keyring(SECRET)
    snapshot = ring.new_snapshot(1, bytes(16), int(time.time() * 1000))
    text_token = ring.encrypt(snapshot, "héllo\n")
    code, shown, errors = cli_on_tty("decrypt", "--config", str(config), data=text_token)
    assert code == 0, errors
    assert shown.replace(b"\r\n", b"\n") == "héllo\n".encode()
    binary_token = ring.encrypt(snapshot, b"\x00\xff\x01binary")
    code, shown, errors = cli_on_tty("decrypt", "--config", str(config), data=binary_token)
    assert code == 2
    assert shown == b""
    assert errors.decode().strip() == (
        "arraycrypto: refusing to write binary plaintext to a terminal:"
        " use -o FILE, a pipe, or --force"
    )
    code, shown, errors = cli_on_tty(
        "decrypt", "--config", str(config), "--force", data=binary_token
    )
    assert code == 0, errors
    assert b"binary" in shown
