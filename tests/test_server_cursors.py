"""Cursor lifetime: killCursors as the find/getMore/killCursors specification describes it, the
idle timeout (cursorTimeoutMillis), cursors that outlive their connection, and the open-cursor cap.
Open cursors are observed through serverStatus ``metrics.cursor`` (mongod's field names)."""

from __future__ import annotations

import os
import struct
import time

import bson
import pymongo
import pytest

from conftest import OP_MSG, RawConnection

CURSOR_NOT_FOUND = 43


def cursor_metrics(client) -> dict:
    return client.admin.command("serverStatus")["metrics"]["cursor"]


def open_total(client) -> int:
    return cursor_metrics(client)["open"]["total"]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def ten_docs(client):
    client.test.cur.insert_many([{"_id": i} for i in range(10)])
    return client.test.cur


def raw_find(conn: RawConnection, **extra) -> int:
    reply = conn.command({"find": "cur", "$db": "test", "batchSize": 1, **extra})
    assert reply["ok"] == 1.0, reply
    return reply["cursor"]["id"]


def test_kill_cursors_reports_each_id(mongo_server, client, ten_docs):
    with RawConnection(mongo_server.address) as conn:
        live = raw_find(conn)
        reply = conn.command({"killCursors": "cur", "cursors": [bson.Int64(live), bson.Int64(12345)],
                              "$db": "test"})
        assert reply["ok"] == 1.0
        assert reply["cursorsKilled"] == [live]
        assert reply["cursorsNotFound"] == [12345]
        assert reply["cursorsAlive"] == [] and reply["cursorsUnknown"] == []
        again = conn.command({"getMore": bson.Int64(live), "collection": "cur", "$db": "test"})
        assert again["ok"] == 0.0 and again["code"] == CURSOR_NOT_FOUND


def test_kill_cursors_arguments_and_namespaces(mongo_server, ten_docs):
    # jstests/core/killcursors.js
    with RawConnection(mongo_server.address) as conn:
        ids = [bson.Int64(123), bson.Int64(456)]
        bad = conn.command({"killCursors": {"foo": 1}, "cursors": ids, "$db": "test"})
        assert bad["code"] == 9  # FailedToParse
        bad = conn.command({"killCursors": "cur", "cursors": {"a": ids[0]}, "$db": "test"})
        assert bad["code"] == 9
        bad = conn.command({"killCursors": "cur", "cursors": [], "$db": "test"})
        assert bad["code"] == 2  # BadValue
        live = raw_find(conn)
        # Another namespace's killCursors does not touch it.
        other = conn.command({"killCursors": "elsewhere", "cursors": [bson.Int64(live)], "$db": "test"})
        assert other["cursorsKilled"] == [] and other["cursorsNotFound"] == [live]
        more = conn.command({"getMore": bson.Int64(live), "collection": "cur", "$db": "test"})
        assert more["ok"] == 1.0
        timeless = raw_find(conn, noCursorTimeout=True)
        done = conn.command({"killCursors": "cur", "cursors": [bson.Int64(timeless)], "$db": "test"})
        assert done["cursorsKilled"] == [timeless]


def test_a_cursor_outlives_the_connection_that_opened_it(mongo_server, client, ten_docs):
    """mongod ties cursors to no connection (drivers continue them on any pooled one): closing the
    connection that opened or last used a cursor leaves it open, and another connection finishes
    it. Abandoned cursors are freed by the idle timeout (below), as mongod frees them."""
    address = mongo_server.address
    baseline = open_total(client)
    with RawConnection(address) as second:
        first = RawConnection(address)
        cid = raw_find(first)
        assert open_total(client) == baseline + 1
        first.close()
        time.sleep(0.3)
        assert open_total(client) == baseline + 1
        reply = second.command({"getMore": bson.Int64(cid), "collection": "cur", "batchSize": 1,
                                "$db": "test"})
        assert reply["ok"] == 1.0
        assert len(reply["cursor"]["nextBatch"]) == 1
        second.command({"killCursors": "cur", "cursors": [bson.Int64(cid)], "$db": "test"})
    assert open_total(client) == baseline


@pytest.fixture
def short_cursor_timeout(client):
    was = client.admin.command("getParameter", 1, cursorTimeoutMillis=1)["cursorTimeoutMillis"]
    assert was == 600_000  # mongod's default: 10 minutes
    client.admin.command("setParameter", 1, cursorTimeoutMillis=300)
    yield
    client.admin.command("setParameter", 1, cursorTimeoutMillis=was)


def test_idle_cursors_time_out(mongo_server, client, ten_docs, short_cursor_timeout):
    timed_out = cursor_metrics(client)["timedOut"]
    idle = ten_docs.find(batch_size=1)
    next(idle)
    kept = ten_docs.find(batch_size=1, no_cursor_timeout=True)
    next(kept)
    wait_for(lambda: cursor_metrics(client)["timedOut"] >= timed_out + 1)
    with pytest.raises(pymongo.errors.CursorNotFound):
        list(idle)
    assert len(list(kept)) == 9  # noCursorTimeout: never timed out
    kept.close()


def test_abandoned_cursors_are_freed(mongo_server, client, ten_docs, short_cursor_timeout):
    baseline = open_total(client)
    with RawConnection(mongo_server.address) as conn:
        for _ in range(200):
            raw_find(conn)
        assert open_total(client) >= baseline + 200
        # The connection stays open and silent: the timeout frees them.
        wait_for(lambda: open_total(client) <= baseline)


@pytest.mark.skipif(bool(os.environ.get("MMM_TEST_MONGOD")),
                    reason="the open-cursor cap is the embedded server's own limit")
def test_open_cursors_are_capped_with_a_clear_error(mongo_server, client, ten_docs):
    cap = 20_000
    address = mongo_server.address
    with RawConnection(address, timeout=60) as conn:
        body = bson.encode({"find": "cur", "$db": "test", "batchSize": 1})
        message = struct.pack("<I", 0) + b"\x00" + body
        frame = struct.pack("<iiii", 16 + len(message), 1, 0, OP_MSG) + message
        # Pipelined: send in chunks, read every reply.
        replies = []
        for start in range(0, cap + 1, 1000):
            n = min(1000, cap + 1 - start)
            conn.send_raw(frame * n)
            replies.extend(conn.read_reply()[2] for _ in range(n))
        refused = [r for r in replies if r["ok"] == 0.0]
        assert refused, "the cap was never reached"
        assert refused[0]["code"] == 146 and "too many open cursors" in refused[0]["errmsg"]
        assert open_total(client) == cap
    # The idle timeout frees them (closing the connection does not), and cursors open again.
    client.admin.command("setParameter", 1, cursorTimeoutMillis=300)
    try:
        wait_for(lambda: open_total(client) < cap)
    finally:
        client.admin.command("setParameter", 1, cursorTimeoutMillis=600_000)
    assert len(list(ten_docs.find(batch_size=2))) == 10
