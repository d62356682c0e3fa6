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
    return 0


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


def _format_status(rows: List[Dict[str, Any]]) -> str:
    headers = ["link", "state", "checkpoint", "lag s", "lag ops", "applied", "conflicts", "rejected", "last error"]
    table = [headers]
    for s in rows:
        ck = s.get("checkpoint")
        table.append([
            s["id"], _state_cell(s),
            f"{ck.time}.{ck.inc}" if ck is not None else "-",
            f"{s.get('lag_seconds', 0):.1f}", str(s.get("lag_ops", 0)),
            str(s.get("ops_applied", 0)), str(s.get("conflicts", 0)), str(s.get("rejected", 0)),
            (s.get("last_error") or "")[:60],
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
                    behind = src.local["oplog.rs"].count_documents({"ts": {"$gt": ts}, "op": {"$in": ["i", "u", "d", "c"]}})
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
        print(json.dumps([{k: ([v.time, v.inc] if hasattr(v, "inc") else v) for k, v in r.items()} for r in rows], indent=2))
    else:
        print(_format_status(rows) if rows else "no links configured")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .replication import ReplicationError, Replicator

    config = _config(args)
    lease = {"lease": not args.no_lease, "lease_ttl": args.lease_ttl}
    try:
        r = Replicator.from_config(config, **lease)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.server:
        if args.server not in config.servers:
            raise CliError(f"unknown server {args.server!r} (known: {', '.join(config.servers)})")
        r = Replicator(list(config.servers.values()), [l for l in r.links if l.dst_server == args.server], **lease)
    if not r.links:
        raise CliError(f"no links to run: declare links in {args.config} or add them with 'mmm replicate'")
    stopping: List[int] = []  # signal handlers only append: no locks shared with the main loop

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)
        r.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    return 0


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
    s.add_argument("--no-lease", action="store_true",
                   help="run every link here even if another 'mmm run' runs it (default: one process per link holds its lease)")
    s.add_argument("--lease-ttl", type=_positive(float), default=_mmm.DEFAULT_LEASE_TTL,
                   help="seconds a link's lease lasts without renewal (default 10; renewed every third of it)")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("resync", help="start one link over with an initial sync (after an oplog rollover)")
    s.add_argument("link", help="the link's id as 'mmm status' shows it, e.g. 'factory/vision.*->cloud/vision.*'")
    s.add_argument("--mirror", action="store_true",
                   help="also delete destination documents the source does not have (a destination that only mirrors the source)")
    s.set_defaults(func=cmd_resync)
    s = sub.add_parser("status", help="table of links: state, lag, applied, conflicts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
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
