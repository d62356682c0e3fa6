"""Convergence: servers that wrote the same document concurrently end with the same version,
decided by the namespace's policy, and every conflict is journaled on the servers that met it.

Writes are made while replication is stopped (so neither side sees the other's change), then
replication runs until the servers agree.
"""

from __future__ import annotations

import time

import pymongo
import pytest

import mmm
from conftest import wait_for


def everything(client, db="app"):
    return {name: sorted(client[db][name].find(), key=lambda d: str(d["_id"])) for name in client[db].list_collection_names()}


def wait_identical(clients, db="app", timeout=30.0):
    def same():
        snapshots = [everything(c, db) for c in clients]
        return all(s == snapshots[0] for s in snapshots[1:])

    wait_for(same, timeout=timeout)
    return everything(clients[0], db)


def replicate_until_identical(r, clients, timeout=30.0):
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()), timeout=timeout)
        result = wait_identical(clients, timeout=timeout)
        # Let any version still in flight land, then check again.
        time.sleep(0.5)
        assert wait_identical(clients, timeout=timeout) == result
    return result


@pytest.fixture
def pair(mongo_server_factory):
    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    yield a, b, ca, cb
    ca.close()
    cb.close()


def bidirectional(a, b, **kwargs):
    return mmm.Replicator(
        servers={"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}},
        links=[("factory/app.*", "cloud/app.*"), ("cloud/app.*", "factory/app.*")],
        **kwargs,
    )


def start_in_sync(r, clients, docs):
    """Inserts `docs` on the first server, replicated everywhere, then stops replication."""
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()), timeout=30)
        clients[0].app.c.insert_many(docs)
        wait_identical(clients)


def later():
    """Wall clocks move between two writes, so "later" is unambiguous."""
    time.sleep(0.02)


def test_the_later_write_wins_on_both_sides_and_both_journal_it(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b)
    start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0, "x": 0}, {"_id": 2, "v": 0}])
    ca.app.c.update_one({"_id": 1}, {"$set": {"v": "factory"}, "$inc": {"x": 1}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "cloud"}})
    result = replicate_until_identical(r, [ca, cb])
    # Whole-document LWW: the cloud's version, as the cloud wrote it (not a mix of both).
    assert result["c"][0] == {"_id": 1, "v": "cloud", "x": 0}
    journal = r.conflicts("app.c")
    assert {e["server"] for e in journal} == {"F", "C"}
    assert len({e["conflict"] for e in journal}) == 1
    by_server = {e["server"]: e for e in journal}
    assert by_server["F"]["winner"] == "theirs" and by_server["C"]["winner"] == "ours"
    assert by_server["F"]["ours"]["doc"] == {"_id": 1, "v": "factory", "x": 1}
    assert by_server["F"]["theirs"]["doc"] == {"_id": 1, "v": "cloud", "x": 0}
    assert sum(s["conflicts"] for s in r.status()) == 2
    assert [(e.server, e.winner) for e in sorted(r.conflict_events, key=lambda e: e.server)] == [("C", "ours"), ("F", "theirs")]


def test_a_later_transaction_of_many_writes_wins_everywhere_and_rows_agree(pair):
    """Observation reads transactions cut to their first ops (a batch mmm applied needs no
    more); a local transaction or a document with a long `applyOps` array of its own must be
    read again whole, or its later writes would lose to earlier ones and rows would differ."""
    a, b, ca, cb = pair
    r = bidirectional(a, b)
    start_in_sync(r, [ca, cb], [{"_id": i, "v": 0} for i in range(10)])
    for i in range(10):
        cb.app.c.update_one({"_id": i}, {"$set": {"v": "cloud"}})
    later()
    with ca.start_session() as s, s.start_transaction():
        for i in range(10):
            ca.app.c.update_one({"_id": i}, {"$set": {"v": "factory"}}, session=s)
    ca.app.c.insert_one({"_id": 100, "applyOps": list(range(12))})
    result = replicate_until_identical(r, [ca, cb])
    assert [d["v"] for d in result["c"] if d["_id"] != 100] == ["factory"] * 10

    def rows(client):
        return {row["_id"]["i"]: (row["h"], row["s"], row.get("c")) for row in client["__mmm"].meta.find({"_id.n": "app.c"})}

    wait_for(lambda: rows(ca) == rows(cb) and 100 in rows(ca))


