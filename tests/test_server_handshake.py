"""Handshake and topology: what a MongoDB 7.0 single-node replica-set primary tells drivers.

References: mongodb/mongo src/mongo/db/repl/hello.idl (hello fields) and the handshake
specification (mongodb/specifications source/mongodb-handshake/handshake.md); buildInfo,
replSetGetStatus and CommandNotFound 59 (src/mongo/base/error_codes.yml).
"""

import time

import bson
import pymongo
import pytest
from pymongo import monitoring
from pymongo.errors import OperationFailure

from conftest import RawConnection


def test_replica_set_uri_discovers_a_primary(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10000)
    try:
        client.admin.command("ping")
        assert client.topology_description.topology_type_name == "ReplicaSetWithPrimary"
        assert client.primary == tuple_address(mongo_server.address)
    finally:
        client.close()


def test_direct_connection_uri_connects_to_a_single_server(mongo_server):
    client = pymongo.MongoClient(mongo_server.direct_uri, serverSelectionTimeoutMS=10000)
    try:
        client.test.c.insert_one({"_id": 1})
        assert client.test.c.find_one() == {"_id": 1}
        assert client.topology_description.topology_type_name == "Single"
    finally:
        client.close()


def tuple_address(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_hello_describes_a_writable_primary_of_the_set(client, mongo_server):
    reply = client.admin.command("hello")
    assert reply["ok"] == 1.0
    assert reply["setName"] == "rs0"
    assert reply["hosts"] == [mongo_server.address]
    assert reply["me"] == mongo_server.address
    assert reply["primary"] == mongo_server.address
    assert reply["isWritablePrimary"] is True
    assert reply["secondary"] is False
    # hello replies carry isWritablePrimary *or* ismaster, never both [hello.idl].
    assert "ismaster" not in reply
    assert reply["maxWireVersion"] == 21  # MongoDB 7.0 [wireversion-featurelist]
    assert reply["minWireVersion"] == 0
    assert reply["logicalSessionTimeoutMinutes"] == 30
    assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert reply["maxMessageSizeBytes"] == 48_000_000
    assert reply["maxWriteBatchSize"] == 100_000
    assert isinstance(reply["setVersion"], int)
    assert isinstance(reply["electionId"], bson.ObjectId)


def test_hello_carries_cluster_time_and_operation_time(client):
    reply = client.admin.command("hello")
    assert isinstance(reply["operationTime"], bson.Timestamp)
    cluster_time = reply["$clusterTime"]
    assert isinstance(cluster_time["clusterTime"], bson.Timestamp)
    assert set(cluster_time["signature"]) == {"hash", "keyId"}


def test_hello_last_write_matches_the_newest_oplog_entry(client):
    client.test.c.insert_one({"x": 1})
    newest = client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])
    reply = client.admin.command("hello")
    # Other writes (real mongod's no-ops) may have happened in between: lastWrite is never older.
    assert reply["lastWrite"]["opTime"]["ts"] >= newest["ts"]
    assert reply["lastWrite"]["opTime"]["t"] == newest["t"]


def test_legacy_is_master_answers_with_ismaster(client):
    for name in ("isMaster", "ismaster"):
        reply = client.admin.command(name)
        assert reply["ismaster"] is True
        assert "isWritablePrimary" not in reply
        assert reply["setName"] == "rs0"


def test_build_info_reports_a_7_0_server(client):
    info = client.admin.command("buildInfo")
    assert info["version"].startswith("7.0.")
    assert info["versionArray"][:2] == [7, 0]
    assert client.server_info()["version"] == info["version"]


def test_repl_set_get_status_reports_one_primary(client, mongo_server):
    status = client.admin.command("replSetGetStatus")
    assert status["set"] == "rs0"
    assert status["myState"] == 1
    [member] = status["members"]
    assert member["stateStr"] == "PRIMARY"
    assert member["state"] == 1
    assert member["name"] == mongo_server.address
    assert member["self"] is True


def test_several_servers_run_side_by_side(mongo_server_factory):
    servers = [mongo_server_factory(), mongo_server_factory(replset="other")]
    clients = [pymongo.MongoClient(s.uri, serverSelectionTimeoutMS=10000) for s in servers]
    try:
        assert servers[0].port != servers[1].port
        clients[0].test.c.insert_one({"_id": "first"})
        clients[1].test.c.insert_one({"_id": "second"})
        # Each server has its own data and its own set name.
        assert list(clients[0].test.c.find()) == [{"_id": "first"}]
        assert list(clients[1].test.c.find()) == [{"_id": "second"}]
        assert clients[1].admin.command("hello")["setName"] == "other"
    finally:
        for c in clients:
            c.close()


def test_unknown_command_fails_with_command_not_found(client):
    with pytest.raises(OperationFailure) as err:
        client.admin.command("noSuchCommandAtAll")
    assert err.value.code == 59
    assert err.value.details["codeName"] == "CommandNotFound"


def test_hello_spelling_is_case_sensitive(client):
    # Only hello, isMaster and ismaster exist (handshake spec); other casings are unknown commands.
    with pytest.raises(OperationFailure) as err:
        client.admin.command("HELLO")
    assert err.value.code == 59


def test_awaitable_hello_waits_for_max_await_time_ms(mongo_server):
    # server-monitoring spec, "Awaitable hello Server Specification": with the server's own
    # topologyVersion and maxAwaitTimeMS, reply when the topology changes or the time is up.
    with RawConnection(mongo_server.address) as conn:
        first = conn.command({"hello": 1, "$db": "admin"})
        topology_version = first["topologyVersion"]
        started = time.monotonic()
        reply = conn.command({"hello": 1, "topologyVersion": topology_version,
                              "maxAwaitTimeMS": 600, "$db": "admin"})
        elapsed = time.monotonic() - started
    assert reply["ok"] == 1.0
    assert reply["topologyVersion"] == topology_version
    assert 0.5 <= elapsed < 5


def test_hello_with_another_process_topology_version_answers_at_once(mongo_server):
    with RawConnection(mongo_server.address) as conn:
        started = time.monotonic()
        reply = conn.command({"hello": 1, "maxAwaitTimeMS": 5000, "$db": "admin",
                              "topologyVersion": {"processId": bson.ObjectId(),
                                                  "counter": bson.Int64(0)}})
        assert time.monotonic() - started < 2
        assert reply["isWritablePrimary"] is True


def test_streaming_monitor_does_not_spin(mongo_server):
    # PyMongo's monitor does not sleep between awaitable hellos; an immediate reply would make it
    # send thousands of heartbeats a second (mongodb/specifications source/server-discovery-and-
    # monitoring/server-monitoring.md, "Awaitable hello" and heartbeat frequency).
    heartbeats = HeartbeatCounter()
    client = pymongo.MongoClient(mongo_server.uri, event_listeners=[heartbeats])
    try:
        client.admin.command("ping")
        time.sleep(2)
        assert heartbeats.count <= 10
    finally:
        client.close()


class HeartbeatCounter(monitoring.ServerHeartbeatListener):
    def __init__(self):
        self.count = 0

    def started(self, event):
        pass

    def succeeded(self, event):
        self.count += 1

    def failed(self, event):
        pass
