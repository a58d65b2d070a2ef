"""The sidecar's wire and guard: security, errors, the seed's field names, process behaviour.

The conformance suite covers `HTTPStore` as a `VectorStore` (see conftest.OPENERS); these tests
cover what only the HTTP layer has. Every sidecar here is a real child process.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import numpy as np
import pytest

from store.base import (
    DimensionMismatch,
    IndexStatus,
    InvalidFilter,
    InvalidQuery,
    InvalidRecord,
    InvalidTableName,
    Record,
    StoreClosed,
    StoreError,
    TableExists,
    UnknownTable,
)
from store.columns import Columns
from store.http import (
    RECORDS_BINARY,
    HTTPStore,
    _server_ms,
    columns_from_binary,
    columns_to_binary,
    error_body,
    error_from_body,
)
from store.sqlite import SQLiteStore
from tests.store.conftest import clustered, random_records, record, records_of
from tests.store.sidecar import ROOT, Sidecar, running_sidecar

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    """A sidecar serving an SQLite store in tmp_path."""
    async with running_sidecar("sqlite", tmp_path / "vectors.db") as running:
        yield running


def raw_client(sidecar: Sidecar, *, secret: str | None = None) -> httpx.AsyncClient:
    """A plain HTTP client, authenticated unless `secret` says otherwise ('' for none)."""
    secret = sidecar.secret if secret is None else secret
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.AsyncClient(base_url=sidecar.url, headers=headers, trust_env=False)


# -- the guard ----------------------------------------------------------------------------------


async def test_missing_or_wrong_secret_is_401(sidecar: Sidecar) -> None:
    wrong = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {sidecar.secret}x"},
        {"Authorization": f"Bearer {sidecar.secret[:-1]}"},
        {"Authorization": f"Basic {sidecar.secret}"},
        {"Authorization": sidecar.secret},
    ]
    async with raw_client(sidecar, secret="") as client:
        for headers in wrong:
            routes = [("GET", "/health"), ("GET", "/tables"), ("POST", "/tables")]
            for method, path in [*routes, ("POST", "/tables/t/loaded")]:
                response = await client.request(
                    method, path, headers=headers, json={"name": "t", "dim": 2}
                )
                assert response.status_code == 401, (headers, path)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["WWW-Authenticate"] == "Bearer"
        ok = await client.get("/tables", headers={"Authorization": f"bearer {sidecar.secret}"})
        assert ok.status_code == 200
        assert ok.json() == {"tables": []}  # the refused POSTs created nothing
    with pytest.raises(StoreError, match=rf"sidecar at {sidecar.url}.*unauthorized|secret"):
        async with HTTPStore(sidecar.url, secret=sidecar.secret[::-1]):
            pass


async def test_foreign_host_is_403_before_the_secret_is_looked_at(sidecar: Sidecar) -> None:
    port = sidecar.port
    async with raw_client(sidecar) as client:
        for host in ["evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1"]:
            response = await client.get("/health", headers={"Host": host})
            assert response.status_code == 403, host
            assert response.json()["error"]["code"] == "forbidden"
        no_secret = await client.get(
            "/health", headers={"Host": "evil.example", "Authorization": ""}
        )
        assert no_secret.status_code == 403
        for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"]:
            assert (await client.get("/health", headers={"Host": host})).status_code == 200


def _listening(port: int) -> list[str]:
    """The local addresses, as /proc/net/tcp{,6} spell them, of sockets listening on `port`."""
    found = []
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    unspecified = "0.0.0.0"  # noqa: S104 - compared with, not bound to
    return None if address.startswith("127.") or address == unspecified else address


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
async def test_the_sidecar_listens_on_127_0_0_1_only(sidecar: Sidecar) -> None:
    assert _listening(sidecar.port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    other = _non_loopback_address()
    if other is not None:
        with pytest.raises(OSError):  # noqa: PT011 - refused or unreachable, either will do
            with socket.create_connection((other, sidecar.port), timeout=2):
                pass


NOT_LOOPBACK = ["0.0.0.0", "::", "192.0.2.1", "localhost", "example.org"]  # noqa: S104


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_non_loopback_hosts_are_refused(tmp_path: Path, host: str) -> None:
    done = _run_sidecar(tmp_path, "--host", host, secret="s3cret")  # noqa: S106 - a test secret
    assert done.returncode != 0
    assert "loopback" in done.stderr
    assert "READY" not in done.stdout


def test_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    done = _run_sidecar(tmp_path, secret="")
    assert done.returncode == 2
    assert "SATCHEL_SIDECAR_SECRET" in done.stderr
    assert not (tmp_path / "vectors.db").exists()


def _run_sidecar(tmp_path: Path, *args: str, secret: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SATCHEL_SIDECAR_SECRET"}
    env["PYTHONPATH"] = str(ROOT)
    if secret:
        env["SATCHEL_SIDECAR_SECRET"] = secret
    argv = [sys.executable, "-m", "store", "serve", "--backend", "sqlite"]
    argv += ["--path", str(tmp_path / "vectors.db"), *args]
    return subprocess.run(
        argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux's /proc")
async def test_the_secret_never_appears_in_argv(sidecar: Sidecar) -> None:
    cmdline = await anyio.Path(f"/proc/{sidecar.pid}/cmdline").read_bytes()
    assert b"store\x00serve" in cmdline
    assert sidecar.secret.encode() not in cmdline
    assert all(sidecar.secret not in arg for arg in sidecar.argv)


# -- process lifecycle --------------------------------------------------------------------------


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path: Path) -> None:
    # ~9 MB of export: more than the socket buffers take while the client is not reading.
    records = random_records(4000, 384)
    async with running_sidecar("sqlite", tmp_path / "vectors.db") as sidecar:
        async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
            await store.create_table("t", dim=384)
            for start in range(0, 4000, 1000):
                await store.insert("t", records[start : start + 1000])
            exported: list[Record] = []
            async for batch in store.export_all("t", batch_size=100):
                if not exported:
                    sidecar.process.terminate()
                    await anyio.sleep(1.0)
                    # Still serving the response it has begun, though told to stop.
                    assert sidecar.process.returncode is None
                exported.extend(batch)
            assert exported == records
        assert await sidecar.stop() == 0
    async with SQLiteStore(tmp_path / "vectors.db") as direct:
        assert await direct.count("t") == 4000


async def test_a_dead_sidecar_is_a_store_error_naming_its_url(tmp_path: Path) -> None:
    async with running_sidecar("sqlite", tmp_path / "vectors.db") as sidecar:
        store = HTTPStore(sidecar.url, secret=sidecar.secret, retries=1, backoff=0.01)
        await store.open()
        await store.create_table("t", dim=2)
        assert await sidecar.stop() == 0
    try:
        with pytest.raises(StoreError, match=rf"sidecar at {sidecar.url}: count failed") as info:
            await store.count("t")
        assert info.value.__cause__ is not None
    finally:
        await store.aclose()
    with pytest.raises(StoreClosed):
        await store.count("t")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        UnknownTable("t"),
        TableExists("t", 768),
        DimensionMismatch("t", 768, 3, what="query vector"),
        InvalidTableName("a b"),
        InvalidRecord("embedding: contains NaN or infinity"),
        InvalidQuery("top_k: expected a positive integer, got 0"),
        InvalidFilter("source_id = 3", 12, "expected a string literal"),
        StoreClosed("LanceDB store"),
    ],
)
def test_every_error_class_survives_the_wire(exc: StoreError) -> None:
    wire = json.loads(json.dumps(error_body(exc)))
    back = error_from_body(wire, "sidecar at http://127.0.0.1:1")
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    for attribute in ("table", "dim", "expected", "got", "name", "text", "position", "message"):
        assert getattr(back, attribute, None) == getattr(exc, attribute, None), attribute


def test_other_errors_become_store_errors() -> None:
    back = error_from_body(error_body(StoreError("disk full")), "sidecar at X")
    assert type(back) is StoreError
    assert str(back) == "sidecar at X: disk full"
    assert type(error_from_body({"nonsense": 1}, "sidecar at X")) is StoreError
    malformed = {"error": {"code": "table_exists", "message": "m"}}  # no table, no dim
    assert type(error_from_body(malformed, "sidecar at X")) is StoreError


async def test_errors_come_back_as_the_same_classes_with_statuses(sidecar: Sidecar) -> None:
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
        await store.create_table("t", dim=2)
        with pytest.raises(UnknownTable, match="no table named 'nope'") as unknown:
            await store.count("nope")
        assert unknown.value.table == "nope"
        with pytest.raises(TableExists, match="dimension 2") as exists:
            await store.create_table("t", dim=3)
        assert (exists.value.table, exists.value.dim) == ("t", 2)
        with pytest.raises(DimensionMismatch, match="got a query vector with 3") as mismatch:
            await store.search("t", [1, 2, 3], 1)
        assert (mismatch.value.expected, mismatch.value.got) == (2, 3)
        with pytest.raises(InvalidFilter, match="position 12") as bad:
            await store.search("t", [1, 0], 1, filter="source_id = 3")
        assert (bad.value.position, bad.value.text) == (12, "source_id = 3")
        with pytest.raises(InvalidQuery, match="all zeros"):
            await store.search("t", [0, 0], 1)
    async with raw_client(sidecar) as client:
        statuses = {
            "unknown_table": await client.get("/tables/nope/count"),
            "table_exists": await client.post("/tables", json={"name": "t", "dim": 2}),
            "invalid_table_name": await client.post("/tables", json={"name": "a-b", "dim": 2}),
            "invalid_filter": await client.post(
                "/tables/t/records/delete", json={"filter": "nope ="}
            ),
            "invalid_record": await client.post("/tables/t/records", json=[{"id": "a"}]),
            "bad_request": await client.post("/tables", content=b"{not json"),
        }
    expected = {"unknown_table": 404, "table_exists": 409}
    for code, response in statuses.items():
        assert response.status_code == expected.get(code, 400), (code, response.text)
        assert response.json()["error"]["code"] == code


# -- the seed's wire ----------------------------------------------------------------------------


def seed_record(id: str, vector: list[float], tags: list[str]) -> dict[str, object]:
    """A record as the seed's clients send it: tags as a JSON string, vectors as arrays."""
    return {
        "id": id,
        "source_id": "https://example.org/a",
        "source_type": "page",
        "text_chunk": f"text of {id}",
        "embedding": vector,
        "created_at": "2024-05-01T12:00:00Z",
        "tags": json.dumps(tags),
    }


