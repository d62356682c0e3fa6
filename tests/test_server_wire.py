"""The wire protocol spoken over a plain socket, without a driver.

References: the OP_MSG specification (mongodb/specifications source/message/OP_MSG.md: framing,
sections and flags) and mongodb/mongo src/mongo/rpc/op_msg.cpp; OP_QUERY only for the handshake
(src/mongo/rpc/check_allowed_op_query_cmd.cpp); moreToCome as PyMongo's network.command sends it.
"""

import struct
import time

import bson
import pymongo

from conftest import OP_MSG, OP_REPLY, RawConnection

MORE_TO_COME = 1 << 1


def test_op_msg_reply_has_one_kind0_section_and_answers_the_request_id(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        rid = conn.op_msg({"ping": 1, "$db": "admin"})
        (length, _, response_to, op_code), flags, doc = conn.read_reply()
        assert op_code == OP_MSG
        assert response_to == rid
        assert flags == 0
        assert doc["ok"] == 1.0


def test_op_msg_document_sequence_is_read_as_an_array_argument(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        reply = conn.command(
            {"insert": "seq", "$db": "test"},
            sequences=[("documents", [{"_id": 1, "a": "x"}, {"_id": 2, "a": "y"}])],
        )
        assert reply["ok"] == 1.0
        assert reply["n"] == 2
        found = conn.command({"find": "seq", "filter": {}, "$db": "test"})
        assert found["cursor"]["firstBatch"] == [{"_id": 1, "a": "x"}, {"_id": 2, "a": "y"}]
        assert found["cursor"]["ns"] == "test.seq"


def test_the_same_arguments_may_come_as_an_array_in_the_body(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        reply = conn.command({"insert": "body", "documents": [{"_id": 1}], "$db": "test"})
        assert reply["n"] == 1


def test_op_query_handshake_gets_an_op_reply(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        rid = conn.op_query("admin.$cmd", {"isMaster": 1, "helloOk": True})
        (_, _, response_to, op_code), flags, doc = conn.read_reply()
        assert op_code == OP_REPLY
        assert response_to == rid
        assert flags & 0b11 == 0  # never CursorNotFound / QueryFailure
        assert doc["ismaster"] is True
        assert doc["helloOk"] is True
        # After the handshake the same socket speaks OP_MSG.
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1.0


def test_op_query_other_than_hello_is_refused_with_352(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        conn.op_query("test.$cmd", {"find": "c", "filter": {}})
        (_, _, _, op_code), _, doc = conn.read_reply()
        assert op_code == OP_REPLY
        assert doc["ok"] == 0
        assert doc["code"] == 352
        assert doc["codeName"] == "UnsupportedOpQueryCommand"


def test_more_to_come_write_gets_no_reply_but_is_applied(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        conn.op_msg(
            {"insert": "w0", "$db": "test", "writeConcern": {"w": 0}},
            sequences=[("documents", [{"_id": 1}])],
            flags=MORE_TO_COME,
        )
        # The next reply on this socket must answer the *next* request, not the w:0 insert.
        rid = conn.op_msg({"find": "w0", "filter": {}, "$db": "test"})
        (_, _, response_to, _), _, doc = conn.read_reply()
        assert response_to == rid
        assert doc["cursor"]["firstBatch"] == [{"_id": 1}]


def test_pymongo_unacknowledged_write_is_applied(client):
    coll = client.test.get_collection("w0", write_concern=pymongo.WriteConcern(w=0))
    result = coll.insert_one({"_id": 7})
    assert result.acknowledged is False
    deadline = time.monotonic() + 5
    while client.test.w0.find_one({"_id": 7}) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def assert_other_clients_unaffected(mongo_server):
    with RawConnection(mongo_server.address) as other:
        assert other.command({"ping": 1, "$db": "admin"})["ok"] == 1.0
    c = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10000)
    try:
        c.test.alive.insert_one({"ok": True})
        assert [d["ok"] for d in c.test.alive.find()] == [True]
    finally:
        c.close()


def test_oversized_message_closes_only_that_connection(mongo_server):
    with RawConnection(mongo_server.address) as bystander, \
            RawConnection(mongo_server.address) as bad:
        assert bystander.command({"ping": 1, "$db": "admin"})["ok"] == 1.0
        # messageLength above maxMessageSizeBytes (48000000).
        bad.send_raw(struct.pack("<iiii", 48_000_001, 1, 0, OP_MSG) + b"\x00" * 64)
        assert bad.is_closed_by_server()
        assert bystander.command({"ping": 1, "$db": "admin"})["ok"] == 1.0
    assert_other_clients_unaffected(mongo_server)


def test_message_length_below_the_header_size_closes_the_connection(mongo_server):
    with RawConnection(mongo_server.address) as bad:
        bad.send_raw(struct.pack("<iiii", 8, 1, 0, OP_MSG))
        assert bad.is_closed_by_server()
    assert_other_clients_unaffected(mongo_server)


def test_unknown_opcode_closes_only_that_connection(mongo_server):
    with RawConnection(mongo_server.address) as bad:
        body = bson.encode({"ping": 1})
        bad.send_raw(struct.pack("<iiii", 16 + len(body), 1, 0, 9999) + body)
        assert bad.is_closed_by_server()
    assert_other_clients_unaffected(mongo_server)


def test_unknown_required_op_msg_flag_closes_the_connection(mongo_server):
    # Bits 0-15 are required bits; an unknown one is IllegalOpMsgFlag (223), connection-fatal.
    with RawConnection(mongo_server.address) as bad:
        bad.op_msg({"ping": 1, "$db": "admin"}, flags=1 << 4)
        assert bad.is_closed_by_server()
    assert_other_clients_unaffected(mongo_server)


def test_unknown_optional_op_msg_flag_is_ignored(mongo_server):
    # exhaustAllowed (bit 16) may be ignored: the client still gets exactly one reply.
    with RawConnection(mongo_server.address) as conn:
        rid = conn.op_msg({"ping": 1, "$db": "admin"}, flags=1 << 16)
        (_, _, response_to, _), flags, doc = conn.read_reply()
        assert response_to == rid
        assert doc["ok"] == 1.0