def test_a_write_made_after_seeing_another_wins_whatever_the_clocks(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b)
    start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0}])
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "cloud first"}})
    replicate_until_identical(r, [ca, cb])
    # The factory saw the cloud's version before writing: no conflict, its write wins.
    ca.app.c.update_one({"_id": 1}, {"$set": {"v": "factory after"}})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"] == [{"_id": 1, "v": "factory after"}]
    assert r.conflicts() == []


def test_a_later_delete_wins_and_a_stale_update_never_resurrects(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b)
    start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0}, {"_id": 2, "v": 0}])
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "stale"}})
    cb.app.c.replace_one({"_id": 2}, {"_id": 2, "v": "stale replace"})
    later()
    ca.app.c.delete_one({"_id": 1})
    ca.app.c.delete_one({"_id": 2})
    result = replicate_until_identical(r, [ca, cb])
    assert result.get("c", []) == []
    # A stale insert of the same _id arriving now is older than the tombstone: it loses too.
    assert len(r.conflicts("app.c")) == 4


def test_delete_wins_and_update_wins(pair):
    a, b, ca, cb = pair
    for deletes, expected in (("delete_wins", []), ("update_wins", [{"_id": 1, "v": "updated"}])):
        ca.app.c.drop()
        cb.app.c.drop()
        r = bidirectional(a, b, resolve=mmm.LWW(deletes=deletes))
        start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0}])
        if deletes == "delete_wins":
            ca.app.c.delete_one({"_id": 1})
            later()
            cb.app.c.update_one({"_id": 1}, {"$set": {"v": "updated"}})  # later, but loses
        else:
            cb.app.c.update_one({"_id": 1}, {"$set": {"v": "updated"}})
            later()
            ca.app.c.delete_one({"_id": 1})  # later, but loses
        result = replicate_until_identical(r, [ca, cb])
        assert result.get("c", []) == expected, deletes


def test_prefer_keeps_the_preferred_servers_version(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve={"app.c": "prefer:cloud"})
    start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0}])
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "cloud"}})
    later()
    ca.app.c.update_one({"_id": 1}, {"$set": {"v": "factory, later"}})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"] == [{"_id": 1, "v": "cloud"}]
    assert any(e["winner"] == "rewrite-ours" and e["server"] == "C" for e in r.conflicts())


def test_a_resolver_runs_once_on_its_arbiter(pair):
    a, b, ca, cb = pair
    calls = []

    def merge(c: mmm.Conflict):
        calls.append(c)
        return {"tags": sorted(set(c.ours["tags"]) | set(c.theirs["tags"]))}

    r = bidirectional(a, b, resolve={"app.*": mmm.Resolver(merge, arbiter="cloud")})
    start_in_sync(r, [ca, cb], [{"_id": 1, "tags": ["a"]}])
    ca.app.c.update_one({"_id": 1}, {"$push": {"tags": "factory"}})
    cb.app.c.update_one({"_id": 1}, {"$push": {"tags": "cloud"}})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"] == [{"_id": 1, "tags": ["a", "cloud", "factory"]}]
    assert len(calls) == 1
    c = calls[0]
    assert (c.namespace, c.id, c.ours_stamp.server, c.theirs_stamp.server) == ("app.c", 1, "C", "F")
    assert c.base is None


def test_detection_only_leaves_the_versions_as_applied(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve=None)
    start_in_sync(r, [ca, cb], [{"_id": 1, "v": 0}])
    ca.app.c.update_one({"_id": 1}, {"$set": {"v": "factory"}})
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "cloud"}})
    with r:
        wait_for(lambda: len(r.conflict_events) >= 2, timeout=20)
    # Each side applied the other's change over its own: they crossed and stay different.
    assert ca.app.c.find_one()["v"] == "cloud"
    assert cb.app.c.find_one()["v"] == "factory"
    assert {e.winner for e in r.conflict_events} == {"as-is"}


