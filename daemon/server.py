"""Serving an ASGI app on a Unix socket that only its owner can use.

Three layers keep other users out: the socket's directory is 0700 (no one else can reach the
socket at all), the socket itself is 0600, and every connection's peer credentials are checked
against our uid (``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED`` on macOS), so a socket path moved
somewhere laxer by configuration still refuses strangers.

uvicorn does the HTTP. Inside the daemon it must not install signal handlers of its own
(`daemon.main` owns signals), so `UnixServer` overrides `capture_signals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["SocketError", "UnixServer", "bind_socket", "peer_uid"]

_log = logging.getLogger(__name__)


class SocketError(OSError):
    """The socket cannot be set up safely; the message says what to change."""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None if unknown)."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)  # Linux
    if so_peercred is not None:
        creds = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin":
        sol_local, local_peercred = 0, 1  # <sys/un.h>; not exported by the socket module
        # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
        creds = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I"))
        return int(struct.unpack_from("II", creds)[1])
    return None


def bind_socket(path: Path) -> socket.socket:
    """Bind a listening socket at `path`: directory 0700 owned by us, socket 0600.

    A socket file left by a crashed daemon is replaced (the caller holds the single-instance
    lock, so no live daemon owns it); anything else at the path is refused.
    """
    directory = path.parent
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise SocketError(f"{directory}: a symbolic link; the socket's directory must be real")
    if info.st_uid != os.getuid():
        raise SocketError(f"{directory}: owned by uid {info.st_uid}, not by us; choose another")
    if created:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    elif stat.S_IMODE(info.st_mode) & 0o077:
        # Not ours to tighten (it may be $HOME): the 0600 socket and the peer check still
        # keep others out.
        _log.warning("%s is reachable by other users (mode %o)", directory, info.st_mode & 0o777)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SocketError(f"{path}: exists and is not a socket; move it away")
        path.unlink()  # stale, from a crash
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # created 0600: no window in which it is wider
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _OwnerOnly(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, refusing connections from other users."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None and sock.family == socket.AF_UNIX else None
        super().connection_made(transport)  # registered, so that closing it is tidy
        if uid is None:
            _log.warning("cannot check the peer's uid on this platform")
        elif uid != os.getuid():
            _log.warning("refused a connection from uid %d", uid)
            transport.abort()


class UnixServer(uvicorn.Server):
    """uvicorn on our socket (or the browser endpoint's), without its own signal handling."""

    def __init__(
        self, app: Any, sock: socket.socket, *, grace: float, owner_only: bool = True
    ) -> None:
        config = uvicorn.Config(
            app,
            # The peer check needs a Unix socket; the browser endpoint (TCP on loopback)
            # checks its callers by token instead.
            http=_OwnerOnly if owner_only else H11Protocol,
            server_header=False,
            lifespan="off",
            log_config=None,
            access_log=False,
            # Inside the daemon's own grace, which then cuts what is left short.
            timeout_graceful_shutdown=max(1, int(grace) - 1),
        )
        super().__init__(config)
        self.sock = sock
        self.ready = anyio.Event()  # set once connections are accepted
        self._exit = anyio.Event()

    def stop(self) -> None:
        """Stop accepting connections and finish the open ones (within the grace)."""
        self.should_exit = True
        self._exit.set()

    async def main_loop(self) -> None:
        """uvicorn's loop wakes ten times a second to look at `should_exit`; an idle daemon
        should not. Once a second refreshes the Date header; `stop()` wakes it at once."""
        while not await self.on_tick(0):  # tick 0: uvicorn refreshes its Date header
            with anyio.move_on_after(1.0):
                await self._exit.wait()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then `ready`."""
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # daemon.main owns signals

    async def run_until_stopped(self) -> None:
        """Serve until `should_exit` is set, then close connections gracefully."""
        await self.serve(sockets=[self.sock])
