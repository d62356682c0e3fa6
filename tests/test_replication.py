"""Multi-master replication between replica sets, through the fixtures."""

from __future__ import annotations

import time

import gridfs
import pymongo
import pytest

import mmm
from conftest import wait_for


def everything(client, db="app"):
    return {name: sorted(client[db][name].find(), key=lambda d: str(d["_id"])) for name in client[db].list_collection_names()}


def wait_identical(clients, db="app", timeout=20.0):
    def same():
        snapshots = [everything(c, db) for c in clients]
        return all(s == snapshots[0] for s in snapshots[1:])

    wait_for(same, timeout=timeout)
    return everything(clients[0], db)


def bidirectional(a, b, **kwargs):
    return mmm.Replicator(
        servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        links=[("a/app.*", "b/app.*"), ("b/app.*", "a/app.*")],
        **kwargs,
    )


def user_entries(client, db="app"):
    """Oplog entries of user writes in ``db``, with transactions unpacked."""
    out = []
    for e in client.local["oplog.rs"].find():
        if e["op"] == "c" and "applyOps" in e["o"]:
            out.extend(op for op in e["o"]["applyOps"] if op["ns"].startswith(db + ".") and op["op"] in "iud")
        elif e["op"] in "iud" and e["ns"].startswith(db + "."):
            out.append(e)
    return out


