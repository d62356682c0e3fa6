"""The ``mmm`` command: ``mmm -c mmm.yml run``, ``replicate``, ``status``, ``serve``, ``demo``, ...

Every mistake is one clear line on stderr and a non-zero exit; nothing is written when a check
fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import re
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__, _mmm, preflight, redact
from ._mmm import MmmError
from .config import Config, ConfigError, Link, load_config

log = logging.getLogger("mmm.cli")
log.addFilter(redact.LogFilter())

DEFAULT_CONFIG = "mmm.yml"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _client(uri: str, timeout_ms: int = 5000):
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)


# -- verbs ---------------------------------------------------------------------------------

def cmd_dump_config(args: argparse.Namespace) -> int:
    import yaml

    from .replication import Replicator

    config = _config(args)
    # The uri as written (a ${VAR} stays a reference), with any literal secret hidden.
    out: Dict[str, Any] = {
        name: {"id": s.id, "uri": redact.uri(config.uri_templates.get(name, s.uri), keep_variables=True)}
        for name, s in config.servers.items()
    }
    links = [l.as_dict() for l in config.links]
    try:
        stored = Replicator.from_config(config, load_stored_links=False).stored_links()
    except Exception as e:  # noqa: BLE001 - unreachable servers still let the file print
        log.warning("stored links not read: %s", redact.error(e))
        stored = []
    for l in stored:
        if l.as_dict() not in links:
            links.append(l.as_dict())
    if links:
        out["links"] = links
    sys.stdout.write(yaml.safe_dump(out, sort_keys=False))
    return 0


def cmd_clear_config(args: argparse.Namespace) -> int:
    config = _config(args)
    names = [args.server] if args.server else list(config.servers)
    for n in names:
        if n not in config.servers:
            raise CliError(f"unknown server {n!r} (known: {', '.join(config.servers)})")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("clear-config needs confirmation: run it in a terminal or pass --yes")
        answer = input(f"Delete mmm's stored links and checkpoints on {', '.join(names)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    for n in names:
        client = _client(config.servers[n].uri)
        try:
            client.drop_database(_mmm.MMM_DB)
        finally:
            client.close()
        print(f"cleared mmm configuration on {n}")
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    from .replication import Replicator

    config = _config(args)
    for end in (args.src, args.dst):
        server = end.split("/", 1)[0]
        if "/" in end and server not in config.servers:
            raise CliError(f"unknown server {server!r} in {end!r} (known: {', '.join(config.servers)})")
    link = Link(args.src, args.dst, args.ops, args.forward, args.initial_sync, args.marker, args.on_reject)
    for declared in config.links:
        if (declared.src, declared.dst) == (link.src, link.dst) and declared != link:
            raise CliError(f"{args.config} already declares {link.src} -> {link.dst} with other options; change it there")
    # Every check `run` makes, before anything is stored: the link with the file's links and
    # those already stored (the topology), then the servers it uses. The destination must be
    # reachable (the link is stored there); the source may be down for now, as for `run`.
    r = Replicator.from_config(config)
    try:
        r.check_new_link(link)
    except ValueError as e:
        raise CliError(str(e)) from None
    if "/" in args.dst:
        problems = []
        for f in preflight.check(config.servers, [link]):
            if f.unreachable and f.server != link.dst_server:
                log.warning("%s; the link is stored and will start once it is reachable", f.message)
            else:
                problems.append(f.message)
        if problems:
            raise CliError("; ".join(problems))
    try:
        link = r.replicate(args.src, args.dst, args.ops, forward=args.forward,
                           initial_sync=args.initial_sync, marker=args.marker, on_reject=args.on_reject)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(f"stored link {link.src} -> {link.dst} (ops {link.ops}) on {link.dst_server}")
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    from .replication import ReplicationError, Replicator

    r = Replicator.from_config(_config(args))
    link_id = r._link_id(args.link)
    try:
        start = r.resync(link_id, mirror=args.mirror)
    except ReplicationError as e:
        raise CliError(str(e)) from None
    print(f"link {link_id} starts over with an initial sync at its next run "
          f"(copy, then the oplog from Timestamp({start.time}, {start.inc}))")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .replication import Replicator

    config = _config(args)
    problems = [f.message for f in preflight.check(config.servers, config.links, every_server=True)]
    links: List[Link] = list(config.links)
    if not problems:
        try:
            links = Replicator.from_config(config).links
        except (ValueError, MmmError) as e:
            problems.append(str(e))
    if problems:
        for p in problems:
            print(f"mmm: {redact.text(p)}", file=sys.stderr)
        return 1
    print(f"{args.config}: {len(config.servers)} server(s) reachable replica sets, configuration valid")
    for line in _reach_report(config, links):
        print(line)
    for line in _headroom_report(config, links):
        print(line)
    return 0


def _headroom_report(config: Config, links: Sequence[Link]) -> List[str]:
    """Per source: how much history its oplog holds at the current write rate; per link that
    has run: how long before its position falls off (a warning within 20%)."""
    out: List[str] = []
    sources = list(dict.fromkeys(l.src_server for l in links))
    for name in sources:
        from_here = [l for l in links if l.src_server == name]
        positions, ids = [], []
        for l in from_here:
            try:
                checkpoint = _mmm.read_checkpoint(config.servers[l.dst_server].uri, l.id)
            except Exception as e:  # noqa: BLE001 - a destination down: its link is skipped here
                log.warning("checkpoint of %s not read: %s", l.id, redact.error(e))
                checkpoint = None
            if checkpoint is not None:
                positions.append(tuple(checkpoint["ts"]))
                ids.append(l.id)
        try:
            source, margins = _mmm.oplog_headroom(config.servers[name].uri, positions)
        except RuntimeError as e:
            out.append(f"warning: oplog headroom of {name} not read: {redact.error(e)}")
            continue
        out.append("")
        out.append(
            f"oplog of {name}: holds {_duration(source['capacity_seconds'])} of history at the current write rate "
            f"({source['size_bytes'] / 1e6:.1f} of {source['max_size_bytes'] / 1e6:.1f} MB used, "
            f"{_duration(source['window_seconds'])} held now)"
        )
        for link_id, m in zip(ids, margins):
            out.append(f"  {link_id}: position {_duration(m['margin_seconds'])} from falling off")
            if m["near_rollover"]:
                out.append(f"warning: link {link_id} is within 20% of falling off the oplog of {name}; "
                           "if it does, it catches up from the source's __mmm.meta (or stops, with on_rollover: stop)")
    return out


def _state_cell(s: Dict[str, Any]) -> str:
    """The state, with the copy's progress while an initial sync runs."""
    if s["state"] == "initial-sync" and s.get("initial_sync"):
        copied, total = s["initial_sync"]
        return f"initial-sync {copied}/{total}"
    return s["state"]


