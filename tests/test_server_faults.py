"""Fault injection: dropped connections and a paused server.

PyMongo reconnects after network errors and retries reads and writes once (retryable reads/writes
specifications); the data itself must survive the outage.
"""

import threading
import time

import pymongo
import pytest
from pymongo.errors import ConnectionFailure


def test_drop_connections_mid_stream_client_reconnects_and_data_is_intact(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10000)
    try:
        coll = client.test.c
        coll.insert_many([{"_id": i} for i in range(100)])
        cursor = coll.find().batch_size(10)
        seen = [next(cursor)["_id"] for _ in range(15)]
        mongo_server.drop_connections()
        try:
            seen += [d["_id"] for d in cursor]
        except ConnectionFailure:
            pass  # the getMore's connection went away; the cursor may be lost
        assert seen == list(range(len(seen)))
        # Retryable writes and reads go through on fresh connections.
        coll.insert_one({"_id": 100})
        assert sorted(d["_id"] for d in coll.find()) == list(range(101))
    finally:
        client.close()


def test_drop_connections_repeatedly_while_writing(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10000)
    try:
        for i in range(5):
            client.test.c.insert_one({"_id": i})
            mongo_server.drop_connections()
        assert sorted(d["_id"] for d in client.test.c.find()) == list(range(5))
    finally:
        client.close()


def test_operations_during_a_pause_fail_fast_with_short_timeouts(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=300,
                                 socketTimeoutMS=300, connectTimeoutMS=300)
    try:
        client.test.c.insert_one({"_id": "before"})
        mongo_server.pause(1.5)
        with pytest.raises(ConnectionFailure):
            client.test.c.insert_one({"_id": "during"})
        time.sleep(1.6)
        # After the pause everything works again and nothing was lost.
        deadline = time.monotonic() + 10
        while True:
            try:
                client.test.c.insert_one({"_id": "after"})
                break
            except ConnectionFailure:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        ids = {d["_id"] for d in client.test.c.find()}
        assert {"before", "after"} <= ids
    finally:
        client.close()


def test_operation_issued_during_a_pause_waits_and_then_succeeds(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=15000)
    try:
        client.test.c.insert_one({"_id": 1})
        paused_at = time.monotonic()
        mongo_server.pause(1)
        client.test.c.insert_one({"_id": 2})  # blocks until the server is back
        elapsed = time.monotonic() - paused_at
        assert elapsed >= 0.9
        assert sorted(d["_id"] for d in client.test.c.find()) == [1, 2]
    finally:
        client.close()


def test_other_clients_keep_their_data_view_after_a_pause(mongo_server):
    writer = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=15000)
    reader = pymongo.MongoClient(mongo_server.direct_uri, serverSelectionTimeoutMS=15000)
    try:
        writer.test.c.insert_many([{"_id": i} for i in range(20)])
        mongo_server.pause(0.5)
        results = {}

        def read():
            results["n"] = len(list(reader.test.c.find()))

        t = threading.Thread(target=read)
        t.start()
        t.join(20)
        assert results["n"] == 20
    finally:
        writer.close()
        reader.close()