@pytest.mark.parametrize("shape", ["star", "chain"])
def test_three_servers_converge(mongo_server_factory, shape):
    servers = [mongo_server_factory() for _ in range(3)]
    clients = [pymongo.MongoClient(s.uri) for s in servers]
    names = ["hub", "s1", "s2"] if shape == "star" else ["s1", "hub", "s2"]
    spec = {n: {"id": n.upper(), "uri": s.uri} for n, s in zip(names, servers)}
    # Star: hub in the middle, forwarding; chain s1 - hub - s2 is the same graph, declared in
    # another order.
    links = [
        {"src": "s1/app.*", "dst": "hub/app.*"},
        {"src": "s2/app.*", "dst": "hub/app.*"},
        {"src": "hub/app.*", "dst": "s1/app.*", "forward": True},
        {"src": "hub/app.*", "dst": "s2/app.*", "forward": True},
    ]
    r = mmm.Replicator(spec, links)
    by_name = dict(zip(names, clients))
    start_in_sync(r, [by_name["s1"], by_name["hub"], by_name["s2"]], [{"_id": i, "v": 0} for i in range(5)])
    # The two spokes change the same documents concurrently, the hub some of them too.
    by_name["s1"].app.c.update_one({"_id": 0}, {"$set": {"v": "s1"}})
    by_name["hub"].app.c.update_one({"_id": 1}, {"$set": {"v": "hub"}})
    by_name["s2"].app.c.delete_one({"_id": 2})
    later()
    by_name["s2"].app.c.update_one({"_id": 0}, {"$set": {"v": "s2"}})
    by_name["s1"].app.c.update_one({"_id": 1}, {"$set": {"v": "s1"}})
    by_name["s1"].app.c.update_one({"_id": 2}, {"$set": {"v": "s1"}})
    result = replicate_until_identical(r, clients)
    assert result["c"] == [{"_id": 0, "v": "s2"}, {"_id": 1, "v": "s1"}, {"_id": 2, "v": "s1"}, {"_id": 3, "v": 0}, {"_id": 4, "v": 0}]
    for c in clients:
        c.close()


def test_fields_keeps_concurrent_changes_to_different_fields_on_both_sides(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve=mmm.FieldMerge())
    start_in_sync(r, [ca, cb], [{"_id": 1, "a": 0, "b": 0, "c": 0}, {"_id": 2, "v": 0}])
    ca.app.c.update_one({"_id": 1}, {"$set": {"a": "factory"}, "$inc": {"c": 1}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"b": "cloud"}})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"][0] == {"_id": 1, "a": "factory", "b": "cloud", "c": 1}
    journal = r.conflicts("app.c")
    assert {e["server"] for e in journal} == {"F", "C"}
    assert {e["winner"] for e in journal} == {"merged"}
    assert {e["policy"] for e in journal} == {"fields"}
    by_server = {e["server"]: e for e in journal}
    assert by_server["F"]["ours"]["doc"] == {"_id": 1, "a": "factory", "b": 0, "c": 1}
    assert by_server["F"]["theirs"]["doc"] == {"_id": 1, "a": 0, "b": "cloud", "c": 0}


def test_fields_the_later_write_of_one_field_wins_on_both_sides(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve="fields")
    start_in_sync(r, [ca, cb], [{"_id": 1, "a": 0, "b": 0}])
    cb.app.c.update_one({"_id": 1}, {"$set": {"a": "cloud", "b": "cloud"}})
    later()
    ca.app.c.update_one({"_id": 1}, {"$set": {"a": "factory"}, "$unset": {"b": ""}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"x": {"deep": [1, 2]}}})
    result = replicate_until_identical(r, [ca, cb])
    # b's removal is a write of b, later than the cloud's.
    assert result["c"] == [{"_id": 1, "a": "factory", "x": {"deep": [1, 2]}}]


