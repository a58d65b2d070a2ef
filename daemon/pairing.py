"""Pairing browsers with the extension endpoint: one-time codes, tokens, and who is paired.

Pairing starts on the trusted side: `satchel pair` asks over the Unix socket (only the owner can
reach it) for a short code, valid for five minutes. The extension's options page sends the code
to ``POST /pair`` on the loopback endpoint, and the browser's own ``Origin`` header
(``chrome-extension://<id>``, ``moz-extension://<uuid>``; a page cannot forge it) says who is
pairing. It gets back a long-lived token bound to that origin.

Only the token's SHA-256 is stored, so the catalog file leaks nothing that opens the endpoint.
Tokens are 256-bit random strings: a plain hash is enough (there is nothing to brute-force, as
there would be with a password), and it is compared in constant time.

The extension must also know it is talking to this daemon before it sends a token or a page:
while the daemon is down, another local user could bind its port. So pairing also hands the
extension the daemon's key (32 random bytes, made once, kept in the catalog), and ``GET
/health?challenge=<hex>`` answers with HMAC-SHA256(key, challenge). The extension checks that
proof, with no token sent, before anything else; an impostor cannot compute it.

One code is pending at a time; asking again replaces it. Five wrong codes in a row invalidate
it, so guessing (1 in 31^8 per try) is bounded long before it could succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ingest.catalog import Catalog

__all__ = [
    "CODE_SECONDS",
    "MAX_WRONG_CODES",
    "PairedBrowser",
    "Pairing",
    "PairingFailed",
    "is_extension_origin",
]

CODE_SECONDS: Final = 300.0
MAX_WRONG_CODES: Final = 5
# No 0/O, 1/I/L: a code is read off a terminal and typed by hand.
_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
_EXTENSION_ORIGIN: Final = re.compile(
    r"chrome-extension://[a-p]{32}"
    r"|moz-extension://[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def is_extension_origin(origin: str) -> bool:
    """Whether `origin` is a browser extension's origin (Chrome/Chromium/Edge or Firefox)."""
    return _EXTENSION_ORIGIN.fullmatch(origin) is not None


class PairingFailed(Exception):  # noqa: N818 - reads as a fact
    """A code was wrong, expired or used up; the message says which."""


@dataclass(frozen=True, slots=True)
class PairedBrowser:
    """A paired extension: its origin and when it paired and last made a request."""

    origin: str
    paired_at: float
    last_used: float | None


@dataclass(slots=True)
class _Pending:
    code: str
    expires: float
    wrong: int = 0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _canonical(code: str) -> str:
    """A code as typed (any case, with or without the dash or spaces) in its stored form."""
    return re.sub(r"[\s-]", "", code).upper()


