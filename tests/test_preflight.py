"""Server checks run before a Replicator writes anything (mmm.preflight)."""

from __future__ import annotations

import datetime
import logging
import socket
import socketserver
import struct
import threading
from typing import Iterator, List

import bson
import pymongo
import pytest

import mmm
from conftest import wait_for
from mmm import preflight
from mmm.config import Link
from mmm.preflight import Need, Target, privilege_problems, requirements

# -- privilege evaluation (pure) ---------------------------------------------------------------

READ = ["find", "listCollections", "listIndexes"]
READ_WRITE = READ + ["insert", "update", "remove", "createCollection", "dropCollection", "createIndex",
                     "dropIndex", "renameCollectionSameDB", "convertToCapped"]
DB_ADMIN = ["createCollection", "dropCollection", "createIndex", "dropIndex", "renameCollectionSameDB", "dropDatabase"]


def priv(db: str, coll: str, actions: List[str]) -> dict:
    return {"resource": {"db": db, "collection": coll}, "actions": actions}


def status(*privileges: dict) -> dict:
    """A connectionStatus reply (showPrivileges) of an authenticated user."""
    return {"authInfo": {"authenticatedUsers": [{"user": "mmm", "db": "admin"}],
                         "authenticatedUserRoles": [], "authenticatedUserPrivileges": list(privileges)}, "ok": 1.0}


def problems_for(link: Link, server: str, *privileges: dict) -> List[str]:
    return privilege_problems(status(*privileges), requirements([link])[server])


LINK = Link("factory/app.*", "cloud/app.*")
READ_OPLOG = priv("local", "", READ)


def test_read_write_like_privileges_pass():
    both_ways = [LINK, Link("cloud/app.*", "factory/app.*")]
    granted = status(priv("app", "", READ_WRITE), priv("__mmm", "", READ_WRITE), READ_OPLOG)
    for server, needs in requirements(both_ways).items():
        assert privilege_problems(granted, needs) == [], server


def test_missing_mmm_write_fails_and_names_it():
    problems = problems_for(LINK, "cloud", priv("app", "", READ_WRITE), priv("__mmm", "", READ))
    assert len(problems) == 1
    assert "insert, update, remove on __mmm" in problems[0] and "grant readWrite on __mmm" in problems[0]


def test_any_resource_passes():
    full = Link("factory/app.*", "cloud/app.*", ops="iudc", initial_sync=True)
    god = {"resource": {"anyResource": True}, "actions": READ_WRITE + DB_ADMIN}
    assert problems_for(full, "factory", god) == []
    assert problems_for(full, "cloud", god) == []


def test_empty_db_covers_normal_collections_but_not_the_oplog_nor_system_collections():
    any_normal = priv("", "", READ_WRITE)
    assert problems_for(Link("factory/app.x", "cloud/app.x"), "cloud", any_normal) == []
    assert problems_for(Link("factory/*", "cloud/*"), "cloud", any_normal) == []
    # local and config are outside "any normal resource", so reading the oplog needs more.
    [problem] = problems_for(LINK, "factory", any_normal)
    assert "find on local.oplog.rs" in problem and "grant read on local" in problem
    system = [Need(Target("app", "system.js"), ("find",), "to read", "read on app")]
    assert privilege_problems(status(any_normal), system) != []
    assert privilege_problems(status(priv("app", "", READ)), system) != []
    assert privilege_problems(status(priv("app", "system.js", READ)), system) == []


def test_missing_oplog_read_on_the_source_fails():
    granted = [priv("app", "", READ_WRITE), priv("__mmm", "", READ_WRITE)]
    [problem] = problems_for(LINK, "factory", *granted)
    assert "local.oplog.rs" in problem
    assert problems_for(LINK, "factory", *granted, READ_OPLOG) == []
    assert problems_for(LINK, "factory", *granted, priv("", "oplog.rs", ["find"])) == []
    assert problems_for(LINK, "factory", *granted, priv("local", "oplog.rs", ["find"])) == []