def test_fields_a_replacement_writes_every_field_and_later_field_writes_stay(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve={"app.*": "fields"})
    start_in_sync(r, [ca, cb], [{"_id": 1, "a": 0, "b": 0}])
    cb.app.c.update_one({"_id": 1}, {"$set": {"a": "before the replacement"}})
    later()
    ca.app.c.replace_one({"_id": 1}, {"r": "factory"})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"b": "after the replacement"}})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"] == [{"_id": 1, "r": "factory", "b": "after the replacement"}]


def test_fields_a_delete_and_a_later_concurrent_update_leave_the_updated_fields(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve=mmm.FieldMerge())
    start_in_sync(r, [ca, cb], [{"_id": 1, "a": 0, "b": 0}, {"_id": 2, "a": 0}])
    # 1: deleted, then (by the clock) updated concurrently: the update's fields come back.
    ca.app.c.delete_one({"_id": 1})
    # 2: updated, then deleted concurrently: the delete wins.
    cb.app.c.update_one({"_id": 2}, {"$set": {"a": "cloud"}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"b": "cloud"}})
    ca.app.c.delete_one({"_id": 2})
    result = replicate_until_identical(r, [ca, cb])
    assert result["c"] == [{"_id": 1, "b": "cloud"}]


@pytest.mark.parametrize("deletes", ["delete_wins", "update_wins"])
def test_fields_with_a_delete_rule_a_delete_and_a_concurrent_update_end_as_the_rule_says(pair, deletes):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve=mmm.FieldMerge(deletes=deletes))
    start_in_sync(r, [ca, cb], [{"_id": 1, "a": 0, "b": 0}, {"_id": 2, "a": 0, "b": 0}, {"_id": 3, "a": 0}])
    # 1: deleted, then (by the clock) updated concurrently: lww per field would bring back `b`.
    ca.app.c.delete_one({"_id": 1})
    # 2: updated, then deleted concurrently: lww per field would delete it.
    cb.app.c.update_one({"_id": 2}, {"$set": {"a": "cloud"}})
    # 3: concurrent updates of different fields, no delete: merged as without a rule.
    ca.app.c.update_one({"_id": 3}, {"$set": {"a": "factory"}})
    cb.app.c.update_one({"_id": 3}, {"$set": {"b": "cloud"}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"b": "cloud"}})
    ca.app.c.delete_one({"_id": 2})
    result = replicate_until_identical(r, [ca, cb])
    merged = {"_id": 3, "a": "factory", "b": "cloud"}
    if deletes == "delete_wins":
        assert result["c"] == [merged]
    else:
        assert result["c"] == [{"_id": 1, "a": 0, "b": "cloud"}, {"_id": 2, "a": "cloud", "b": 0}, merged]
    # A rewrite only where the merge per field would not give what the rule wants (document 2
    # under delete_wins is deleted by the merge already).
    rewritten = [c for c in r.conflicts("app.c") if c["winner"].startswith("rewrite")]
    assert sorted({c["id"] for c in rewritten}) == ([1] if deletes == "delete_wins" else [1, 2]), r.conflicts("app.c")
    assert all(c["policy"] == f"fields,deletes={deletes}" for c in rewritten)


