"""Test commands: getCmdLineOpts, getParameter's enableTestCommands, configureFailPoint.

Behaviour follows mongod's fail_point_cmd.cpp, CommandHelpers::evaluateFailCommandFailPoint and
error_labels.cpp. Tests that need fail points skip when the server under test has no test commands.
"""

from __future__ import annotations

import time

import pymongo
import pytest
from bson import Int64
from pymongo.errors import ConnectionFailure, NotPrimaryError, OperationFailure, WriteConcernError


def has_test_commands(client) -> bool:
    return bool(client.admin.command("getParameter", "*").get("enableTestCommands"))


@pytest.fixture
def fp_client(client):
    if not has_test_commands(client):
        pytest.skip("the server under test has no test commands")
    yield client
    client.admin.command("configureFailPoint", "failCommand", mode="off")


def fail(client, mode, **data):
    return client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


def test_get_cmd_line_opts_and_parameters(client):
    opts = client.admin.command("getCmdLineOpts")
    assert isinstance(opts["argv"], list) and all(isinstance(a, str) for a in opts["argv"])
    assert isinstance(opts["parsed"], dict)
    assert "enableTestCommands" in client.admin.command("getParameter", "*")
    assert "enableTestCommands" in client.admin.command({"getParameter": 1, "enableTestCommands": 1})
    with pytest.raises(OperationFailure) as e:
        client.test.command("getCmdLineOpts")
    assert e.value.code == 13  # adminOnly


def test_test_commands_can_be_turned_off(mongo_server_factory):
    server = mongo_server_factory(test_commands=False)
    with pymongo.MongoClient(server.uri) as c:
        assert c.admin.command("getParameter", "*")["enableTestCommands"] is False
        with pytest.raises(OperationFailure) as e:
            fail(c, "alwaysOn", failCommands=["find"], errorCode=2)
        assert e.value.code == 59  # not registered: CommandNotFound
        assert c.t.c.find_one() is None


def test_error_code_times_and_count(fp_client):
    c = fp_client
    assert fail(c, {"times": 2}, failCommands=["find"], errorCode=2)["count"] == 0
    c.t.c.insert_one({"_id": 1})  # not listed: unaffected
    for _ in range(2):
        with pytest.raises(OperationFailure) as e:
            c.t.c.find_one()
        assert e.value.code == 2
        assert e.value.details["codeName"] == "BadValue"
        assert "failCommand" in e.value.details["errmsg"]
    assert c.t.c.find_one() == {"_id": 1}
    # The count answered is the number of times it fired before this call.
    assert c.admin.command("configureFailPoint", "failCommand", mode="off")["count"] == 2


def test_skip_then_always_on(fp_client):
    c = fp_client
    fail(c, {"skip": 2}, failCommands=["count"], errorCode=11601)
    assert c.t.command("count", "c")["n"] == 0
    assert c.t.command("count", "c")["n"] == 0
    for _ in range(3):
        with pytest.raises(OperationFailure) as e:
            c.t.command("count", "c")
        assert e.value.code == 11601


def test_close_connection(fp_client, mongo_server):
    fail(fp_client, {"times": 1}, failCommands=["find"], closeConnection=True)
    with pymongo.MongoClient(mongo_server.uri, retryReads=False) as c:
        with pytest.raises(ConnectionFailure):
            c.t.c.find_one()
        assert c.t.c.find_one() is None  # once only


def test_block_connection_delays_the_command(fp_client):
    c = fp_client
    fail(c, {"times": 1}, failCommands=["ping"], blockConnection=True, blockTimeMS=300)
    started = time.monotonic()
    c.t.command("ping")
    assert time.monotonic() - started >= 0.3
    with pytest.raises(OperationFailure) as e:
        fail(c, "alwaysOn", failCommands=["ping"], blockConnection=True)
    assert e.value.code == 72  # blockTimeMS is required


def test_app_name_targets_one_client(fp_client, mongo_server):
    fail(fp_client, "alwaysOn", failCommands=["find"], errorCode=2, appName="victim")
    fp_client.t.c.find_one()
    with pymongo.MongoClient(mongo_server.uri, appname="victim") as v:
        with pytest.raises(OperationFailure):
            v.t.c.find_one()


def test_labels_of_a_retryable_write(fp_client, mongo_server):
    c = fp_client
    fail(c, {"times": 1}, failCommands=["insert"], errorCode=91)
    with c.start_session() as s:
        with pytest.raises(NotPrimaryError) as e:
            c.t.command({"insert": "c", "documents": [{"_id": 1}], "txnNumber": Int64(1)}, session=s)
    assert e.value.details["errorLabels"] == ["RetryableWriteError"]
    assert e.value.details["codeName"] == "ShutdownInProgress"
    # A plain write gets no label; errorLabels replaces what the server would add.
    fail(c, {"times": 1}, failCommands=["insert"], errorCode=91)
    with pytest.raises(NotPrimaryError) as e:
        c.t.command({"insert": "c", "documents": [{"_id": 1}]})
    assert "errorLabels" not in e.value.details
    fail(c, {"times": 1}, failCommands=["insert"], errorCode=91, errorLabels=["Custom"])
    with c.start_session() as s:
        with pytest.raises(NotPrimaryError) as e:
            c.t.command({"insert": "c", "documents": [{"_id": 1}], "txnNumber": Int64(2)}, session=s)
    assert e.value.details["errorLabels"] == ["Custom"]
    # Retried by the driver: written once.
    fail(c, {"times": 1}, failCommands=["insert"], errorCode=10107)
    c.t.c.insert_one({"_id": 7})
    assert c.t.c.count_documents({"_id": 7}) == 1


