"""The replicator's retries, driven by fail points on the destination.

The destination answers a retriable error (ShutdownInProgress 91, PrimarySteppedDown 189,
NotWritablePrimary 10107, InterruptedAtShutdown 11600) or closes the connection while the link
commits a batch; the link must catch up with identical data and apply every write exactly once.
Skipped when the servers under test have no test commands.
"""

from __future__ import annotations

import pymongo
import pytest

import mmm
from conftest import wait_for
from test_replication import everything, user_entries, wait_identical

#: The replicator's client for server "b" names itself so (src/py/replicator.rs).
DESTINATION_APP = "mmm link b"


def one_way(a, b):
    return mmm.Replicator(
        servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        links=[("a/app.*", "b/app.*")],
    )


@pytest.fixture
def armed_pair(pair):
    a, b, ca, cb = pair
    if not cb.admin.command("getParameter", "*").get("enableTestCommands"):
        pytest.skip("the server under test has no test commands")
    yield pair
    cb.admin.command("configureFailPoint", "failCommand", mode="off")


def write_batch(client, start, n):
    client.app.items.insert_many([{"_id": i, "n": i} for i in range(start, start + n)])
    client.app.items.update_many({"_id": {"$gte": start}}, {"$inc": {"n": 1000}})


@pytest.mark.parametrize(
    "failure",
    [
        {"errorCode": 91, "failCommands": ["insert", "update"]},
        {"errorCode": 189, "failCommands": ["commitTransaction"]},
        {"errorCode": 10107, "failCommands": ["insert", "update", "commitTransaction"]},
        {"errorCode": 11600, "failCommands": ["update"]},
        {"closeConnection": True, "failCommands": ["commitTransaction"]},
        {"closeConnection": True, "failCommands": ["update"]},
    ],
    ids=["91-statements", "189-commit", "10107-mixed", "11600-statements", "close-at-commit", "close-mid-batch"],
)
def test_link_catches_up_after_destination_failures(armed_pair, failure):
    a, b, ca, cb = armed_pair
    with one_way(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        write_batch(ca, 0, 20)
        wait_identical([ca, cb])
        # The next batches meet the failures; after them the link goes on by itself.
        armed = cb.admin.command(
            {"configureFailPoint": "failCommand", "mode": {"times": 4}, "data": {**failure, "appName": DESTINATION_APP}}
        )
        assert armed["ok"] == 1
        write_batch(ca, 20, 30)
        data = wait_identical([ca, cb], timeout=60)
        fired = cb.admin.command("configureFailPoint", "failCommand", mode="off")["count"]
    assert fired == 4, "the failures were not met"
    assert data == everything(ca) and len(data["items"]) == 50
    assert all(d["n"] == d["_id"] + 1000 for d in data["items"])
    # Exactly once: one insert and one update per document in the destination's oplog.
    entries = user_entries(cb)
    inserts = [e["o"]["_id"] for e in entries if e["op"] == "i"]
    updates = [e["o2"]["_id"] for e in entries if e["op"] == "u"]
    assert sorted(inserts) == list(range(50))
    assert sorted(updates) == list(range(50))


def test_fail_points_of_the_destination_leave_other_clients_alone(armed_pair):
    a, b, ca, cb = armed_pair
    cb.admin.command(
        {"configureFailPoint": "failCommand", "mode": "alwaysOn",
         "data": {"errorCode": 91, "failCommands": ["insert"], "appName": DESTINATION_APP}}
    )
    cb.app.other.insert_one({"_id": 1})
    with pymongo.MongoClient(b.uri, appname=DESTINATION_APP, retryWrites=False) as victim:
        with pytest.raises(pymongo.errors.PyMongoError):
            victim.app.other.insert_one({"_id": 2})


def test_batches_too_slow_for_the_transaction_lifetime_shrink_until_they_fit(armed_pair, caplog):
    """Every insert of the link's transactions is slowed so that a full batch outlives the
    destination's transactionLifetimeLimitSeconds: the destination ends such transactions. The
    link must send smaller batches until they fit (sending the same batch again never ends)."""
    a, b, ca, cb = armed_pair
    with one_way(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
    ca.app.items.insert_many([{"_id": i} for i in range(6000)])
    limit = cb.admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)["transactionLifetimeLimitSeconds"]
    cb.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    try:
        # A batch of 5,000 inserts is 6 insert commands (documents, then rows by 1,000): 3.6 s,
        # past the 2 s limit even where the server looks for expired transactions only every
        # second (mongod: every half limit); the smallest batch, 2 commands, takes 1.2 s.
        cb.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {
            "failCommands": ["insert"], "blockConnection": True, "blockTimeMS": 600, "appName": DESTINATION_APP}})
        with caplog.at_level("WARNING", logger="mmm"), one_way(a, b):
            wait_for(lambda: cb.app.items.estimated_document_count() == 6000, timeout=120)
    finally:
        cb.admin.command("configureFailPoint", "failCommand", mode="off")
        cb.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=limit)
    assert any("batches now hold at most" in m for m in caplog.messages), caplog.messages
    inserts = [e["o"]["_id"] for e in user_entries(cb) if e["op"] == "i"]
    assert sorted(inserts) == list(range(6000))
