"""Sessions, multi-document transactions and retryable writes.

References: mongodb/mongo src/mongo/db/transaction/transaction_participant.cpp (the txnNumber
state machine: NoSuchTransaction 251, TransactionCommitted 256, TransactionTooOld 225), the
transactions specification (mongodb/specifications source/transactions/transactions.md:
isolation, WriteConflict 112 for the second writer), src/mongo/db/error_labels.cpp
(TransientTransactionError label), the retryable writes specification
(source/retryable-writes/retryable-writes.md: a retried write is not executed twice); mongodb/mongo
jstests/core/txns/transactions_write_conflicts.js ("if transaction T2 tries to write to a document
already written to by T1 this will cause T2's write to fail with a WriteConflict error").
"""

import pytest
from bson import Int64
from pymongo.errors import OperationFailure

from conftest import entries_after, last_ts


@pytest.fixture
def coll(client):
    c = client.test.acct
    c.insert_many([{"_id": 1, "bal": 100}, {"_id": 2, "bal": 0}])
    return c


def test_transaction_sees_its_own_writes_and_others_do_not_until_commit(client, coll):
    with client.start_session() as s:
        s.start_transaction()
        coll.update_one({"_id": 1}, {"$inc": {"bal": -30}}, session=s)
        coll.insert_one({"_id": 3, "bal": 30}, session=s)
        # Inside: the transaction's own writes.
        assert coll.find_one({"_id": 1}, session=s)["bal"] == 70
        assert coll.find_one({"_id": 3}, session=s) == {"_id": 3, "bal": 30}
        # Outside: nothing yet.
        assert coll.find_one({"_id": 1})["bal"] == 100
        assert coll.find_one({"_id": 3}) is None
        s.commit_transaction()
    assert coll.find_one({"_id": 1})["bal"] == 70
    assert coll.find_one({"_id": 3}) == {"_id": 3, "bal": 30}


def test_with_transaction_commits(client, coll):
    def transfer(s):
        coll.update_one({"_id": 1}, {"$inc": {"bal": -10}}, session=s)
        coll.update_one({"_id": 2}, {"$inc": {"bal": 10}}, session=s)

    with client.start_session() as s:
        s.with_transaction(transfer)
    assert [d["bal"] for d in coll.find(sort=[("_id", 1)])] == [90, 10]


def test_abort_discards_every_write(client, coll):
    with client.start_session() as s:
        s.start_transaction()
        coll.insert_one({"_id": 3}, session=s)
        coll.delete_one({"_id": 2}, session=s)
        s.abort_transaction()
    assert [d["_id"] for d in coll.find(sort=[("_id", 1)])] == [1, 2]


def test_transaction_reads_a_snapshot(client, coll):
    with client.start_session() as s:
        s.start_transaction()
        assert coll.find_one({"_id": 2}, session=s)["bal"] == 0
        coll.update_one({"_id": 2}, {"$set": {"bal": 5}})  # outside the transaction
        assert coll.find_one({"_id": 2}, session=s)["bal"] == 0
        s.abort_transaction()


def txn_command(db, session, n, cmd, **kwargs):
    body = {**cmd, "txnNumber": Int64(n), "autocommit": False, **kwargs}
    return db.command(body, session=session)


def test_commit_after_abort_is_no_such_transaction(client, coll):
    with client.start_session() as s:
        txn_command(client.test, s, 5,
                    {"insert": "acct", "documents": [{"_id": 9}]}, startTransaction=True)
        txn_command(client.admin, s, 5, {"abortTransaction": 1})
        with pytest.raises(OperationFailure) as err:
            txn_command(client.admin, s, 5, {"commitTransaction": 1})
    assert err.value.code == 251
    assert err.value.details["codeName"] == "NoSuchTransaction"
    assert err.value.has_error_label("TransientTransactionError")
    assert coll.find_one({"_id": 9}) is None


def test_statement_for_unknown_transaction_number_is_no_such_transaction(client, coll):
    with client.start_session() as s:
        with pytest.raises(OperationFailure) as err:
            txn_command(client.test, s, 7, {"find": "acct"})
    assert err.value.code == 251


def test_commit_is_retryable_and_then_transaction_committed_for_other_ops(client, coll):
    with client.start_session() as s:
        txn_command(client.test, s, 3,
                    {"insert": "acct", "documents": [{"_id": 8}]}, startTransaction=True)
        txn_command(client.admin, s, 3, {"commitTransaction": 1})
        # Committing again (a retry) succeeds.
        assert txn_command(client.admin, s, 3, {"commitTransaction": 1})["ok"] == 1.0
        with pytest.raises(OperationFailure) as err:
            txn_command(client.test, s, 3, {"find": "acct"})
        assert err.value.code == 256  # TransactionCommitted
        # An older txnNumber is TransactionTooOld.
        with pytest.raises(OperationFailure) as err:
            txn_command(client.test, s, 2, {"find": "acct"}, startTransaction=True)
        assert err.value.code == 225
    assert coll.find_one({"_id": 8}) == {"_id": 8}


