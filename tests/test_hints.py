"""Why a decryption cannot even start, said without any secret; one opaque error after.

The pure diagnosis (no sockets, no files), then the CLI as a person meets it: a wrong
secret, base64 where binary was expected, empty input, the wrong associated data, and
binary associated data from a file or hex.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arraycrypto import CryptoConfig, Keyring, ServerConfig, armor, save_config
from arraycrypto.core.peek import diagnose

from .harness.cli import cli
from .harness.constants import HOST, OTHER, SECRET, T0
from .harness.servers import ServeProcess

RING = Keyring(SECRET)
OTHER_RING = Keyring(OTHER)
TOKEN = RING.encrypt(RING.new_snapshot(1, bytes(16), T0), b"hello", b"ctx")
KEY_ID = RING.primary.key_id
OTHER_ID = OTHER_RING.primary.key_id


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty input: there is nothing to decrypt"),
        (
            base64.b64encode(TOKEN),
            "not an arraycrypto envelope (it looks like base64 text: decode it first"
            " (base64 -d); `encrypt --armor` makes text that decrypt reads as it is)",
        ),
        (
            base64.b64encode(TOKEN) + b"\n",
            "not an arraycrypto envelope (it looks like base64 text: decode it first"
            " (base64 -d); `encrypt --armor` makes text that decrypt reads as it is)",
        ),
        (
            b"hello world, this is plain text\n",
            "not an arraycrypto envelope (it is text; an envelope is binary, or armored"
            " text that starts with -----BEGIN ARRAYCRYPTO MESSAGE-----)",
        ),
        (
            b"-----BEGIN PGP MESSAGE-----\nabc\n",
            "not an arraycrypto envelope (it is armored text of another kind:"
            " -----BEGIN PGP MESSAGE-----)",
        ),
        (
            b"\x7fELF\x02\x01\x01",
            "not an arraycrypto envelope (its first byte is 0x7f; an envelope"
            " starts with 0x01 or 0x02)",
        ),
        (TOKEN[:30], "not an arraycrypto envelope (too short for an envelope header)"),
    ],
)
def test_what_is_not_an_envelope_is_named(data: bytes, expected: str) -> None:
    assert diagnose(data, [KEY_ID]) == expected


def test_a_key_id_not_in_the_keyring_is_named_with_the_ones_it_has() -> None:
    problem = diagnose(TOKEN, [OTHER_ID, bytes(8)])
    assert problem == (
        f"made under key id {KEY_ID.hex()}, which is not in this keyring (it has:"
        f" {OTHER_ID.hex()}, {bytes(8).hex()}): a different secret_key, or add the"
        " secret it was made with to old_secret_keys"
    )
    v2 = RING.cipher(RING.new_snapshot(1, bytes(16), T0)).encrypt(b"x", expires_at=T0 + 1)
    assert diagnose(v2, [OTHER_ID]) is not None
    assert KEY_ID.hex() in (diagnose(v2, [OTHER_ID]) or "")


def test_a_recognised_header_with_its_key_gets_no_hint() -> None:
    """Past the header, nothing is told apart: tampering, a wrong associated data or a
    cut look the same (the one opaque DecryptionError)."""
    tampered = bytearray(TOKEN)
    tampered[-1] ^= 1
    for data in (TOKEN, bytes(tampered), TOKEN[:-5], TOKEN[:70]):
        assert diagnose(data, [KEY_ID]) is None


def test_the_secret_never_appears_in_a_hint() -> None:
    problem = diagnose(TOKEN, [OTHER_ID]) or ""
    for secret in (SECRET, OTHER):
        assert secret.hex() not in problem
        assert base64.b64encode(secret).decode() not in problem


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "client_config.json"
    save_config(path, CryptoConfig(secret_key=SECRET))
    return path


def fresh_token(data: bytes, associated_data: bytes = b"") -> bytes:
    snapshot = RING.new_snapshot(1, bytes(16), int(time.time() * 1000))
    return RING.encrypt(snapshot, data, associated_data)


def error_line(*args: str, data: bytes) -> str:
    result = cli(*args, data=data)
    assert result.returncode == 1
    assert result.stdout == b""
    text = result.stderr.decode()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    return text.strip()


def test_decrypt_with_the_wrong_secret_names_the_key_ids(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    save_config(wrong, CryptoConfig(secret_key=OTHER))
    line = error_line("decrypt", "--config", str(wrong), data=fresh_token(b"x"))
    assert line == (
        f"arraycrypto: made under key id {KEY_ID.hex()}, which is not in this keyring"
        f" (it has: {OTHER_ID.hex()}): a different secret_key, or add the secret it was"
        " made with to old_secret_keys"
    )


def test_decrypt_of_base64_and_of_nothing(config: Path) -> None:
    token = fresh_token(b"x")
    line = error_line("decrypt", "--config", str(config), data=base64.b64encode(token))
    assert line.startswith("arraycrypto: not an arraycrypto envelope (it looks like base64")
    assert error_line("decrypt", "--config", str(config), data=b"") == (
        "arraycrypto: empty input: there is nothing to decrypt"
    )
    # armored text is no problem at all: it is recognised
    assert cli("decrypt", "--config", str(config), data=armor(token)).stdout == b"x"


def test_past_the_header_one_opaque_error_that_names_the_causes(config: Path) -> None:
    token = fresh_token(b"secret", b"user-42")
    expected = (
        "arraycrypto: DecryptionError: decryption failed (the ciphertext was changed or"
        " cut short, or --associated-data differs from the sender's)"
    )
    wrong_ad = error_line(
        "decrypt", "--config", str(config), "--associated-data", "user-43", data=token
    )
    tampered = bytearray(token)
    tampered[60] ^= 1
    assert wrong_ad == expected
    assert error_line("decrypt", "--config", str(config), data=bytes(tampered)) == expected
    assert error_line("decrypt", "--config", str(config), data=token[:-3]) == expected


def test_binary_associated_data_from_hex_or_a_file(config: Path, tmp_path: Path) -> None:
    blob = bytes(range(256))
    token = fresh_token(b"payload", blob)
    (tmp_path / "ad.bin").write_bytes(blob)
    by_file = cli(
        "decrypt", "--config", str(config), "--associated-data-file", str(tmp_path / "ad.bin"),
        data=token,
    )  # fmt: skip
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == b"payload"
    by_hex = cli(
        "decrypt", "--config", str(config), "--associated-data-hex", blob.hex(), data=token
    )
    assert by_hex.stdout == b"payload"
    bad_hex = cli("decrypt", "--config", str(config), "--associated-data-hex", "zz", data=token)
    assert bad_hex.returncode == 2
    assert b"not hexadecimal" in bad_hex.stderr
    both = cli(
        "decrypt", "--config", str(config), "--associated-data", "a",
        "--associated-data-hex", "00", data=token,
    )  # fmt: skip
    assert both.returncode == 2
    assert b"not allowed with" in both.stderr


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("hints")
    server = root / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, tick_interval=0.2))
    with ServeProcess("--config", str(server)) as running:
        path = root / "client_config.json"
        url = f"http://{HOST}:{running.port}"
        save_config(path, CryptoConfig(server_url=url, secret_key=SECRET, snapshot_timeout=5))
        yield path


def test_encrypt_takes_associated_data_from_a_file(client: Path, tmp_path: Path) -> None:
    blob = b"\x00\xffbinary context"
    (tmp_path / "ad.bin").write_bytes(blob)
    enc = cli(
        "encrypt", "--config", str(client), "--associated-data-file", str(tmp_path / "ad.bin"),
        data=b"x",
    )  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    assert RING.decrypt(enc.stdout, blob) == b"x"


def test_inspect_says_what_it_got_instead_of_an_envelope() -> None:
    b64 = cli("inspect", data=base64.b64encode(TOKEN))
    assert b64.returncode == 1
    assert b64.stderr.decode().startswith(
        "arraycrypto: not an arraycrypto envelope (it looks like base64 text"
    )
    empty = cli("inspect", data=b"")
    assert empty.returncode == 1
    assert empty.stderr.decode() == "arraycrypto: empty input: no envelope to inspect\n"
