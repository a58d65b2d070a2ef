"""Fetching a URL someone else chose (a feed, a page to add), without letting it reach inside.

A URL from the outside world must never make Satchel talk to Ollama, the LanceDB sidecar, the
router's admin page or a cloud metadata service. So:

- every connection, on every redirect hop, goes through `_GuardedBackend`, which resolves the
  host itself, refuses the connection unless every address is public (not loopback, private,
  link-local, CGNAT, multicast, reserved or unspecified, also in their IPv4-mapped IPv6 forms),
  and then connects to the address it checked, so a DNS answer cannot change in between;
- ``allowed_hosts`` entries (``host`` or ``host:port``) exempt hosts a user runs at home; an
  allowed ``host:port`` does not open that host's other ports;
- at most `max_redirects` redirects, http and https only, no proxies from the environment;
- the body is decompressed here, a bounded step at a time, and refused past `max_bytes`
  (counted after decompression), so a gzip bomb costs little memory; more than one
  Content-Encoding is refused;
- a connect/read timeout, and a User-Agent that says who we are.

Errors are `FetchError`s: `Blocked` (a permanent refusal) or `FetchFailed` (the server or the
network failed; worth retrying later).
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import httpcore
import httpx

from ingest.errors import PermanentError, TransientError

__all__ = [
    "HTML_TYPES",
    "Blocked",
    "FetchError",
    "FetchFailed",
    "FetchSettings",
    "Fetched",
    "Fetcher",
    "fetch",
]

PROJECT_URL: Final = "https://github.com/satchel-dev/satchel"
HTML_TYPES: Final = ("text/html", "application/xhtml+xml")  # what a web page is served as
_STEP: Final = 64 * 1024  # decompressed bytes produced per step


class FetchError(Exception):
    """A URL could not be fetched; the message names the URL and why."""


class Blocked(FetchError, PermanentError):  # noqa: N818 - reads as a fact
    """Refused: a private address, a bad scheme, too many redirects, too large."""


class FetchFailed(FetchError, TransientError):  # noqa: N818
    """The server or the network failed (status >= 400, timeout, connection).

    `status` is the HTTP status when the server answered; `retry_after` the seconds its
    ``Retry-After`` asked for (429, 503), if any.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Limits for one fetch; the daemon builds them from ``[feeds]``."""

    timeout: float = 20.0
    max_bytes: int = 15 * 1024 * 1024
    max_redirects: int = 5
    allowed_hosts: tuple[str, ...] = ()
    user_agent: str = f"Satchel (+{PROJECT_URL})"
    accept: str = "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched body, decompressed, with what the headers said about it."""

    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 if none), replacing bad bytes."""
        charset = "utf-8"
        for part in self.content_type.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip("\"'")
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NEVER: Final = (
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated): ::127.0.0.1
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated: ::ffff:0:7f00:1
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated)
)


def is_public(address: str) -> bool:
    """Whether `address` is a public unicast address. IPv6 forms that carry an IPv4 address
    (mapped, 6to4, Teredo, NAT64) are judged by the IPv4 address they reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            return is_public(str(ip.sixtofour))
        elif ip.teredo is not None:
            return all(is_public(str(part)) for part in ip.teredo)
        elif any(ip in net for net in _NAT64):
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        elif any(ip in net for net in _NEVER):
            return False
    # is_global excludes private, loopback, link-local, CGNAT (100.64/10), reserved and
    # unspecified ranges; multicast is global in places, but never a web server.
    return ip.is_global and not ip.is_multicast


def _allowed(host: str, port: int, allowed: Iterable[str]) -> bool:
    host = host.lower().strip("[]")
    for raw in allowed:
        entry = raw.lower()
        if entry.startswith("["):  # [v6]:port or [v6]
            name, _, rest = entry[1:].partition("]")
            entry_port = rest.lstrip(":")
        elif entry.count(":") == 1:
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        if name == host and (not entry_port or int(entry_port) == port):
            return True
    return False


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to public addresses (or allowed hosts), to the very address it checked."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allowed = allowed_hosts

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host}: cannot resolve ({exc})") from exc
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise httpcore.ConnectError(f"{host}: no address")
        if not _allowed(host, port, self._allowed):
            for address in addresses:
                if not is_public(address):
                    raise _Refused(
                        f"{host}:{port} resolves to {address}, a private or local address; "
                        "add it to [feeds] allowed_hosts if you host it yourself"
                    )
        return await self._inner.connect_tcp(
            addresses[0], port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refused("Unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Refused(httpcore.ConnectError):
    """Raised inside httpcore so that the connection attempt ends; turned into `Blocked`."""


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, settings: FetchSettings) -> None:
        super().__init__(trust_env=False, retries=0)
        # httpx offers no parameter for the network backend: swap its pool for one with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=_GuardedBackend(settings.allowed_hosts),
        )


