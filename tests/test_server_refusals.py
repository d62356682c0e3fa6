"""What the embedded server does not implement is refused with the error the README documents,
and the connection goes on serving. Skipped on a real ``mongod``, which implements all of it."""

from __future__ import annotations

import os

import pymongo
import pytest
from pymongo.errors import OperationFailure

pytestmark = pytest.mark.skipif(bool(os.environ.get("MMM_TEST_MONGOD")),
                                reason="the embedded server's own refusals")

JS = "function() { return 1; }"

REFUSED = {
    "createUser": (59, lambda c: c.app.command("createUser", "u", pwd="p", roles=[])),
    "$where": (2, lambda c: list(c.app.docs.find({"$where": "this.a == 1"}))),
    "$function": (168, lambda c: list(c.app.docs.aggregate(
        [{"$set": {"x": {"$function": {"body": JS, "args": [], "lang": "js"}}}}]))),
    "mapReduce": (59, lambda c: c.app.command("mapReduce", "docs", map=JS, reduce=JS, out={"inline": 1})),
    "$text": (27, lambda c: list(c.app.docs.find({"$text": {"$search": "a"}}))),
    "$near": (238, lambda c: list(c.app.docs.find({"loc": {"$near": [0, 0]}}))),
    "$geoNear": (238, lambda c: list(c.app.docs.aggregate([{"$geoNear": {"near": [0, 0], "distanceField": "d"}}]))),
    "watch": (40573, lambda c: c.app.docs.watch()),
    "view": (115, lambda c: c.app.command("create", "v", viewOn="docs", pipeline=[])),
    "collation": (238, lambda c: list(c.app.docs.find({}, collation={"locale": "fr"}))),
}


@pytest.mark.parametrize("feature", sorted(REFUSED))
def test_unimplemented_features_are_refused_with_their_documented_code(client, feature):
    code, attempt = REFUSED[feature]
    client.app.docs.insert_one({"_id": 1, "a": 1, "loc": [0, 0]})
    with pytest.raises(OperationFailure) as e:
        attempt(client)
    assert e.value.code == code, e.value.details
    assert client.app.docs.find_one({"_id": 1})["a"] == 1  # nothing changed, still serving