async def test_a_client_written_from_the_seed_works(sidecar: Sidecar) -> None:
    async with raw_client(sidecar) as client:
        assert (await client.post("/tables", json={"name": "t", "dim": 3})).status_code == 201
        records = [
            seed_record("a", [1.0, 0.0, 0.0], ["rust"]),
            seed_record("b", [0.0, 1.0, 0.0], []),
            seed_record("c", [0.5, 0.5, 0.0], ["rust", "go"]),
        ]
        assert (await client.post("/tables/t/records", json=records)).status_code == 200
        search = {"vector": [1, 0.1, 0], "topK": 2, "filter": "tags CONTAINS 'rust'"}
        hits = (await client.post("/tables/t/search", json=search)).json()["results"]
        assert [h["id"] for h in hits] == ["a", "c"]
        assert hits[0]["embedding"] == [1.0, 0.0, 0.0]  # JSON arrays for those who did not ask
        assert hits[1]["tags"] == ["rust", "go"]
        assert hits[0]["score"] == pytest.approx(1 / np.linalg.norm([1, 0.1, 0]))
        snake = {"vector": [0, 1, 0], "top_k": 1}
        assert [
            h["id"] for h in (await client.post("/tables/t/search", json=snake)).json()["results"]
        ] == ["b"]
        assert (await client.get("/tables/t/count")).json() == {"count": 3}
        deleted = await client.delete("/tables/t/records/b")
        assert deleted.json() == {"deleted": True}
        export = await client.get("/tables/t/records")
        assert export.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert [[r["id"] for r in line["records"]] for line in lines] == [["a", "c"]]
        assert (await client.get("/health")).json() == {"status": "ok"}
    # What the seed's client wrote reads back through HTTPStore as ordinary records.
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
        assert store.tables() == {"t": 3}
        got = await store.get_by_ids("t", ["c"])
        assert got == [
            Record(
                id="c",
                source_id="https://example.org/a",
                source_type="page",
                text_chunk="text of c",
                embedding=np.array([0.5, 0.5, 0.0], np.float32),
                created_at="2024-05-01T12:00:00Z",
                tags=["rust", "go"],
            )
        ]


