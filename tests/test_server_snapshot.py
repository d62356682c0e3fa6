"""Snapshot reads: ``readConcern: {level: "snapshot", atClusterTime}`` outside transactions, and
snapshot sessions; reads that do not hold up other clients.

References: mongodb/specifications source/sessions/snapshot-sessions.md (the first read of a
snapshot session sends no atClusterTime; the server names the time it read at in
``cursor.atClusterTime`` (find, aggregate) or ``atClusterTime`` (distinct); later reads send it);
mongodb/mongo: the storage engine's "Read timestamp ... is older than the oldest available
timestamp." (SnapshotTooOld, 239), read_concern_mongod.cpp ("readConcern atClusterTime value must
not be greater than the current clusterTime", InvalidOptions 72), collection lookup ("Reading from
capped collections with readConcern snapshot is not supported", SnapshotUnavailable 246),
minSnapshotHistoryWindowInSeconds (default 300, at least 0).
"""

import threading
import time

import pytest
from bson import Timestamp
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern


@pytest.fixture
def coll(client):
    c = client.test.snap
    c.insert_many([{"_id": 1, "x": 11}, {"_id": 2, "x": 22}])
    return c


def snapshot_find(db, coll_name, at=None, **extra):
    rc = {"level": "snapshot"}
    if at is not None:
        rc["atClusterTime"] = at
    return db.command({"find": coll_name, "readConcern": rc, **extra})


def test_snapshot_session_reads_the_time_of_its_first_read(client, coll):
    with client.start_session(snapshot=True) as s:
        assert coll.find_one({"_id": 1}, session=s) == {"_id": 1, "x": 11}
        coll.update_one({"_id": 1}, {"$inc": {"x": 1}})
        coll.insert_one({"_id": 3, "x": 33})
        coll.delete_one({"_id": 2})
        # Later reads of the session: the data as it was at the first read.
        assert list(coll.find({}, session=s).sort("_id", 1)) == [
            {"_id": 1, "x": 11},
            {"_id": 2, "x": 22},
        ]
        assert coll.distinct("x", session=s) == [11, 22]
        assert coll.count_documents({}, session=s) == 2
        got = list(coll.aggregate([{"$group": {"_id": None, "t": {"$sum": "$x"}}}], session=s))
        assert got == [{"_id": None, "t": 33}]
    # Outside the session: the current data.
    assert coll.find_one({"_id": 1}) == {"_id": 1, "x": 12}
    assert coll.count_documents({}) == 2


def test_first_snapshot_read_names_its_time_and_later_reads_use_it(client, coll):
    db = client.test
    first = snapshot_find(db, "snap")
    at = first["cursor"]["atClusterTime"]
    assert isinstance(at, Timestamp)
    coll.update_one({"_id": 2}, {"$set": {"x": 0}})
    again = snapshot_find(db, "snap", at=at, filter={"_id": 2})
    assert again["cursor"]["firstBatch"] == [{"_id": 2, "x": 22}]
    assert again["cursor"]["atClusterTime"] == at
    d = db.command({"distinct": "snap", "key": "x", "readConcern": {"level": "snapshot", "atClusterTime": at}})
    assert d["values"] == [11, 22] and d["atClusterTime"] == at
    # A plain read names no time.
    assert "atClusterTime" not in db.command({"find": "snap"})["cursor"]


def test_read_at_an_operation_time_sees_exactly_the_writes_up_to_it(client, coll):
    db = client.test
    times = []
    for i in range(5):
        r = db.command({"update": "snap", "updates": [{"q": {"_id": 1}, "u": {"$set": {"x": i}}}]})
        times.append(r["operationTime"])
    for i, t in enumerate(times):
        got = snapshot_find(db, "snap", at=t, filter={"_id": 1})["cursor"]["firstBatch"]
        assert got == [{"_id": 1, "x": i}]


def test_get_more_reads_the_same_snapshot(client):
    c = client.test.many
    c.insert_many([{"_id": i} for i in range(50)])
    db = client.test
    first = snapshot_find(db, "many", batchSize=10)
    at = first["cursor"]["atClusterTime"]
    c.delete_many({})
    c.insert_one({"_id": "new"})
    ids = [d["_id"] for d in first["cursor"]["firstBatch"]]
    cursor_id = first["cursor"]["id"]
    while cursor_id:
        more = db.command({"getMore": cursor_id, "collection": "many", "batchSize": 15})
        ids += [d["_id"] for d in more["cursor"]["nextBatch"]]
        cursor_id = more["cursor"]["id"]
    assert ids == list(range(50))
    agg = db.command({
        "aggregate": "many", "pipeline": [{"$count": "n"}], "cursor": {},
        "readConcern": {"level": "snapshot", "atClusterTime": at},
    })
    assert agg["cursor"]["firstBatch"] == [{"n": 50}] and agg["cursor"]["atClusterTime"] == at


