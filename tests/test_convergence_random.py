"""Convergence under random histories: many short, seeded histories of concurrent writes on
every server of a pair, a star or a chain of three, with links cut and restored, servers
paused, connections dropped and replicators killed, checked after each heal.

Each history is drawn from its seed: the topology, the policy (``lww``, ``lww`` with
``deletes="delete_wins"``, ``Prefer``, ``FieldMerge`` with ``deletes="lww"`` or
``"delete_wins"``), how replication runs (one ``mmm run -s SERVER`` process
per destination, killed with SIGKILL and restarted; or one in-process :class:`mmm.Replicator`
per destination, stopped and restarted), 10-50 hot documents in one or two collections, and a
script of steps: inserts, ``$set``, ``$unset``, ``$inc``, ``$push``, ``$pull``, ``$addToSet``,
pipeline updates, replacements, upserts, deletes and multi-document transactions on random
servers while replication runs, interleaved with cuts, kills, ``pause()``,
``drop_connections()`` and full partitions (every replicator stopped). The script is the same
for a seed on every run; how it interleaves with replication is not, as in production.

Environment:

- ``MMM_CONVERGENCE_HISTORIES``: how many histories (default 30: each topology and each way of
  running with each policy);
- ``MMM_CONVERGENCE_SEED``: the first seed (the others follow it). To replay one history:
  ``MMM_CONVERGENCE_SEED=<seed> MMM_CONVERGENCE_HISTORIES=1 pytest tests/test_convergence_random.py``;
- ``MMM_CONVERGENCE_LOG=<lines>`` (with ``-s``): print each history's log and that many lines of
  each ``mmm run`` log even when it passes; ``MMM_CONVERGENCE_VERBOSITY=-vv``: debug logs there.

Every history ends with a final partition (every replicator down) in which the servers write
a few documents in turn, including resolution probes (a change on one server, a delete of the
same document a little later on another, or the other way round), then a final heal.

After every heal (every replicator up, writes stopped, quiescent: see :meth:`History.settle`):

1. every server holds byte-identical documents in every replicated collection (under
   ``fields``, identical once each document's top-level fields are sorted: that policy makes
   values converge, not the order of fields);
2. a document written by a single server since the previous heal holds that server's last
   version (those writes were made after the server had received every other version);
3. last writer wins (``lww``): a document whose last write anywhere came after every other write
   to it (by a margin the wall clocks of one machine resolve) holds that write's result, and is
   absent when that write was a delete: no resurrection; under ``fields``, the same when that
   write wrote the whole document (insert, replacement, delete);
4. ``delete_wins``: such a last write that is a delete leaves the document absent; in the final
   partition, a server that deleted the document makes it absent everywhere;
5. ``Prefer``: in the final partition, a document the preferred server wrote holds its version;
6. the journal: for each full partition in which two servers wrote a document, the servers'
   journals hold an entry for it made between the partition's start and the heal that followed;
   for the final partition, each such writer's version is in an entry (as ``ours`` or
   ``theirs``); every entry names the namespace's policy.

A failure prints the seed, the command that replays it, the log of the history's steps (each op
with its server and outcome) and the end of each ``mmm run`` process's log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timezone
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import bson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

import mmm
from mmm.config import Link

HISTORIES = int(os.environ.get("MMM_CONVERGENCE_HISTORIES", "30"))
FIRST_SEED = int(os.environ.get("MMM_CONVERGENCE_SEED", "7200"))
EMBEDDED = not os.environ.get("MMM_TEST_MONGOD")
RAW = CodecOptions(document_class=RawBSONDocument)
DB = "app"
BARRIER = "zz_barrier"
# Two writes whose client-side time intervals are further apart than this have different
# millisecond wall times in the oplog (one machine, one clock), so their stamps are ordered.
MARGIN = 0.005
SETTLE_TIMEOUT = 90.0
ORPHAN_TXN_SECONDS = 5

TOPOLOGIES = ("pair", "star", "chain")
POLICIES = ("lww", "delete_wins", "prefer", "fields", "fields_delete_wins")
MODES = ("procs", "inproc")

DocKey = Tuple[str, int]


def history_shape(seed: int) -> Tuple[str, str, str]:
    """(topology, policy, mode) of a seed: 18 consecutive seeds from a multiple of 30 cover
    every topology and mode with three policies; 30 cover everything."""
    return TOPOLOGIES[(seed // 2) % 3], POLICIES[(seed // 6) % 5], MODES[seed % 2]


def topology(shape: str) -> Tuple[List[str], List[Dict[str, Any]]]:
    """Server names (in creation order) and links. A chain of three is the same graph as a star
    of three (the middle server forwards both ways); it is declared in another order, with other
    names and ids (ties between stamps go to the larger id)."""
    if shape == "pair":
        return ["a", "b"], [{"src": "a/app.*", "dst": "b/app.*"}, {"src": "b/app.*", "dst": "a/app.*"}]
    if shape == "star":
        names = ["hub", "s1", "s2"]
        hub, spokes = "hub", ["s1", "s2"]
    else:
        names = ["left", "mid", "right"]
        hub, spokes = "mid", ["right", "left"]
    links: List[Dict[str, Any]] = []
    for s in spokes:
        links.append({"src": f"{s}/app.*", "dst": f"{hub}/app.*"})
        links.append({"src": f"{hub}/app.*", "dst": f"{s}/app.*", "forward": True})
    return names, links


# ------------------------------------------------------------------------------------------
# Records of what the history did
# ------------------------------------------------------------------------------------------

@dataclass
class Effect:
    """What one op did to one document on the server that ran it."""

    effective: Optional[bool]
    """A new version was written (True), nothing was (False), unknown (None: the op failed on
    the network and may or may not have been applied)."""
    post: Optional[bytes]
    """The document on that server after the op (raw BSON), None when absent."""
    exact: bool
    """``post`` is certainly the version the op wrote (no replication could touch the
    document between the op and the read: every replicator was stopped; or the op writes the
    whole document: insert, replacement, delete)."""
    deleted: bool = False


@dataclass
class Rec:
    n: int
    server: str
    kind: str
    desc: str
    t0: float
    t1: float
    segment: int
    window: Optional[int]
    effects: Dict[DocKey, Effect] = field(default_factory=dict)
    outcome: str = ""


def fmt_doc(raw: Optional[bytes]) -> str:
    if raw is None:
        return "(absent)"
    d = bson.decode(raw)
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in d.items()) + "}"


# ------------------------------------------------------------------------------------------
# Replication, one runner per destination server
# ------------------------------------------------------------------------------------------

POLICY_YAML = {"lww": "lww", "delete_wins": "lww,deletes=delete_wins", "fields": "fields",
               "fields_delete_wins": "fields,deletes=delete_wins"}


class Sides:
    """Replication of a topology, one runner per destination server (the normal deployment:
    each side runs the links into it). ``procs``: ``python -m mmm -c FILE run -s NAME``
    processes; ``inproc``: one :class:`mmm.Replicator` each in this process."""

    def __init__(self, mode: str, names: List[str], servers: Dict[str, Any], links: List[Dict[str, Any]],
                 policy: str, preferred: Optional[str], workdir: str, log: List[str]) -> None:
        self.mode = mode
        self.names = names
        self.links = links
        self.log = log
        self.workdir = workdir
        self.spec = {n: {"id": n.upper(), "uri": servers[n].uri} for n in names}
        self.procs: Dict[str, subprocess.Popen] = {}
        self.reps: Dict[str, mmm.Replicator] = {}
        self.up: Dict[str, bool] = {n: False for n in names}
        if policy == "prefer":
            yaml_policy, obj = f"prefer:{preferred}", mmm.Prefer(preferred)
        else:
            yaml_policy = POLICY_YAML[policy]
            deletes = "delete_wins" if policy.endswith("delete_wins") else "lww"
            obj = mmm.FieldMerge(deletes=deletes) if policy.startswith("fields") else mmm.LWW(deletes=deletes)
        self.policy_obj = obj
        self.config = os.path.join(workdir, "mmm.yml")
        with open(self.config, "w") as f:
            for n in names:
                f.write(f"{n}:\n  id: {self.spec[n]['id']}\n  uri: {self.spec[n]['uri']}\n")
            f.write("links:\n")
            for l in links:
                f.write(f"  - {{src: {l['src']}, dst: {l['dst']}, forward: {str(l.get('forward', False)).lower()}}}\n")
            f.write(f"resolve: {yaml_policy}\n")

    def links_into(self, name: str) -> List[Dict[str, Any]]:
        return [l for l in self.links if l["dst"].split("/")[0] == name]

    def start(self, name: str) -> None:
        if self.up[name]:
            return
        if self.mode == "procs":
            out = open(os.path.join(self.workdir, f"run-{name}.log"), "ab")
            out.write(f"--- start {time.time():.3f}\n".encode())
            out.flush()
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mmm", os.environ.get("MMM_CONVERGENCE_VERBOSITY", "-v"), "-c", self.config, "run", "-s", name],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            out.close()
        else:
            r = self.reps.get(name)
            if r is None:
                r = mmm.Replicator(self.spec, self.links_into(name), resolve=self.policy_obj, preflight=False)
                self.reps[name] = r
            r.start()
        self.up[name] = True

    def stop(self, name: str, kill: bool = True) -> None:
        if not self.up[name]:
            return
        if self.mode == "procs":
            p = self.procs.pop(name)
            if p.poll() is not None:
                raise AssertionError(f"mmm run -s {name} had exited with status {p.returncode}; see {self.workdir}/run-{name}.log")
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            p.wait(30)
        else:
            r = self.reps[name]
            r.stop()
            r.join()
        self.up[name] = False

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"mmm run -s {name} exited with status {p.returncode}; see {self.workdir}/run-{name}.log")
        for name, r in self.reps.items():
            if self.up[name]:
                failed = [s for s in r.status() if s["state"] == "failed"]
                assert not failed, f"replicator of {name}: a link failed: {failed}"

    def all_down(self) -> bool:
        return not any(self.up.values())

    def close(self) -> None:
        for name in list(self.names):
            if self.up[name]:
                try:
                    self.stop(name, kill=True)
                except Exception:  # noqa: BLE001 - tearing down after a failure
                    pass

    def tails(self, lines: int = 15) -> str:
        out = []
        if self.mode == "procs":
            for n in self.names:
                path = os.path.join(self.workdir, f"run-{n}.log")
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        text = f.read().decode(errors="replace").splitlines()
                    out.append(f"--- {path} (last {lines} lines)")
                    out.extend(text[-lines:])
        return "\n".join(out)


# ------------------------------------------------------------------------------------------
# Ops
# ------------------------------------------------------------------------------------------

OP_WEIGHTS = {
    "insert": 10, "set": 14, "unset": 6, "inc": 10, "push": 7, "pull": 5, "addToSet": 6,
    "pipeline": 7, "replace": 7, "delete": 9, "upsert": 4, "txn": 8,
}
TXN_KINDS = ("set", "inc", "push", "replace", "delete", "upsert", "pipeline")


class History:
    def __init__(self, seed: int, factory: Any, workdir: str) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.shape, self.policy, self.mode = history_shape(seed)
        self.names, links = topology(self.shape)
        self.servers = {n: factory() for n in self.names}
        self.clients = {n: pymongo.MongoClient(s.uri, serverSelectionTimeoutMS=10000) for n, s in self.servers.items()}
        for c in self.clients.values():
            # A replicator killed in the middle of a batch leaves its transaction open on the
            # destination, holding its writes until the server reaps it: the restarted one
            # waits that long (60 s by default) before it can commit.
            c.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=ORPHAN_TXN_SECONDS)
        rng = self.rng
        self.ncolls = rng.choice((1, 2))
        self.colls = [f"c{i}" for i in range(self.ncolls)]
        self.ndocs = rng.randint(10, 50)
        self.preferred = self.names[seed % len(self.names)] if self.policy == "prefer" else None
        self.log: List[str] = []
        self.sides = Sides(self.mode, self.names, self.servers, links, self.policy, self.preferred, workdir, self.log)
        self.recs: List[Rec] = []
        self.segment = 0
        self.window: Optional[int] = None
        self.windows = 0
        self.paused_until: Dict[str, float] = {}
        self.barrier_round = 0
        self.window_start: Dict[int, float] = {}
        self.window_segment: Dict[int, int] = {}
        self.segment_end: Dict[int, float] = {}
        self.stats = {"ops": 0, "effective": 0, "uncertain": 0, "kills": 0, "pauses": 0, "drops": 0,
                      "partitions": 0, "heals": 0, "checked_single": 0, "checked_lww": 0,
                      "checked_deletes": 0, "checked_prefer": 0, "checked_journal": 0}
        self.log.append(f"history seed={seed}: {self.shape}, policy {self.policy}"
                        f"{' (preferred ' + self.preferred + ')' if self.preferred else ''}, replication {self.mode}, "
                        f"{self.ndocs} documents in {', '.join(self.colls)}")

    # -- helpers ----------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t_start:7.3f}  {text}")

    def coll(self, server: str, name: str, raw: bool = False):
        db = self.clients[server][DB]
        return db.get_collection(name, codec_options=RAW) if raw else db[name]

    def wait_unpaused(self, server: str) -> None:
        until = self.paused_until.get(server, 0)
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay + 0.05)

    def draw_key(self) -> DocKey:
        return (f"{DB}.{self.rng.choice(self.colls)}", self.rng.randrange(self.ndocs))

    def draw_value(self, n: int) -> str:
        return f"v{n}"

    def draw_op(self, n: int, kinds: Optional[Tuple[str, ...]] = None) -> Dict[str, Any]:
        rng = self.rng
        if kinds is None:
            kind = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
        else:
            kind = rng.choice(kinds)
        ns, i = self.draw_key()
        op: Dict[str, Any] = {"kind": kind, "ns": ns, "id": i}
        tag = f"t{rng.randrange(6)}"
        if kind == "insert":
            op["doc"] = {"_id": i, "v": self.draw_value(n), "n": rng.randrange(5), "tags": [tag]}
        elif kind in ("set", "upsert"):
            fields = rng.sample(["v", "f1", "f2", "sub.x"], rng.randint(1, 2))
            op["set"] = {f: f"{self.draw_value(n)}{f[0]}" for f in fields}
        elif kind == "unset":
            op["field"] = rng.choice(["v", "f1", "f2", "sub", "tags"])
        elif kind == "inc":
            op["by"] = rng.randint(1, 3)
        elif kind in ("push", "pull", "addToSet"):
            op["tag"] = tag
        elif kind == "pipeline":
            op["value"] = self.draw_value(n)
            op["drop"] = rng.choice([None, "f1", "f2"])
        elif kind == "replace":
            op["doc"] = {"_id": i, "v": self.draw_value(n), "r": rng.randrange(100)}
            if rng.random() < 0.5:
                op["doc"]["tags"] = [tag]
        elif kind == "txn":
            op["ops"] = [self.draw_op(n, TXN_KINDS) for _ in range(rng.randint(2, 4))]
        return op

    @staticmethod
    def describe(op: Dict[str, Any]) -> str:
        k, where = op["kind"], f"{op['ns']}#{op['id']}"
        if k == "txn":
            return "txn[" + "; ".join(History.describe(o) for o in op["ops"]) + "]"
        detail = {
            "insert": lambda: f"insert {op['doc']}", "set": lambda: f"$set {op['set']}",
            "upsert": lambda: f"$set {op['set']} upsert", "unset": lambda: f"$unset {op['field']}",
            "inc": lambda: f"$inc n {op['by']}", "push": lambda: f"$push tags {op['tag']}",
            "pull": lambda: f"$pull tags {op['tag']}", "addToSet": lambda: f"$addToSet tags {op['tag']}",
            "pipeline": lambda: f"pipeline $set v={op['value']}, n+1{', $unset ' + op['drop'] if op['drop'] else ''}",
            "replace": lambda: f"replace {op['doc']}", "delete": lambda: "delete",
        }[k]()
        return f"{where} {detail}"

    def write(self, server: str, op: Dict[str, Any], session=None) -> Tuple[bool, bool]:
        """Runs one (non-transaction) op; returns (effective, whole): whether it wrote a
        version, and whether the op itself gives the whole resulting document."""
        db, name = op["ns"].split(".", 1)
        c = self.clients[server][db][name]
        f = {"_id": op["id"]}
        k = op["kind"]
        if k == "insert":
            try:
                c.insert_one(dict(op["doc"]), session=session)
            except DuplicateKeyError:
                return False, True
            return True, True
        if k == "delete":
            return c.delete_one(f, session=session).deleted_count == 1, True
        if k == "replace":
            r = c.replace_one(f, dict(op["doc"]), upsert=session is not None, session=session)
            return r.modified_count == 1 or r.upserted_id is not None, True
        update: Any = {
            "set": lambda: {"$set": op["set"]}, "upsert": lambda: {"$set": op["set"]},
            "unset": lambda: {"$unset": {op["field"]: ""}}, "inc": lambda: {"$inc": {"n": op["by"]}},
            "push": lambda: {"$push": {"tags": op["tag"]}}, "pull": lambda: {"$pull": {"tags": op["tag"]}},
            "addToSet": lambda: {"$addToSet": {"tags": op["tag"]}},
            "pipeline": lambda: [{"$set": {"v": op["value"], "n": {"$add": [{"$ifNull": ["$n", 0]}, 1]}}}]
            + ([{"$unset": [op["drop"]]}] if op["drop"] else []),
        }[k]()
        r = c.update_one(f, update, upsert=k == "upsert", session=session)
        return r.modified_count == 1 or r.upserted_id is not None, False

    def read(self, server: str, key: DocKey, session=None) -> Optional[bytes]:
        db, name = key[0].split(".", 1)
        d = self.clients[server][db].get_collection(name, codec_options=RAW).find_one({"_id": key[1]}, session=session)
        return None if d is None else d.raw

    def run_op(self, server: str, op: Dict[str, Any]) -> None:
        n = len(self.recs)
        self.wait_unpaused(server)
        isolated = self.sides.all_down()
        rec = Rec(n, server, op["kind"], self.describe(op), 0.0, 0.0, self.segment, self.window if isolated else None)
        rec.t0 = time.time()
        try:
            if op["kind"] == "txn":
                results: Dict[DocKey, Effect] = {}

                def body(session):
                    results.clear()
                    for sub in op["ops"]:
                        key = (sub["ns"], sub["id"])
                        eff, _ = self.write(server, sub, session=session)
                        prev = results.get(key)
                        post = self.read(server, key, session=session)
                        results[key] = Effect(eff or bool(prev and prev.effective), post, isolated, post is None)

                with self.clients[server].start_session() as s:
                    s.with_transaction(body)
                rec.effects = dict(results)
                rec.outcome = "committed: " + ", ".join(
                    f"{k[0]}#{k[1]} {'wrote' if e.effective else 'no change'}" for k, e in results.items())
            else:
                key = (op["ns"], op["id"])
                eff, whole = self.write(server, op)
                post = self.read(server, key)
                if whole and eff:
                    post_version = None if op["kind"] == "delete" else bson.encode(op["doc"])
                    exact = True
                else:
                    post_version, exact = post, isolated
                rec.effects[key] = Effect(eff, post_version if eff else post, exact, op["kind"] == "delete" and eff)
                rec.outcome = ("wrote" if eff else "no change") + f" -> {fmt_doc(post)}"
        except PyMongoError as e:
            keys = [(o["ns"], o["id"]) for o in (op["ops"] if op["kind"] == "txn" else [op])]
            rec.effects = {k: Effect(None, None, False) for k in keys}
            rec.outcome = f"FAILED (outcome unknown): {type(e).__name__}: {str(e)[:120]}"
            self.stats["uncertain"] += 1
        rec.t1 = time.time()
        self.recs.append(rec)
        self.stats["ops"] += 1
        self.stats["effective"] += any(e.effective for e in rec.effects.values())
        where = f"window {rec.window}" if rec.window is not None else f"segment {rec.segment}"
        self.note(f"op {n:03d} on {server:<5} [{where}] {rec.desc} => {rec.outcome}")

    # -- actions ----------------------------------------------------------------------------

    def start_side(self, name: str) -> None:
        self.sides.start(name)
        self.window = None
        self.note(f"start replication into {name}")

    def stop_side(self, name: str, kill: bool) -> None:
        self.sides.stop(name, kill=kill)
        self.stats["kills"] += 1
        self.note(f"{'SIGKILL' if kill and self.mode == 'procs' else 'stop'} replication into {name}")
        if self.sides.all_down() and self.window is None:
            self.open_window()
            self.note(f"every replicator is down: full partition, window {self.window}")

    def open_window(self) -> None:
        self.windows += 1
        self.window = self.windows
        self.window_start[self.window] = time.time()
        self.window_segment[self.window] = self.segment

    def partition(self) -> None:
        kill = self.rng.random() < 0.8
        for n in self.names:
            if self.sides.up[n]:
                self.stop_side(n, kill)
        self.stats["partitions"] += 1

    def heal(self) -> None:
        for n, until in self.paused_until.items():
            self.wait_unpaused(n)
        for n in self.names:
            if not self.sides.up[n]:
                self.start_side(n)

    def wait_positioned(self) -> None:
        """Every link has stored its starting position (a link with no checkpoint starts at its
        source's newest entry: writes before that would not be carried)."""
        deadline = time.monotonic() + 30
        for l in self.sides.links:
            link = Link(l["src"], l["dst"])
            dst = self.clients[link.dst_server]
            while dst["__mmm"]["checkpoints"].find_one({"_id": link.id}) is None:
                assert time.monotonic() < deadline, f"link {link.id} did not start within 30 s\n{self.sides.tails()}"
                time.sleep(0.05)

    # -- quiescence and checks --------------------------------------------------------------

    def canon(self, raw: Optional[bytes]) -> Optional[bytes]:
        """A document as compared: its bytes, top-level fields sorted under ``fields`` (there
        values converge, not the order of fields: see the README)."""
        if raw is None or not self.policy.startswith("fields"):
            return raw
        return bson.encode(dict(sorted(bson.decode(raw, codec_options=CodecOptions(tz_aware=False)).items())))

    def snapshot(self) -> Dict[str, Dict[DocKey, bytes]]:
        out: Dict[str, Dict[DocKey, bytes]] = {}
        for n in self.names:
            docs: Dict[DocKey, bytes] = {}
            for cname in self.colls:
                for d in self.coll(n, cname, raw=True).find():
                    docs[(f"{DB}.{cname}", bson.decode(d.raw)["_id"])] = self.canon(d.raw)
            out[n] = docs
        return out

    def journal(self) -> List[Dict[str, Any]]:
        out = []
        for n in self.names:
            out.extend(self.clients[n]["__mmm"]["conflicts"].find())
        return out

    def journal_size(self) -> Dict[str, int]:
        return {n: self.clients[n]["__mmm"]["conflicts"].count_documents({}) for n in self.names}

    def barrier(self, deadline: float) -> None:
        """Each server writes a marker; returns once every server has every marker. Links are
        FIFO along the tree, so then everything written anywhere before the markers (and every
        version made while applying it) has reached every server."""
        self.barrier_round += 1
        k = self.barrier_round
        for n in self.names:
            self.clients[n][DB][BARRIER].replace_one({"_id": n}, {"_id": n, "k": k}, upsert=True)
        while True:
            if all(
                self.clients[n][DB][BARRIER].count_documents({"k": {"$gte": k}}) == len(self.names)
                for n in self.names
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"markers of round {k} not delivered everywhere within {SETTLE_TIMEOUT} s")
            self.sides.check_alive()
            time.sleep(0.03)

    def settle(self) -> Dict[DocKey, Optional[bytes]]:
        """Heals, then waits until quiescent: a full barrier round during which no server's
        documents or journal changed, with every server identical. Any version made before the
        round (a write, or a resolution) has then reached every server, and none was made
        during it (a resolution is always journaled). Returns the common documents."""
        self.heal()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        self.note("settling")
        rounds = stuck = 0
        while True:
            before, jbefore = self.snapshot(), self.journal_size()
            self.barrier(deadline)
            after, jafter = self.snapshot(), self.journal_size()
            rounds += 1
            same = all(after[n] == after[self.names[0]] for n in self.names)
            still = before == after and jbefore == jafter
            if still and same:
                break
            # Rounds that change nothing while the servers differ: nothing is left to deliver.
            stuck = stuck + 1 if still else 0
            if stuck >= 3 or time.monotonic() > deadline:
                self.fail_identical(after)
        self.note(f"quiescent after {rounds} barrier round(s); {len(after[self.names[0]])} documents")
        self.stats["heals"] += 1
        return dict(after[self.names[0]])

    def fail_identical(self, snap: Dict[str, Dict[DocKey, bytes]]) -> None:
        lines = ["servers are not identical after healing:"]
        keys = sorted(set().union(*[set(s) for s in snap.values()]))
        for key in keys:
            versions = {n: snap[n].get(key) for n in self.names}
            if len(set(versions.values())) > 1:
                lines.append(f"  {key[0]}#{key[1]}:")
                for n in self.names:
                    lines.append(f"    {n:<5} {fmt_doc(versions[n])}")
                lines.append("    ops on it: " + self.ops_on(key))
        raise AssertionError("\n".join(lines))

    def ops_on(self, key: DocKey) -> str:
        return ", ".join(f"{r.n:03d}@{r.server}" for r in self.recs if key in r.effects) or "none"

    def effects(self, key: DocKey, since_segment: int = 0) -> List[Tuple[Rec, Effect]]:
        return [(r, r.effects[key]) for r in self.recs if key in r.effects and r.segment >= since_segment]

    def check(self, final: Dict[DocKey, Optional[bytes]], where: str, last_window_end: Optional[Dict[str, Dict[DocKey, bytes]]] = None) -> None:
        errors: List[str] = []
        keys = {k for r in self.recs for k in r.effects}

        def got(key: DocKey) -> Optional[bytes]:
            return final.get(key)

        for key in sorted(keys):
            # 2. A single writer since the previous heal: its last version stays.
            seg = self.effects(key, self.segment)
            writers = {r.server for r, _ in seg}
            if len(writers) == 1 and all(e.effective is not None for _, e in seg):
                r, e = seg[-1]
                self.stats["checked_single"] += 1
                if got(key) != self.canon(e.post):
                    errors.append(f"{key[0]}#{key[1]}: only {r.server} wrote it since the last heal (last: op {r.n:03d}), "
                                  f"after receiving every other version; expected {fmt_doc(e.post)}, got {fmt_doc(got(key))}")
            # 3./4. The last write anywhere, well after every other one. An op that found no
            # document and wrote none (an update without upsert, a delete) made no version.
            allops = [(r, e) for r, e in self.effects(key) if not (e.effective is False and e.post is None)]
            if not allops:
                continue
            last_r, last_e = allops[-1]
            others_end = max((r.t1 for r, _ in allops[:-1]), default=0.0)
            certain = all(e.effective is not None for _, e in allops)
            if certain and last_e.effective and last_e.exact and last_r.t0 > others_end + MARGIN:
                # Under fields, only a write of the whole document decides every field.
                whole = last_r.kind in ("insert", "replace", "delete")
                if self.policy == "lww" or (self.policy.endswith("delete_wins") and last_e.deleted) or (self.policy == "fields" and whole):
                    self.stats["checked_lww"] += 1
                    if got(key) != self.canon(last_e.post):
                        errors.append(f"{key[0]}#{key[1]}: the last write (op {last_r.n:03d} on {last_r.server}, "
                                      f"{'a delete' if last_e.deleted else 'an update'}) came after every other; "
                                      f"expected {fmt_doc(last_e.post)}, got {fmt_doc(got(key))}")
        if last_window_end is not None and self.window_last is not None:
            w = self.window_last
            for key in sorted(keys):
                in_w = [(r, e) for r, e in self.effects(key) if r.window == w]
                if not in_w or any(e.effective is None for _, e in in_w):
                    continue
                wrote = {r.server for r, e in in_w if e.effective}
                if self.policy.endswith("delete_wins"):
                    deleters = [n for n in wrote if key not in last_window_end[n]]
                    if deleters:
                        self.stats["checked_deletes"] += 1
                        if got(key) is not None:
                            errors.append(f"{key[0]}#{key[1]}: deleted by {deleters[0]} in the final partition "
                                          f"(delete_wins), but present: {fmt_doc(got(key))}")
                if self.policy == "prefer" and self.preferred in wrote:
                    self.stats["checked_prefer"] += 1
                    want = last_window_end[self.preferred].get(key)
                    if got(key) != want:
                        errors.append(f"{key[0]}#{key[1]}: written by the preferred {self.preferred} in the final "
                                      f"partition; expected its version {fmt_doc(want)}, got {fmt_doc(got(key))}")
        if errors:
            raise AssertionError(f"after {where}:\n  " + "\n  ".join(errors))

    def check_journal(self) -> None:
        """Rule 6 (see the module): for each window (every replicator down) in which two or more
        servers wrote a document, the journals hold an entry for it made between the window's
        start and the end of the heal that followed; for the final window, one for each
        writer's version. Windows with an op of unknown outcome on the document are skipped."""
        journal = self.journal()
        errors = []
        want_policy = POLICY_YAML.get(
            self.policy, f"prefer:{(self.preferred or '').upper()}")
        by_doc: Dict[DocKey, List[Tuple[float, Dict[str, Any]]]] = {}
        for e in journal:
            at = e["at"].replace(tzinfo=timezone.utc).timestamp()
            by_doc.setdefault((e["ns"], e["id"]), []).append((at, e))
            if e["policy"] != want_policy:
                errors.append(f"journal entry {e['_id']} on {e['server']}: policy {e['policy']!r}, expected {want_policy!r}")
        keys = {k for r in self.recs for k in r.effects}
        tol = 0.005
        for key in sorted(keys):
            for w in sorted({r.window for r, _ in self.effects(key) if r.window is not None}):
                in_w = [(r, e) for r, e in self.effects(key) if r.window == w]
                if any(e.effective is None for _, e in in_w):
                    continue
                wrote = sorted({r.server for r, e in in_w if e.effective})
                if len(wrote) < 2:
                    continue
                start, end = self.window_start[w] - tol, self.segment_end[self.window_segment[w]] + tol
                entries = [e for at, e in by_doc.get(key, []) if start <= at <= end]
                self.stats["checked_journal"] += 1
                where = f"{key[0]}#{key[1]}: written by {', '.join(wrote)} in window {w} (every replicator down)"
                if not entries:
                    errors.append(f"{where}, but no journal entry for it from then to the heal after")
                    continue
                if w == self.window_last:
                    sites = {s.split("#")[0] for e in entries for s in (e["ours"]["site"], e["theirs"]["site"])}
                    for n in wrote:
                        if self.sides.spec[n]["id"] not in sites:
                            errors.append(f"{where}, but no journal entry has {n}'s version (entries: "
                                          f"{[(e['server'], e['ours']['site'], e['theirs']['site'], e['winner']) for e in entries]})")
        if errors:
            raise AssertionError("journal:\n  " + "\n  ".join(errors))

    # -- the history ------------------------------------------------------------------------

    def run(self) -> None:
        self.t_start = time.monotonic()
        self.window_last: Optional[int] = None
        rng = self.rng
        for n in self.names:
            self.start_side(n)
        self.wait_positioned()
        # The hot documents, each inserted on a random server (replication already runs).
        for cname in self.colls:
            for i in range(self.ndocs):
                server = rng.choice(self.names)
                doc = {"_id": i, "v": f"init{i}", "n": 0, "tags": [], "sub": {"x": 0}}
                self.clients[server][DB][cname].insert_one(doc)
        self.note(f"inserted the hot documents on random servers")
        self.settle()
        steps = rng.randint(40, 90)
        partition_left = 0
        for step in range(steps):
            x = rng.random()
            if partition_left > 0:
                partition_left -= 1
                if partition_left == 0:
                    self.note("end of partition")
                    self.heal()
                    continue
            if x < 0.70 or partition_left > 0:
                server = rng.choice(self.names)
                self.run_op(server, self.draw_op(len(self.recs)))
                if rng.random() < 0.3:
                    time.sleep(rng.uniform(0, 0.03))
            elif x < 0.76:
                up = [n for n in self.names if self.sides.up[n]]
                target = rng.choice(self.names)
                kill = rng.random() < 0.8
                if target in up and len(up) > 1:
                    self.stop_side(target, kill)
            elif x < 0.83:
                target = rng.choice(self.names)
                if not self.sides.up[target]:
                    self.start_side(target)
            elif x < 0.86:
                partition_left = rng.randint(3, 10)
                self.note(f"partition for {partition_left} steps")
                self.partition()
            elif x < 0.89:
                target, seconds = rng.choice(self.names), rng.uniform(0.1, 0.6)
                if EMBEDDED:
                    self.servers[target].pause(seconds)
                    self.paused_until[target] = time.monotonic() + seconds
                    self.stats["pauses"] += 1
                    self.note(f"pause {target} for {seconds:.2f} s")
            elif x < 0.93:
                target = rng.choice(self.names)
                if EMBEDDED:
                    self.servers[target].drop_connections()
                    self.stats["drops"] += 1
                    self.note(f"drop connections of {target}")
            elif x < 0.96:
                self.note("heal")
                final = self.settle()
                self.segment_end[self.segment] = time.time()
                self.check(final, f"the heal at step {step}")
                self.segment += 1
            else:
                time.sleep(rng.uniform(0.05, 0.3))
        # The final partition: every replicator down, writes on every server, then heal.
        self.note("final partition")
        self.partition()
        if self.window is None:  # everything was down already
            self.open_window()
        self.window_last = self.window
        # Mostly on a few documents, each write clearly after the one before it (so that the
        # last writer of each is known), with more deletes: conflicts, resurrection attempts.
        few = [self.draw_key() for _ in range(rng.randint(2, 5))]
        for _ in range(rng.randint(8, 20)):
            server = rng.choice(self.names)
            op = self.draw_op(len(self.recs))
            if op["kind"] != "txn" and rng.random() < 0.7:
                op["ns"], op["id"] = rng.choice(few)
                if op["kind"] == "insert":
                    op["doc"]["_id"] = op["id"]
                if op["kind"] == "replace":
                    op["doc"]["_id"] = op["id"]
            if rng.random() < 0.2:
                op = {"kind": "delete", "ns": op["ns"], "id": op["id"]}
            self.run_op(server, op)
            time.sleep(2 * MARGIN + rng.uniform(0, 0.01))
        # Resurrection probes: one server changes a document, another deletes it a little
        # later (or the other way round), both unaware of each other.
        for _ in range(rng.randint(1, 3)):
            ns, i = self.draw_key()
            x, y = rng.sample(self.names, 2)
            update = {"kind": "set", "ns": ns, "id": i, "set": {"v": f"probe{len(self.recs)}"}}
            delete = {"kind": "delete", "ns": ns, "id": i}
            first, second = (update, delete) if rng.random() < 0.6 else (delete, update)
            self.run_op(x, first)
            time.sleep(2 * MARGIN)
            self.run_op(y, second)
            time.sleep(2 * MARGIN)
        window_end = self.snapshot()
        self.note("final heal")
        final = self.settle()
        self.segment_end[self.segment] = time.time()
        self.check(final, "the final heal", window_end)
        self.check_journal()
        self.sides.check_alive()

    def close(self) -> None:
        self.sides.close()
        for c in self.clients.values():
            c.close()


SEEDS = [FIRST_SEED + i for i in range(HISTORIES)]


def _history_param(seed: int) -> Any:
    return pytest.param(seed, id=f"seed{seed}-{'-'.join(history_shape(seed))}")


@pytest.mark.parametrize("seed", [_history_param(s) for s in SEEDS])
def test_random_history_converges(mongo_server_factory, tmp_path, seed):
    h = History(seed, mongo_server_factory, str(tmp_path))
    try:
        h.run()
    except BaseException as e:
        report = "\n".join(h.log)
        tails = h.sides.tails()
        replay = f"MMM_CONVERGENCE_SEED={seed} MMM_CONVERGENCE_HISTORIES=1 pytest tests/test_convergence_random.py"
        raise AssertionError(f"history seed {seed} failed ({replay}):\n{e}\n\nits log:\n{report}\n{tails}") from e
    finally:
        h.close()
    if os.environ.get("MMM_CONVERGENCE_LOG"):
        print("\n".join(h.log))
        print(h.sides.tails(lines=int(os.environ["MMM_CONVERGENCE_LOG"])))
    print(f"seed {seed} {history_shape(seed)}: " + ", ".join(f"{k} {v}" for k, v in h.stats.items()))


# ------------------------------------------------------------------------------------------
# Histories the random ones found, minimized
# ------------------------------------------------------------------------------------------

def _star(factory, policy):
    names, links = topology("star")
    servers = {n: factory() for n in names}
    clients = {n: pymongo.MongoClient(s.uri) for n, s in servers.items()}
    spec = {n: {"id": n.upper(), "uri": s.uri} for n, s in servers.items()}
    return clients, mmm.Replicator(spec, links, resolve=policy)


def _settled(clients, a="hub", b="s2", timeout=30.0):
    """The documents of every server once `a` and `b` agree (and a second more)."""
    deadline = time.monotonic() + timeout
    docs = lambda n: list(clients[n][DB].c.find(sort=[("_id", 1)]))  # noqa: E731
    while docs(a) != docs(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    return {n: docs(n) for n in clients}


@pytest.mark.parametrize("policy", [mmm.Prefer("hub"), mmm.LWW(deletes="delete_wins")], ids=["prefer", "delete_wins"])
def test_a_hub_forwards_the_versions_it_applied_with_a_resolution(mongo_server_factory, policy):
    """Seed 7215, minimized: s2's batch reaches the hub with a conflict the hub resolves by
    writing a new version (Prefer: its own version again; delete_wins: the delete again) and
    an unrelated change of another document. The hub must forward both to s1."""
    clients, r = _star(mongo_server_factory, policy)
    with r:
        clients["hub"][DB].c.insert_many([{"_id": 1, "v": 0}, {"_id": 2, "v": 0}])
        _settled(clients, "hub", "s1")
    # Every replicator down: the hub changes document 1; then s2 changes it too and document
    # 2, in one transaction (so the hub applies both in one batch).
    if isinstance(policy, mmm.Prefer):
        clients["hub"][DB].c.update_one({"_id": 1}, {"$set": {"v": "hub"}})
        expected_1 = [{"_id": 1, "v": "hub"}]
    else:
        clients["hub"][DB].c.delete_one({"_id": 1})
        expected_1 = []
    time.sleep(0.02)
    with clients["s2"].start_session() as s:
        with s.start_transaction():
            clients["s2"][DB].c.update_one({"_id": 1}, {"$set": {"v": "s2, later"}}, session=s)
            clients["s2"][DB].c.update_one({"_id": 2}, {"$set": {"v": "s2"}}, session=s)
    with r:
        docs = _settled(clients)
    expected = expected_1 + [{"_id": 2, "v": "s2"}]
    try:
        assert docs == {n: expected for n in clients}, docs
    finally:
        for c in clients.values():
            c.close()


def test_mmm_run_per_server_applies_the_files_policy(mongo_server_factory, tmp_path):
    """The procs histories with delete_wins and Prefer (seeds 7206, 7212), minimized: one
    ``mmm run -s SERVER`` per side, ``resolve: lww,deletes=delete_wins`` in the file. A delete
    on a and a later update on b, made while both replicators are down, end deleted on both."""
    servers = {"a": mongo_server_factory(), "b": mongo_server_factory()}
    clients = {n: pymongo.MongoClient(s.uri) for n, s in servers.items()}
    links = [{"src": "a/app.*", "dst": "b/app.*"}, {"src": "b/app.*", "dst": "a/app.*"}]
    sides = Sides("procs", ["a", "b"], servers, links, "delete_wins", None, str(tmp_path), [])
    try:
        for n in sides.names:
            sides.start(n)
        for l in links:
            link = Link(l["src"], l["dst"])
            deadline = time.monotonic() + 30
            while clients[link.dst_server]["__mmm"]["checkpoints"].find_one({"_id": link.id}) is None:
                assert time.monotonic() < deadline, sides.tails()
                time.sleep(0.05)
        clients["a"][DB].c.insert_one({"_id": 1, "v": 0})
        deadline = time.monotonic() + 30
        while clients["b"][DB].c.find_one({"_id": 1}) is None:
            assert time.monotonic() < deadline, sides.tails()
            time.sleep(0.05)
        for n in sides.names:
            sides.stop(n)
        clients["a"][DB].c.delete_one({"_id": 1})
        time.sleep(0.02)
        clients["b"][DB].c.update_one({"_id": 1}, {"$set": {"v": "b, later"}})
        for n in sides.names:
            sides.start(n)
        deadline = time.monotonic() + 30
        while not clients["b"]["__mmm"]["conflicts"].find_one() or not clients["a"]["__mmm"]["conflicts"].find_one():
            assert time.monotonic() < deadline, sides.tails()
            time.sleep(0.05)
        time.sleep(1)
        policies = {e["policy"] for n in clients for e in clients[n]["__mmm"]["conflicts"].find()}
        assert policies == {"lww,deletes=delete_wins"}, sides.tails()
        assert [list(c[DB].c.find()) for c in clients.values()] == [[], []], sides.tails()
    finally:
        sides.close()
        for c in clients.values():
            c.close()


def test_fields_a_diff_creates_or_moves_keep_their_order_on_the_peer(mongo_server_factory):
    """Seed 7215, minimized: a pipeline update creates two fields in an order that is not
    alphabetical (its ``$v:2`` diff inserts ``v`` then ``n``), and another moves a field to the
    end. The peer must hold the same bytes, not the fields in alphabetical order (which is how
    one ``$set`` would create them) nor the moved field left in place."""
    names, links = topology("pair")
    servers = {n: mongo_server_factory() for n in names}
    clients = {n: pymongo.MongoClient(s.uri) for n, s in servers.items()}
    spec = {n: {"id": n.upper(), "uri": s.uri} for n, s in servers.items()}
    raw = {n: c[DB].get_collection("c", codec_options=RAW) for n, c in clients.items()}
    # Large enough that the source logs diffs rather than whole documents.
    pad = "p" * 200

    def agreed(timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            docs = {n: [d.raw for d in raw[n].find(sort=[("_id", 1)])] for n in names}
            if docs["a"] == docs["b"] and docs["a"]:
                return docs
            time.sleep(0.05)
        return docs

    try:
        with mmm.Replicator(spec, links):
            clients["a"][DB].c.insert_one({"_id": 1, "a": 1, "pad": pad})
            agreed()
            clients["a"][DB].c.update_one({"_id": 1}, [{"$set": {"v": "v", "n": 1}}])
            clients["a"][DB].c.update_one({"_id": 1}, [{"$unset": "a"}, {"$set": {"a": 2}}])
            clients["a"][DB].c.update_one({"_id": 1}, {"$inc": {"n": 2}})
            docs = agreed()
        logged = [e["o"] for e in clients["a"].local.oplog.rs.find({"ns": f"{DB}.c", "op": "u"})]
        assert any(o.get("$v") == 2 and list(o["diff"].get("i", {})) == ["v", "n"] for o in logged), logged
        want = [list(d) for d in (bson.decode(r) for r in docs["a"])]
        got = [list(d) for d in (bson.decode(r) for r in docs["b"])]
        assert want == [["_id", "pad", "v", "n", "a"]], want
        assert got == want
        assert docs["b"] == docs["a"]
    finally:
        for c in clients.values():
            c.close()