async def test_vectors_as_json_arrays_or_base64_either_way(sidecar: Sidecar) -> None:
    vector = np.array([0.1, -2.5, 3e-8], np.float32)
    encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode()
    async with raw_client(sidecar) as client:
        await client.post("/tables", json={"name": "t", "dim": 3})
        as_list = seed_record("l", [float(x) for x in vector], [])
        as_b64 = {**seed_record("b", [], []), "embedding": encoded, "tags": ["x"]}
        response = await client.post("/tables/t/records", json={"records": [as_list, as_b64]})
        assert response.status_code == 200, response.text
        asked = {"X-Satchel-Vectors": "f32-base64"}
        got = await client.post("/tables/t/records/get", json={"ids": ["l", "b"]}, headers=asked)
        assert [r["embedding"] for r in got.json()["records"]] == [encoded, encoded]
        plain = await client.post("/tables/t/records/get", json={"ids": ["b"]})
        assert plain.json()["records"][0]["embedding"] == vector.tolist()
        bad = {**as_b64, "embedding": "not base64!"}
        refused = await client.post("/tables/t/records", json=[bad])
        assert refused.status_code == 400
        assert "embedding" in refused.json()["error"]["message"]


async def test_a_search_says_how_long_the_store_took(sidecar: Sidecar) -> None:
    async with raw_client(sidecar) as client:
        created = await client.post("/tables", json={"name": "t", "dim": 2})
        assert created.status_code == 201, created.text
        added = await client.post("/tables/t/records", json=[seed_record("a", [1.0, 0.0], [])])
        assert added.status_code == 200, added.text
        answer = await client.post("/tables/t/search", json={"vector": [1, 0], "topK": 1})
        assert re.fullmatch(r"search;dur=\d+\.\d{3}", answer.headers["server-timing"])
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
        started = time.perf_counter()
        [hit] = await store.search("t", [1, 0], 1)
        round_trip = time.perf_counter() - started
        took = store.server_ms
        assert hit.id == "a"
        assert took is not None
        assert 0 <= took / 1000 <= round_trip  # the store's part of the round trip
        timings = []
        await store.count("t")
        timings.append(store.server_ms)  # only searches report it
        await store.search("t", [1, 0], 1)
        assert [r async for r in store.export_all("t")]
        timings.append(store.server_ms)  # a streamed call resets it too
        assert timings == [None, None]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("search;dur=5.800", 5.8),
        ("db;dur=1, search;dur=5", 5.0),
        ("search ; dur = 12", 12.0),
        ("db;dur=1", None),
        ("research;dur=3", None),
        ("search;dur=nan", None),
        ("search;dur=-1", None),
        ("", None),
    ],
)
def test_only_the_search_timing_is_read(header: str, expected: float | None) -> None:
    assert _server_ms(header) == expected


