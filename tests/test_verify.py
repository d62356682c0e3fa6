"""``mmm verify`` / ``Replicator.verify``: are the servers of each link identical?"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import bson
import pymongo
import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp

import mmm
from conftest import wait_for

MMM = [sys.executable, "-m", "mmm"]


def run_cli(*args, timeout=120):
    return subprocess.run(MMM + list(args), capture_output=True, text=True, timeout=timeout)


def replicator(a, b, links, **kwargs):
    return mmm.Replicator(servers={"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
                          links=links, **kwargs)


def config(tmp_path, a, b, links):
    cfg = tmp_path / "mmm.yml"
    lines = [f"a:\n  id: A\n  uri: '{a.uri}'", f"b:\n  id: B\n  uri: '{b.uri}'", "links:"]
    lines += [f"  - {{src: '{s}', dst: '{d}'}}" for s, d in links]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def replicated(ca, cb, db, coll, timeout=20):
    """Waits until b's collection holds what a's does (compared as decoded documents)."""
    def same():
        return list(ca[db][coll].find().sort("_id", 1)) == list(cb[db][coll].find().sort("_id", 1))
    wait_for(same, timeout=timeout)


@pytest.fixture
def pair(mongo_server_factory):
    a, b = mongo_server_factory(), mongo_server_factory()
    ca, cb = pymongo.MongoClient(a.uri), pymongo.MongoClient(b.uri)
    yield a, b, ca, cb
    ca.close()
    cb.close()


def test_identical_servers_are_consistent(pair, tmp_path):
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/app.*", "b/app.*"), ("b/app.*", "a/app.*")])
    with r:
        ca.app.items.insert_many([{"_id": i, "v": i, "sub": {"x": i}} for i in range(3000)])
        cb.app.other.insert_many([{"_id": f"k{i}", "v": [i, {"y": i}]} for i in range(500)])
        replicated(ca, cb, "app", "items")
        replicated(ca, cb, "app", "other")
        result = r.verify()
    assert result.consistent
    assert sorted(p.ends for p in result.pairs) == [("a/app.items", "b/app.items"), ("a/app.other", "b/app.other")]
    assert {p.ends[0]: p.compared for p in result.pairs} == {"a/app.items": 3000, "a/app.other": 500}
    assert result.differences == [] and all(p.resumed is None for p in result.pairs)
    assert isinstance(result.as_of, datetime.datetime)
    out = run_cli("-c", str(config(tmp_path, a, b, [("a/app.*", "b/app.*")])), "verify")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("consistent as of") == 2


def test_field_order_is_not_a_difference_but_types_and_values_are(pair):
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/app.c", "b/app.c")])
    with r:
        ca.app.c.insert_many([{"_id": i, "x": i, "y": {"p": 1, "q": [1, {"m": 1, "n": 2}]}} for i in range(20)])
        replicated(ca, cb, "app", "c")
        # Behind mmm's back (no link reads b): the same values, fields in another order.
        for i in range(10):
            cb.app.c.replace_one({"_id": i}, {"_id": i, "y": {"q": [1, {"n": 2, "m": 1}], "p": 1}, "x": i})
        assert list(cb.app.c.find_one({"_id": 3})) != list(ca.app.c.find_one({"_id": 3}))  # key order
        assert r.verify().consistent
        # Numerically equal is not the same value: 1 (int) vs 1.0 (double) vs "1" vs NumberLong(1).
        cb.app.c.update_one({"_id": 11}, {"$set": {"x": 11.0}})
        cb.app.c.update_one({"_id": 12}, {"$set": {"x": "12"}})
        cb.app.c.update_one({"_id": 13}, {"$set": {"x": Int64(13)}})
        cb.app.c.update_one({"_id": 14}, {"$set": {"y.q": [{"m": 1, "n": 2}, 1]}})  # array order
        result = r.verify(wait=5)
    pair_result = result.pairs[0]
    assert not result.consistent and pair_result.differences == 4
    assert sorted(d.id for d in pair_result.listed) == [11, 12, 13, 14]
    by_id = {d.id: d.versions for d in pair_result.listed}
    assert by_id[11]["a/app.c"]["x"] == 11 and isinstance(by_id[11]["b/app.c"]["x"], float)
    assert pair_result.lagging_links == []


def test_divergence_behind_mmms_back_is_found_with_both_versions(pair, tmp_path):
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/app.c", "b/app.c")])
    with r:
        ca.app.c.insert_many([{"_id": i, "v": i} for i in range(5000)])
        replicated(ca, cb, "app", "c")
        cb.app.c.update_one({"_id": 17}, {"$set": {"v": "changed"}})
        cb.app.c.delete_one({"_id": 4000})
        cb.app.c.insert_one({"_id": "only-on-b", "v": 1})
        result = r.verify(wait=5)
        (p,) = result.pairs
        assert p.differences == 3
        versions = {d.id: d.versions for d in p.listed}
        assert versions == {
            17: {"a/app.c": {"_id": 17, "v": 17}, "b/app.c": {"_id": 17, "v": "changed"}},
            4000: {"a/app.c": {"_id": 4000, "v": 4000}, "b/app.c": None},
            "only-on-b": {"a/app.c": None, "b/app.c": {"_id": "only-on-b", "v": 1}},
        }
        # status() shows the last result.
        last = r.status()[0]["last_verify"]
        assert last["consistent"] is False and last["differences"] == 3
    cfg = config(tmp_path, a, b, [("a/app.c", "b/app.c")])
    out = run_cli("-c", str(cfg), "verify", "--json", "--wait", "5")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["consistent"] is False
    (jp,) = doc["pairs"]
    assert set(jp) >= {"ends", "consistent", "as_of", "compared", "differences", "listed", "unsettled",
                       "lagging_links", "resumed"}
    assert jp["ends"] == ["a/app.c", "b/app.c"] and jp["differences"] == 3 and jp["compared"] == 5001
    listed = {json.dumps(d["_id"]): d["versions"] for d in jp["listed"]}
    assert listed['{"$numberInt": "17"}'] == {
        "a/app.c": {"_id": {"$numberInt": "17"}, "v": {"$numberInt": "17"}},
        "b/app.c": {"_id": {"$numberInt": "17"}, "v": "changed"},
    }
    assert listed['"only-on-b"']["a/app.c"] is None
    text = run_cli("-c", str(cfg), "verify", "--wait", "5")
    assert text.returncode == 1
    assert "3 document(s) differ" in text.stdout and "(absent)" in text.stdout


def test_lag_is_not_a_difference(pair):
    """Writes go on on both sides while verify runs: what the links have not applied yet when a
    range is read is re-checked after they catch up, and never reported."""
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/app.c", "b/app.c"), ("b/app.c", "a/app.c")])
    stop = threading.Event()

    def writer(client, ids):
        rnd = random.Random(len(ids))
        n = 0
        while not stop.is_set():
            batch = [pymongo.UpdateOne({"_id": rnd.choice(ids)}, {"$set": {"v": n + k, "w": "x" * rnd.randint(0, 50)}})
                     for k in range(20)]
            client.app.c.bulk_write(batch)
            n += 20
            time.sleep(0.01)

    def slow_commits(client, server: str, mode) -> bool:
        """Each link's commits on `server` take 40 ms more (a slow network), so that writes are
        in flight while the ranges are read; False where the server has no test commands."""
        if not client.admin.command("getParameter", "*").get("enableTestCommands"):
            return False
        client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": {
            "failCommands": ["commitTransaction"], "blockConnection": True, "blockTimeMS": 40,
            "appName": f"mmm link {server}"}})
        return True

    with r:
        ca.app.c.insert_many([{"_id": i, "v": 0} for i in range(4000)])
        replicated(ca, cb, "app", "c")
        lagging = all([slow_commits(ca, "a", "alwaysOn"), slow_commits(cb, "b", "alwaysOn")])
        # Even ids are written on a, odd ids on b: no conflicts, only lag.
        threads = [threading.Thread(target=writer, args=(ca, list(range(0, 4000, 2)))),
                   threading.Thread(target=writer, args=(cb, list(range(1, 4000, 2))))]
        for t in threads:
            t.start()
        # The writes go on through verify's first reads, then stop: its re-checks settle.
        threading.Timer(2.0, stop.set).start()
        try:
            time.sleep(0.3)
            results = [r.verify(range_size=100, wait=20, max_rounds=8)]
        finally:
            stop.set()
            for t in threads:
                t.join()
            if lagging:
                slow_commits(ca, "a", "off")
                slow_commits(cb, "b", "off")
    for result in results:
        (p,) = result.pairs
        assert p.differences == 0, p.listed
        assert p.lagging_links == []
    # The writes were in flight while the ranges were read: some looked different at first.
    if lagging:
        assert sum(res.pairs[0].suspect_ranges for res in results) > 0


def test_an_interrupted_verify_resumes_from_its_saved_position(pair, tmp_path):
    a, b, ca, cb = pair
    # Large enough that the survey outlasts its first saves (every 200 ms) even in a release
    # build, which surveys 200,000 documents in about that time.
    n = 1_000_000
    for coll in (ca.app.big, cb.app.big):
        for start in range(0, n, 50_000):
            coll.insert_many([{"_id": i, "v": i} for i in range(start, start + 50_000)])
    cfg = config(tmp_path, a, b, [("a/app.big", "b/app.big")])
    proc = subprocess.Popen(MMM + ["-c", str(cfg), "verify", "--range-size", "20", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Killed as soon as it has saved some progress.
        wait_for(lambda: (cb["__mmm"].verify.find_one({"_id": "a/app.big<->b/app.big"}) or {}).get("compared", 0) > 0,
                 timeout=60, interval=0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    saved = cb["__mmm"].verify.find_one({"_id": "a/app.big<->b/app.big"})
    assert saved is not None and "finished" not in saved
    assert 0 < saved["compared"] < n
    out = run_cli("-c", str(cfg), "verify", "--json")
    assert out.returncode == 0, out.stderr
    assert f"from its saved position ({saved['compared']} documents compared" in out.stderr
    (p,) = json.loads(out.stdout)["pairs"]
    assert p["resumed"] and p["compared"] == n
    # Finished: the next run starts afresh and says nothing of resuming.
    again = run_cli("-c", str(cfg), "verify", "--json")
    assert again.returncode == 0 and "resumed" not in again.stderr
    assert json.loads(again.stdout)["pairs"][0]["resumed"] is None
    assert cb["__mmm"].verify.find_one({"_id": "a/app.big<->b/app.big"})["finished"]["consistent"] is True


def test_renamed_namespaces_and_both_directions_are_one_pair_each(pair):
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/src.*", "b/dst.*")])
    with r:
        ca.src.c.insert_many([{"_id": i} for i in range(10)])
        wait_for(lambda: cb.dst.c.count_documents({}) == 10)
        result = r.verify()
        assert [p.ends for p in result.pairs] == [("a/src.c", "b/dst.c")] and result.consistent
        cb.dst.c.delete_one({"_id": 3})
        result = r.verify(ns="dst.c", wait=5)
    assert [(d.id, d.versions) for d in result.differences] == [(3, {"a/src.c": {"_id": 3}, "b/dst.c": None})]


def test_field_mode_marker_is_not_a_difference(pair):
    a, b, ca, cb = pair
    r = replicator(a, b, [mmm.Link("a/app.c", "b/app.c", marker="field")])
    with r:
        ca.app.c.insert_many([{"_id": i, "v": i} for i in range(50)])
        wait_for(lambda: cb.app.c.count_documents({"__mmm": {"$exists": True}}) == 50)
        assert r.verify().consistent


def test_ids_of_every_type_odd_names_and_huge_documents(pair):
    a, b, ca, cb = pair
    ids = [MinKey(), None, -5, Int64(2**40), 2.5, Decimal128("7.25"), "", "ünï ☃ \u0000x", {"a": 1, "b": [1, 2]},
           {"nested": {"deep": {"er": "x"}}}, Binary(b"\x00\x01", 0), Binary(b"\x02", 4), ObjectId(),
           False, True, datetime.datetime(2020, 1, 1), Timestamp(5, 6), MaxKey()]
    coll_name = "odd name-ü.with.dots"
    r = replicator(a, b, [("a/we-ird_db.*", "b/we-ird_db.*"), ("b/we-ird_db.*", "a/we-ird_db.*")])
    with r:
        ca["we-ird_db"][coll_name].insert_many([{"_id": i, "n": k} for k, i in enumerate(ids)])
        ca["we-ird_db"].huge.insert_one({"_id": 1, "blob": "x" * (15 * 1024 * 1024)})
        wait_for(lambda: cb["we-ird_db"][coll_name].count_documents({}) == len(ids)
                 and cb["we-ird_db"].huge.count_documents({}) == 1, timeout=30)
        result = r.verify(range_size=3)
        assert result.consistent, result.pairs
        assert {p.ends[0]: p.compared for p in result.pairs} == {f"a/we-ird_db.{coll_name}": len(ids), "a/we-ird_db.huge": 1}
    # Links stopped: every id changed on b alone, nothing owed by any link but these writes.
    for i in ids:
        cb["we-ird_db"][coll_name].update_one({"_id": i}, {"$set": {"n": "changed"}})
    cb["we-ird_db"].huge.update_one({"_id": 1}, {"$set": {"blob": "y" + "x" * (15 * 1024 * 1024 - 1)}})
    result = r.verify(wait=1, max_listed=100)
    by_ns = {p.ends[0]: p for p in result.pairs}
    odd = by_ns[f"a/we-ird_db.{coll_name}"]
    assert odd.differences == len(ids)
    found = [bson.encode({"_id": d.id}) for d in odd.listed]
    assert sorted(found) == sorted(bson.encode({"_id": i}) for i in ids)
    assert by_ns["a/we-ird_db.huge"].differences == 1
    assert by_ns["a/we-ird_db.huge"].listed[0].versions["b/we-ird_db.huge"]["blob"][0] == "y"
    # The link b -> a owes these writes (it is not running): said, not hidden.
    assert odd.lagging_links


def test_exit_codes_and_bad_namespaces(pair, tmp_path):
    a, b, ca, cb = pair
    cfg = config(tmp_path, a, b, [("a/app.*", "b/app.*")])
    ok = run_cli("-c", str(cfg), "verify", "--ns", "app.nothing")
    assert ok.returncode == 0, ok.stderr
    assert "(0 documents)" in ok.stdout
    for ns, why in [("other.c", "no link carries"), ("admin.system.users", "does not replicate"),
                    ("app.system.views", "does not replicate"), ("__mmm.verify", "does not replicate"),
                    ("local.oplog.rs", "does not replicate"), ("app", "db.collection"), ("", "db.collection"),
                    ("app.*", "db.collection"), ("*", "db.collection"),
                    ("app." + "c" * 10_000, "--ns"), ("Admin.c", "does not replicate")]:
        out = run_cli("-c", str(cfg), "verify", "--ns", ns)
        assert out.returncode == 2, (ns, out)
        assert why in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    r = replicator(a, b, [("a/app.*", "b/app.*")])
    for ns in ("app.c\u0000x", "app.\ud800"):
        with pytest.raises(ValueError):
            r.verify(ns)
    with pytest.raises(TypeError):
        r.verify(5)
    missing = run_cli("-c", str(tmp_path / "nope.yml"), "verify")
    assert missing.returncode == 2 and "no such configuration file" in missing.stderr
    down = tmp_path / "down.yml"
    down.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: 'mongodb://user:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=300'\n"
                    "links:\n  - {src: a/app.c, dst: b/app.c}\n")
    out = run_cli("-c", str(down), "verify")
    assert out.returncode == 2 and "s3cret" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith("mmm: verify: ")
    for bad in (["--range-size", "0"], ["--wait", "-1"], ["--wait", "nan"]):
        assert run_cli("-c", str(cfg), "verify", *bad).returncode == 2


def test_verify_every_runs_while_replicating_and_status_shows_it(pair, tmp_path):
    a, b, ca, cb = pair
    r = replicator(a, b, [("a/app.c", "b/app.c")], verify_every=0.5)
    with r:
        ca.app.c.insert_many([{"_id": i} for i in range(100)])
        wait_for(lambda: "last_verify" in r.status()[0], timeout=30)
        wait_for(lambda: r.status()[0]["last_verify"]["consistent"], timeout=30)
    for bad in (0, -1, float("nan"), "10", True):
        with pytest.raises(ValueError):
            replicator(a, b, [("a/app.c", "b/app.c")], verify_every=bad)
    cfg = config(tmp_path, a, b, [("a/app.c", "b/app.c")])
    cfg.write_text(cfg.read_text() + "verify_every: 60\n")
    assert mmm.Replicator.from_file(str(cfg)).verify_every == 60
    cfg.write_text(cfg.read_text().replace("verify_every: 60", "verify_every: soon"))
    with pytest.raises(mmm.ConfigError, match="verify_every"):
        mmm.Replicator.from_file(str(cfg))


def test_mmm_run_verifies_every_so_often_from_the_yaml_file(pair, tmp_path):
    a, b, ca, cb = pair
    ca.app.c.insert_many([{"_id": i} for i in range(10)])
    cb.app.c.insert_many([{"_id": i} for i in range(10)])
    cfg = config(tmp_path, a, b, [("a/app.c", "b/app.c")])
    cfg.write_text(cfg.read_text() + "verify_every: 0.5\n")
    proc = subprocess.Popen(MMM + ["-v", "-c", str(cfg), "run"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "verify: consistent as of" in line:
                break
        else:
            pytest.fail("".join(lines))
        cb.app.c.delete_one({"_id": 3})  # behind mmm's back: the next round says so
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "document(s) differ: " in line:
                break
        else:
            pytest.fail("".join(lines))
        assert "WARNING" in line and "a/app.c vs b/app.c: 1" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