def test_second_writer_of_a_document_gets_write_conflict(client, coll):
    with client.start_session() as s1, client.start_session() as s2:
        s1.start_transaction()
        s2.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"by": "t1"}}, session=s1)
        with pytest.raises(OperationFailure) as err:
            coll.update_one({"_id": 1}, {"$set": {"by": "t2"}}, session=s2)
        assert err.value.code == 112
        assert err.value.details["codeName"] == "WriteConflict"
        assert err.value.has_error_label("TransientTransactionError")
        s1.commit_transaction()
        # The conflicting transaction has been aborted by the server.
        with pytest.raises(OperationFailure) as err:
            s2.commit_transaction()
        assert err.value.code == 251
    assert coll.find_one({"_id": 1}) == {"_id": 1, "bal": 100, "by": "t1"}


def test_writing_a_document_changed_after_the_snapshot_is_a_write_conflict(client, coll):
    with client.start_session() as s1, client.start_session() as s2:
        s1.start_transaction()
        s2.start_transaction()
        coll.find_one({"_id": 2}, session=s1)  # T1 starts (takes its snapshot) first
        coll.update_one({"_id": 2}, {"$set": {"by": "t2"}}, session=s2)
        s2.commit_transaction()
        with pytest.raises(OperationFailure) as err:
            coll.update_one({"_id": 2}, {"$set": {"by": "t1"}}, session=s1)
        assert err.value.code == 112
        assert err.value.has_error_label("TransientTransactionError")
    assert coll.find_one({"_id": 2}) == {"_id": 2, "bal": 0, "by": "t2"}


def test_count_is_not_allowed_in_a_transaction(client, coll):
    with client.start_session() as s:
        s.start_transaction()
        with pytest.raises(OperationFailure) as err:
            client.test.command("count", "acct", session=s)
        assert err.value.code == 263
        s.abort_transaction()


def test_retried_insert_returns_the_same_result_without_inserting_twice(client, coll):
    start = last_ts(client)
    with client.start_session() as s:
        cmd = {"insert": "acct", "documents": [{"_id": 50, "v": 1}],
               "txnNumber": Int64(1000)}
        first = client.test.command(dict(cmd), session=s)
        again = client.test.command(dict(cmd), session=s)
    assert first["n"] == again["n"] == 1
    assert "writeErrors" not in again  # not a duplicate-key failure: the write is not re-run
    assert len(list(coll.find({"_id": 50}))) == 1
    inserts = [e for e in entries_after(client, start) if e["op"] == "i"]
    assert len(inserts) == 1
    assert inserts[0]["txnNumber"] == 1000 and inserts[0]["stmtId"] == 0


def test_lower_txn_number_for_a_retryable_write_is_too_old(client, coll):
    with client.start_session() as s:
        client.test.command({"insert": "acct", "documents": [{"_id": 60}],
                             "txnNumber": Int64(5)}, session=s)
        with pytest.raises(OperationFailure) as err:
            client.test.command({"insert": "acct", "documents": [{"_id": 61}],
                                 "txnNumber": Int64(4)}, session=s)
    assert err.value.code == 225
    assert coll.find_one({"_id": 61}) is None


def test_driver_retryable_writes_work_end_to_end(client, coll):
    with client.start_session() as s:
        for i in range(10, 15):
            coll.insert_one({"_id": i}, session=s)
        coll.update_one({"_id": 10}, {"$set": {"x": 1}}, session=s)
        coll.delete_one({"_id": 11}, session=s)
        coll.find_one_and_update({"_id": 12}, {"$set": {"y": 1}}, session=s)
    assert sorted(d["_id"] for d in coll.find() if d["_id"] >= 10) == [10, 12, 13, 14]


def test_a_write_error_in_a_transaction_is_reported_in_write_errors(client, coll):
    # jstests/core/txns/transactions_write_errors.js: ok 1, n counts the statements before the
    # failure, one write error (even unordered), no TransientTransactionError label.
    for ordered in (True, False):
        with client.start_session() as s:
            s.start_transaction()
            reply = client.test.command(
                {"insert": "acct", "documents": [{"_id": 10}, {"_id": 1}, {"_id": 1}, {"_id": 11}],
                 "ordered": ordered},
                session=s,
            )
            assert reply["ok"] == 1.0
            assert reply["n"] == 1
            assert [(e["index"], e["code"]) for e in reply["writeErrors"]] == [(1, 11000)]
            assert "errorLabels" not in reply
            # The failed statement ended the transaction: nothing of it is committed.
            with pytest.raises(OperationFailure) as e:
                s.commit_transaction()
            assert e.value.code == 251
    assert coll.find_one({"_id": 10}) is None


def test_an_update_error_in_a_transaction_is_a_write_error(client, coll):
    coll.insert_one({"_id": 5, "x": "string"})
    with client.start_session() as s:
        s.start_transaction()
        reply = client.test.command(
            {"update": "acct", "updates": [{"q": {"_id": 5}, "u": {"$set": {"y": 1}}},
                                           {"q": {"_id": 5}, "u": {"$inc": {"x": 1}}}]},
            session=s,
        )
        assert reply["ok"] == 1.0 and reply["n"] == 1
        assert [(e["index"], e["code"]) for e in reply["writeErrors"]] == [(1, 14)]
        s.abort_transaction()
