"""Tailing `local.oplog.rs` with tailable/awaitData cursors, and oplog roll-off.

References: the find/getMore/killCursors specification (mongodb/specifications
source/find_getmore_killcursors_commands/find_getmore_killcursors_commands.md, "Tailable
cursors": they stay open on empty batches, an awaitData getMore blocks until data or
maxTimeMS); mongodb/mongo src/mongo/db/exec/collection_scan.cpp (CappedPositionLost 136 from
CollectionScan::doRestoreState), get_executor.cpp ("tailable cursor requested on non capped
collection", BadValue 2), src/mongo/db/repl/oplog_fetcher.cpp (the oplog query).
"""

import threading
import time

import pymongo
import pytest
from pymongo import CursorType
from pymongo.errors import OperationFailure

from conftest import SON_OPTIONS, last_ts, oplog


def tail(client, ts, await_ms, **filter_extra):
    cursor = oplog(client).find(
        {"ts": {"$gt": ts}, **filter_extra}, cursor_type=CursorType.TAILABLE_AWAIT
    )
    return cursor.max_await_time_ms(await_ms)


def test_tailing_returns_each_new_entry_in_order(client):
    client.test.c.insert_one({"_id": 0})
    cursor = tail(client, last_ts(client), 2000, ns="test.c")
    seen = []
    for i in range(1, 4):
        client.test.c.insert_one({"_id": i})
        seen.append(next(cursor)["o"]["_id"])
    assert seen == [1, 2, 3]
    assert cursor.alive
    cursor.close()


def test_initial_find_past_the_end_keeps_the_cursor_open(client):
    cursor = tail(client, last_ts(client), 200, ns="test.c")
    with pytest.raises(StopIteration):
        next(cursor)  # empty first batch ...
    assert cursor.alive  # ... but the tailable cursor lives on
    assert cursor.cursor_id not in (None, 0)
    cursor.close()


def test_await_data_get_more_returns_as_soon_as_a_write_happens(client):
    client.test.c.insert_one({"_id": 0})
    cursor = tail(client, last_ts(client), 10_000, ns="test.c")
    with pytest.raises(StopIteration):
        next(cursor)
    writer = threading.Timer(0.5, lambda: client.test.c.insert_one({"_id": 1}))
    started = time.monotonic()
    writer.start()
    try:
        entry = next(cursor)  # this getMore waits up to 10 s
    finally:
        writer.join()
    elapsed = time.monotonic() - started
    assert entry["o"] == {"_id": 1}
    assert 0.4 <= elapsed < 5.0
    cursor.close()


def test_await_data_get_more_times_out_with_an_empty_batch(client):
    cursor = tail(client, last_ts(client), 700, ns="test.nothing")
    with pytest.raises(StopIteration):
        next(cursor)
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(cursor)  # getMore: nothing arrives within maxTimeMS
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5.0
    assert cursor.alive
    # The cursor still works afterwards.
    client.test.nothing.insert_one({"_id": 1})
    assert next(cursor)["o"] == {"_id": 1}
    cursor.close()


def test_raw_get_more_on_idle_oplog_keeps_the_cursor_id(client):
    reply = client.local.command(
        "find", "oplog.rs", filter={"ts": {"$gt": last_ts(client)}, "ns": "test.none"},
        tailable=True, awaitData=True,
    )
    cursor_id = reply["cursor"]["id"]
    assert cursor_id != 0
    assert reply["cursor"]["firstBatch"] == []
    more = client.local.command("getMore", cursor_id, collection="oplog.rs", maxTimeMS=300)
    assert more["cursor"]["id"] == cursor_id
    assert more["cursor"]["nextBatch"] == []
    assert more["cursor"]["ns"] == "local.oplog.rs"
    client.local.command("killCursors", "oplog.rs", cursors=[cursor_id])


def test_await_data_requires_tailable(client):
    with pytest.raises(OperationFailure) as err:
        client.local.command("find", "oplog.rs", awaitData=True)
    assert err.value.code == 9  # FailedToParse


def test_tailable_cursor_on_a_non_capped_collection_is_bad_value(client):
    client.test.plain.insert_one({})
    with pytest.raises(OperationFailure) as err:
        next(client.test.plain.find(cursor_type=CursorType.TAILABLE_AWAIT))
    assert err.value.code == 2
    assert "tailable cursor requested on non capped collection" in str(err.value)


