"""The majority commit point: what reads and writes at "majority" see and wait for, and that
tailers and replicators read a source only up to it.

``MongoServer.hold_majority()`` freezes the embedded server's commit point, as a lagging
secondary would; a one-member ``mongod`` commits every write at once, so the tests that need a
frozen point skip there. Expected behaviour is mongod's: hello's ``lastWrite.majorityOpTime``
and replSetGetStatus's ``lastCommittedOpTime``/``readConcernMajorityOpTime`` name the commit
point, majority reads report it as their ``operationTime`` (jstests/replsets/
operation_time_read_and_write_concern.js in mongodb/mongo), ``w: "majority"`` times out with
WriteConcernFailed 64 and ``errInfo.wtimeout`` or, when ``maxTimeMS`` comes first, with
MaxTimeMSExpired 50 (the replsets jstest "timeout behavior of waiting for write concern as well as
its interaction with maxTimeMs"), and the implicit default write concern is ``{w: "majority"}``
(MongoDB 5.0+, "Implicit Default Write Concern" in the manual).
"""

from __future__ import annotations

import threading
import time

import pymongo
import pytest
from bson import Timestamp
from pymongo import CursorType
from pymongo.errors import OperationFailure, PyMongoError, WTimeoutError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

import mmm
from conftest import wait_for

MAJORITY = ReadConcern("majority")
W1 = WriteConcern(w=1)
#: Code 64's name: WriteConcernFailed up to 8.0, WriteConcernTimeout in later releases.
WRITE_CONCERN_TIMEOUT_NAMES = {"WriteConcernFailed", "WriteConcernTimeout"}


def holdable(server):
    """The server, when its majority commit point can be frozen; else the test is skipped."""
    if not hasattr(server, "hold_majority"):
        pytest.skip("hold_majority() needs the embedded server: a one-member mongod's commit point never lags")
    return server


def majority(coll):
    return coll.with_options(read_concern=MAJORITY)


def insert_w1(coll, doc):
    """Inserts with w:1 (a held point would make the implicit default, majority, wait)."""
    return coll.database.command("insert", coll.name, documents=[doc], writeConcern={"w": 1})


def ids(cursor):
    return sorted(d["_id"] for d in cursor)


class Background:
    """Runs ``func`` on a thread; ``result()`` re-raises what it raised."""

    def __init__(self, func):
        self.value = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func):
        try:
            self.value = func()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout: float = 10.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "still waiting"
        if self.error is not None:
            raise self.error
        return self.value


# -------------------------------------------------------------------------------------------------
# Without a hold (also on a real mongod): the point is the last write
# -------------------------------------------------------------------------------------------------


def test_without_a_hold_the_commit_point_is_the_last_write(mongo_server, client):
    coll = client.app.c
    reply = coll.database.command("insert", "c", documents=[{"_id": 1}], writeConcern={"w": "majority"})
    written = reply["operationTime"]
    assert "writeConcernError" not in reply

    def caught_up():
        last = client.admin.command("hello")["lastWrite"]
        return last["majorityOpTime"] == last["opTime"] and last["opTime"]["ts"] >= written

    wait_for(caught_up)
    status = client.admin.command("replSetGetStatus")["optimes"]
    assert status["lastCommittedOpTime"]["ts"] >= written
    assert status["readConcernMajorityOpTime"]["ts"] >= written
    found = coll.database.command("find", "c", readConcern={"level": "majority"})
    assert [d["_id"] for d in found["cursor"]["firstBatch"]] == [1]
    assert found["operationTime"] >= written
    assert ids(majority(coll).find()) == [1]


def test_after_cluster_time_in_the_future_is_refused(mongo_server, client):
    client.app.c.insert_one({"_id": 1})
    future = Timestamp(int(time.time()) + 100_000, 1)
    for level in ("local", "majority"):
        with pytest.raises(OperationFailure) as e:
            client.app.command("find", "c", readConcern={"level": level, "afterClusterTime": future})
        assert e.value.code == 72  # InvalidOptions
        assert "afterClusterTime" in str(e.value)


# -------------------------------------------------------------------------------------------------
# A held point: readers
# -------------------------------------------------------------------------------------------------