def test_field_mode_tags_versions_installed_whole_with_the_server_they_came_from(pair):
    a, b, ca, cb = pair
    r = mmm.Replicator(
        servers={"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}},
        links=[mmm.Link("factory/app.*", "cloud/app.*", marker="field"),
               mmm.Link("cloud/app.*", "factory/app.*", marker="field")],
        resolve={"app.f": "fields", "*": "lww"},
    )
    with r:  # copies carry the tag: compared below without it
        ca.app.c.insert_one({"_id": 1, "v": 0})
        ca.app.f.insert_one({"_id": 2, "a": 0, "b": 0})
        wait_for(lambda: cb.app.c.find_one({"_id": 1}) and cb.app.f.find_one({"_id": 2}), timeout=30)
    # 1: both change it, the cloud later: the factory takes the cloud's version whole.
    ca.app.c.update_one({"_id": 1}, {"$set": {"v": "factory"}})
    # 2: both change different fields: each side merges in the other's.
    ca.app.f.update_one({"_id": 2}, {"$set": {"a": "factory"}})
    cb.app.f.update_one({"_id": 2}, {"$set": {"b": "cloud"}})
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"v": "cloud"}})

    def untagged(client):
        return {name: [{k: v for k, v in d.items() if k != "__mmm"} for d in docs]
                for name, docs in everything(client).items()}

    with r:
        wait_for(lambda: untagged(ca) == untagged(cb) and cb.app.f.find_one({"_id": 2})["a"] == "factory", timeout=30)
        time.sleep(0.5)
    assert untagged(ca)["c"] == [{"_id": 1, "v": "cloud"}]
    assert ca.app.c.find_one({"_id": 1})["__mmm"]["origin"] == "C"
    assert ca.app.f.find_one({"_id": 2})["__mmm"]["origin"] == "C"
    assert cb.app.f.find_one({"_id": 2})["__mmm"]["origin"] == "F"


def test_fields_a_document_with_ten_thousand_fields_converges(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, resolve="fields")
    start_in_sync(r, [ca, cb], [{"_id": 1, **{f"f{i}": 0 for i in range(10_000)}}])
    # All of them in one update, then 300 by an update of their own (as many field stamps
    # to keep) on one side; one of them, and a field through a dotted path with a space in
    # its name, on the other.
    ca.app.c.update_one({"_id": 1}, {"$set": {f"f{i}": "all" for i in range(10_000)}})
    with ca.start_session() as s, s.start_transaction():
        for j in range(300):
            ca.app.c.update_one({"_id": 1}, {"$set": {f"f{j}": "factory"}}, session=s)
    later()
    cb.app.c.update_one({"_id": 1}, {"$set": {"f7": "cloud", "odd name.x": 1}})
    result = replicate_until_identical(r, [ca, cb], timeout=120)
    doc = result["c"][0]
    assert doc["f7"] == "cloud" and doc["odd name"] == {"x": 1}
    assert sum(1 for v in doc.values() if v == "factory") == 299
    assert sum(1 for v in doc.values() if v == "all") == 9_700


@pytest.mark.parametrize("shape", ["star", "chain"])
def test_fields_three_servers_keep_every_field_written(mongo_server_factory, shape):
    servers = [mongo_server_factory() for _ in range(3)]
    clients = [pymongo.MongoClient(s.uri) for s in servers]
    names = ["hub", "s1", "s2"] if shape == "star" else ["s1", "hub", "s2"]
    spec = {n: {"id": n.upper(), "uri": s.uri} for n, s in zip(names, servers)}
    links = [
        {"src": "s1/app.*", "dst": "hub/app.*"},
        {"src": "s2/app.*", "dst": "hub/app.*"},
        {"src": "hub/app.*", "dst": "s1/app.*", "forward": True},
        {"src": "hub/app.*", "dst": "s2/app.*", "forward": True},
    ]
    r = mmm.Replicator(spec, links, resolve="fields")
    by_name = dict(zip(names, clients))
    start_in_sync(r, [by_name["s1"], by_name["hub"], by_name["s2"]], [{"_id": i, "x": 0, "y": 0, "z": 0} for i in range(3)])
    by_name["s1"].app.c.update_one({"_id": 0}, {"$set": {"x": "s1"}})
    by_name["s2"].app.c.update_one({"_id": 0}, {"$set": {"y": "s2"}})
    by_name["hub"].app.c.update_one({"_id": 0}, {"$set": {"z": "hub"}})
    by_name["hub"].app.c.update_one({"_id": 1}, {"$set": {"x": "hub"}})
    by_name["s2"].app.c.delete_one({"_id": 2})
    later()
    by_name["s2"].app.c.update_one({"_id": 0}, {"$set": {"x": "s2"}})
    by_name["s1"].app.c.update_one({"_id": 1}, {"$set": {"y": "s1"}})
    by_name["s1"].app.c.update_one({"_id": 2}, {"$set": {"z": "s1"}})
    result = replicate_until_identical(r, clients)
    assert result["c"] == [
        {"_id": 0, "x": "s2", "y": "s2", "z": "hub"},
        {"_id": 1, "x": "hub", "y": "s1", "z": 0},
        {"_id": 2, "z": "s1"},
    ]
    for c in clients:
        c.close()