def test_a_source_needs_its_oplog_its_versions_and_find_on_its_namespaces():
    synced = Link("factory/app.*", "cloud/app.*", initial_sync=True)
    versions = priv("__mmm", "", READ_WRITE)
    problems = problems_for(LINK, "factory", READ_OPLOG)
    assert any("__mmm" in p and "versions" in p for p in problems)
    assert any("find on app" in p and "read versions back" in p for p in problems)
    assert problems_for(LINK, "factory", READ_OPLOG, versions, priv("app", "", READ)) == []
    assert problems_for(synced, "factory", READ_OPLOG, versions, priv("app", "", READ)) == []
    problems = problems_for(synced, "factory", READ_OPLOG, versions)
    assert problems and all("find on app" in p for p in problems)
    assert any("initial_sync" in p for p in problems)


def test_ddl_actions_are_demanded_only_when_ops_contain_c():
    read_write = [priv("app", "", READ_WRITE), priv("__mmm", "", READ_WRITE)]
    assert problems_for(LINK, "cloud", *read_write) == []
    ddl = Link("factory/app.*", "cloud/app.*", ops="iudc")
    [problem] = problems_for(ddl, "cloud", *read_write)
    assert "dropDatabase on app" in problem and "dbAdmin on app" in problem
    assert problems_for(ddl, "cloud", *read_write, priv("app", "", DB_ADMIN)) == []
    [problem] = problems_for(Link("factory/app.x", "cloud/app.x", ops="iudc"), "cloud",
                             priv("app", "", READ + ["insert", "update", "remove"]), priv("__mmm", "", READ_WRITE))
    assert "createCollection, dropCollection, createIndex, dropIndex, renameCollectionSameDB on app.x" in problem


def test_a_wildcard_needs_the_whole_database_and_cluster_grants_no_collection_action():
    exact_only = [priv("app", "x", READ_WRITE), priv("__mmm", "", READ_WRITE)]
    assert problems_for(Link("factory/app.x", "cloud/app.x"), "cloud", *exact_only) == []
    [problem] = problems_for(LINK, "cloud", *exact_only)
    assert "on app " in problem and "readWrite on app" in problem
    [problem] = problems_for(Link("factory/*", "cloud/*"), "cloud", priv("app", "", READ_WRITE), priv("__mmm", "", READ_WRITE))
    assert "every database" in problem and "readWriteAnyDatabase" in problem
    cluster = {"resource": {"cluster": True}, "actions": READ_WRITE}
    assert len(problems_for(LINK, "cloud", cluster)) == 2


def test_no_authenticated_user_means_nothing_to_check():
    unauthenticated = {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}
    assert privilege_problems(unauthenticated, requirements([LINK])["cloud"]) == []


# -- Replicator start ----------------------------------------------------------------------------

def servers(a, b) -> dict:
    return {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}


BOTH_WAYS = [("a/app.*", "b/app.*"), ("b/app.*", "a/app.*")]


def pretend(monkeypatch, uri: str, *, hello=None, connection_status=None) -> None:
    """Makes the server at ``uri`` answer the preflight with these documents; others are real."""
    real = preflight.server_info

    def fake(u, timeout_ms=preflight.TIMEOUT_MS):
        if u != uri:
            return real(u, timeout_ms)
        real_hello, real_status = real(u, timeout_ms)
        return (real_hello if hello is None else hello), (real_status if connection_status is None else connection_status)

    monkeypatch.setattr(preflight, "server_info", fake)


def nothing_written(*clients) -> bool:
    return all("__mmm" not in c.list_database_names() for c in clients)


@pytest.mark.parametrize("verb", ["start", "run"])
def test_a_server_that_is_not_a_replica_set_stops_start_before_any_write(pair, monkeypatch, verb):
    a, b, ca, cb = pair
    pretend(monkeypatch, b.uri, hello={"isWritablePrimary": True, "maxWireVersion": 21, "ok": 1.0})
    r = mmm.Replicator(servers(a, b), BOTH_WAYS)
    timer = threading.Timer(15, r.stop)  # ends a run() that the check failed to prevent
    timer.start()
    try:
        with pytest.raises(mmm.ReplicationError) as e:
            getattr(r, verb)()
    finally:
        timer.cancel()
        r.stop()
        r.join()
    assert f"server b ({b.uri}) is not a replica set member" in str(e.value)
    assert "server a" not in str(e.value)
    assert not r.running
    assert nothing_written(ca, cb)