def _reach_report(config: Config, links: Sequence[Link]) -> List[str]:
    """Per namespace: whose writes reach whom, then a warning for each server whose writes
    reach some servers of the namespace but not others (a star whose hub does not forward)."""
    out: List[str] = []
    warnings: List[str] = []
    for r in _mmm.reach(list(config.servers.values()), list(links)):
        servers = r["servers"]
        out.append("")
        out.append(f"{r['namespace']}: whose writes (rows) reach whom (columns)")
        table = [[""] + servers]
        for origin in servers:
            reached = {s: (ns, whole) for s, ns, whole in r["reach"].get(origin, [])}
            row = [origin]
            for s in servers:
                if s == origin:
                    row.append(".")
                elif s not in reached:
                    row.append("no")
                else:
                    ns, whole = reached[s]
                    cell = "yes" if whole else "part"
                    row.append(cell if ns == r["namespace"] else f"{cell} (as {ns})")
            table.append(row)
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        out.extend("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
        warnings.extend(r["warnings"])
    out.extend(f"warning: {w}" for w in warnings)
    return out


def _duration(seconds: Optional[float]) -> str:
    """``3725`` -> ``1h02m``: oplog windows are hours to days."""
    if seconds is None:
        return "?"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _headroom_cell(s: Dict[str, Any]) -> str:
    """The link's margin before its position falls off its source's oplog, of the oplog's
    capacity at the current write rate (``!`` within 20%)."""
    oplog = s.get("oplog")
    if not oplog:
        return "-"
    cell = f"{_duration(oplog.get('margin_seconds'))} of {_duration(oplog.get('capacity_seconds'))}"
    return cell + (" !" if oplog.get("near_rollover") else "")


def _format_status(rows: List[Dict[str, Any]]) -> str:
    headers = ["link", "state", "checkpoint", "lag s", "lag ops", "applied", "conflicts", "rejected", "oplog margin", "last error"]
    table = [headers]
    for s in rows:
        ck = s.get("checkpoint")
        table.append([
            s["id"], _state_cell(s),
            f"{ck.time}.{ck.inc}" if ck is not None else "-",
            f"{s.get('lag_seconds', 0):.1f}", str(s.get("lag_ops", 0)),
            str(s.get("ops_applied", 0)), str(s.get("conflicts", 0)), str(s.get("rejected", 0)),
            _headroom_cell(s), (s.get("last_error") or "")[:60],
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def link_status_from_servers(config: Config, links: Sequence[Link]) -> List[Dict[str, Any]]:
    """Status of links as their checkpoints on the destinations show it (from any process)."""
    import bson

    rows = []
    for link, link_id in zip(links, _ids(config, links)):
        row: Dict[str, Any] = {"id": link_id, "src": link.src_server, "dst": link.dst_server}
        try:
            checkpoint = _mmm.read_checkpoint(config.servers[link.dst_server].uri, link_id)
            if checkpoint is None:
                row.update(state="never run", checkpoint=None)
            else:
                ts = bson.Timestamp(*checkpoint["ts"])
                src = _client(config.servers[link.src_server].uri)
                try:
                    newest = src.local["oplog.rs"].find_one({}, sort=[("$natural", -1)], projection={"ts": 1})["ts"]
                    # mmm's own bookkeeping on the source (its observation of the source's
                    # writes, batches applied there) is not something the link owes.
                    own = {"$not": re.compile(r"^__mmm\.")}
                    behind = src.local["oplog.rs"].count_documents(
                        {"ts": {"$gt": ts}, "op": {"$in": ["i", "u", "d", "c"]}, "ns": own, "o.applyOps.ns": own}
                    )
                finally:
                    src.close()
                row.update(
                    state="caught up" if behind == 0 else "behind",
                    checkpoint=ts,
                    lag_seconds=float(max(0, newest.time - ts.time)),
                    lag_ops=behind,
                    ops_applied=checkpoint["ops_applied"],
                    conflicts=checkpoint["conflicts"],
                    rejected=checkpoint["rejected"],
                )
                if checkpoint["initial_sync"] is not None:  # a copy in progress, resumed by the next run
                    row.update(state="initial-sync", initial_sync=list(checkpoint["initial_sync"]))
                try:
                    source, (margin,) = _mmm.oplog_headroom(config.servers[link.src_server].uri, [tuple(checkpoint["ts"])])
                    row["oplog"] = {**source, **margin}
                except RuntimeError as e:  # an oplog without stats: shown as unknown
                    log.warning("oplog headroom of %s not read: %s", link.src_server, redact.error(e))
        except Exception as e:  # noqa: BLE001 - reported per link
            row.update(state="unreachable", checkpoint=None, last_error=redact.error(e))
        if row["state"] != "unreachable":
            # Who runs the link, when it runs with a lease (``mmm run``'s default).
            try:
                lease = _mmm.read_lease(config.servers[link.dst_server].uri, "link:" + link_id)
            except Exception as e:  # noqa: BLE001 - the checkpoint's status stands without it
                log.warning("lease of link %s not read: %s", link_id, redact.error(e))
                lease = None
            if lease is not None:
                row["lease"] = {"term": lease["term"], "holder": lease["holder"], "expired": lease["expired"],
                                "expires_ms": lease["expires_ms"]}
        rows.append(row)
    return rows


def _ids(config: Config, links: Sequence[Link]) -> List[str]:
    return [_mmm.link_id(l.src, l.dst) for l in links]


def cmd_status(args: argparse.Namespace) -> int:
    from .replication import Replicator

    config = _config(args)
    links = Replicator.from_config(config).links
    rows = link_status_from_servers(config, links)
    if args.json:
        def plain(v: Any) -> Any:
            if hasattr(v, "inc"):
                return [v.time, v.inc]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        print(json.dumps([plain(r) for r in rows], indent=2, default=str))
    else:
        print(_format_status(rows) if rows else "no links configured")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .replication import ReplicationError, Replicator

    config = _config(args)
    if args.resolve:
        config.resolve = _resolve_args(args.resolve, config)
    lease = {"lease": not args.no_lease, "lease_ttl": args.lease_ttl}
    try:
        r = Replicator.from_config(config, **lease)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.server:
        if args.server not in config.servers:
            raise CliError(f"unknown server {args.server!r} (known: {', '.join(config.servers)})")
        r = Replicator(list(config.servers.values()), [l for l in r.links if l.dst_server == args.server],
                       resolve=r.resolve, tombstone_retention=r.tombstone_retention,
                       verify_every=r.verify_every, **lease)
    if not r.links:
        raise CliError(f"no links to run: declare links in {args.config} or add them with 'mmm replicate'")
    stopping: List[int] = []  # signal handlers only append: no locks shared with the main loop

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)
        r.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    http = None
    if args.http is not None:
        try:
            http = r.serve_http(args.http)
        except OSError as e:
            raise CliError(str(e.strerror or e)) from None
        print(f"mmm: metrics on {http.url}metrics, status page on {http.url}", file=sys.stderr, flush=True)
    print(f"mmm: replicating {len(r.links)} link(s); SIGTERM or Ctrl-C stops", file=sys.stderr, flush=True)
    last_status = time.monotonic()
    try:
        r.start()
        while not stopping and r.running:
            time.sleep(0.1)
            if args.status_interval and time.monotonic() - last_status >= args.status_interval:
                log.info("status:\n%s", _format_status(r.status()))
                last_status = time.monotonic()
        if stopping:
            log.info("received %s: stopping after the current batch", signal.Signals(stopping[0]).name)
        r.stop()
        r.join()
    except ReplicationError as e:
        raise CliError(str(e)) from None
    finally:
        if http is not None:
            http.stop()
    return 0


def _resolve_args(values: Sequence[str], config: Config) -> Dict[str, Any]:
    """``--resolve POLICY`` (every namespace) or ``--resolve PATTERN=POLICY``, repeatable;
    checked (servers named included) before anything connects."""
    from .policies import core_policies, normalize_resolve

    out: Dict[str, Any] = {}
    for value in values:
        pattern, sep, policy = value.partition("=")
        if not sep or "," in pattern:
            pattern, policy = "*", value
        if pattern.strip() in out:
            raise CliError(f"--resolve: pattern {pattern.strip()!r} given twice")
        out[pattern.strip()] = policy.strip()
    try:
        core_policies(normalize_resolve(out), {n: s.id for n, s in config.servers.items()})
    except ValueError as e:
        raise CliError(f"--resolve: {e}") from None
    return out


def cmd_conflicts(args: argparse.Namespace) -> int:
    from .replication import Replicator

    config = _config(args)
    if args.server and args.server not in config.servers:
        raise CliError(f"unknown server {args.server!r} (known: {', '.join(config.servers)})")
    r = Replicator(list(config.servers.values()), [], preflight=False)
    entries = r.conflicts(args.ns, server=args.server, limit=args.limit)
    if args.json:
        from bson import json_util

        print(json_util.dumps(entries, indent=2, json_options=json_util.RELAXED_JSON_OPTIONS))
        return 0
    if not entries:
        print("no conflicts journaled")
        return 0
    rows = [("when", "server", "from", "namespace", "_id", "winner", "policy")]
    for e in entries:
        at = e.get("at")
        rows.append((at.strftime("%Y-%m-%d %H:%M:%S") if at else "?", str(e.get("server")), str(e.get("from")),
                     str(e.get("ns")), _short(repr(e.get("id")), 40), str(e.get("winner")), str(e.get("policy"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
class _VerifyProgress:
    """The progress of ``mmm verify`` on stderr: one line rewritten in place on a terminal,
    a line a second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, p: Dict[str, Any]) -> None:
        if not p.get("pair"):
            return
        if not self.tty and time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        about = f" of about {p['estimate']}" if p["estimate"] and p["phase"] == "survey" else ""
        line = (f"mmm: verify {p['pairs_done'] + 1}/{p['pairs']} {p['pair']}: {p['phase']}, "
                f"{p['compared']}{about} documents compared, {p['ranges_differing']} range(s) differ")
        if self.tty:
            print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
            self.shown = True
        else:
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _verify_json(result: Any) -> Dict[str, Any]:
    """The result as JSON: documents and ``_id``s in canonical Extended JSON, so that types
    (1 vs 1.0 vs "1") show."""
    from bson import json_util

    def ext(v: Any) -> Any:
        return json.loads(json_util.dumps(v, json_options=json_util.CANONICAL_JSON_OPTIONS))

    return {
        "consistent": result.consistent,
        "as_of": result.as_of.isoformat() if result.as_of else None,
        "pairs": [
            {
                "ends": list(p.ends), "consistent": p.consistent, "as_of": p.as_of.isoformat(),
                "compared": p.compared, "suspect_ranges": p.suspect_ranges, "differences": p.differences,
                "listed": [{"_id": ext(d.id), "versions": {k: ext(v) for k, v in d.versions.items()}}
                           for d in p.listed],
                "unsettled": [ext(i) for i in p.unsettled],
                "lagging_links": p.lagging_links, "resumed": p.resumed,
            }
            for p in result.pairs
        ],
    }


def cmd_repair(args: argparse.Namespace) -> int:
    """Exit 0: consistent after the repair; 1: still different; 2: could not repair."""
    import pymongo.errors

    from .replication import ReplicationError, Replicator

    progress = _VerifyProgress()
    try:
        config = _config(args)
        r = Replicator.from_config(config)
        if not r.links:
            raise CliError(f"no links to repair: declare links in {args.config} or add them with 'mmm replicate'")
        out = r.repair(args.ns, wait=args.wait, progress=progress)
    except (CliError, ConfigError, MmmError, ValueError, ReplicationError, pymongo.errors.PyMongoError) as e:
        progress.end()
        print(f"mmm: {redact.text(e)}", file=sys.stderr)
        return 2
    progress.end()
    if args.json:
        from bson import json_util

        print(json_util.dumps({"repaired": out["repaired"], "consistent": out["verify"].consistent,
                               "decisions": [{**d, "stamp": [d["stamp"].clock, d["stamp"].server]} for d in out["decisions"]]},
                              indent=2, json_options=json_util.RELAXED_JSON_OPTIONS))
    else:
        for d in out["decisions"]:
            print(f"{d['namespace']} _id {d['id']!r}: {d['winner']}'s version kept on both")
        state = "consistent" if out["verify"].consistent else "still different (writes going on? run it again)"
        print(f"repaired {out['repaired']} document(s); now {state}")
    return 0 if out["verify"].consistent else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0: consistent; 1: differences; 2: could not verify (like diff)."""
    import pymongo.errors

    from .replication import ReplicationError, Replicator

    progress = _VerifyProgress()
    try:
        config = _config(args)
        r = Replicator.from_config(config)
        if not r.links:
            raise CliError(f"no links to verify: declare links in {args.config} or add them with 'mmm replicate'")
        result = r.verify(args.ns, range_size=args.range_size, wait=args.wait, max_listed=args.max_listed,
                          restart=args.restart, progress=progress)
    except (CliError, ConfigError, MmmError, ValueError, ReplicationError, pymongo.errors.PyMongoError) as e:
        progress.end()
        print(f"mmm: {redact.text(e)}", file=sys.stderr)
        return 2
    progress.end()
    for p in result.pairs:
        if p.resumed:
            print(f"mmm: {p.resumed}", file=sys.stderr)
        for note in p.lagging_links:
            print(f"mmm: warning: {p.ends[0]} <-> {p.ends[1]}: link {note}; differences may be writes it has not applied",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(_verify_json(result), indent=2))
        return 0 if result.consistent else 1
    from bson import json_util

    def show(v: Any) -> str:
        return "(absent)" if v is None else json_util.dumps(v, json_options=json_util.CANONICAL_JSON_OPTIONS)

    if not result.pairs:
        print("nothing to verify: the links carry no collection yet")
    for p in result.pairs:
        pair = f"{p.ends[0]} <-> {p.ends[1]}"
        if p.consistent:
            print(f"consistent as of {p.as_of.isoformat()}: {pair} ({p.compared} documents)")
        else:
            print(f"{pair}: {p.differences} document(s) differ (as of {p.as_of.isoformat()})")
            for d in p.listed:
                print(f"  _id {show(d.id)}")
                for end, doc in d.versions.items():
                    print(f"    {end}: {show(doc)}")
            if p.differences > len(p.listed):
                print(f"  ... and {p.differences - len(p.listed)} more (--max-listed)")
        if p.unsettled:
            print(f"  {len(p.unsettled)} document(s) kept changing during the check (not counted): "
                  + ", ".join(show(i) for i in p.unsettled[:10]))
    return 0 if result.consistent else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from .embedded import MongoServer, is_loopback

    try:
        server = MongoServer(port=args.port, replset=args.replset, oplog_size_mb=args.oplog_size_mb,
                             host=args.host, advertise=args.advertise,
                             test_commands=args.test_commands)
    except (OSError, ValueError) as e:
        raise CliError(str(e)) from None
    if not is_loopback(args.host):
        print(
            f"mmm: WARNING: listening on {args.host}: anyone who can reach this machine on port "
            f"{server.port} can read and write every database WITHOUT A PASSWORD (the embedded "
            "server has no authentication). Use --host 127.0.0.1 unless that is what you want.",
            file=sys.stderr, flush=True,
        )
    done: List[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: done.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: done.append(signum))
    print(f"mmm: embedded MongoDB server on {server.address}, replica set {server.replset}", flush=True)
    print(f"     connect with {server.uri}", flush=True)
    while not done:
        time.sleep(0.2)
    server.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, outage=args.outage)


# -- parser --------------------------------------------------------------------------------

def _positive(kind: Any, zero: bool = False) -> Any:
    """An argparse type: a finite number above zero (or at least zero)."""
    import math

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number {'>= 0' if zero else '> 0'}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _http_address(text: str) -> str:
    from .monitoring import parse_address

    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0-65535 (0 picks a free one)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmm", description="Multi-master replication and oplog triggers for MongoDB.")
    p.add_argument("--version", action="version", version=f"mmm {__version__}")
    p.add_argument("-c", "--config", default=os.environ.get("MMM_CONFIG", DEFAULT_CONFIG), help="configuration file (default: mmm.yml)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-l", "--logging", metavar="INI", help="a logging.ini file (logging.config.fileConfig)")
    sub = p.add_subparsers(dest="command", metavar="command")

    s = sub.add_parser("dump-config", help="print servers and links (file and stored)")
    s.set_defaults(func=cmd_dump_config)
    s = sub.add_parser("clear-config", help="delete stored links and checkpoints (__mmm) on servers")
    s.add_argument("-s", "--server", help="only this server")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_clear_config)
    s = sub.add_parser("replicate", help="store a link src -> dst on the destination")
    s.add_argument("--src", required=True, help="server/db.collection (or server/db.*)")
    s.add_argument("--dst", required=True, help="server/db.collection (or server/db.*)")
    s.add_argument("--ops", default="iud", help="letters from 'iudc' (default iud; c replicates DDL)")
    s.add_argument("--forward", action="store_true", help="also carry writes replicated into src from elsewhere")
    s.add_argument("--initial-sync", action="store_true", help="copy existing documents first")
    s.add_argument("--marker", choices=("transaction", "field"), default="transaction",
                   help="field: also write __mmm: {origin, ts} into every document the link writes")
    s.add_argument("--on-reject", choices=("fail", "journal"), default="fail",
                   help="a write the destination refuses stops the link (fail) or goes to __mmm.rejected (journal)")
    s.set_defaults(func=cmd_replicate)
    s = sub.add_parser("run", help="replicate until SIGTERM/SIGINT")
    s.add_argument("-s", "--server", help="only links whose destination is this server")
    s.add_argument("--status-interval", type=_positive(float, zero=True), default=0, help="log a status table every N seconds")
    s.add_argument("--resolve", action="append", metavar="[PATTERN=]POLICY",
                   help="conflict policy (lww, fields, prefer:SERVER, none; ',deletes=delete_wins|update_wins'), "
                        "for every namespace or for PATTERN (db.coll, db.*); repeatable; overrides the file's resolve:")
    s.add_argument("--http", metavar="HOST:PORT", type=_http_address,
                   help="serve Prometheus /metrics, /status (JSON) and a status page, e.g. 127.0.0.1:9108")
    s.add_argument("--no-lease", action="store_true",
                   help="run every link here even if another 'mmm run' runs it (default: one process per link holds its lease)")
    s.add_argument("--lease-ttl", type=_positive(float), default=_mmm.DEFAULT_LEASE_TTL,
                   help="seconds a link's lease lasts without renewal (default 10; renewed every third of it)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("conflicts", help="list the conflict journal (__mmm.conflicts) of every server, newest first")
    s.add_argument("--ns", help="only this namespace (db.collection)")
    s.add_argument("-s", "--server", help="only this server's journal")
    s.add_argument("--limit", type=_positive(int), default=50, help="at most this many entries (default 50)")
    s.add_argument("--json", action="store_true", help="the entries as JSON (MongoDB extended JSON)")
    s.set_defaults(func=cmd_conflicts)

    s = sub.add_parser("resync", help="start one link over with an initial sync (after an oplog rollover)")
    s.add_argument("link", help="the link's id as 'mmm status' shows it, e.g. 'factory/vision.*->cloud/vision.*'")
    s.add_argument("--mirror", action="store_true",
                   help="also delete destination documents the source does not have (a destination that only mirrors the source)")
    s.set_defaults(func=cmd_resync)
    s = sub.add_parser("status", help="table of links: state, lag, applied, conflicts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("verify", help="compare the servers of every link, document by document (exit 0 same, 1 different, 2 error)")
    s.add_argument("--ns", help="only this namespace (db.collection), by its name at either end")
    s.add_argument("--json", action="store_true", help="the result as JSON (documents in canonical Extended JSON)")
    s.add_argument("--restart", action="store_true", help="ignore the position an interrupted run saved")
    s.add_argument("--wait", type=_positive(float, zero=True), default=30.0,
                   help="seconds to wait for the links to catch up before each re-check (default 30)")
    s.add_argument("--range-size", type=_positive(int), default=1000, help="_ids per compared range (default 1000)")
    s.add_argument("--max-listed", type=_positive(int, zero=True), default=100,
                   help="differences shown with both versions per pair (default 100; all are counted)")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("repair", help="bring the servers of every link into agreement, moving only the documents that differ")
    s.add_argument("--ns", help="only this namespace (db.collection), by its name at either end")
    s.add_argument("--json", action="store_true", help="the decisions as JSON")
    s.add_argument("--wait", type=_positive(float, zero=True), default=30.0,
                   help="seconds to wait for the links to catch up before deciding (default 30)")
    s.set_defaults(func=cmd_repair)
    s = sub.add_parser("validate", help="check the file and every server, writing nothing")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("serve", help="run an embedded MongoDB-compatible server")
    s.add_argument("--port", type=_port, default=27017)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                   "0.0.0.0 or :: listen on every interface, without authentication)")
    s.add_argument("--advertise", metavar="HOST[:PORT]",
                   help="address hello and the printed URI name (default: the bound address; for "
                        "0.0.0.0/:: this machine's hostname)")
    s.add_argument("--replset", default="rs0")
    s.add_argument("--oplog-size-mb", type=_positive(float), default=256)
    s.add_argument("--no-test-commands", dest="test_commands", action="store_false",
                   help="refuse test commands (configureFailPoint), as a production mongod does")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("demo", help="factory and cloud, replicating both ways, with an outage")
    s.add_argument("--seconds", type=_positive(float), default=12, help="how long the simulation runs")
    s.add_argument("--outage", type=_positive(float, zero=True), default=3, help="how long the link is cut")
    s.set_defaults(func=cmd_demo)
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    if args.logging:
        if not os.path.exists(args.logging):
            raise CliError(f"{args.logging}: no such logging configuration file")
        if not os.path.isfile(args.logging) or os.path.getsize(args.logging) > (1 << 20):
            raise CliError(f"{args.logging}: not a logging configuration file (a regular file of at most 1 MiB)")
        try:
            logging.config.fileConfig(args.logging, disable_existing_loggers=False)
        except Exception as e:  # noqa: BLE001 - configparser, KeyError, ImportError, ... all mean a bad file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CliError(
                f"{args.logging}: not a usable logging configuration ({e.__class__.__name__}{': ' + reason if reason else ''}); "
                "see the configuration file format of Python's logging.config.fileConfig"
            ) from None
    else:
        level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every handler, whoever logs through it (mmm, PyMongo, ...), sees records without secrets.
    redact.install_log_filter()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        _setup_logging(args)
        return args.func(args)
    except (CliError, ConfigError, MmmError, ValueError) as e:
        print(f"mmm: {redact.text(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a server error or a bug: one line, no secrets
        import pymongo.errors

        if not isinstance(e, pymongo.errors.PyMongoError):
            raise
        print(f"mmm: {e.__class__.__name__}: {redact.error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
