"""Shared helpers for the server integration tests.

Every test talks to a server started by mmm's pytest fixtures (``mongo_server``,
``mongo_server_factory``) through PyMongo or a plain socket only, so the same suite runs against
a real ``mongod`` when ``MMM_TEST_MONGOD`` names one. Expected behaviour is taken from MongoDB's
sources, the driver specifications and the MongoDB manual, never from what the embedded server does.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterator, List, Optional

import bson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.son import SON

#: PyMongo's own suite runs through tests/driver_suite/run_pymongo_suite.py, not here.
collect_ignore = ["driver_suite"]

#: Decodes documents keeping their field order, so tests can check it.
SON_OPTIONS = CodecOptions(document_class=SON, tz_aware=True)

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013


@pytest.fixture
def client(mongo_server) -> Iterator[pymongo.MongoClient]:
    """A replica-set client (retryable writes on, as drivers default)."""
    c = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10000)
    yield c
    c.close()


@pytest.fixture
def plain_client(mongo_server) -> Iterator[pymongo.MongoClient]:
    """A client without retryable writes: its writes log plain oplog entries (no lsid)."""
    c = pymongo.MongoClient(mongo_server.uri, retryWrites=False, serverSelectionTimeoutMS=10000)
    yield c
    c.close()


@pytest.fixture
def pair(mongo_server_factory):
    """Two servers and a client of each: ``(a, b, client_a, client_b)``."""
    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    yield a, b, ca, cb
    ca.close()
    cb.close()


# ---------------------------------------------------------------------------------------------
# Oplog helpers
# ---------------------------------------------------------------------------------------------

def oplog(client: pymongo.MongoClient):
    return client.local.get_collection("oplog.rs", codec_options=SON_OPTIONS)


def last_ts(client: pymongo.MongoClient) -> bson.Timestamp:
    """The ts of the newest oplog entry."""
    entry = oplog(client).find_one({}, sort=[("$natural", -1)])
    return entry["ts"]


def is_user_entry(entry, db: Optional[str]) -> bool:
    """Entries a test cares about: not no-ops, and (when ``db`` is given) about that database.

    A real mongod also writes periodic no-ops and session bookkeeping (``config.*``) entries.
    """
    if entry["op"] == "n":
        return False
    if db is None:
        return True
    ns = entry["ns"]
    if ns == "admin.$cmd" and "applyOps" in entry["o"]:
        return any(op["ns"].split(".", 1)[0] == db for op in entry["o"]["applyOps"])
    return ns.split(".", 1)[0] == db


def entries_after(client: pymongo.MongoClient, ts: bson.Timestamp, db: Optional[str] = "test") -> List[SON]:
    """Oplog entries newer than ``ts``, in oplog order, restricted to ``db``."""
    cur = oplog(client).find({"ts": {"$gt": ts}})
    return [e for e in cur if is_user_entry(e, db)]


def raw_entries_after(client: pymongo.MongoClient, ts: bson.Timestamp, db: Optional[str] = "test"):
    """Like :func:`entries_after` but as RawBSONDocuments (to check exact BSON types/order)."""
    from bson.raw_bson import RawBSONDocument

    coll = client.local.get_collection(
        "oplog.rs", codec_options=CodecOptions(document_class=RawBSONDocument)
    )
    out = []
    for raw in coll.find({"ts": {"$gt": ts}}):
        decoded = bson.decode(raw.raw, codec_options=SON_OPTIONS)
        if is_user_entry(decoded, db):
            out.append(raw)
    return out


def element_types(raw_doc) -> List[tuple]:
    """``[(field name, BSON type byte), ...]`` of a raw BSON document's top level."""
    data = raw_doc.raw if hasattr(raw_doc, "raw") else bytes(raw_doc)
    out = []
    pos = 4
    end = len(data) - 1
    while pos < end:
        t = data[pos]
        name_end = data.index(b"\x00", pos + 1)
        name = data[pos + 1:name_end].decode()
        out.append((name, t))
        # Skip the value by decoding just this element.
        value_start = name_end + 1
        pos = value_start + _value_size(t, data, value_start)
    return out


