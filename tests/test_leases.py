"""Leases (one working process per tailer name or link, with fencing) and exactly-once
transactional triggers.

Processes that hold or lose a lease are real subprocesses, killed (SIGKILL) or paused (SIGSTOP)
as a crash or a hung host would be; every wait is generous and nothing asserts on timing.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import List

import pymongo
import pytest

import mmm
from conftest import wait_for

TTL = 1.0  # short leases keep the takeovers quick; every wait below allows far more

WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    import mmm

    uri, name, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    tailer = mmm.Tailer(uri, name=name, lease=True, lease_ttl=ttl, save_interval=0.1)

    @tailer.on("app.jobs", "i", transactional=True)
    def effect(op, session):
        job = op["o"]
        session.client.app.effects.insert_one({"job": job["_id"], "pid": os.getpid()}, session=session)
        if job.get("slow") and os.environ.get("SLOW_JOBS") == "1":
            print(f"in-trigger {job['_id']}", flush=True)
            time.sleep(job["slow"])

    tailer.start()
    held = -1
    while True:
        status = tailer.status()
        lease = status["lease"]
        now = lease["term"] if lease and lease["held"] and status["checkpoint"] is not None else None
        if now != held:
            print(f"held {now}" if now is not None else "standby", flush=True)
            held = now
        time.sleep(0.05)
    """
)


