"""Pairing on a real catalog file: one-time codes, five wrong tries, expiry, only hashes kept."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path

import pytest

from daemon.pairing import MAX_WRONG_CODES, Pairing, PairingFailed, is_extension_origin
from ingest.catalog import Catalog

pytestmark = pytest.mark.anyio

CHROME = "chrome-extension://" + "b" * 32
FIREFOX = "moz-extension://0f3a1c2e-1b2c-4d5e-8f90-123456789abc"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_extension_origins() -> None:
    assert is_extension_origin(CHROME)
    assert is_extension_origin(FIREFOX)
    for other in (
        "null",
        "https://example.com",
        "chrome-extension://" + "z" * 32,  # Chrome ids use the letters a to p only
        "chrome-extension://" + "b" * 31,
        CHROME + "/",
        "moz-extension://not-a-uuid",
        "",
    ):
        assert not is_extension_origin(other), other


async def test_a_code_pairs_once_and_only_the_hash_is_stored(tmp_path: Path) -> None:
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog)
        code, _ = pairing.new_code()
        token = await pairing.redeem(code.lower().replace("-", " "), CHROME)  # as typed
        assert len(token) >= 40
        assert await pairing.check(CHROME, token)
        assert not await pairing.check(CHROME, token + "x")
        assert not await pairing.check(FIREFOX, token)  # bound to its origin
        with pytest.raises(PairingFailed, match="none is pending"):
            await pairing.redeem(code, FIREFOX)
    raw = (tmp_path / "satchel.db").read_bytes()
    assert token.encode() not in raw
    with sqlite3.connect(tmp_path / "satchel.db") as conn:
        rows = conn.execute("SELECT origin, token_sha256 FROM paired_browsers").fetchall()
    assert rows == [(CHROME, hashlib.sha256(token.encode()).hexdigest())]
    async with Catalog(tmp_path / "satchel.db") as catalog:  # survives a restart
        assert await Pairing(catalog).check(CHROME, token)


async def test_five_wrong_codes_invalidate_the_pending_one(tmp_path: Path) -> None:
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog)
        code, _ = pairing.new_code()
        for attempt in range(1, MAX_WRONG_CODES):
            with pytest.raises(PairingFailed, match=f"{MAX_WRONG_CODES - attempt} more tries"):
                await pairing.redeem("AAAA-AAAA", CHROME)
        with pytest.raises(PairingFailed, match="no longer valid"):
            await pairing.redeem("AAAA-AAAA", CHROME)
        with pytest.raises(PairingFailed, match="none is pending"):
            await pairing.redeem(code, CHROME)  # the right code, too late
        assert not await pairing.is_paired(CHROME)


async def test_a_code_expires_after_five_minutes(tmp_path: Path) -> None:
    clock = Clock()
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog, clock=clock)
        code, expires = pairing.new_code()
        assert expires == clock.now + 300
        clock.now += 301
        with pytest.raises(PairingFailed, match="expired"):
            await pairing.redeem(code, CHROME)


async def test_a_new_code_replaces_the_pending_one(tmp_path: Path) -> None:
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog)
        first, _ = pairing.new_code()
        second, _ = pairing.new_code()
        assert first != second
        with pytest.raises(PairingFailed, match="wrong"):
            await pairing.redeem(first, CHROME)
        await pairing.redeem(second, CHROME)


async def test_pairing_again_replaces_the_token_and_revoke_forgets_it(tmp_path: Path) -> None:
    clock = Clock()
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog, clock=clock)
        old = await pairing.redeem(pairing.new_code()[0], CHROME)
        new = await pairing.redeem(pairing.new_code()[0], CHROME)
        assert not await pairing.check(CHROME, old)
        clock.now += 60
        assert await pairing.check(CHROME, new)
        await pairing.save_last_used()
        [browser] = await pairing.browsers()
        assert (browser.origin, browser.last_used) == (CHROME, clock.now)
        assert await pairing.revoke(CHROME)
        assert not await pairing.revoke(CHROME)
        assert not await pairing.check(CHROME, new)
        assert await pairing.browsers() == []


async def test_the_daemon_key_is_made_once_and_proves_the_daemon(tmp_path: Path) -> None:
    async with Catalog(tmp_path / "satchel.db") as catalog:
        key = await Pairing(catalog).key()
        assert len(key) == 32
    async with Catalog(tmp_path / "satchel.db") as catalog:
        pairing = Pairing(catalog)
        assert await pairing.key() == key  # the same after a restart
        proof = await pairing.prove(b"challenge")
    assert proof == hmac.new(key, b"challenge", hashlib.sha256).hexdigest()
