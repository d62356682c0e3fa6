"""Oplog triggers: Python callables registered on (namespace, operations)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pymongo
import pytest
from bson import Timestamp

import mmm
from conftest import wait_for


def collect(tailer, ns="*", ops="*"):
    seen = []
    tailer.register(ns, ops, seen.append)
    return seen


def test_insert_update_delete_reach_triggers_in_oplog_order(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    seen = collect(tailer, "shop.orders", "iud")
    with tailer:
        time.sleep(0.3)
        client.shop.orders.insert_one({"_id": 1, "qty": 1})
        client.shop.orders.update_one({"_id": 1}, {"$inc": {"qty": 2}})
        client.shop.orders.replace_one({"_id": 1}, {"qty": 9})
        client.shop.orders.delete_one({"_id": 1})
        wait_for(lambda: len(seen) == 4)
    assert [op["op"] for op in seen] == ["i", "u", "u", "d"]
    assert seen[0]["o"] == {"_id": 1, "qty": 1}
    assert seen[1]["o"] == {"$v": 2, "diff": {"u": {"qty": 3}}}
    assert seen[2]["o"] == {"_id": 1, "qty": 9}
    assert seen[3]["o"] == {"_id": 1}
    ts = [op["ts"] for op in seen]
    assert ts == sorted(ts) and len(set(ts)) == 4


def test_operation_letters_and_namespace_wildcards_filter(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    inserts_in_db = collect(tailer, "shop.*", "i")
    deletes_anywhere = collect(tailer, "*", "d")
    exact_updates = collect(tailer, "shop.orders", "u")
    with tailer:
        time.sleep(0.3)
        client.shop.orders.insert_one({"_id": 1})
        client.shop.items.insert_one({"_id": 2})
        client.other.things.insert_one({"_id": 3})
        client.shop.orders.update_one({"_id": 1}, {"$set": {"a": 1}})
        client.shop.items.update_one({"_id": 2}, {"$set": {"a": 1}})
        client.other.things.delete_one({"_id": 3})
        wait_for(lambda: len(deletes_anywhere) == 1)
        time.sleep(0.2)
    assert [(op["ns"], op["o"]["_id"]) for op in inserts_in_db] == [("shop.orders", 1), ("shop.items", 2)]
    assert [op["ns"] for op in deletes_anywhere] == ["other.things"]
    assert [op["ns"] for op in exact_updates] == ["shop.orders"]


def test_transaction_ops_delivered_one_by_one_with_its_ts_lsid_and_txn_number(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    seen = collect(tailer, "bank.accounts", "iud")
    wrappers = collect(tailer, "admin.$cmd", "c")
    client.bank.accounts.insert_many([{"_id": "a", "n": 10}, {"_id": "b", "n": 0}])
    with tailer:
        time.sleep(0.3)
        with client.start_session() as s:
            with s.start_transaction():
                client.bank.accounts.update_one({"_id": "a"}, {"$inc": {"n": -5}}, session=s)
                client.bank.accounts.update_one({"_id": "b"}, {"$inc": {"n": 5}}, session=s)
                client.bank.accounts.insert_one({"_id": "c"}, session=s)
        wait_for(lambda: len(seen) == 3)
        time.sleep(0.2)
    assert [(op["op"], op["o2"]["_id"] if op["op"] == "u" else op["o"]["_id"]) for op in seen] == [
        ("u", "a"), ("u", "b"), ("i", "c"),
    ]
    assert len({op["ts"] for op in seen}) == 1
    assert len({op["txnNumber"] for op in seen}) == 1
    assert all("lsid" in op for op in seen)
    assert len(wrappers) == 1 and len(wrappers[0]["o"]["applyOps"]) == 3
    assert wrappers[0]["ts"] == seen[0]["ts"]


def test_large_transaction_split_over_partial_entries_is_delivered_whole(mongo_server, client):
    blob = "x" * (1024 * 1024)
    tailer = mmm.Tailer(mongo_server.uri)
    seen = collect(tailer, "big.blobs", "i")
    with tailer:
        time.sleep(0.3)
        with client.start_session() as s:
            with s.start_transaction():
                for i in range(20):  # about 20 MB: more than one applyOps entry
                    client.big.blobs.insert_one({"_id": i, "blob": blob}, session=s)
        wait_for(lambda: len(seen) == 20, timeout=30)
    entries = list(client.local["oplog.rs"].find({"ns": "admin.$cmd"}))
    assert len(entries) >= 2 and entries[0]["o"].get("partialTxn") is True
    assert [op["o"]["_id"] for op in seen] == list(range(20))
    assert len({op["ts"] for op in seen}) == 1


def test_restart_from_checkpoint_skips_nothing(mongo_server, client):
    first = mmm.Tailer(mongo_server.uri)
    seen = collect(first, "app.events", "i")
    with first:
        time.sleep(0.3)
        client.app.events.insert_many([{"_id": i} for i in range(100)])
        wait_for(lambda: len(seen) == 100)
    checkpoint = first.checkpoint
    assert isinstance(checkpoint, Timestamp)
    client.app.events.insert_many([{"_id": i} for i in range(100, 150)])  # while nobody tails
    second = mmm.Tailer(mongo_server.uri, checkpoint=checkpoint)
    later = collect(second, "app.events", "i")
    with second:
        wait_for(lambda: len(later) == 50)
        time.sleep(0.2)
    assert [op["o"]["_id"] for op in later] == list(range(100, 150))


def test_oldest_replays_the_whole_oplog(mongo_server, client):
    client.app.events.insert_many([{"_id": i} for i in range(10)])
    tailer = mmm.Tailer(mongo_server.uri, checkpoint="oldest")
    seen = collect(tailer, "app.events", "i")
    with tailer:
        wait_for(lambda: len(seen) == 10)


def test_raising_trigger_stops_run_and_keeps_checkpoint_before_that_op(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    handled = []

    @tailer.on("app.jobs", "i")
    def handle(op):
        if op["o"]["_id"] == 3:
            raise RuntimeError("job 3 is broken")
        handled.append(op)

    thread = threading.Thread(target=lambda: client.app.jobs.insert_many([{"_id": i} for i in range(6)]))
    threading.Timer(0.3, thread.start).start()
    with pytest.raises(RuntimeError, match="job 3 is broken") as info:
        tailer.run()
    assert info.value.op["o"] == {"_id": 3}
    assert [op["o"]["_id"] for op in handled] == [0, 1, 2]
    assert tailer.checkpoint == handled[-1]["ts"]
    # Restarting from the checkpoint delivers the failed op again.
    retry = mmm.Tailer(mongo_server.uri, checkpoint=tailer.checkpoint)
    again = collect(retry, "app.jobs", "i")
    with retry:
        wait_for(lambda: len(again) == 3)
    assert [op["o"]["_id"] for op in again] == [3, 4, 5]


def test_on_error_log_logs_and_goes_on(mongo_server, client, caplog):
    tailer = mmm.Tailer(mongo_server.uri, on_error="log")
    handled = []

    @tailer.on("app.jobs", "i")
    def handle(op):
        if op["o"]["_id"] == 1:
            raise ValueError("bad job")
        handled.append(op["o"]["_id"])

    with caplog.at_level(logging.ERROR, logger="mmm"):
        with tailer:
            time.sleep(0.3)
            client.app.jobs.insert_many([{"_id": i} for i in range(3)])
            wait_for(lambda: handled == [0, 2])
    assert "bad job" in caplog.text


def test_async_triggers_are_awaited_in_order(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri)
    order = []

    @tailer.on("app.jobs", "i")
    async def slow(op):
        await asyncio.sleep(0.01)
        order.append(op["o"]["_id"])

    async def main():
        task = asyncio.ensure_future(tailer.run_async())
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: client.app.jobs.insert_many([{"_id": i} for i in range(5)])
        )
        for _ in range(200):
            if len(order) == 5:
                break
            await asyncio.sleep(0.02)
        tailer.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]


def test_dropped_connections_mid_stream_lose_no_op(mongo_server, client):
    tailer = mmm.Tailer(mongo_server.uri, batch_size=50)
    seen = collect(tailer, "app.ticks", "i")
    with tailer:
        time.sleep(0.3)
        for i in range(300):
            client.app.ticks.insert_one({"_id": i})
            if i % 100 == 50:
                mongo_server.drop_connections()
        wait_for(lambda: len(seen) >= 300, timeout=30)
        time.sleep(0.3)
    assert sorted(op["o"]["_id"] for op in seen) == list(range(300))
    assert len(seen) == 300


def test_checkpoint_that_fell_off_the_oplog_raises_rollover_error(mongo_server_factory):
    server = mongo_server_factory(oplog_size_mb=1)
    client = pymongo.MongoClient(server.uri)
    client.app.x.insert_one({"_id": "first"})
    old = client.local["oplog.rs"].find_one({"o._id": "first"})["ts"]
    blob = "y" * 10_000
    client.app.x.insert_many([{"blob": blob} for _ in range(300)])  # ~3 MB through a 1 MB oplog
    oldest = client.local["oplog.rs"].find_one(sort=[("$natural", 1)])["ts"]
    assert oldest > old
    tailer = mmm.Tailer(server.uri, checkpoint=old)
    tailer.register("*", "*", lambda op: None)
    with pytest.raises(mmm.OplogRolloverError, match=f"Timestamp\\({oldest.time}, {oldest.inc}\\)"):
        tailer.run()
    client.close()


def test_checkpoint_store_persists_and_resumes(mongo_server, client):
    store = client.meta.checkpoints
    first = mmm.Tailer(mongo_server.uri, name="inspections", checkpoint_store=store)
    seen = collect(first, "app.frames", "i")
    with first:
        time.sleep(0.3)
        client.app.frames.insert_many([{"_id": i} for i in range(5)])
        wait_for(lambda: len(seen) == 5)
    saved = store.find_one({"_id": "inspections"})
    assert saved["ts"] == first.checkpoint
    client.app.frames.insert_many([{"_id": i} for i in range(5, 8)])
    second = mmm.Tailer(mongo_server.uri, name="inspections", checkpoint_store=store)
    later = collect(second, "app.frames", "i")
    with second:
        wait_for(lambda: len(later) == 3)
    assert [op["o"]["_id"] for op in later] == [5, 6, 7]


@pytest.mark.parametrize(
    "ns, ops, message",
    [
        ("app.jobs", "ix", "unknown operation letter"),
        ("app.jobs", "", "non-empty"),
        ("nodot", "i", "malformed namespace"),
        ("app.", "i", "malformed namespace"),
    ],
)
def test_bad_registrations_raise_value_error(mongo_server, ns, ops, message):
    tailer = mmm.Tailer(mongo_server.uri)
    with pytest.raises(ValueError, match=message):
        tailer.register(ns, ops, print)


def test_bad_uri_and_bad_checkpoint_raise_value_error():
    with pytest.raises(ValueError, match="invalid MongoDB URI"):
        mmm.Tailer("postgres://nope")
    with pytest.raises(ValueError, match="checkpoint"):
        mmm.Tailer("mongodb://127.0.0.1:1", checkpoint="yesterday")


def test_ctrl_c_stops_run(mongo_server, tmp_path):
    script = tmp_path / "tail.py"
    script.write_text(textwrap.dedent(f"""
        import mmm
        t = mmm.Tailer({mongo_server.uri!r})
        t.register("*", "*", lambda op: None)
        print("ready", flush=True)
        try:
            t.run()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert "interrupted" in out
    assert proc.returncode == 0


def test_diff_to_update_translates_v2_diffs():
    assert mmm.diff_to_update({"$v": 2, "diff": {"d": {"b": False}, "u": {"a": 1}}}) == {
        "$set": {"a": 1},
        "$unset": {"b": ""},
    }
    assert mmm.diff_to_update({"$v": 2, "diff": {"sarr": {"a": True, "u1": 5}}}) == {"$set": {"arr.1": 5}}
    assert mmm.diff_to_update({"_id": 1, "x": 2}) == {"_id": 1, "x": 2}
