"""Capped collections with ``max`` (a document count) as well as ``size``: the cases PyMongo's
own suite tries (test/test_cursor.py test_tailable: rollover under a tailable cursor, skip and
limit on tailable cursors) and writes in every form."""

from __future__ import annotations

import pytest
from pymongo import CursorType
from pymongo.errors import OperationFailure


@pytest.fixture
def capped(client):
    client.test.create_collection("capped", capped=True, size=100_000, max=3)
    return client.test.capped


def xs(coll):
    return [d["x"] for d in coll.find()]


def test_max_keeps_the_newest_documents(capped):
    for i in range(5):
        capped.insert_one({"x": i})
        assert capped.count_documents({}) == min(i + 1, 3)
    assert xs(capped) == [2, 3, 4]
    capped.insert_many([{"x": i} for i in range(5, 10)])
    assert xs(capped) == [7, 8, 9]
    capped.update_one({"x": 8}, {"$set": {"y": 1}}, upsert=True)
    capped.update_one({"x": 100}, {"$set": {"y": 1}}, upsert=True)
    assert xs(capped) == [8, 9, 100]
    assert capped.options()["max"] == 3


def test_a_tailable_cursor_survives_rollover_quietly(capped):
    cursor = capped.find(cursor_type=CursorType.TAILABLE)
    for i in (1, 2, 3):
        capped.insert_one({"x": i})
        assert [d["x"] for d in cursor] == [i]
    capped.insert_many([{"x": i} for i in range(4, 7)])
    # Its position was deleted: the cursor dies without raising (CappedPositionLost is one of
    # the errors drivers treat as a closed tailable cursor).
    assert cursor.to_list() == []
    assert not cursor.alive
    assert capped.count_documents({}) == 3


@pytest.mark.parametrize("cursor_type", [CursorType.TAILABLE, CursorType.TAILABLE_AWAIT])
def test_skip_and_limit_on_tailable_cursors(capped, cursor_type):
    capped.insert_many([{"x": i} for i in range(4, 7)])
    cursor = capped.find(cursor_type=cursor_type)
    assert [cursor[0]["x"], cursor[1]["x"], cursor[2]["x"]] == [4, 5, 6]
    for (start, stop), expected in {(0, 1): [4], (1, 2): [5], (2, 3): [6], (0, 2): [4, 5],
                                    (1, 3): [5, 6], (0, 3): [4, 5, 6]}.items():
        cursor.rewind()
        assert [d["x"] for d in cursor[start:stop]] == expected


def test_max_holds_after_a_transaction(client, capped):
    capped.insert_one({"x": 0})
    try:
        with client.start_session() as s:
            s.start_transaction()
            capped.insert_many([{"x": i} for i in range(1, 6)], session=s)
            s.commit_transaction()
    except OperationFailure:
        pass  # a server that refuses capped writes in transactions also keeps max
    assert capped.count_documents({}) <= 3
    assert xs(capped)[-1] in (0, 5)
