"""Web addresses as Satchel stores them: one spelling per page, so one page is one source.

`normalise_url` is the canonical form every producer uses before a URL becomes a source id or a
feed's key: http(s) only, scheme and host lower-cased, credentials and fragment dropped, the
default port dropped, an empty path made ``/``. `strip_tracking` also drops the query
parameters that only say where a click came from (``utm_*``, ``fbclid``, ``gclid`` ...), which
the browser's pages need and a feed's own URL must keep (a feed's query can select the feed).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from ingest.errors import PermanentError

__all__ = ["MAX_URL", "InvalidURL", "normalise_url"]

MAX_URL: Final = 2000

# Parameters that carry the referrer's campaign or click id and never select content.
_TRACKING_PREFIXES: Final = ("utm_", "pk_", "mtm_")
_TRACKING: Final = frozenset(
    {
        "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid",
        "ttclid", "li_fat_id", "igshid", "mc_cid", "mc_eid", "_hsenc", "_hsmi", "mkt_tok",
        "oly_anon_id", "oly_enc_id", "vero_id", "rb_clickid", "s_cid", "ref_src", "srsltid",
    }
)  # fmt: skip
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


class InvalidURL(PermanentError, ValueError):  # noqa: N818 - reads as a fact
    """Not an http(s) URL Satchel can store; the message says why."""


def normalise_url(url: str, *, strip_tracking: bool = False) -> str:
    """`url` in its canonical form (see the module docstring); raises `InvalidURL`."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("url: expected an http(s) URL")
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidURL(f"url: {len(url)} characters; at most {MAX_URL}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidURL(f"url: {url!r:.80} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"url: {url!r:.80} is not an http(s) URL")
    if any(c.isspace() for c in url):
        raise InvalidURL(f"url: {url!r:.80} contains white space")
    netloc = parts.netloc.rpartition("@")[2]  # credentials never go in a stored URL
    host, sep, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not sep or not port.isdigit():
        host, port = netloc, ""
    if port == _DEFAULT_PORTS[scheme]:
        port = ""
    netloc = host.lower() + (f":{port}" if port else "")
    query = parts.query
    if strip_tracking and query:
        # Segments are dropped by their decoded name and the rest kept byte for byte:
        # re-encoding would respell them (%20 as +, a bare "flag" as "flag="), and one page
        # would get two source ids.
        query = "&".join(
            segment for segment in query.split("&") if segment and not _is_tracking(segment)
        )
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def _is_tracking(segment: str) -> bool:
    name = unquote_plus(segment.partition("=")[0]).lower()
    return name in _TRACKING or name.startswith(_TRACKING_PREFIXES)