def test_missing_privileges_are_listed_in_one_error(pair, monkeypatch):
    a, b, ca, cb = pair
    pretend(monkeypatch, b.uri, connection_status=status(priv("app", "", READ_WRITE)))
    r = mmm.Replicator(servers(a, b), BOTH_WAYS)
    try:
        with pytest.raises(mmm.ReplicationError) as e:
            r.start()
    finally:
        r.stop()
        r.join()
    message = str(e.value)
    assert f"server b ({b.uri}): user lacks find on local.oplog.rs" in message  # as a source
    assert f"server b ({b.uri}): user lacks insert, update, remove on __mmm" in message  # as a destination
    assert nothing_written(ca, cb)


def test_preflight_false_skips_the_check(pair, monkeypatch):
    a, b, ca, cb = pair
    pretend(monkeypatch, b.uri, hello={"isWritablePrimary": True, "ok": 1.0})
    with mmm.Replicator(servers(a, b), [("a/app.*", "b/app.*")], preflight=False):
        ca.app.t.insert_one({"_id": 1})
        wait_for(lambda: cb.app.t.count_documents({}) == 1)


def test_an_unreachable_server_is_a_warning_and_start_proceeds(pair, caplog):
    a, b, ca, cb = pair
    down = "mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300"
    r = mmm.Replicator({"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": down}}, [("a/app.*", "b/app.*")])
    with caplog.at_level(logging.WARNING, logger="mmm.replication"):
        r.start()
    try:
        warnings = [rec.getMessage() for rec in caplog.records if rec.name == "mmm.replication" and rec.levelno == logging.WARNING]
        assert any(f"server b ({down}) is unreachable" in w for w in warnings), warnings
        wait_for(lambda: r.status()[0]["state"] == "retrying")
    finally:
        r.stop()
        r.join()


# -- a reachable server that is not a replica set, over the wire ---------------------------------

class _Standalone(socketserver.BaseRequestHandler):
    """Answers every command as a standalone mongod would answer hello (no setName)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            header = self._read(sock, 16)
            if header is None:
                return
            length, request_id, _, op_code = struct.unpack("<iiii", header)
            self._read(sock, length - 16)
            doc = bson.encode({"isWritablePrimary": True, "ismaster": True, "helloOk": True, "maxWireVersion": 21,
                               "minWireVersion": 0, "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
                               "maxWriteBatchSize": 100_000, "localTime": datetime.datetime.now(datetime.timezone.utc),
                               "connectionId": 1, "ok": 1.0})
            if op_code == 2013:  # OP_MSG
                body = struct.pack("<I", 0) + b"\x00" + doc
            else:  # OP_QUERY handshake: OP_REPLY
                body, op_code = struct.pack("<iqii", 0, 0, 0, 1) + doc, 1
            sock.sendall(struct.pack("<iiii", 16 + len(body), 0, request_id, op_code) + body)

    @staticmethod
    def _read(sock: socket.socket, n: int):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


@pytest.fixture
def standalone() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Standalone)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("query", ["", "?replicaSet=rs0"])
def test_a_standalone_is_named_not_called_unreachable(mongo_server, standalone, query):
    # With replicaSet=... a driver never selects a standalone: the preflight must still see it.
    uri = f"mongodb://{standalone}/{query}"
    r = mmm.Replicator({"a": {"id": "A", "uri": mongo_server.uri}, "s": {"id": "S", "uri": uri}}, [("a/app.*", "s/app.*")])
    try:
        with pytest.raises(mmm.ReplicationError, match=r"server s \(.*\) is not a replica set member"):
            r.start()
    finally:
        r.stop()
        r.join()
    with pymongo.MongoClient(mongo_server.uri) as client:
        assert nothing_written(client)
