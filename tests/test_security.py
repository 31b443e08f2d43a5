"""Secrets never leak: logs at DEBUG, reprs, exceptions, error frames, files."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import anyio
import pytest

from arraycrypto import (
    AuthenticationError,
    CryptoClient,
    CryptoConfig,
    DecryptionError,
    Keyring,
    save_config,
)
from arraycrypto.core import messages as m

from .harness.constants import HOST, OTHER, SECRET
from .harness.peers import RawClient
from .harness.servers import running_server

pytestmark = pytest.mark.anyio


def forms(secret: bytes) -> set[str]:
    """Every way a secret could show up in text."""
    return {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    }


def needles(keyring: Keyring, snapshots: list[object]) -> set[str]:
    key = keyring.primary
    found = forms(SECRET) | forms(key._snapshot_mac) | forms(key._client_proof)
    found |= forms(key._server_proof)
    for snap in snapshots:
        found |= forms(key.data_key(snap))  # type: ignore[arg-type]
    return found


async def test_no_secret_in_logs_reprs_exceptions_or_frames(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    keyring = Keyring(SECRET)
    async with running_server() as server:
        assert server.port
        config = CryptoConfig(server_url=f"http://{HOST}:{server.port}", secret_key=SECRET)
        async with CryptoClient(config) as client:
            await client.authenticate()
            token = await client.encrypt_message(b"payload")
            await client.decrypt_message(token)
            try:
                await client.decrypt_message(token[:-1])
            except DecryptionError as exc:
                texts.append(str(exc))
            texts += [repr(client), repr(client.keyring), repr(client.config), repr(server)]
            assert client.snapshot is not None
            snapshots: list[object] = [client.snapshot, server.ticker.snapshot]
            texts.append(repr(client.keyring.cipher(client.snapshot)))
        # a peer with a forged proof: what it is told
        raw = await RawClient.connect(server.port)
        challenge = await raw.recv_message()
        assert isinstance(challenge, m.Challenge)
        forged = m.Handshake(
            hash="00" * 32, nonce="11" * 32, key_id=challenge.key_id, version=m.PROTOCOL_VERSION
        )
        await raw.send_text(m.encode(forged))
        texts.append((await raw.recv_text()).decode())
        close = await raw.wait_closed()
        assert close is not None
        texts.append(close.reason)
        # a client with the wrong secret: what it is told
        wrong = CryptoConfig(
            server_url=f"http://{HOST}:{server.port}", secret_key=OTHER, snapshot_timeout=2
        )
        async with CryptoClient(wrong) as client:
            try:
                await client.authenticate()
            except AuthenticationError as exc:
                texts.append(str(exc))
        save_config(tmp_path / "c.json", config)
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    assert any("authenticated" in t for t in texts)  # the logs did capture the session
    assert any("authentication failed" in t for t in texts)
    haystack = "\n".join(texts)
    for needle in needles(keyring, snapshots):
        assert needle not in haystack


async def test_every_ciphertext_survives_a_rotation_chain() -> None:
    secrets = [os.urandom(32) for _ in range(4)]
    made: list[tuple[bytes, bytes]] = []
    for i, secret in enumerate(secrets):
        ring = Keyring(secret, old=secrets[:i])
        for tick in range(3):
            snap = ring.new_snapshot(tick, os.urandom(16), 1_700_000_000_000 + tick)
            data = f"{i}-{tick}".encode()
            made.append((ring.encrypt(snap, data), data))
    final = Keyring(secrets[-1], old=secrets[:-1])
    for token, data in made:
        assert final.decrypt(token) == data
    # dropping a secret from the keyring is what makes its ciphertexts undecryptable
    partial = Keyring(secrets[-1], old=secrets[1:-1])
    with pytest.raises(DecryptionError):
        partial.decrypt(made[0][0])


async def test_unauthenticated_peers_never_receive_snapshots() -> None:
    async with running_server() as server:
        assert server.port
        peers = [await RawClient.connect(server.port) for _ in range(5)]
        for peer in peers:
            assert isinstance(await peer.recv_message(), m.Challenge)
        with anyio.move_on_after(0.5):
            for peer in peers:
                await peer.recv_text(timeout=1)
                pytest.fail("an unauthenticated peer received a second frame")
        for peer in peers:
            await peer.aclose()