def test_policies_are_checked_before_anything_runs(pair):
    a, b, ca, cb = pair
    with pytest.raises(ValueError, match="unknown conflict policy"):
        bidirectional(a, b, resolve="newest")
    with pytest.raises(ValueError, match="not a server of this topology"):
        bidirectional(a, b, resolve=mmm.Prefer("moon"))
    with pytest.raises(ValueError, match="deletes is one of"):
        mmm.LWW(deletes="sometimes")
    with pytest.raises(ValueError, match="deletes is one of"):
        mmm.FieldMerge(deletes="sometimes")
    for bad in ("fields,deletes=maybe", "fields,deletes=", "fields:x", "Fields", "fields,x=y"):
        with pytest.raises(ValueError):
            bidirectional(a, b, resolve=bad)
    with pytest.raises(ValueError, match="resolve patterns"):
        bidirectional(a, b, resolve={"app.c*": "lww"})
    with pytest.raises(ValueError, match="needs a callable"):
        mmm.Resolver("not a function", arbiter="cloud")
    with pytest.raises(ValueError):
        bidirectional(a, b, resolve={1: "lww"})
    assert mmm.policies.parse_policy("prefer:cloud,deletes=delete_wins") == mmm.Prefer("cloud", deletes="delete_wins")


@pytest.mark.parametrize("there, back", [("prefer:cloud", None), ("lww", "fields"), ("lww", "lww,deletes=update_wins"),
                                         ({"*": "lww", "app.c": "fields"}, "lww")])
def test_opposite_links_with_different_policies_are_refused(pair, there, back):
    a, b, ca, cb = pair
    servers = {"factory": {"id": "F", "uri": a.uri}, "cloud": {"id": "C", "uri": b.uri}}
    links = [mmm.Link("factory/app.*", "cloud/app.*", resolve=there), mmm.Link("cloud/app.*", "factory/app.*", resolve=back)]
    with pytest.raises(ValueError, match="different conflict policies") as e:
        mmm.Replicator(servers=servers, links=links)
    assert "factory/app.*->cloud/app.*" in str(e.value) or "cloud/app.*->factory/app.*" in str(e.value)
    # The same policy both ways, given per link or by the replicator, is fine; so is a link with
    # no way back.
    same = [mmm.Link("factory/app.*", "cloud/app.*", resolve=there), mmm.Link("cloud/app.*", "factory/app.*", resolve=there)]
    mmm.Replicator(servers=servers, links=same)
    mmm.Replicator(servers=servers, links=links[1:], resolve=there)
    assert mmm.policies.parse_policy("none") is None
    assert ca.list_database_names() == cb.list_database_names()
    assert "__mmm" not in ca.list_database_names()


def test_tombstones_are_purged_after_their_retention_and_not_before(pair):
    a, b, ca, cb = pair
    r = bidirectional(a, b, tombstone_retention=3)
    with r:
        wait_for(lambda: all(s["state"] == "running" for s in r.status()), timeout=30)
        ca.app.c.insert_many([{"_id": 1}, {"_id": 2}])
        wait_for(lambda: cb.app.c.count_documents({}) == 2, timeout=30)
        ca.app.c.delete_one({"_id": 1})
        wait_for(lambda: cb.app.c.count_documents({}) == 1, timeout=30)

        def tombstones(client):
            return client["__mmm"].meta.count_documents({"d": True})

        wait_for(lambda: tombstones(ca) == 1 and tombstones(cb) == 1, timeout=10)
        # Kept while young: a stale version arriving now still meets it.
        time.sleep(1.0)
        assert tombstones(ca) == 1
        # Gone once older than the retention and applied past by every link.
        time.sleep(2.5)
        ca.app.c.insert_one({"_id": 3})  # moves both links' positions past the delete
        cb.app.c.insert_one({"_id": 4})
        wait_for(lambda: tombstones(ca) == 0 and tombstones(cb) == 0, timeout=30)
        assert ca["__mmm"].meta.count_documents({"_id.i": 2}) == 1