def test_transient_label_inside_a_transaction(fp_client):
    c = fp_client
    c.t.c.insert_one({"_id": 0})
    fail(c, {"times": 1}, failCommands=["insert"], errorCode=112)
    with c.start_session() as s:
        s.start_transaction()
        with pytest.raises(OperationFailure) as e:
            c.t.c.insert_one({"_id": 1}, session=s)
        assert e.value.has_error_label("TransientTransactionError")
        s.abort_transaction()


def test_write_concern_error(fp_client, mongo_server):
    wce = {"code": 100, "codeName": "UnsatisfiableWriteConcern", "errmsg": "Not enough data-bearing nodes"}
    fail(fp_client, {"times": 1}, failCommands=["insert"], writeConcernError=wce)
    with pymongo.MongoClient(mongo_server.uri, retryWrites=False) as c:
        with pytest.raises(WriteConcernError) as e:
            c.t.c.insert_one({"_id": 1})
        assert e.value.code == 100
        assert c.t.c.count_documents({}) == 1  # the write itself happened
        c.t.c.find_one()  # reads never get a write concern error
    # A retriable write concern error on a retryable write: labelled, retried, applied once.
    fail(fp_client, {"times": 1}, failCommands=["insert"], writeConcernError={"code": 91, "errmsg": "shutting down"})
    fp_client.t.c.insert_one({"_id": 2})
    assert fp_client.t.c.count_documents({}) == 2


def test_max_time_always_times_out(fp_client):
    c = fp_client
    c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    try:
        with pytest.raises(OperationFailure) as e:
            list(c.t.c.find().max_time_ms(1000))
        assert e.value.code == 50
        c.t.c.find_one()  # no maxTimeMS: unaffected
    finally:
        c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")


@pytest.mark.parametrize(
    "command, code",
    [
        ({"configureFailPoint": "noSuchFailPoint", "mode": "off"}, 266),
        ({"configureFailPoint": "failCommand", "mode": "sometimes"}, 2),
        ({"configureFailPoint": "failCommand", "mode": {"times": -1}}, 2),
        ({"configureFailPoint": "failCommand", "mode": {"activationProbability": 2.0}}, 2),
        ({"configureFailPoint": "failCommand", "mode": {"times": "x" * 1000}}, 14),
        ({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": "x"}, 14),
        ({"configureFailPoint": "failCommand"}, 14),
        ({"configureFailPoint": 1, "mode": "off"}, 14),
    ],
)
def test_bad_configure_fail_point(fp_client, command, code):
    with pytest.raises(OperationFailure) as e:
        fp_client.admin.command(command)
    assert e.value.code == code
    fp_client.t.c.find_one()  # nothing armed


def test_configure_fail_point_is_admin_only_and_never_failed(fp_client):
    with pytest.raises(OperationFailure) as e:
        fp_client.t.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert e.value.code == 13
    fail(fp_client, "alwaysOn", failCommands=["configureFailPoint", "find"], closeConnection=True)
    fp_client.admin.command("configureFailPoint", "failCommand", mode="off")
    fp_client.t.c.find_one()


def test_on_primary_transactional_write(fp_client):
    c = fp_client
    try:
        # The write commits, then the connection closes; the driver's retry is answered from the
        # session's history and does not meet the fail point again.
        c.admin.command({"configureFailPoint": "onPrimaryTransactionalWrite", "mode": {"times": 2}})
        c.t.c.insert_one({"_id": 1})
        c.t.c.update_one({"_id": 1}, {"$inc": {"n": 1}})
        assert c.t.c.find_one() == {"_id": 1, "n": 1}
        # failBeforeCommitExceptionCode: not written, retried, failing again: an error, nothing written.
        c.admin.command({"configureFailPoint": "onPrimaryTransactionalWrite", "mode": {"times": 2},
                         "data": {"failBeforeCommitExceptionCode": 1}})
        with pytest.raises(pymongo.errors.PyMongoError):
            c.t.c.insert_one({"_id": 2})
        assert c.t.c.count_documents({}) == 1
        # Plain (non-retryable) writes never meet it.
        c.admin.command({"configureFailPoint": "onPrimaryTransactionalWrite", "mode": "alwaysOn"})
        c.t.command({"insert": "c", "documents": [{"_id": 3}]})
    finally:
        c.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode="off")