def test_majority_readers_see_the_frozen_point(mongo_server, client):
    server = holdable(mongo_server)
    coll = client.app.c
    before = coll.database.command("insert", "c", documents=[{"_id": 1, "v": "old"}])["operationTime"]
    server.hold_majority()
    assert server.majority_held
    after = insert_w1(coll, {"_id": 2})["operationTime"]
    coll.database.command("update", "c", updates=[{"q": {"_id": 1}, "u": {"$set": {"v": "new"}}}],
                          writeConcern={"w": 1})

    assert ids(coll.find()) == [1, 2]
    assert list(majority(coll).find()) == [{"_id": 1, "v": "old"}]
    assert majority(coll).count_documents({}) == 1
    assert majority(coll).distinct("v") == ["old"]
    assert [d["_id"] for d in majority(coll).aggregate([{"$match": {}}])] == [1]

    reply = client.app.command("find", "c", readConcern={"level": "majority"})
    assert reply["operationTime"] == before  # the commit point it read at
    assert reply["$clusterTime"]["clusterTime"] >= after  # the cluster time goes on
    assert client.app.command("find", "c")["operationTime"] >= after  # local: the last write

    hello = client.admin.command("hello")
    last = hello["lastWrite"]
    assert last["majorityOpTime"]["ts"] == before
    assert last["opTime"]["ts"] > before
    assert last["majorityWriteDate"].timestamp() == before.time  # seconds of the optime
    assert last["lastWriteDate"].timestamp() == last["opTime"]["ts"].time
    optimes = client.admin.command("replSetGetStatus")["optimes"]
    assert optimes["lastCommittedOpTime"]["ts"] == before
    assert optimes["readConcernMajorityOpTime"]["ts"] == before
    assert optimes["appliedOpTime"]["ts"] == last["opTime"]["ts"]
    assert optimes["readConcernMajorityWallTime"] <= optimes["lastAppliedWallTime"]

    oplog = majority(client.local["oplog.rs"])
    assert oplog.find_one(sort=[("$natural", -1)])["ts"] == before

    server.release_majority()
    assert not server.majority_held
    assert list(majority(coll).find(sort=[("_id", 1)])) == [{"_id": 1, "v": "new"}, {"_id": 2}]
    last = client.admin.command("hello")["lastWrite"]
    assert last["majorityOpTime"] == last["opTime"]