def test_snapshot_of_several_collections_is_one_point_in_time(client):
    """A marker collection and a user collection written together read consistently."""
    db = client.test
    marks, data = client["__mmm"].marks, db.data
    at = None
    for i in range(20):
        data.insert_one({"_id": i})
        r = client["__mmm"].command({"update": "marks", "updates": [
            {"q": {"_id": "count"}, "u": {"$set": {"n": i + 1}}, "upsert": True}]})
        if i == 9:
            at = r["operationTime"]
    rc = {"level": "snapshot", "atClusterTime": at}
    n = client["__mmm"].command({"find": "marks", "readConcern": rc})["cursor"]["firstBatch"][0]["n"]
    rows = db.command({"find": "data", "readConcern": rc, "batchSize": 1000})["cursor"]["firstBatch"]
    assert n == 10 and len(rows) == 10
    assert marks.find_one()["n"] == 20


def test_time_ahead_of_the_server_is_invalid_options(client, coll):
    now = client.admin.command("ping")["$clusterTime"]["clusterTime"]
    ahead = Timestamp(now.time + 3600, 1)
    with pytest.raises(OperationFailure) as e:
        snapshot_find(client.test, "snap", at=ahead)
    assert e.value.code == 72
    assert "must not be greater than the current clusterTime" in str(e.value)


def test_time_older_than_the_history_is_snapshot_too_old(client, coll):
    with pytest.raises(OperationFailure) as e:
        snapshot_find(client.test, "snap", at=Timestamp(1, 1))
    assert e.value.code == 239
    assert "is older than the oldest available timestamp" in str(e.value)


def test_history_window_is_a_parameter(client, coll):
    admin = client.admin
    assert admin.command({"getParameter": 1, "minSnapshotHistoryWindowInSeconds": 1})[
        "minSnapshotHistoryWindowInSeconds"] == 300
    with pytest.raises(OperationFailure) as e:
        admin.command({"setParameter": 1, "minSnapshotHistoryWindowInSeconds": -1})
    assert e.value.code == 2
    at = coll.database.command("ping")["operationTime"]
    was = admin.command({"setParameter": 1, "minSnapshotHistoryWindowInSeconds": 0})["was"]
    try:
        assert was == 300
        time.sleep(1.1)
        coll.insert_one({"_id": 9})
        coll.insert_one({"_id": 10})
        # With no window, only the newest version is kept: older times are gone.
        with pytest.raises(OperationFailure) as e:
            snapshot_find(client.test, "snap", at=at)
        assert e.value.code == 239
    finally:
        admin.command({"setParameter": 1, "minSnapshotHistoryWindowInSeconds": 300})


def test_snapshot_read_concern_is_refused_by_other_commands(client, coll):
    db = client.test
    rc = {"level": "snapshot"}
    for cmd in (
        {"insert": "snap", "documents": [{"_id": 5}]},
        {"count": "snap"},
        {"listCollections": 1},
    ):
        with pytest.raises(OperationFailure) as e:
            db.command({**cmd, "readConcern": rc})
        assert e.value.code == 72, cmd
    assert coll.find_one({"_id": 5}) is None
    with pytest.raises(OperationFailure) as e:
        db.command({"find": "snap", "readConcern": {"level": "snapshot", "atClusterTime": "x"}})
    assert e.value.code == 14


def test_snapshot_reads_of_capped_collections_are_unavailable(client):
    client.test.create_collection("capped", capped=True, size=4096)
    with pytest.raises(OperationFailure) as e:
        snapshot_find(client.test, "capped")
    assert e.value.code == 246


def test_snapshot_read_with_read_concern_option(client, coll):
    c = coll.with_options(read_concern=ReadConcern("snapshot"))
    assert c.find_one({"_id": 2}) == {"_id": 2, "x": 22}


def test_ping_is_answered_while_a_long_query_runs(mongo_server):
    """Ordering, not timing: pings sent while one long aggregation runs come back before it.

    Pings go out one after another for as long as the aggregation is in flight; only those sent
    well after it (0.1 s: it has reached the server by then) count. Under one global lock each
    would wait for the aggregation to finish.
    """
    import pymongo

    slow_client = pymongo.MongoClient(mongo_server.uri)
    ping_client = pymongo.MongoClient(mongo_server.uri)
    try:
        c = slow_client.test.big
        c.insert_many([{"_id": i, "v": i % 7} for i in range(60_000)])
        ping_client.admin.command("ping")  # connected before the race starts
        sent = threading.Event()
        done = threading.Event()

        def slow():
            sent.set()
            list(c.aggregate([
                {"$sort": {"v": -1, "_id": -1}},
                {"$group": {"_id": "$v", "n": {"$sum": 1}}},
            ]))
            done.set()

        t = threading.Thread(target=slow)
        t.start()
        sent.wait()
        start = time.monotonic()
        answered_during = 0
        while not done.is_set():
            before = time.monotonic()
            ping_client.admin.command("ping")
            if before - start >= 0.1 and not done.is_set():
                answered_during += 1
        t.join()
        # Under a global lock at most the one ping racing the reply's delivery would count.
        assert answered_during >= 5
    finally:
        slow_client.close()
        ping_client.close()
