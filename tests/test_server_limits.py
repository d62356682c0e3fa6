"""Limits a hostile or careless client meets: nesting depth, document and message sizes,
OP_MSG checksums. Expected errors are mongod's (src/mongo/bson/bson_depth.h,
src/mongo/db/ops/insert.cpp, src/mongo/db/update/storage_validation.cpp, the OP_MSG
specification); the server must answer them and go on serving everyone else."""

from __future__ import annotations

import os
import struct

import bson
import pymongo
import pytest

from conftest import OP_MSG, RawConnection

OVERFLOW = 15
BAD_VALUE = 2
BSON_OBJECT_TOO_LARGE = 10334
MAX_USER_SIZE = 16 * 1024 * 1024


def nested_bytes(levels: int, leaf: bytes = b"\x10x\x00\x01\x00\x00\x00", key: bytes = b"a") -> bytes:
    """BSON bytes of ``{a: {a: ... {x: 1}}}`` with ``levels`` documents in all, built without
    recursion (the encoders recurse, and these depths are what a hostile client sends)."""
    inner = struct.pack("<i", 5 + len(leaf)) + leaf + b"\x00"
    size = len(inner)
    # Every level adds a length (4), type and key (2 + len(key)) and a terminator (1).
    per = 4 + 2 + len(key) + 1
    head = b"".join(
        struct.pack("<i", size + per * (levels - i)) + b"\x03" + key + b"\x00"
        for i in range(1, levels)
    )
    return head + inner + b"\x00" * (levels - 1)


def nested(levels: int) -> dict:
    """``{a: {a: ... {x: 1}}}`` with ``levels`` documents in all, as a dict."""
    d: dict = {"x": 1}
    for _ in range(levels - 1):
        d = {"a": d}
    return d


def embed(doc_bytes: bytes, command: dict, field: str) -> bytes:
    """``command`` with ``field`` set to the document ``doc_bytes``, as BSON bytes."""
    body = bson.encode(command)
    element = b"\x03" + field.encode() + b"\x00" + doc_bytes
    total = len(body) + len(element)
    return struct.pack("<i", total) + body[4:-1] + element + b"\x00"


def send_body(conn: RawConnection, body: bytes, flags: int = 0) -> dict:
    payload = struct.pack("<I", flags) + b"\x00" + body
    conn.send_raw(struct.pack("<iiii", 16 + len(payload), 77, 0, OP_MSG) + payload)
    (_, _, response_to, _), _, reply = conn.read_reply()
    assert response_to == 77
    return reply


def assert_serving(address: str) -> None:
    with RawConnection(address) as other:
        assert other.command({"ping": 1, "$db": "admin"})["ok"] == 1.0


# ---------------------------------------------------------------------------------------------
# Nesting depth
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [202, 1_000, 100_000])
def test_a_too_deep_command_is_refused_with_overflow(mongo_server, levels):
    with RawConnection(mongo_server.address) as conn:
        body = embed(nested_bytes(levels), {"ping": 1, "$db": "admin"}, "deep")
        reply = send_body(conn, body)
        assert reply["ok"] == 0.0
        assert reply["code"] == OVERFLOW
        # The connection stays usable, as on mongod (not a connection-fatal error).
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1.0
    assert_serving(mongo_server.address)


def test_200_levels_below_the_top_pass_the_wire(mongo_server):
    # The command is level 1 and `deep` brings 200 more: exactly mongod's maxBSONDepth.
    with RawConnection(mongo_server.address) as conn:
        body = embed(nested_bytes(200), {"ping": 1, "$db": "admin"}, "deep")
        assert send_body(conn, body)["ok"] == 1.0


@pytest.mark.parametrize("command,field", [
    ({"insert": "deep", "$db": "test", "documents": []}, None),
    ({"find": "deep", "$db": "test"}, "filter"),
    ({"aggregate": "deep", "$db": "test", "cursor": {}, "pipeline": []}, None),
    ({"update": "deep", "$db": "test"}, None),
])
def test_deep_documents_in_crud_commands_are_refused(mongo_server, command, field):
    deep = nested_bytes(3_000)
    with RawConnection(mongo_server.address) as conn:
        if field is None:
            # Inside a document sequence (insert documents, update statements, pipeline).
            name = {"insert": "documents", "aggregate": "pipeline", "update": "updates"}[
                next(iter(command))
            ]
            command = {k: v for k, v in command.items() if k != name}
            payload = struct.pack("<I", 0) + b"\x00" + bson.encode(command)
            seq = name.encode() + b"\x00" + deep
            payload += b"\x01" + struct.pack("<i", 4 + len(seq)) + seq
            conn.send_raw(struct.pack("<iiii", 16 + len(payload), 5, 0, OP_MSG) + payload)
            _, _, reply = conn.read_reply()
        else:
            reply = send_body(conn, embed(deep, command, field))
        assert reply["ok"] == 0.0 and reply["code"] == OVERFLOW
    assert_serving(mongo_server.address)