class Fetcher:
    """One HTTP client for many fetches under the same `settings` (connections and the TLS
    context are shared: a feed cycle pays for them once). ``async with Fetcher(s) as f``."""

    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = settings = settings or FetchSettings()
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(settings),
            follow_redirects=True,
            max_redirects=settings.max_redirects,
            timeout=httpx.Timeout(settings.timeout),
            headers={
                "User-Agent": settings.user_agent,
                "Accept": settings.accept,
                "Accept-Encoding": "gzip, deflate",
            },
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def get(self, url: str, headers: dict[str, str] | None = None) -> Fetched:
        """GET `url` under the guards of the module docstring, with extra request `headers`
        (``If-None-Match``, say). A 304 comes back as a `Fetched` with an empty body."""
        settings = self.settings
        try:
            scheme = httpx.URL(url).scheme if "://" in url else ""
        except httpx.InvalidURL as exc:
            raise Blocked(f"{url}: not a valid URL ({exc})") from None
        if scheme not in ("http", "https"):
            raise Blocked(f"{url}: only http and https URLs are fetched")
        try:
            # One deadline for the whole fetch: httpx's timeout is per read, and a server that
            # trickles a byte at a time would hold a poll for hours.
            with anyio.fail_after(settings.timeout):
                async with self._client.stream("GET", url, headers=headers) as response:
                    if response.status_code >= 400:
                        raise FetchFailed(
                            f"{url}: the server answered {response.status_code}",
                            status=response.status_code,
                            retry_after=retry_after(response.headers.get("retry-after")),
                        )
                    body = b""
                    if response.status_code != 304:
                        body = await _read_capped(response, settings.max_bytes, url)
                    return Fetched(
                        url=str(response.url),
                        status=response.status_code,
                        content_type=response.headers.get("content-type", ""),
                        body=body,
                        headers=dict(response.headers),
                    )
        except _Refused as exc:
            raise Blocked(f"{url}: {exc}") from None
        except httpx.TooManyRedirects:
            raise Blocked(f"{url}: more than {settings.max_redirects} redirects") from None
        except httpx.UnsupportedProtocol as exc:
            raise Blocked(f"{url}: a redirect to an unsupported URL ({exc})") from None
        except httpx.InvalidURL as exc:
            raise Blocked(f"{url}: not a valid URL ({exc})") from None
        except (httpx.TimeoutException, TimeoutError):
            raise FetchFailed(f"{url}: not fetched within {settings.timeout:g} s") from None
        except httpx.HTTPError as exc:
            if isinstance(exc.__context__, _Refused) or isinstance(exc.__cause__, _Refused):
                raise Blocked(f"{url}: {exc.__cause__ or exc.__context__}") from None
            raise FetchFailed(f"{url}: {exc}") from None


async def fetch(url: str, settings: FetchSettings | None = None) -> Fetched:
    """GET `url` once, with a client of its own (`Fetcher` shares one between fetches)."""
    async with Fetcher(settings) as fetcher:
        return await fetcher.get(url)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if it says any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - time.time())


async def _read_capped(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    encodings = [
        e.strip().lower()
        for e in response.headers.get("content-encoding", "").split(",")
        if e.strip() and e.strip().lower() != "identity"
    ]
    if len(encodings) > 1:
        raise Blocked(f"{url}: more than one Content-Encoding ({', '.join(encodings)})")
    encoding = encodings[0] if encodings else None
    if encoding not in (None, "gzip", "x-gzip", "deflate"):
        raise Blocked(f"{url}: unsupported Content-Encoding {encoding!r}")
    decoder = None
    if encoding is not None:
        # wbits 32+15 reads gzip or zlib headers; deflate without one is tried below.
        decoder = zlib.decompressobj(47 if encoding != "deflate" else 15)
    out = bytearray()

    def take(data: bytes) -> None:
        out.extend(data)
        if len(out) > max_bytes:
            raise Blocked(f"{url}: larger than {max_bytes} bytes")

    def inflate(decoder: Any, data: bytes) -> None:
        # At most _STEP bytes of output per call, so a bomb is stopped at the cap having
        # produced little more than the cap.
        take(decoder.decompress(data, _STEP))
        while decoder.unconsumed_tail:
            take(decoder.decompress(decoder.unconsumed_tail, _STEP))

    try:
        async for raw in response.aiter_raw():
            if decoder is None:
                take(raw)
                continue
            try:
                inflate(decoder, raw)
            except zlib.error:
                if encoding != "deflate" or out:
                    raise
                decoder = zlib.decompressobj(-15)  # raw deflate, without a zlib header
                inflate(decoder, raw)
        if decoder is not None:
            take(decoder.flush())  # the input is consumed: what is left is under a window
    except zlib.error as exc:
        raise FetchFailed(f"{url}: the body is not valid {encoding} ({exc})") from None
    return bytes(out)