def test_bidirectional_insert_update_delete(pair):
    a, b, ca, cb = pair
    with bidirectional(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.orders.insert_one({"_id": 1, "qty": 1})
        cb.app.orders.insert_one({"_id": 2, "qty": 2})
        wait_for(lambda: cb.app.orders.count_documents({}) == 2 and ca.app.orders.count_documents({}) == 2)
        ca.app.orders.update_one({"_id": 2}, {"$inc": {"qty": 10}, "$push": {"log": "a"}})
        cb.app.orders.update_one({"_id": 1}, {"$set": {"note": "from b"}})
        cb.app.orders.delete_one({"_id": 2})
        data = wait_identical([ca, cb])
    assert data == {"orders": [{"_id": 1, "qty": 1, "note": "from b"}]}


def test_no_echo_each_write_applied_once_per_remote(pair):
    a, b, ca, cb = pair
    with bidirectional(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        for i in range(20):
            ca.app.items.insert_one({"_id": f"a{i}"})
            cb.app.items.insert_one({"_id": f"b{i}"})
        wait_for(lambda: ca.app.items.count_documents({}) == 40)
        ca.app.items.update_many({}, {"$set": {"seen": True}})
        wait_identical([ca, cb])
        time.sleep(1.0)  # time for any echo to show up
    for client in (ca, cb):
        entries = user_entries(client)
        inserts = [e["o"]["_id"] for e in entries if e["op"] == "i"]
        assert sorted(inserts) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
        updates = [e["o2"]["_id"] for e in entries if e["op"] == "u"]
        assert len(updates) == 40 and len(set(updates)) == 40
    assert not any("__mmm" in doc for doc in ca.app.items.find())


def test_field_mode_tags_documents_with_their_origin_without_echo(pair):
    a, b, ca, cb = pair
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [mmm.Link("a/app.*", "b/app.*", marker="field"), mmm.Link("b/app.*", "a/app.*", marker="field")]
    with mmm.Replicator(servers, links) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.items.insert_one({"_id": 1, "n": 0, "tags": ["x"]})
        wait_for(lambda: cb.app.items.find_one({"_id": 1}) is not None)
        assert cb.app.items.find_one({"_id": 1})["__mmm"]["origin"] == "A"
        assert "__mmm" not in ca.app.items.find_one({"_id": 1})  # the user's own document is untouched
        cb.app.items.update_one({"_id": 1}, {"$inc": {"n": 1}, "$push": {"tags": "y"}})
        wait_for(lambda: ca.app.items.find_one({"_id": 1}).get("n") == 1)
        on_a = ca.app.items.find_one({"_id": 1})
        assert on_a["tags"] == ["x", "y"] and on_a["__mmm"]["origin"] == "B"
        ca.app.items.replace_one({"_id": 1}, {"n": 5})
        wait_for(lambda: cb.app.items.find_one({"_id": 1}).get("n") == 5)
        assert cb.app.items.find_one({"_id": 1})["__mmm"]["origin"] == "A"
        ca.app.items.delete_one({"_id": 1})
        wait_for(lambda: cb.app.items.count_documents({}) == 0)
        time.sleep(1.0)  # time for any echo to show up
    # Each server logged each write once: its own, or the other's applied once; never bounced.
    for client in (ca, cb):
        kinds = [e["op"] for e in user_entries(client)]
        assert kinds == ["i", "u", "u", "d"]


def test_three_server_star_forwards_through_the_hub(mongo_server_factory):
    hub, x, y = (mongo_server_factory() for _ in range(3))
    clients = [pymongo.MongoClient(s.uri) for s in (hub, x, y)]
    links = [
        mmm.Link("x/app.*", "hub/app.*"), mmm.Link("hub/app.*", "x/app.*", forward=True),
        mmm.Link("y/app.*", "hub/app.*"), mmm.Link("hub/app.*", "y/app.*", forward=True),
    ]
    servers = {"hub": {"id": "H", "uri": hub.uri}, "x": {"id": "X", "uri": x.uri}, "y": {"id": "Y", "uri": y.uri}}
    with mmm.Replicator(servers, links):
        clients[1].app.t.insert_one({"_id": "from-x"})
        clients[2].app.t.insert_one({"_id": "from-y"})
        clients[0].app.t.insert_one({"_id": "from-hub"})
        data = wait_identical(clients)
        time.sleep(1.0)
    assert [d["_id"] for d in data["t"]] == ["from-hub", "from-x", "from-y"]
    for c in clients:
        inserts = [e["o"]["_id"] for e in user_entries(c) if e["op"] == "i"]
        assert sorted(inserts) == ["from-hub", "from-x", "from-y"]  # each once, no loops


def test_topology_with_two_paths_is_rejected(mongo_server_factory):
    s = {n: {"id": n, "uri": "mongodb://127.0.0.1:1/?replicaSet=rs0"} for n in "abc"}
    with pytest.raises(ValueError, match="two paths"):
        mmm.Replicator(s, [mmm.Link("a/app.*", "b/app.*", forward=True), mmm.Link("b/app.*", "c/app.*", forward=True),
                           mmm.Link("a/app.*", "c/app.*")])
    with pytest.raises(ValueError, match="unknown server"):
        mmm.Replicator(s, [("a/app.*", "z/app.*")])
    with pytest.raises(ValueError, match="server/db.collection"):
        mmm.Replicator(s, [("a.app.x", "b/app.x")])


def test_transactions_and_v2_array_updates_replicate_exactly(pair):
    a, b, ca, cb = pair
    ca.app.docs.insert_one({"_id": 1, "arr": [1, 2, 3, 4, 5], "nested": {"x": {"y": 1}}, "tags": ["a"]})
    with mmm.Replicator({"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
                        [mmm.Link("a/app.*", "b/app.*", initial_sync=True)]):
        wait_for(lambda: cb.app.docs.count_documents({}) == 1)
        ca.app.docs.update_one({"_id": 1}, {"$pop": {"arr": 1}})
        ca.app.docs.update_one({"_id": 1}, {"$set": {"arr.1": 20, "nested.x.z": 2}, "$unset": {"nested.x.y": ""}})
        ca.app.docs.update_one({"_id": 1}, {"$push": {"tags": {"$each": ["b", "c"]}}})
        ca.app.docs.update_one({"_id": 1}, {"$pull": {"arr": 3}})
        with ca.start_session() as s:
            with s.start_transaction():
                ca.app.docs.insert_one({"_id": 2, "v": 1}, session=s)
                ca.app.docs.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=s)
                ca.app.accounts.insert_one({"_id": "acct"}, session=s)
        wait_identical([ca, cb])
    assert cb.app.docs.find_one({"_id": 1}) == ca.app.docs.find_one({"_id": 1})
    txn = [e for e in cb.local["oplog.rs"].find({"op": "c", "ns": "admin.$cmd"}) if any(op["ns"] == "app.accounts" for op in e["o"]["applyOps"])]
    assert len(txn) == 1, "the source transaction is applied in one destination transaction"


def test_gridfs_files_replicate(pair):
    a, b, ca, cb = pair
    payload = bytes(range(256)) * 4000  # ~1 MB: four 255 KB chunks
    with bidirectional(a, b):
        file_id = gridfs.GridFS(ca.app).put(payload, filename="frame-0001.png")
        wait_for(lambda: cb.app["fs.files"].count_documents({}) == 1 and cb.app["fs.chunks"].count_documents({}) == 4)
    assert gridfs.GridFS(cb.app).get(file_id).read() == payload


def test_restart_resumes_from_the_checkpoint_without_duplicates(pair):
    a, b, ca, cb = pair
    link = [("a/app.*", "b/app.*")]
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    with mmm.Replicator(servers, link):
        ca.app.log.insert_many([{"_id": i} for i in range(50)])
        wait_for(lambda: cb.app.log.count_documents({}) == 50)
    ca.app.log.insert_many([{"_id": i} for i in range(50, 80)])  # while replication is down
    ca.app.log.update_one({"_id": 3}, {"$inc": {"n": 1}})
    with mmm.Replicator(servers, link):
        wait_for(lambda: cb.app.log.count_documents({}) == 80)
        wait_for(lambda: cb.app.log.find_one({"_id": 3}).get("n") == 1)
        time.sleep(0.5)
    assert cb.app.log.find_one({"_id": 3}) == {"_id": 3, "n": 1}  # applied once, not twice
    inserts = [e["o"]["_id"] for e in user_entries(cb) if e["op"] == "i"]
    assert sorted(inserts) == list(range(80))


def test_outage_then_catch_up(pair):
    a, b, ca, cb = pair
    with bidirectional(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        b.pause(2.0)
        for i in range(200):
            ca.app.frames.insert_one({"_id": i})
        a.drop_connections()
        for i in range(200, 300):
            ca.app.frames.insert_one({"_id": i})
        data = wait_identical([ca, cb], timeout=30)
    assert len(data["frames"]) == 300


def test_status_shows_lag_while_the_destination_stalls_and_none_after(pair):
    a, b, ca, cb = pair
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    with mmm.Replicator(servers, [("a/app.*", "b/app.*")]) as r:
        wait_for(lambda: r.status()[0]["state"] == "running")
        b.pause(1.5)
        ca.app.frames.insert_many([{"_id": i} for i in range(500)])
        wait_for(lambda: r.status()[0]["lag_ops"] > 0)
        time.sleep(0.5)
        stalled = r.status()[0]
        assert stalled["lag_seconds"] >= 0.3 and stalled["ops_applied"] < 500
        wait_for(lambda: cb.app.frames.count_documents({}) == 500, timeout=20)
        wait_for(lambda: r.status()[0]["ops_applied"] == 500)
        caught_up = r.status()[0]
    assert caught_up["lag_ops"] == 0 and caught_up["lag_seconds"] == 0.0


def test_initial_sync_under_concurrent_writes(pair):
    a, b, ca, cb = pair
    ca.app.big.insert_many([{"_id": i, "v": 0} for i in range(3000)])
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    with mmm.Replicator(servers, [mmm.Link("a/app.*", "b/app.*", initial_sync=True)]) as r:
        for i in range(0, 3000, 7):
            ca.app.big.update_one({"_id": i}, {"$inc": {"v": 1}})
        ca.app.big.insert_many([{"_id": i, "v": 0} for i in range(3000, 3100)])
        ca.app.big.delete_many({"_id": {"$lt": 10}})
        wait_identical([ca, cb], timeout=30)
        status = r.status()[0]
    assert status["initial_sync"][0] >= 3000
    assert cb.app.big.count_documents({}) == 3090


def test_conflicts_are_detected_on_both_sides(pair):
    a, b, ca, cb = pair
    seen = []
    ca.app.results.insert_one({"_id": "r1", "verdict": "pending"})
    cb.app.results.insert_one({"_id": "r1", "verdict": "pending"})
    ca.app.results.insert_one({"_id": "r2", "verdict": "pending"})
    cb.app.results.insert_one({"_id": "r2", "verdict": "pending"})
    r = bidirectional(a, b, on_conflict=seen.append)
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
    # Both sides edit r1 while replication is down; only one side edits r2.
    ca.app.results.update_one({"_id": "r1"}, {"$set": {"verdict": "pass"}})
    cb.app.results.update_one({"_id": "r1"}, {"$set": {"verdict": "fail"}})
    cb.app.results.update_one({"_id": "r2"}, {"$set": {"verdict": "fail"}})
    with r:
        wait_for(lambda: len(seen) >= 2, timeout=20)
        time.sleep(1.0)
    ids = sorted((c.server, c.id) for c in seen)
    assert ids == [("A", "r1"), ("B", "r1")]
    assert all(c.namespace == "app.results" for c in seen)
    assert sum(s["conflicts"] for s in r.status()) == 2


def test_rollover_stops_the_link_with_a_remedy(mongo_server_factory):
    a = mongo_server_factory(oplog_size_mb=1)
    b = mongo_server_factory()
    ca = pymongo.MongoClient(a.uri)
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [mmm.Link("a/app.*", "b/app.*", on_rollover="stop")]
    with mmm.Replicator(servers, links):
        ca.app.x.insert_one({"_id": 0})
        wait_for(lambda: pymongo.MongoClient(b.uri).app.x.count_documents({}) == 1)
    ca.app.x.insert_many([{"blob": "z" * 10_000} for _ in range(300)])  # the oplog wraps
    r = mmm.Replicator(servers, links)
    with pytest.raises(mmm.ReplicationError, match="resync"):
        r.run()
    assert r.status()[0]["state"] == "failed"


def test_not_a_replica_set_or_unreachable_names_the_server(pair):
    a, b, ca, cb = pair
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": "mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300"}}
    r = mmm.Replicator(servers, [("a/app.*", "b/app.*")])
    r.start()
    wait_for(lambda: r.status()[0]["state"] == "retrying" and r.status()[0]["last_error"])
    r.stop()
    r.join()


def test_stored_links_of_an_unreachable_server_are_skipped_with_a_warning(pair, caplog):
    a, b, ca, cb = pair
    down = "mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300"
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}, "c": {"id": "C", "uri": down}}
    mmm.Replicator(servers).replicate("a/app.x", "b/app.x")
    with caplog.at_level("WARNING", logger="mmm.replication"):
        r = mmm.Replicator(servers, [("b/app.y", "c/app.y")], load_stored_links=True)
    assert [(l.src, l.dst) for l in r.links] == [("b/app.y", "c/app.y"), ("a/app.x", "b/app.x")]
    assert any("stored on server c" in m and "unreachable" in m for m in caplog.messages)


def test_ddl_replicates_when_enabled_without_echo(pair):
    a, b, ca, cb = pair
    r = mmm.Replicator(
        {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        [mmm.Link("a/app.*", "b/app.*", ops="iudc"), mmm.Link("b/app.*", "a/app.*", ops="iudc")],
    )
    with r:
        ca.app.create_collection("events", capped=True, size=1 << 20)
        ca.app.people.create_index("email", unique=True)
        ca.app.people.insert_one({"_id": 1, "email": "a@x"})
        wait_for(lambda: "events" in cb.app.list_collection_names() and cb.app.people.count_documents({}) == 1)
        assert cb.app.events.options().get("capped") is True
        assert "email_1" in cb.app.people.index_information()
        assert cb.app.people.index_information()["email_1"].get("unique") is True
        cb.app.people.drop_index("email_1")  # from the other side
        wait_for(lambda: "email_1" not in ca.app.people.index_information())
        ca.app.people.rename("staff")
        wait_for(lambda: "staff" in cb.app.list_collection_names() and "people" not in cb.app.list_collection_names())
        ca.app.events.drop()
        wait_for(lambda: "events" not in cb.app.list_collection_names())
        time.sleep(1.0)  # time for an echo to show up
    for client in (ca, cb):
        creates = [e for e in client.local["oplog.rs"].find({"op": "c", "o.create": "events"})]
        assert len(creates) == 1, "each server created the collection once: no DDL echo"
        drops = [e for e in client.local["oplog.rs"].find({"op": "c", "o.drop": "events"})]
        assert len(drops) == 1
    assert sorted(ca.app.list_collection_names()) == sorted(cb.app.list_collection_names())

    def announced_ddl(client):
        """DDL commands mmm ran on this server (each announced by a checkpoint write)."""
        out = []
        for e in client.local["oplog.rs"].find({"op": "c", "ns": "admin.$cmd"}):
            for op in e["o"].get("applyOps", []):
                if op["ns"] == "__mmm.checkpoints" and "pending_ddl" in op["o"]:
                    out.append(next(iter(op["o"]["pending_ddl"]["body"])))
        return out

    # A received only the index drop made on B; B received A's DDL, and nothing bounced back.
    assert announced_ddl(ca) == ["dropIndexes"]
    assert set(announced_ddl(cb)) == {"create", "createIndexes", "renameCollection", "drop"}


def test_ddl_is_not_replicated_by_default(pair):
    a, b, ca, cb = pair
    with bidirectional(a, b):
        ca.app.people.create_index("email")
        ca.app.people.insert_one({"_id": 1})
        wait_for(lambda: cb.app.people.count_documents({}) == 1)
        time.sleep(0.5)
    assert "email_1" not in cb.app.people.index_information()


def test_ddl_on_both_sides_at_once_reaches_the_other_side(pair):
    """While one side applies a replicated DDL command, the other side's application creates
    indexes on other collections of the same database: every index reaches both sides (a
    replicated DDL command covers only the namespaces it changes, not its whole database)."""
    import threading

    a, b, ca, cb = pair
    r = mmm.Replicator(
        {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
        [mmm.Link("a/app.*", "b/app.*", ops="iudc"), mmm.Link("b/app.*", "a/app.*", ops="iudc")],
    )
    rounds = 40
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))

        def create(client, side):
            for i in range(rounds):
                client.app[f"{side}{i}"].create_index(f"k{i}")

        threads = [threading.Thread(target=create, args=(c, s)) for c, s in ((ca, "a"), (cb, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def indexes(client):
            return {n: sorted(i["name"] for i in client.app[n].list_indexes())
                    for n in client.app.list_collection_names()}

        expected = {f"{s}{i}": ["_id_", f"k{i}_1"] for s in "ab" for i in range(rounds)}
        wait_for(lambda: indexes(ca) == expected and indexes(cb) == expected, timeout=30)


def test_an_idle_pair_writes_nothing_to_its_oplogs(pair):
    """Replication of servers where nothing happens adds nothing to their oplogs: the oplog is
    the window an outage may last, and bookkeeping of bookkeeping would eat it."""
    a, b, ca, cb = pair
    with bidirectional(a, b) as r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()))
        ca.app.c.insert_one({"_id": 1})
        wait_identical([ca, cb])
        time.sleep(1.5)  # the last writes' bookkeeping settles
        before = [c.local["oplog.rs"].count_documents({}) for c in (ca, cb)]
        time.sleep(3)
        after = [c.local["oplog.rs"].count_documents({}) for c in (ca, cb)]
    assert after == before