def test_stored_documents_are_limited_to_180_levels(client):
    coll = client.test.depth
    coll.insert_one({"_id": 1, **nested(180)})  # 180 levels, the top document included
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.insert_one({"_id": 2, **nested(181)})
    assert e.value.code == OVERFLOW
    # Empty documents do not count (jstests/noPassthrough/max_bson_depth_parameter.js).
    assert coll.insert_one({"_id": 3, **nested(180), "e": {}})
    assert coll.count_documents({}) == 2


def test_an_update_cannot_make_a_stored_document_too_deep(client):
    coll = client.test.depth_update
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.update_one({"_id": 1}, {"$set": {"a": nested(180)}})
    assert e.value.code == OVERFLOW
    # A dotted path deeper than any document: refused before it is walked.
    long_path = ".".join(["p"] * 5_000)
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.update_one({"_id": 1}, {"$set": {long_path: 1}})
    assert e.value.code == OVERFLOW
    # Deep, but within the limit: stored, and later updates and reads still work.
    coll.update_one({"_id": 1}, {"$set": {"a": nested(178)}})
    coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
    coll.update_one({"_id": 1}, {"$set": {".".join(["a"] * 178): 7}})
    doc = coll.find_one({"_id": 1})
    assert doc["n"] == 1
    # The 177th `a` is at level 178; b, c and d would add levels 179 to 181.
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.update_one({"_id": 1}, {"$set": {".".join(["a"] * 177) + ".b.c.d.e": 1}})
    assert e.value.code == OVERFLOW
    assert coll.find_one({"_id": 1}, {"n": 1}) == {"_id": 1, "n": 1}


def test_an_upsert_from_a_long_dotted_query_is_refused(client):
    coll = client.test.depth_upsert
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.update_one({".".join(["q"] * 5_000): 1}, {"$set": {"x": 1}}, upsert=True)
    assert e.value.code == OVERFLOW
    assert coll.count_documents({}) == 0


def deep_filter(levels: int, op: str) -> dict:
    f: dict = {"x": 1}
    for _ in range(levels):
        f = {"$and": [f]} if op == "$and" else {"a": {"$elemMatch": f}}
    return f


@pytest.mark.parametrize("op", ["$and", "$elemMatch"])
def test_queries_nested_to_the_limit_run_or_fail_cleanly(client, op):
    coll = client.test.depth_query
    coll.insert_one({"x": 1})
    # ~190 levels of operators: within the wire limit, deep enough to exhaust a small stack.
    try:
        list(coll.find(deep_filter(95, op)))
        list(coll.aggregate([{"$match": deep_filter(95, op)}]))
    except pymongo.errors.OperationFailure:
        pass
    expr: object = 1
    for _ in range(95):
        expr = {"$add": [expr, 1]}
    try:
        list(coll.aggregate([{"$project": {"v": expr}}]))
    except pymongo.errors.OperationFailure:
        pass
    assert coll.count_documents({}) == 1


def test_pipelines_are_limited_to_1000_stages(client):
    coll = client.test.stages
    coll.insert_one({"_id": 1})
    wrap = {"$project": {"a": "$$ROOT"}}
    with pytest.raises(pymongo.errors.OperationFailure) as e:
        list(coll.aggregate([wrap] * 100_000))
    assert e.value.code == 7749501
    # 1000 stages, most nesting the document one level deeper, still run.
    [doc] = coll.aggregate([wrap] * 999 + [{"$project": {"_id": 0, "ok": {"$literal": True}}}])
    assert doc == {"ok": True}


def test_a_deep_message_leaves_an_in_process_server_and_its_host_alive():
    from mmm.embedded import MongoServer

    with MongoServer() as server:
        with RawConnection(server.address) as conn:
            for levels in (1_000, 100_000):
                for command, field in (
                    ({"ping": 1, "$db": "admin"}, "x"),
                    ({"find": "c", "$db": "test"}, "filter"),
                    ({"update": "c", "$db": "test", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}]}, "let"),
                ):
                    reply = send_body(conn, embed(nested_bytes(levels), command, field))
                    assert reply["code"] == OVERFLOW
        c = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000)
        try:
            c.test.c.insert_one({"alive": True})
            assert c.test.c.find_one({}, {"_id": 0}) == {"alive": True}
        finally:
            c.close()


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