async def test_tables_are_listed_and_cached(sidecar: Sidecar) -> None:
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as first:
        assert first.tables() == {}
        await first.create_table("b", dim=3)
        await first.create_table("a", dim=2)
        assert first.tables() == {"a": 2, "b": 3}
        async with HTTPStore(sidecar.url, secret=sidecar.secret) as second:
            assert second.tables() == {"a": 2, "b": 3}
            await second.create_table("c", dim=4)
        assert "c" not in first.tables()  # a cache, until refreshed
        assert await first.refresh_tables() == {"a": 2, "b": 3, "c": 4}
        await first.insert("a", [record("x", [1, 0])])
        assert await first.delete_where("a", "id = 'x'") == 1


async def test_a_lance_sidecar_maintains_its_tables_and_reports_their_index(
    tmp_path: Path,
) -> None:
    vectors = clustered(1_500, 16)
    args = ("--ann-min-rows", "1000", "--maintain-every", "0.2")
    async with running_sidecar("lance", tmp_path / "lance", args=args) as sidecar:
        async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
            await store.create_table("t", dim=16)
            assert await store.index_status("t") == IndexStatus("exact", "exact", 0, 0)
            await store.insert("t", records_of(vectors))
            with anyio.fail_after(60):  # the build itself takes well under a second
                while (status := await store.index_status("t")).kind != "IVF_RQ":
                    await anyio.sleep(0.1)
            assert status == IndexStatus("IVF_RQ", "indexed", 1_500, 0)
            assert (await store.search("t", vectors[7], 1))[0].id == "r000007"


async def test_a_finished_load_gets_its_maintenance_pass_at_once(tmp_path: Path) -> None:
    vectors = clustered(1_500, 16)
    args = ("--ann-min-rows", "1000", "--maintain-every", "3600")  # no pass on schedule here
    async with running_sidecar("lance", tmp_path / "lance", args=args) as sidecar:
        async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
            await store.create_table("t", dim=16)
            await store.insert("t", records_of(vectors))
            await store.load_finished("t")
            with anyio.fail_after(60):  # the build itself takes well under a second
                while (status := await store.index_status("t")).kind != "IVF_RQ":
                    await anyio.sleep(0.1)
            assert status == IndexStatus("IVF_RQ", "indexed", 1_500, 0)
            with pytest.raises(UnknownTable):
                await store.load_finished("nope")


