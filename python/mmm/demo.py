"""``mmm demo``: a factory and a cloud, replicating both ways, with an outage in the middle.

Two embedded servers start ("factory" and "cloud"). Cameras at the factory save frames to GridFS
and queue inspections; people in the cloud review them. Halfway through, the link is cut for a
few seconds while both sides keep working; when it returns both catch up, and the demo checks
that every document is identical on both sides.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any, Dict, List

import gridfs
import pymongo

from .embedded import MongoServer
from .replication import Replicator

DB = "vision"
BAR = 24


def _bar(done: int, total: int) -> str:
    total = max(total, 1)
    filled = min(BAR, round(BAR * done / total))
    return "[" + "#" * filled + "." * (BAR - filled) + f"] {done}/{total}"


def _snapshot(client: pymongo.MongoClient) -> Dict[str, List[Any]]:
    db = client[DB]
    return {name: sorted(db[name].find(), key=lambda d: str(d["_id"])) for name in sorted(db.list_collection_names())}


class _Screen:
    """Redraws a block of lines in a terminal; prints plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        self.lines = 0
        self.last_plain = 0.0

    def show(self, lines: List[str], force: bool = False) -> None:
        if self.tty:
            if self.lines:
                sys.stdout.write(f"\x1b[{self.lines}F")
            for line in lines:
                sys.stdout.write("\x1b[2K" + line + "\n")
            self.lines = len(lines)
        elif force or time.monotonic() - self.last_plain >= 2.0:
            sys.stdout.write("\n".join(lines) + "\n\n")
            self.last_plain = time.monotonic()
        sys.stdout.flush()

    def say(self, text: str) -> None:
        self.lines = 0
        print(text, flush=True)