class Worker:
    """A subprocess running the leased tailer above; its stdout lines are collected."""

    def __init__(self, tmp_path, uri: str, name: str = "jobs", ttl: float = TTL, slow: bool = True) -> None:
        script = tmp_path / "lease_worker.py"
        script.write_text(WORKER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), uri, name, str(ttl)],
            stdout=subprocess.PIPE, stderr=open(tmp_path / f"worker-{time.monotonic_ns()}.log", "w"), text=True,
            env={**os.environ, "SLOW_JOBS": "1" if slow else "0"},
        )
        self.lines: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    @property
    def holds(self) -> bool:
        states = [l for l in self.lines if l.startswith(("held", "standby"))]
        return bool(states) and states[-1].startswith("held")

    @property
    def term(self) -> int:
        return int([l for l in self.lines if l.startswith("held")][-1].split()[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workers(tmp_path, mongo_server):
    started: List[Worker] = []

    def start(**kwargs) -> Worker:
        w = Worker(tmp_path, mongo_server.uri, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def effects_per_job(client) -> collections.Counter:
    return collections.Counter(d["job"] for d in client.app.effects.find())


def working(tailer) -> bool:
    """Holds its lease and knows where it starts (writes from now on reach it)."""
    status = tailer.status()
    return bool(status["lease"] and status["lease"]["held"] and status["checkpoint"] is not None)


def stored_checkpoint(client, name="jobs"):
    return client[mmm._mmm.MMM_DB][mmm._mmm.TAILER_CHECKPOINTS_COLLECTION].find_one({"_id": name})


# -- one worker per name -----------------------------------------------------------------------

def test_two_tailers_with_one_name_one_works_and_status_names_it(mongo_server, client):
    seen = [[], []]
    tailers = []
    for i in range(2):
        t = mmm.Tailer(mongo_server.uri, name="inspections", lease=True, lease_ttl=5.0)
        t.register("app.frames", "i", seen[i].append)
        tailers.append(t.start())
    try:
        wait_for(lambda: any(working(t) for t in tailers), timeout=30)
        client.app.frames.insert_many([{"_id": n} for n in range(20)])
        wait_for(lambda: len(seen[0]) + len(seen[1]) >= 20, timeout=30)
        time.sleep(0.5)
        statuses = [t.status()["lease"] for t in tailers]
        assert sorted(s["held"] for s in statuses) == [False, True]
        holder = next(s for s in statuses if s["held"])
        assert holder["holder"]["pid"] == os.getpid() and holder["holder"]["host"]
        assert holder["term"] >= 1 and holder["expires"].tzinfo is not None
        # The one standing by sees the same holder.
        other = next(s for s in statuses if not s["held"])
        assert other["holder"]["id"] == holder["holder"]["id"] and other["term"] == holder["term"]
        busy = 0 if statuses[0]["held"] else 1
        assert sorted(op["o"]["_id"] for op in seen[busy]) == list(range(20))
        assert seen[1 - busy] == []
        lease = client[mmm._mmm.MMM_DB][mmm._mmm.LEASES_COLLECTION].find_one({"_id": "tailer:inspections"})
        assert lease["term"] == holder["term"] and lease["holder"]["id"] == holder["holder"]["id"]
    finally:
        for t in tailers:
            t.stop()
        for t in tailers:
            t.join()


def test_a_stopped_holder_hands_over_at_once_and_the_next_resumes_from_the_checkpoint(mongo_server, client):
    first_seen, second_seen = [], []
    first = mmm.Tailer(mongo_server.uri, name="handover", lease=True, lease_ttl=30.0)
    first.register("app.frames", "i", first_seen.append)
    first.start()
    wait_for(lambda: (first.status()["lease"] or {}).get("held"), timeout=30)
    # The holder's first position is stored with its claim: writes after it are delivered.
    wait_for(lambda: stored_checkpoint(client, "handover") is not None, timeout=30)
    client.app.frames.insert_many([{"_id": n} for n in range(5)])
    wait_for(lambda: len(first_seen) == 5)
    first.stop()
    first.join()
    client.app.frames.insert_many([{"_id": n} for n in range(5, 10)])
    # A stored checkpoint wins over checkpoint=: "now" here would skip the five above.
    second = mmm.Tailer(mongo_server.uri, "now", name="handover", lease=True, lease_ttl=30.0)
    second.register("app.frames", "i", second_seen.append)
    with second:
        # The lease was released at stop: no need to wait out its 30 s.
        wait_for(lambda: len(second_seen) == 5, timeout=20)
    assert [op["o"]["_id"] for op in second_seen] == list(range(5, 10))


def test_killed_holder_is_replaced_from_the_checkpoint_with_no_op_lost(workers, client):
    a = workers()
    wait_for(lambda: a.holds, timeout=30)
    b = workers()
    wait_for(lambda: "standby" in b.lines, timeout=30)
    client.app.jobs.insert_many([{"_id": n} for n in range(50)])
    wait_for(lambda: len(effects_per_job(client)) == 50, timeout=30)
    a.signal(signal.SIGKILL)
    client.app.jobs.insert_many([{"_id": n} for n in range(50, 100)])
    wait_for(lambda: b.holds, timeout=30)
    wait_for(lambda: len(effects_per_job(client)) == 100, timeout=30)
    time.sleep(0.5)
    counts = effects_per_job(client)
    assert sorted(counts) == list(range(100))
    assert set(counts.values()) == {1}, "each job's effect exactly once"
    assert stored_checkpoint(client)["term"] == b.term


def test_transactional_trigger_is_exactly_once_across_a_crash_between_trigger_and_commit(workers, client):
    a = workers()
    wait_for(lambda: a.holds, timeout=30)
    client.app.jobs.insert_many([{"_id": 0}, {"_id": 1, "slow": 30}, {"_id": 2}])
    # The worker is inside the trigger of job 1: the effects of jobs 0 and 1 are written in its
    # transaction, not committed.
    wait_for(lambda: "in-trigger 1" in a.lines, timeout=30)
    a.signal(signal.SIGKILL)
    a.proc.wait()
    assert 1 not in effects_per_job(client), "nothing of an uncommitted transaction is visible"
    assert stored_checkpoint(client)["applied"] < client.app.jobs.database.client.local["oplog.rs"].find_one(
        {"ns": "app.jobs", "o._id": 1})["ts"]
    b = workers(slow=False)
    wait_for(lambda: len(effects_per_job(client)) == 3, timeout=60)
    time.sleep(0.5)
    assert effects_per_job(client) == {0: 1, 1: 1, 2: 1}


def test_a_paused_holder_that_wakes_up_cannot_save_and_stands_by(workers, client):
    a = workers()
    wait_for(lambda: a.holds, timeout=30)
    a_term = a.term
    b = workers()
    wait_for(lambda: "standby" in b.lines, timeout=30)
    client.app.jobs.insert_many([{"_id": 0}, {"_id": 1, "slow": 0.6 * TTL}, {"_id": 2}])
    wait_for(lambda: "in-trigger 1" in a.lines, timeout=30)
    # Paused inside a trigger (shorter than the TTL), with its transaction open: it can renew
    # nothing.
    a.signal(signal.SIGSTOP)
    wait_for(lambda: b.holds, timeout=30)
    b_term = b.term
    assert b_term > a_term
    wait_for(lambda: "in-trigger 1" in b.lines, timeout=30)
    wait_for(lambda: len(effects_per_job(client)) == 3, timeout=30)
    committed = stored_checkpoint(client)
    a.signal(signal.SIGCONT)
    # It wakes with its trigger done and tries to commit with its old term: refused.
    wait_for(lambda: a.lines[-1] == "standby", timeout=30)
    client.app.jobs.insert_one({"_id": 3})
    wait_for(lambda: 3 in effects_per_job(client), timeout=30)
    time.sleep(0.5)
    assert effects_per_job(client) == {0: 1, 1: 1, 2: 1, 3: 1}
    after = stored_checkpoint(client)
    assert after["term"] == b_term and after["ts"] >= committed["ts"]
    effects = {d["job"]: d["pid"] for d in client.app.effects.find()}
    assert effects[1] == effects[2] == b.proc.pid, "no effect of the paused holder"


def test_a_holder_stuck_in_a_trigger_lets_its_lease_lapse_and_is_replaced(workers, client):
    a = workers()
    wait_for(lambda: a.holds, timeout=30)
    b = workers(slow=False)
    wait_for(lambda: "standby" in b.lines, timeout=30)
    # Job 1's trigger takes far longer than the TTL while the process is otherwise healthy.
    client.app.jobs.insert_many([{"_id": 0}, {"_id": 1, "slow": 8 * TTL}, {"_id": 2}])
    wait_for(lambda: "in-trigger 1" in a.lines, timeout=30)
    wait_for(lambda: b.holds, timeout=30)
    wait_for(lambda: len(effects_per_job(client)) == 3, timeout=30)
    # The stuck trigger returns, its transaction is refused, and it stands by.
    wait_for(lambda: a.lines[-1] == "standby", timeout=60)
    time.sleep(8 * TTL)
    effects = {d["job"]: d["pid"] for d in client.app.effects.find()}
    assert effects_per_job(client) == {0: 1, 1: 1, 2: 1}
    assert effects[1] == effects[2] == b.proc.pid


# -- replication links -------------------------------------------------------------------------

def test_leased_replicators_run_each_link_once_and_take_over(pair):
    a, b, ca, cb = pair
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    links = [("a/app.*", "b/app.*")]
    first = mmm.Replicator(servers, links, lease=True, lease_ttl=TTL).start()
    second = mmm.Replicator(servers, links, lease=True, lease_ttl=TTL).start()
    try:
        wait_for(lambda: sorted(r.status()[0]["state"] for r in (first, second)) == ["running", "standby"], timeout=30)
        holder, standby = (first, second) if first.status()[0]["state"] == "running" else (second, first)
        lease = standby.status()[0]["lease"]
        assert not lease["held"] and lease["holder"]["pid"] == os.getpid()
        assert holder.status()[0]["lease"]["held"] and holder.status()[0]["lease"]["term"] == lease["term"]
        stored = cb[mmm._mmm.MMM_DB][mmm._mmm.LEASES_COLLECTION].find_one({"_id": "link:a/app.*->b/app.*"})
        assert stored["holder"]["id"] == lease["holder"]["id"], "a link's lease lives on its destination"
        ca.app.c.insert_many([{"_id": n} for n in range(20)])
        wait_for(lambda: cb.app.c.count_documents({}) == 20, timeout=30)
        holder.stop()
        holder.join()
        ca.app.c.insert_many([{"_id": n} for n in range(20, 40)])
        wait_for(lambda: cb.app.c.count_documents({}) == 40, timeout=30)
        assert standby.status()[0]["state"] == "running"
        assert sorted(d["_id"] for d in cb.app.c.find()) == list(range(40))
    finally:
        for r in (first, second):
            r.stop()
            r.join()


# -- hostile values ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["$where", "a.b.c", "$.$", "x" * 10_000, "é\u202e名"])
def test_odd_but_valid_lease_names_work(mongo_server, client, name):
    seen = []
    t = mmm.Tailer(mongo_server.uri, name=name, lease=True, lease_ttl=5.0)
    t.register("app.odd", "i", seen.append)
    with t:
        wait_for(lambda: working(t), timeout=30)
        client.app.odd.insert_one({"_id": 1})
        wait_for(lambda: len(seen) == 1)
    lease = client[mmm._mmm.MMM_DB][mmm._mmm.LEASES_COLLECTION].find_one({"_id": "tailer:" + name})
    assert lease is not None and lease["ttl_ms"] == 0, "released at stop"
    assert stored_checkpoint(client, name)["applied"] == seen[0]["ts"]


@pytest.mark.parametrize("name", ["", None, "a\0b", "x" * 70_000])
def test_bad_lease_names_are_refused_with_one_line(mongo_server, name):
    with pytest.raises(ValueError) as e:
        mmm.Tailer(mongo_server.uri, name=name, lease=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ttl", [0, -1, 0.01, float("nan"), float("inf"), 1e12])
def test_bad_lease_ttls_are_refused(mongo_server, ttl):
    with pytest.raises(ValueError, match="lease_ttl"):
        mmm.Tailer(mongo_server.uri, name="t", lease=True, lease_ttl=ttl)
    with pytest.raises(ValueError, match="lease_ttl"):
        mmm.Replicator({"a": {"uri": mongo_server.uri}}, [], lease=True, lease_ttl=ttl)


def test_lease_needs_a_uri_store_and_transactional_triggers_need_a_store(mongo_server, client):
    with pytest.raises(ValueError, match="checkpoint_store as a URI"):
        mmm.Tailer(mongo_server.uri, name="t", lease=True, checkpoint_store=client.app.checkpoints)
    with pytest.raises(ValueError, match="needs a name"):
        mmm.Tailer(mongo_server.uri, lease=True)
    plain = mmm.Tailer(mongo_server.uri)
    with pytest.raises(ValueError, match="checkpoint_store"):
        plain.register("app.c", "i", lambda op, session: None, transactional=True)


def test_cli_refuses_a_bad_lease_ttl(tmp_path):
    config = tmp_path / "mmm.yml"
    config.write_text("servers: {}\nlinks: []\n")
    run = subprocess.run([sys.executable, "-m", "mmm", "-c", str(config), "run", "--lease-ttl", "0"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "--lease-ttl" in run.stderr


# -- fencing, with the takeover staged by hand -------------------------------------------------
# A newer holder is simulated exactly as it would appear on the server: the lease document with
# a greater term and another holder, and the checkpoint claimed with that term. The old holder
# is not told (its lease is long): only the fence can stop it.

def take_over_by_hand(client, lease_id: str, checkpoints, checkpoint_id: str) -> int:
    leases = client[mmm._mmm.MMM_DB][mmm._mmm.LEASES_COLLECTION]
    term = leases.find_one({"_id": lease_id})["term"] + 1
    leases.update_one({"_id": lease_id}, {"$set": {"term": term, "holder": {"id": "other", "host": "h", "pid": 1},
                                                   "ttl_ms": 600_000}, "$currentDate": {"renewed": True}})
    checkpoints.update_one({"_id": checkpoint_id}, {"$set": {"term": term}})
    return term


def test_a_fenced_tailer_cannot_commit_a_transactional_trigger_or_move_its_checkpoint(mongo_server, client):
    calls = []
    t = mmm.Tailer(mongo_server.uri, name="fenced", lease=True, lease_ttl=30.0, save_interval=0)

    @t.on("app.jobs", "i", transactional=True)
    def effect(op, session):
        calls.append(op["o"]["_id"])
        session.client.app.effects.insert_one({"job": op["o"]["_id"]}, session=session)

    with t:
        wait_for(lambda: working(t), timeout=30)
        client.app.jobs.insert_one({"_id": 0})
        wait_for(lambda: effects_per_job(client) == {0: 1})
        checkpoints = client[mmm._mmm.MMM_DB][mmm._mmm.TAILER_CHECKPOINTS_COLLECTION]
        wait_for(lambda: stored_checkpoint(client, "fenced")["applied"] >= client.local["oplog.rs"].find_one(
            {"ns": "app.jobs"})["ts"])
        newer = take_over_by_hand(client, "tailer:fenced", checkpoints, "fenced")
        before = stored_checkpoint(client, "fenced")
        client.app.jobs.insert_one({"_id": 1})
        # The old holder may run the trigger of job 1 (or first try to save its position past
        # idle entries): either way its save is refused, and it goes back to waiting once its
        # lease says so.
        wait_for(lambda: not t.status()["lease"]["held"], timeout=30)
        time.sleep(0.5)
        assert 1 not in effects_per_job(client)
        after = stored_checkpoint(client, "fenced")
        assert after["term"] == newer and after["ts"] == before["ts"] and after["applied"] == before["applied"]


def test_a_fenced_link_cannot_apply_a_batch(pair):
    a, b, ca, cb = pair
    servers = {"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}}
    r = mmm.Replicator(servers, [("a/app.*", "b/app.*")], lease=True, lease_ttl=30.0).start()
    try:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        ca.app.c.insert_one({"_id": 0})
        wait_for(lambda: cb.app.c.count_documents({}) == 1)
        link = r.status()[0]["id"]
        checkpoints = cb[mmm._mmm.MMM_DB][mmm._mmm.CHECKPOINTS_COLLECTION]
        newer = take_over_by_hand(cb, "link:" + link, checkpoints, link)
        before = checkpoints.find_one({"_id": link})
        ca.app.c.insert_one({"_id": 1})
        wait_for(lambda: "lost the lease" in (r.status()[0]["last_error"] or ""), timeout=30)
        wait_for(lambda: r.status()[0]["state"] == "standby", timeout=30)
        assert cb.app.c.count_documents({}) == 1, "the batch was not applied"
        after = checkpoints.find_one({"_id": link})
        assert after["term"] == newer and after["ts"] == before["ts"]
        assert r.status()[0]["lease"]["holder"]["id"] == "other"
    finally:
        r.stop()
        r.join()


def test_mmm_status_names_each_links_lease_holder(pair, tmp_path):
    import json

    a, b, ca, cb = pair
    config = tmp_path / "mmm.yml"
    config.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                      "links:\n  - {src: a/app.*, dst: b/app.*}\n")
    r = mmm.Replicator.from_file(str(config), lease=True, lease_ttl=30.0).start()
    try:
        wait_for(lambda: r.status()[0]["state"] == "running", timeout=30)
        out = subprocess.run([sys.executable, "-m", "mmm", "-c", str(config), "status", "--json"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        lease = json.loads(out.stdout)[0]["lease"]
        assert lease["holder"]["pid"] == os.getpid() and not lease["expired"]
        assert lease["term"] == r.status()[0]["lease"]["term"]
    finally:
        r.stop()
        r.join()