async def test_a_sqlite_sidecar_reports_exact_search(sidecar: Sidecar) -> None:
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
        await store.create_table("t", dim=2)
        await store.insert("t", [record("a", [1, 0])])
        assert await store.index_status("t") == IndexStatus("exact", "exact", 1, 1)
        await store.load_finished("t")  # nothing to build
        assert await store.index_status("t") == IndexStatus("exact", "exact", 1, 1)
        with pytest.raises(UnknownTable):
            await store.index_status("nope")
        with pytest.raises(UnknownTable):
            await store.load_finished("nope")


@pytest.mark.parametrize("value", ["999", "many"])
def test_ann_min_rows_is_checked(tmp_path: Path, value: str) -> None:
    done = _run_sidecar(tmp_path, "--ann-min-rows", value, secret="s" * 32)
    assert done.returncode == 2
    assert "--ann-min-rows" in done.stderr
    assert ("expected at least 1000" if value == "999" else "expected an integer") in done.stderr


async def test_accepted_connections_have_nagle_off() -> None:
    # Without TCP_NODELAY every response's body waited for the client's delayed ACK (~40 ms).
    import asyncio  # noqa: PLC0415 - the server below is plain asyncio, as uvicorn's is

    from store.http import bind_tcp  # noqa: PLC0415

    nodelay: list[int] = []

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    listener = bind_tcp(ipaddress.ip_address("127.0.0.1"), 0)
    server = await asyncio.start_server(accepted, sock=listener)
    async with server:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        while not nodelay:
            await anyio.sleep(0.01)
        writer.close()
    assert nodelay == [1]


async def test_bulk_inserts_travel_as_columns_and_one_float32_matrix(sidecar: Sidecar) -> None:
    batch = [record("a", [1, 0], tags=["x"]), record("b", [0.5, -2], text="ünï")]
    body = columns_to_binary(Columns.from_records(batch, 2))
    assert list(columns_from_binary(body)) == batch
    async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
        await store.create_table("t", dim=2)
        await store.insert("t", batch)  # HTTPStore sends this framing
        assert await store.get_by_ids("t", ["a", "b"]) == batch
        with pytest.raises(DimensionMismatch, match="record 'c'"):
            await store.insert("t", [record("c", [1, 0, 0]), record("d", [1, 0])])
    async with raw_client(sidecar) as client:  # an empty batch: nothing written, no error
        empty = columns_to_binary(Columns.from_records([], 2))
        headers = {"Content-Type": RECORDS_BINARY}
        response = await client.post("/tables/t/records", content=empty, headers=headers)
        assert (response.status_code, response.json()) == (200, {"upserted": 0})
    head = body[4 : 4 + int.from_bytes(body[:4], "big")]
    nul = head.replace('"ün'.encode(), b'"\\u0000n')  # a NUL in b's text_chunk
    bad = {
        "short": b"\x00\x00",
        "not JSON": (3).to_bytes(4, "big") + b"{no" + b"\x00" * 16,
        "no columns": (2).to_bytes(4, "big") + b"{}",
        "wrong size": body[:-4],
        "bad dim": len(head).to_bytes(4, "big") + head.replace(b'"dim":2', b'"dim":0') + body[-16:],
        "bad value": len(nul).to_bytes(4, "big") + nul + body[-16:],
    }
    messages = {}
    async with raw_client(sidecar) as client:
        for name, content in bad.items():
            response = await client.post(
                "/tables/t/records",
                content=content,
                headers={"Content-Type": RECORDS_BINARY},
            )
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["code"] == "invalid_record"
            messages[name] = response.json()["error"]["message"]
    assert "shorter than its 4-byte header" in messages["short"]
    assert "header is not JSON" in messages["not JSON"]
    assert "an object with a 'columns' object" in messages["no columns"]
    assert "2 records of dim 2 need 16 bytes of float32, got 12" in messages["wrong size"]
    assert "dim: expected an integer from 1 to 65536, got 0" in messages["bad dim"]
    assert "record 'b': text_chunk: contains a NUL" in messages["bad value"]