def test_a_majority_tailable_cursor_waits_for_the_release(mongo_server, client):
    server = holdable(mongo_server)
    oplog = majority(client.local["oplog.rs"])
    start = oplog.find_one(sort=[("$natural", -1)])["ts"]
    server.hold_majority()
    written = insert_w1(client.app.c, {"_id": 1})["operationTime"]
    query = {"ts": {"$gt": start}, "ns": "app.c", "op": "i"}
    cursor = oplog.find(query, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(300)

    def poll():
        try:
            return next(cursor)
        except StopIteration:
            return None

    assert poll() is None
    assert poll() is None  # awaitData getMores find nothing past the point
    assert cursor.alive
    waiting = Background(poll)
    time.sleep(0.1)
    server.release_majority()  # wakes the waiting getMore, as mongod signals oplog waiters
    entry = waiting.result() or poll()
    assert entry["ts"] == written and entry["o"] == {"_id": 1}
    cursor.close()


def test_after_cluster_time_majority_read_waits_for_the_point(mongo_server, client):
    server = holdable(mongo_server)
    server.hold_majority()
    written = insert_w1(client.app.c, {"_id": 1})["operationTime"]
    rc = {"level": "majority", "afterClusterTime": written}
    with pytest.raises(OperationFailure) as e:
        client.app.command("find", "c", readConcern=rc, maxTimeMS=200)
    assert e.value.code == 50  # MaxTimeMSExpired
    # A local read of the same time does not wait: the write is applied.
    local = client.app.command("find", "c", readConcern={"level": "local", "afterClusterTime": written})
    assert [d["_id"] for d in local["cursor"]["firstBatch"]] == [1]
    waiting = Background(lambda: client.app.command("find", "c", readConcern=rc))
    time.sleep(0.3)
    assert not waiting.done()
    server.release_majority()
    reply = waiting.result()
    assert [d["_id"] for d in reply["cursor"]["firstBatch"]] == [1]
    assert reply["operationTime"] >= written


# -------------------------------------------------------------------------------------------------
# A held point: writers
# -------------------------------------------------------------------------------------------------


def test_w_majority_write_is_applied_at_once_and_acknowledged_on_release(mongo_server, client):
    server = holdable(mongo_server)
    server.hold_majority()
    coll = client.app.c.with_options(write_concern=WriteConcern("majority"))
    waiting = Background(lambda: coll.insert_one({"_id": 1}))
    wait_for(lambda: client.app.c.find_one({"_id": 1}) is not None)  # applied, visible locally
    time.sleep(0.3)
    assert not waiting.done()
    assert majority(client.app.c).find_one({"_id": 1}) is None
    server.release_majority()
    assert waiting.result().inserted_id == 1


def test_w_majority_wtimeout_reports_mongods_write_concern_error(mongo_server, client):
    server = holdable(mongo_server)
    server.hold_majority()
    coll = client.app.c.with_options(write_concern=WriteConcern("majority", wtimeout=200))
    started = time.monotonic()
    with pytest.raises(WTimeoutError) as e:
        coll.insert_one({"_id": 1})
    assert time.monotonic() - started < 5
    wce = e.value.details
    assert e.value.code == 64 and wce["codeName"] in WRITE_CONCERN_TIMEOUT_NAMES
    assert wce["errmsg"] == "waiting for replication timed out"
    assert wce["errInfo"]["wtimeout"] is True
    assert wce["errInfo"]["writeConcern"]["w"] == "majority"
    assert wce["errInfo"]["writeConcern"]["wtimeout"] == 200
    assert wce["errInfo"]["writeConcern"]["provenance"] == "clientSupplied"
    assert client.app.c.find_one({"_id": 1}) == {"_id": 1}  # the write itself is done

    # A write that fails (duplicate key) still waits for the last write to be majority committed.
    reply = client.app.command("insert", "c", documents=[{"_id": 1}],
                               writeConcern={"w": "majority", "wtimeout": 100})
    assert reply["writeErrors"][0]["code"] == 11000
    assert reply["writeConcernError"]["code"] == 64

    # maxTimeMS shorter than wtimeout: MaxTimeMSExpired.
    reply = client.app.command("insert", "c", documents=[{"_id": 2}], maxTimeMS=100,
                               writeConcern={"w": "majority", "wtimeout": 10_000})
    assert reply["writeConcernError"]["code"] == 50
    assert reply["writeConcernError"]["codeName"] == "MaxTimeMSExpired"


def test_the_implicit_default_write_concern_is_majority(mongo_server, client):
    server = holdable(mongo_server)
    server.hold_majority()
    reply = client.app.command("insert", "c", documents=[{"_id": 1}], maxTimeMS=150)
    wce = reply["writeConcernError"]
    assert wce["code"] == 50
    assert wce["errInfo"]["writeConcern"]["w"] == "majority"
    assert wce["errInfo"]["writeConcern"]["provenance"] == "implicitDefault"
    started = time.monotonic()
    assert "writeConcernError" not in insert_w1(client.app.c, {"_id": 2})  # w:1 does not wait
    assert time.monotonic() - started < 2
    server.release_majority()
    assert "writeConcernError" not in client.app.command("insert", "c", documents=[{"_id": 3}])


def test_a_transaction_committed_with_w_majority_under_a_held_point(mongo_server, client):
    server = holdable(mongo_server)
    client.app.c.insert_one({"_id": 0})
    server.hold_majority()
    options = dict(write_concern=WriteConcern("majority", wtimeout=200))
    with client.start_session() as s:
        s.start_transaction(**options)
        client.app.c.insert_one({"_id": 1}, session=s)
        with pytest.raises(PyMongoError) as e:
            s.commit_transaction()
    assert getattr(e.value, "code", None) == 64
    assert e.value.has_error_label("UnknownTransactionCommitResult")
    assert client.app.c.find_one({"_id": 1}) == {"_id": 1}  # committed; only the ack timed out
    assert majority(client.app.c).find_one({"_id": 1}) is None

    # Without wtimeout the commit's acknowledgement waits for the release; other clients go on.
    s = client.start_session()
    s.start_transaction(write_concern=WriteConcern("majority"))
    client.app.c.insert_one({"_id": 2}, session=s)
    waiting = Background(s.commit_transaction)
    wait_for(lambda: client.app.c.find_one({"_id": 2}) is not None)
    assert insert_w1(client.app.c, {"_id": 3})["ok"] == 1
    time.sleep(0.2)
    assert not waiting.done()
    server.release_majority()
    waiting.result()
    s.end_session()
    assert ids(majority(client.app.c).find()) == [0, 1, 2, 3]


# -------------------------------------------------------------------------------------------------
# Tailers and replicators read sources at majority
# -------------------------------------------------------------------------------------------------


def test_a_held_write_is_neither_replicated_nor_triggered_until_release(pair):
    a, b, ca, cb = pair
    holdable(a)
    seen = []
    tailer = mmm.Tailer(a.uri)
    tailer.register("app.c", "i", lambda op: seen.append(op["o"]["_id"]))
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    with tailer, mmm.Replicator(servers, [("a/app.*", "b/app.*")]) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.c.insert_one({"_id": 1})
        wait_for(lambda: cb.app.c.find_one({"_id": 1}) is not None and seen == [1])
        a.hold_majority()
        insert_w1(ca.app.c, {"_id": 2})
        time.sleep(1.5)  # several awaitData rounds of both readers
        assert cb.app.c.find_one({"_id": 2}) is None
        assert seen == [1]
        a.release_majority()
        wait_for(lambda: cb.app.c.find_one({"_id": 2}) is not None and seen == [1, 2])
    assert ids(cb.app.c.find()) == [1, 2]


def test_a_held_destination_holds_the_links_commit_until_release(pair):
    a, b, ca, cb = pair
    holdable(b)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    r = mmm.Replicator(servers, [("a/app.*", "b/app.*")])
    r.start()
    try:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.c.insert_one({"_id": 1})
        wait_for(lambda: cb.app.c.find_one({"_id": 1}) is not None)
        b.hold_majority()
        ca.app.c.insert_one({"_id": 2})
        # The batch commits on b (w: "majority"): applied at once, acknowledged on release.
        wait_for(lambda: cb.app.c.find_one({"_id": 2}) is not None)
        assert majority(cb.app.c).find_one({"_id": 2}) is None
        b.release_majority()
        ca.app.c.insert_one({"_id": 3})
        wait_for(lambda: cb.app.c.find_one({"_id": 3}) is not None)
        # Held again with a commit waiting: stopping the replicator does not hang on it.
        b.hold_majority()
        ca.app.c.insert_one({"_id": 4})
        wait_for(lambda: cb.app.c.find_one({"_id": 4}) is not None)
    finally:
        started = time.monotonic()
        r.stop()
        r.join()
        assert time.monotonic() - started < 15
    b.release_majority()
    assert ids(majority(cb.app.c).find()) == [1, 2, 3, 4]


# -------------------------------------------------------------------------------------------------
# Hostile use
# -------------------------------------------------------------------------------------------------


def test_release_without_hold_and_hold_twice(mongo_server, client):
    server = holdable(mongo_server)
    server.release_majority()  # nothing held: nothing happens
    assert not server.majority_held
    client.app.c.insert_one({"_id": 1})
    server.hold_majority()
    insert_w1(client.app.c, {"_id": 2})
    server.hold_majority()  # still frozen where the first hold put it
    assert ids(majority(client.app.c).find()) == [1]
    server.release_majority()
    assert ids(majority(client.app.c).find()) == [1, 2]
    server.release_majority()
    assert not server.majority_held


def test_stop_while_held_ends_every_wait(mongo_server):
    server = holdable(mongo_server)
    c = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=1000, retryWrites=False, retryReads=False)
    c.app.c.insert_one({"_id": 0})
    server.hold_majority()
    written = insert_w1(c.app.c, {"_id": 1})["operationTime"]
    writer = Background(lambda: c.app.c.with_options(write_concern=WriteConcern("majority")).insert_one({"_id": 2}))
    reader = Background(lambda: c.app.command(
        "find", "c", readConcern={"level": "majority", "afterClusterTime": written}))
    time.sleep(0.3)
    assert not writer.done() and not reader.done()
    server.stop()
    for waiting in (writer, reader):
        with pytest.raises(PyMongoError):
            waiting.result(timeout=10)
    c.close()