def test_mmm_conflicts_lists_the_journal(pair, tmp_path):
    import json
    import subprocess
    import sys

    a, b, ca, cb = pair
    r = bidirectional(a, b)
    start_in_sync(r, [ca, cb], [{"_id": "x", "v": 0}])
    ca.app.c.update_one({"_id": "x"}, {"$set": {"v": 1}})
    later()
    cb.app.c.update_one({"_id": "x"}, {"$set": {"v": 2}})
    replicate_until_identical(r, [ca, cb])
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"factory:\n  id: F\n  uri: '{a.uri}'\ncloud:\n  id: C\n  uri: '{b.uri}'\n")
    cli = [sys.executable, "-m", "mmm", "-c", str(cfg), "conflicts"]
    table = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "app.c" in table.stdout and "'x'" in table.stdout and len(table.stdout.splitlines()) == 3
    as_json = subprocess.run(cli + ["--json", "--server", "cloud"], capture_output=True, text=True, timeout=60)
    entries = json.loads(as_json.stdout)
    assert [(e["server"], e["id"], e["winner"]) for e in entries] == [("C", "x", "ours")]
    bad = subprocess.run(cli + ["--server", "moon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown server" in bad.stderr
    bad = subprocess.run(cli + ["--limit", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


@pytest.mark.parametrize("text, message", [
    ("resolve: {1: lww}\n", "resolve patterns are strings"),
    ("resolve: [lww]\n", "expected a single value"),
    ("resolve: newest\n", "unknown conflict policy"),
    ("resolve: 'prefer:'\n", "unknown conflict policy"),
    ("resolve: 'lww,deletes=maybe'\n", "deletes is one of"),
    ("resolve: 'fields,deletes=always'\n", "deletes is one of"),
    ("tombstone_retention: -1\n", "positive duration"),
    ("tombstone_retention: 1e20\n", "positive duration"),
    ("tombstone_retention: ten days\n", "positive duration"),
])
def test_bad_policies_in_the_file_name_their_line(text, message):
    from mmm.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message) as e:
        parse_config("a:\n  id: A\n  uri: mongodb://h\n" + text, "mmm.yml")
    assert "mmm.yml, line 4" in str(e.value)


def test_fields_is_read_from_the_file():
    from mmm.config import parse_config
    from mmm.policies import normalize_resolve

    for text in ("resolve: fields\n", "resolve: {'app.*': 'fields,deletes=lww', '*': lww}\n"):
        cfg = parse_config("a:\n  id: A\n  uri: mongodb://h\n" + text, "mmm.yml")
        assert mmm.FieldMerge() in normalize_resolve(cfg.resolve).values(), cfg.resolve
    cfg = parse_config("a:\n  id: A\n  uri: mongodb://h\nresolve: 'fields,deletes=update_wins'\n", "mmm.yml")
    assert normalize_resolve(cfg.resolve) == {"*": mmm.FieldMerge(deletes="update_wins")}


def test_resolve_on_the_command_line_is_checked(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "mmm.yml"
    cfg.write_text("a:\n  id: A\n  uri: mongodb://127.0.0.1:1/?replicaSet=rs0\nlinks:\n  - {src: a/x.*, dst: a/y.*}\n")
    run = [sys.executable, "-m", "mmm", "-c", str(cfg), "run"]
    for bad, message in (("newest", "unknown conflict policy"), ("x.*=prefer:moon", "not a server"),
                         ("x.*=fields,deletes=never", "deletes is one of")):
        out = subprocess.run(run + ["--resolve", bad], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