def test_an_insert_over_16_mib_is_refused_as_mongod_does(mongo_server):
    # PyMongo refuses such documents itself, so the raw protocol sends one.
    big = {"_id": 1, "s": "x" * (MAX_USER_SIZE - 20)}
    assert len(bson.encode(big)) > MAX_USER_SIZE
    with RawConnection(mongo_server.address, timeout=30) as conn:
        reply = conn.command({"insert": "big", "$db": "test"}, sequences=[("documents", [big])])
        assert reply["ok"] == 1.0 and reply["n"] == 0
        error = reply["writeErrors"][0]
        assert error["code"] == BAD_VALUE
        assert error["errmsg"].startswith("object to insert too large")
        # A document exactly at the limit is stored.
        fits = {"_id": 2, "s": ""}
        fits["s"] = "x" * (MAX_USER_SIZE - len(bson.encode(fits)))
        assert len(bson.encode(fits)) == MAX_USER_SIZE
        reply = conn.command({"insert": "big", "$db": "test"}, sequences=[("documents", [fits])])
        assert reply["n"] == 1 and "writeErrors" not in reply


def test_an_update_cannot_grow_a_document_past_16_mib(client):
    coll = client.test.grow
    half = "x" * (9 * 1024 * 1024)
    coll.insert_one({"_id": 1, "a": half})
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.update_one({"_id": 1}, {"$set": {"b": half}})
    assert e.value.code == BSON_OBJECT_TOO_LARGE
    # Small enough for the driver to send (16 MiB + 16 KiB), too large to store.
    rest = "x" * (MAX_USER_SIZE - len(half) + 100)
    with pytest.raises(pymongo.errors.WriteError) as e:
        coll.replace_one({"_id": 1}, {"a": half, "b": rest})
    assert e.value.code == BSON_OBJECT_TOO_LARGE
    assert coll.find_one({"_id": 1}).keys() == {"_id", "a"}


def test_a_command_document_over_16_mib_plus_16_kib_is_refused(mongo_server):
    with RawConnection(mongo_server.address, timeout=30) as conn:
        body = bson.encode({"ping": 1, "$db": "admin", "pad": "x" * (MAX_USER_SIZE + 16 * 1024)})
        reply = send_body(conn, body)
        assert reply["ok"] == 0.0 and reply["code"] == BSON_OBJECT_TOO_LARGE
        # Up to 16 KiB over a user document is room for the command around it.
        body = bson.encode({"ping": 1, "$db": "admin", "pad": "x" * (MAX_USER_SIZE + 8 * 1024)})
        assert send_body(conn, body)["ok"] == 1.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_header_announcing_48_mb_does_not_allocate_it():
    import socket
    import time

    from mmm.embedded import MongoServer

    with MongoServer() as server:
        host, port = server.address.rsplit(":", 1)
        before = rss_bytes()
        socks = []
        for _ in range(10):
            s = socket.create_connection((host, int(port)))
            # A header announcing 47.9 MB, then a few bytes of body, then silence.
            s.sendall(struct.pack("<iiii", 47_900_000, 1, 0, OP_MSG) + b"\x00" * 64)
            socks.append(s)
        time.sleep(0.5)
        grown = rss_bytes() - before
        for s in socks:
            s.close()
        assert grown < 64 * 1024 * 1024, f"the server grew by {grown} bytes"
        assert_serving(server.address)


# ---------------------------------------------------------------------------------------------
# OP_MSG checksums (flagBits bit 0, CRC-32C of the whole message before the checksum)
# ---------------------------------------------------------------------------------------------

def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def checksummed_ping(corrupt: bool) -> bytes:
    payload = struct.pack("<I", 1) + b"\x00" + bson.encode({"ping": 1, "$db": "admin"})
    header = struct.pack("<iiii", 16 + len(payload) + 4, 9, 0, OP_MSG)
    checksum = crc32c(header + payload) ^ (1 if corrupt else 0)
    return header + payload + struct.pack("<I", checksum)


def test_crc32c_matches_the_reference_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_a_correct_checksum_is_accepted(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        conn.send_raw(checksummed_ping(corrupt=False))
        (_, _, response_to, _), _, reply = conn.read_reply()
        assert response_to == 9 and reply["ok"] == 1.0


def test_a_wrong_checksum_closes_the_connection(mongo_server):
    # ChecksumMismatch is a ConnectionFatalMessageParseError (error_codes.yml): mongod closes.
    with RawConnection(mongo_server.address) as conn:
        conn.send_raw(checksummed_ping(corrupt=True))
        assert conn.is_closed_by_server()
    assert_serving(mongo_server.address)