def test_tailable_cursor_on_a_capped_collection(client):
    client.test.create_collection("events", capped=True, size=4096)
    client.test.events.insert_one({"_id": 1})
    cursor = client.test.events.find(cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(2000)
    assert next(cursor) == {"_id": 1}
    client.test.events.insert_one({"_id": 2})
    assert next(cursor) == {"_id": 2}
    cursor.close()


def fill_oplog(client, megabytes):
    """Writes about ``megabytes`` MB of oplog entries."""
    payload = "x" * 1000
    batch = [{"p": payload} for _ in range(100)]
    for _ in range(int(megabytes * 10) + 1):
        client.test.filler.insert_many([dict(d) for d in batch])


def test_small_oplog_drops_its_oldest_entries(mongo_server_factory):
    server = mongo_server_factory(oplog_size_mb=1)
    client = pymongo.MongoClient(server.uri, retryWrites=False)
    try:
        client.test.first.insert_one({"_id": "first"})
        fill_oplog(client, 3)
        log = client.local.get_collection("oplog.rs", codec_options=SON_OPTIONS)
        assert log.find_one({"o.msg": "initiating set"}) is None
        assert log.find_one({"ns": "test.first"}) is None
        oldest = log.find_one({}, sort=[("$natural", 1)])
        newest = log.find_one({}, sort=[("$natural", -1)])
        assert oldest["ts"] < newest["ts"]
        # What remains fits the configured size (about 1 MB of ~1 KB entries).
        assert log.estimated_document_count() < 1300
        # Natural order is still ts order after truncation.
        stamps = [e["ts"] for e in log.find({}, {"ts": 1})]
        assert stamps == sorted(stamps)
    finally:
        client.close()


def test_tailable_cursor_that_falls_behind_gets_capped_position_lost(mongo_server_factory):
    server = mongo_server_factory(oplog_size_mb=1)
    client = pymongo.MongoClient(server.uri, retryWrites=False)
    try:
        reply = client.local.command("find", "oplog.rs", filter={}, batchSize=1,
                                     tailable=True, awaitData=True)
        # Positioned at the oldest entry ...
        assert reply["cursor"]["firstBatch"][0]["o"] == {"msg": "initiating set"}
        cursor_id = reply["cursor"]["id"]
        fill_oplog(client, 3)  # ... which now rolls off
        with pytest.raises(OperationFailure) as err:
            client.local.command("getMore", cursor_id, collection="oplog.rs", maxTimeMS=200)
        assert err.value.code == 136
        assert err.value.details["codeName"] == "CappedPositionLost"
        assert err.value.details["errmsg"].startswith(
            "CollectionScan died due to position in capped collection being deleted")
        # The failed getMore destroyed the cursor.
        with pytest.raises(OperationFailure) as err:
            client.local.command("getMore", cursor_id, collection="oplog.rs", maxTimeMS=200)
        assert err.value.code == 43
    finally:
        client.close()


def test_driver_tailable_cursor_dies_when_it_falls_behind(mongo_server_factory):
    # PyMongo treats CappedPositionLost on a tailable cursor as "cursor closed": it stops
    # iterating and the cursor is no longer alive.
    server = mongo_server_factory(oplog_size_mb=1)
    client = pymongo.MongoClient(server.uri, retryWrites=False)
    try:
        log = client.local.get_collection("oplog.rs")
        cursor = log.find({}, cursor_type=CursorType.TAILABLE_AWAIT, batch_size=1)
        cursor = cursor.max_await_time_ms(200)
        assert next(cursor)["o"] == {"msg": "initiating set"}
        assert cursor.alive
        fill_oplog(client, 3)
        with pytest.raises(StopIteration):
            next(cursor)
        assert not cursor.alive
    finally:
        client.close()


def test_new_query_older_than_the_oplog_starts_at_the_oldest_entry(mongo_server_factory):
    # A new {ts: {$gt: T}} query with T fallen off does not fail (only a cursor that lost its
    # position does: src/mongo/db/exec/collection_scan.cpp).
    server = mongo_server_factory(oplog_size_mb=1)
    client = pymongo.MongoClient(server.uri, retryWrites=False)
    try:
        early = last_ts(client)
        fill_oplog(client, 3)
        log = client.local.get_collection("oplog.rs")
        oldest = log.find_one({}, sort=[("$natural", 1)])
        first = log.find_one({"ts": {"$gt": early}})
        assert first["ts"] == oldest["ts"]
    finally:
        client.close()