def _value_size(t: int, data: bytes, pos: int) -> int:
    fixed = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
             0x7F: 0, 0xFF: 0}
    if t in fixed:
        return fixed[t]
    if t in (0x02, 0x0D, 0x0E):
        return 4 + struct.unpack_from("<i", data, pos)[0]
    if t in (0x03, 0x04, 0x0F):
        return struct.unpack_from("<i", data, pos)[0]
    if t == 0x05:
        return 4 + 1 + struct.unpack_from("<i", data, pos)[0]
    if t == 0x0B:
        a = data.index(b"\x00", pos)
        b = data.index(b"\x00", a + 1)
        return b + 1 - pos
    if t == 0x0C:
        return 4 + struct.unpack_from("<i", data, pos)[0] + 12
    raise ValueError(f"unknown BSON type {t:#x}")


BSON_INT32 = 0x10
BSON_INT64 = 0x12
BSON_DATETIME = 0x09
BSON_TIMESTAMP = 0x11
BSON_BINARY = 0x05
BSON_DOCUMENT = 0x03
BSON_STRING = 0x02


def without_volatile(entry, drop=("ts", "wall", "ui")) -> dict:
    """An entry as a plain dict without the fields that differ per run."""
    return {k: v for k, v in entry.items() if k not in drop}


# ---------------------------------------------------------------------------------------------
# Raw wire helpers (plain sockets)
# ---------------------------------------------------------------------------------------------

class RawConnection:
    """A bare TCP connection speaking the MongoDB wire protocol by hand."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _header(self, length: int, op_code: int, request_id: Optional[int] = None) -> bytes:
        rid = self.next_id if request_id is None else request_id
        self.next_id += 1
        return struct.pack("<iiii", length, rid, 0, op_code)

    def op_msg(self, body: dict, sequences=(), flags: int = 0) -> int:
        """Sends an OP_MSG (body + kind-1 document sequences); returns its requestID."""
        payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
        for identifier, docs in sequences:
            seq = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
            payload += b"\x01" + struct.pack("<i", 4 + len(seq)) + seq
        rid = self.next_id
        self.send_raw(self._header(16 + len(payload), OP_MSG) + payload)
        return rid

    def op_query(self, collection: str, query: dict) -> int:
        payload = (struct.pack("<i", 0) + collection.encode() + b"\x00"
                   + struct.pack("<ii", 0, -1) + bson.encode(query))
        rid = self.next_id
        self.send_raw(self._header(16 + len(payload), OP_QUERY) + payload)
        return rid

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by server")
            buf += chunk
        return buf

    def read_reply(self):
        """Reads one reply; returns (header tuple, flags, document)."""
        header = self._recv_exact(16)
        length, request_id, response_to, op_code = struct.unpack("<iiii", header)
        body = self._recv_exact(length - 16)
        if op_code == OP_MSG:
            flags = struct.unpack_from("<I", body, 0)[0]
            assert body[4] == 0, "reply section must be kind 0"
            doc = bson.decode(body[5:], codec_options=SON_OPTIONS)
            return (length, request_id, response_to, op_code), flags, doc
        if op_code == OP_REPLY:
            flags, cursor_id, starting_from, n_returned = struct.unpack_from("<iqii", body, 0)
            doc = bson.decode(body[20:], codec_options=SON_OPTIONS)
            return (length, request_id, response_to, op_code), flags, doc
        raise AssertionError(f"unexpected reply opcode {op_code}")

    def command(self, body: dict, sequences=()) -> SON:
        rid = self.op_msg(body, sequences)
        header, _, doc = self.read_reply()
        assert header[2] == rid
        return doc

    def is_closed_by_server(self, wait: float = 3.0) -> bool:
        """True when the server closes the socket (EOF/reset) within ``wait`` seconds."""
        import time

        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
            if data == b"":
                return True


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Polls until ``predicate()`` is true; fails the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