class Pairing:
    """Codes (in memory: a restart forgets them) and paired browsers (in the catalog)."""

    def __init__(self, catalog: Catalog, *, clock: Callable[[], float] = time.time) -> None:
        self._catalog = catalog
        self._clock = clock
        self._pending: _Pending | None = None
        # origin -> token hash; loaded once, kept in step by pair/revoke (this process is the
        # only writer), so checking a request costs no database read.
        self._hashes: dict[str, str] | None = None
        self._last_used: dict[str, float] = {}
        self._key: bytes | None = None

    async def _load(self) -> dict[str, str]:
        if self._hashes is None:
            async with self._catalog.conn.execute(
                "SELECT origin, token_sha256 FROM paired_browsers"
            ) as cursor:
                self._hashes = {origin: digest for origin, digest in await cursor.fetchall()}
        return self._hashes

    def new_code(self) -> tuple[str, float]:
        """A fresh one-time code (replacing any pending one) and its expiry (Unix time)."""
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        self._pending = _Pending(raw, self._clock() + CODE_SECONDS)
        return f"{raw[:4]}-{raw[4:]}", self._pending.expires

    async def key(self) -> bytes:
        """The daemon's key (made on first use, then kept)."""
        if self._key is None:

            def load_or_make(conn: sqlite3.Connection) -> bytes:
                conn.execute(
                    "INSERT OR IGNORE INTO daemon_identity (id, key) VALUES (1, ?)",
                    (secrets.token_bytes(32),),
                )
                return bytes(conn.execute("SELECT key FROM daemon_identity").fetchone()[0])

            self._key = await self._catalog.write(load_or_make)
        return self._key

    async def prove(self, challenge: bytes) -> str:
        """HMAC-SHA256 of `challenge` under the daemon's key, hex: the daemon's proof."""
        return hmac.new(await self.key(), challenge, hashlib.sha256).hexdigest()

    async def redeem(self, code: str, origin: str) -> str:
        """Exchange `code` for a token bound to `origin`; raises `PairingFailed`."""
        pending = self._pending
        if pending is None:
            raise PairingFailed("pairing code: none is pending; run `satchel pair` for one")
        if self._clock() > pending.expires:
            self._pending = None
            raise PairingFailed("pairing code: expired; run `satchel pair` for a new one")
        if not hmac.compare_digest(_canonical(code).encode(), pending.code.encode()):
            pending.wrong += 1
            if pending.wrong >= MAX_WRONG_CODES:
                self._pending = None
                raise PairingFailed(
                    f"pairing code: wrong {MAX_WRONG_CODES} times, so it is no longer valid; "
                    "run `satchel pair` for a new one"
                )
            left = MAX_WRONG_CODES - pending.wrong
            raise PairingFailed(f"pairing code: wrong ({left} more tries before it is invalid)")
        self._pending = None  # one-time
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        now = self._clock()

        def store(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO paired_browsers (origin, token_sha256, paired_at) VALUES (?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                "paired_at = excluded.paired_at, last_used = NULL",
                (origin, digest, now),
            )

        await self._catalog.write(store)
        (await self._load())[origin] = digest
        return token

    async def is_paired(self, origin: str) -> bool:
        """Whether `origin` has a token."""
        return origin in await self._load()

    async def check(self, origin: str, token: str) -> bool:
        """Whether `token` is the one issued to `origin` (compared in constant time)."""
        expected = (await self._load()).get(origin)
        # Compare against something even when the origin is unknown: the time taken says
        # nothing about which origins are paired.
        ok = hmac.compare_digest(_digest(token), expected or _digest(""))
        if ok and expected is not None:
            self._last_used[origin] = self._clock()
            return True
        return False

    async def origin_of(self, token: str) -> str | None:
        """The paired origin `token` was issued to, if any (each stored hash compared in
        constant time)."""
        digest = _digest(token)
        found = None
        for origin, expected in (await self._load()).items():
            if hmac.compare_digest(digest, expected):
                found = origin
        if found is not None:
            self._last_used[found] = self._clock()
        return found

    async def browsers(self) -> list[PairedBrowser]:
        """The paired browsers, oldest first."""
        async with self._catalog.conn.execute(
            "SELECT origin, paired_at, last_used FROM paired_browsers ORDER BY paired_at"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            PairedBrowser(origin, paired_at, self._last_used.get(origin, last_used))
            for origin, paired_at, last_used in rows
        ]

    async def revoke(self, origin: str) -> bool:
        """Forget `origin`'s token; whether it was paired."""

        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM paired_browsers WHERE origin = ?", (origin,)).rowcount

        removed = await self._catalog.write(delete)
        (await self._load()).pop(origin, None)
        self._last_used.pop(origin, None)
        return removed > 0

    async def save_last_used(self) -> None:
        """Write when each browser was last seen (kept in memory between, to spare the disk)."""
        seen = dict(self._last_used)
        if not seen:
            return

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE paired_browsers SET last_used = ? WHERE origin = ?",
                [(when, origin) for origin, when in seen.items()],
            )

        await self._catalog.write(update, durable=False)