def run_demo(seconds: float = 12.0, outage: float = 3.0) -> int:
    screen = _Screen()
    factory, cloud = MongoServer(), MongoServer()
    fc, cc = pymongo.MongoClient(factory.uri), pymongo.MongoClient(cloud.uri)
    screen.say(f"factory: embedded MongoDB at {factory.address}   cloud: embedded MongoDB at {cloud.address}")
    servers = {"factory": {"id": "factory", "uri": factory.uri}, "cloud": {"id": "cloud", "uri": cloud.uri}}
    links = [(f"factory/{DB}.*", f"cloud/{DB}.*"), (f"cloud/{DB}.*", f"factory/{DB}.*")]
    state: Dict[str, Any] = {"replicator": Replicator(servers, links).start(), "link": "up", "stop": False}
    counts = {"frames": 0, "reviews": 0}
    rng = random.Random(7)

    def cameras() -> None:
        fs = gridfs.GridFS(fc[DB])
        n = 0
        while not state["stop"]:
            n += 1
            image = rng.randbytes(rng.randint(40_000, 300_000))  # a compressed frame
            frame_id = fs.put(image, filename=f"cam{n % 4}/frame-{n:05d}.jpg", camera=n % 4)
            fc[DB].inspections.insert_one({"_id": f"insp-{n:05d}", "frame": frame_id, "verdict": "pending"})
            counts["frames"] += 1
            time.sleep(0.08)

    def reviewers() -> None:
        while not state["stop"]:
            pending = list(cc[DB].inspections.find({"verdict": "pending"}).limit(3))
            for doc in pending:
                cc[DB].inspections.update_one(
                    {"_id": doc["_id"]},
                    {"$set": {"verdict": rng.choice(["pass", "pass", "fail"]), "reviewer": rng.choice(["ana", "li", "sam"])},
                     "$inc": {"edits": 1}},
                )
                counts["reviews"] += 1
            time.sleep(0.15)

    workers = [threading.Thread(target=cameras, daemon=True), threading.Thread(target=reviewers, daemon=True)]
    for w in workers:
        w.start()
    start = time.monotonic()
    cut_at, restore_at = seconds * 0.35, seconds * 0.35 + outage

    def table() -> List[str]:
        elapsed = time.monotonic() - start
        f_frames = fc[DB]["fs.files"].estimated_document_count()
        c_frames = cc[DB]["fs.files"].estimated_document_count()
        f_reviewed = fc[DB].inspections.count_documents({"verdict": {"$ne": "pending"}})
        c_reviewed = cc[DB].inspections.count_documents({"verdict": {"$ne": "pending"}})
        lines = [
            f"t={elapsed:5.1f}s  link {state['link']:<5}  frames saved {counts['frames']:4d}   reviews {counts['reviews']:4d}",
            f"  frames in the cloud      {_bar(c_frames, f_frames)}",
            f"  reviews at the factory   {_bar(f_reviewed, c_reviewed)}",
        ]
        if state["link"] == "up":
            for s in state["replicator"].status():
                lines.append(
                    f"  {s['src']:>7} -> {s['dst']:<7} {s['state']:<9} applied {s['ops_applied']:6d}  lag {s['lag_seconds']:4.1f}s"
                )
        else:
            lines.append("  link down: both sides keep working on their own")
        return lines

    try:
        while time.monotonic() - start < seconds:
            elapsed = time.monotonic() - start
            if state["link"] == "up" and cut_at <= elapsed < restore_at:
                state["replicator"].stop()
                state["replicator"].join()
                state["link"] = "down"
                screen.say(f"--- t={elapsed:.1f}s: the internet link is cut for {outage:.0f}s ---")
                # A supervisor on the floor and a reviewer in the cloud change one inspection
                # while neither can see the other: a conflict, resolved when the link is back.
                shared = cc[DB].inspections.find_one({"verdict": {"$ne": "pending"}}, sort=[("_id", -1)])
                if shared and fc[DB].inspections.find_one({"_id": shared["_id"]}):
                    fc[DB].inspections.update_one({"_id": shared["_id"]}, {"$set": {"verdict": "hold", "reviewer": "floor"}})
                    time.sleep(0.05)
                    cc[DB].inspections.update_one({"_id": shared["_id"]}, {"$set": {"verdict": "fail", "reviewer": "cloud"}})
                    state["conflict"] = shared["_id"]
                    screen.say(f"    {shared['_id']}: the factory sets verdict 'hold', then the cloud sets 'fail' (a conflict)")
            elif state["link"] == "down" and elapsed >= restore_at:
                state["replicator"] = Replicator(servers, links).start()
                state["link"] = "up"
                screen.say(f"--- t={elapsed:.1f}s: the link is back; catching up from the checkpoints ---")
            screen.show(table())
            time.sleep(0.25)
        state["stop"] = True
        for w in workers:
            w.join()
        screen.say("--- cameras and reviewers stop; waiting for both sides to agree ---")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen.show(table())
            a, b = _snapshot(fc), _snapshot(cc)
            if a == b:
                break
            time.sleep(0.3)
        else:
            screen.say("FAILED: factory and cloud still differ after 60 s")
            return 1
        screen.show(table(), force=True)
        docs = sum(len(v) for v in a.values())
        chunks = len(a.get("fs.chunks", []))
        screen.say(
            f"OK: factory and cloud are identical: {len(a.get('fs.files', []))} frames ({chunks} GridFS chunks), "
            f"{len(a.get('inspections', []))} inspections, {docs} documents compared one by one."
        )
        if state.get("conflict"):
            journal = state["replicator"].conflicts(f"{DB}.inspections")
            decided = fc[DB].inspections.find_one({"_id": state["conflict"]})
            for entry in journal:
                if entry["id"] == state["conflict"]:
                    screen.say(
                        f"Conflict on {entry['id']} met by {entry['server']}, resolved by {entry['policy']}: "
                        f"the later change wins on both sides (verdict {decided['verdict']!r}); "
                        f"both versions are in __mmm.conflicts (mmm conflicts lists them)."
                    )
                    break
        return 0
    finally:
        state["stop"] = True
        state["replicator"].stop()
        try:
            state["replicator"].join()
        finally:
            fc.close()
            cc.close()
            factory.stop()
            cloud.stop()
