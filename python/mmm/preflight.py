"""Checks on the servers of a topology, run before anything is written to them.

Per server a link uses: is it reachable, is it a replica set member, and (when the connection is
authenticated) may its user do what the links need there. ``mmm validate`` reports every finding;
:class:`mmm.Replicator` refuses to start on any but an unreachable server, whose links retry until
it is back. The privilege rules are a pure function of ``connectionStatus`` so they can be tested
without a server that enforces authentication.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from . import _mmm, redact
from .config import Link, Server

__all__ = ["Finding", "Need", "Target", "check", "privilege_problems", "requirements", "server_info"]

TIMEOUT_MS = 3000
MMM_DB = _mmm.MMM_DB
WRITE = ("insert", "update", "remove")
DDL = ("createCollection", "dropCollection", "createIndex", "dropIndex", "renameCollectionSameDB")


@dataclass(frozen=True)
class Target:
    """What a privilege is needed on: a collection, a whole database (``coll == ""``) or every
    database (``db == coll == ""``), the last being how a ``server/*`` endpoint is checked."""

    db: str
    coll: str = ""

    def __str__(self) -> str:
        if not self.db:
            return "every database"
        return f"{self.db}.{self.coll}" if self.coll else self.db


@dataclass(frozen=True)
class Need:
    """Actions a link needs on a target, why, and the built-in role that grants them."""

    target: Target
    actions: Tuple[str, ...]
    why: str
    grant: str


@dataclass(frozen=True)
class Finding:
    """One problem with a server, its message naming the server and its uri."""

    server: str
    message: str
    unreachable: bool = False


def _target(endpoint: str) -> Target:
    # Tolerant on purpose: endpoints are validated by the replication core, which gives the
    # better message; here a malformed one only has to not crash.
    ns = endpoint.split("/", 1)[-1]
    if ns == "*":
        return Target("")
    db, _, coll = ns.partition(".")
    return Target(db, "" if coll == "*" else coll)


def _role(base: str, target: Target) -> str:
    return f"{base}AnyDatabase" if not target.db else f"{base} on {target.db}"


READ_OPLOG = Need(Target("local", "oplog.rs"), ("find",), "to tail the oplog", "read on local")
WRITE_CHECKPOINTS = Need(Target(MMM_DB), WRITE, "to store checkpoints", f"readWrite on {MMM_DB}")
WRITE_VERSIONS = Need(Target(MMM_DB), WRITE, "to keep its versions (__mmm.meta, __mmm.clock)", f"readWrite on {MMM_DB}")


def requirements(links: Iterable[Link]) -> Dict[str, List[Need]]:
    """What each server (by name) must allow for these links, each need once."""
    out: Dict[str, Dict[Need, None]] = {}
    for link in links:
        src, dst = _target(link.src), _target(link.dst)
        # The source's own writes are stamped in its __mmm.meta, and versions are read back
        # from it (its documents, as they were) when a conflict needs them.
        src_needs = [READ_OPLOG, WRITE_VERSIONS, Need(src, ("find",), "to read versions back in a conflict", _role("read", src))]
        if link.initial_sync:
            src_needs.append(Need(src, ("find",), "to copy existing documents (initial_sync)", _role("read", src)))
        dst_needs = [WRITE_CHECKPOINTS, Need(dst, WRITE, "to apply writes", _role("readWrite", dst))]
        if "c" in link.ops:
            if dst.coll:
                dst_needs.append(Need(dst, DDL, "to apply DDL (ops 'c')", _role("readWrite", dst)))
            else:
                # dropDatabase is only ever replayed by links that carry whole databases.
                grant = f"{_role('readWrite', dst)} and {_role('dbAdmin', dst)}"
                dst_needs.append(Need(dst, DDL + ("dropDatabase",), "to apply DDL (ops 'c')", grant))
        for server, needs in ((link.src_server, src_needs), (link.dst_server, dst_needs)):
            out.setdefault(server, {}).update(dict.fromkeys(needs))
    return {server: list(needs) for server, needs in out.items()}


def _covers(resource: Mapping[str, Any], target: Target) -> bool:
    """Whether a privilege's resource pattern matches the target.

    As MongoDB's ResourcePatternSearchList (src/mongo/db/auth/resource_pattern_search_list.h)
    does: ``{db: "", collection: ""}`` (any normal resource) matches neither system collections
    (``system.*``, and ``local.replset.*``) nor anything in the ``local`` and ``config``
    databases, so it does not grant reading ``local.oplog.rs``; ``{db: D, collection: ""}``
    matches D's normal collections (``local``'s too, so "read on local" does);
    ``{db: "", collection: C}`` matches C in any database; ``cluster`` never matches a
    namespace; ``anyResource`` matches everything.
    """
    if resource.get("anyResource"):
        return True
    if "db" not in resource or "collection" not in resource:
        return False  # cluster and system-buckets patterns
    db, coll = resource["db"], resource["collection"]
    special_db = target.db in ("local", "config")
    if not target.coll:  # a database, or every database
        return (db, coll) == (target.db, "") or ((db, coll) == ("", "") and not special_db)
    normal = not target.coll.startswith("system.") and not (
        target.db == "local" and target.coll.startswith("replset.")
    )
    if coll == "":
        return normal and (db == target.db or (db == "" and not special_db))
    return coll == target.coll and db in ("", target.db)


def _allows(privileges: Sequence[Mapping[str, Any]], action: str, target: Target) -> bool:
    return any(action in p.get("actions", ()) and _covers(p.get("resource", {}), target) for p in privileges)


def privilege_problems(status: Mapping[str, Any], needs: Iterable[Need]) -> List[str]:
    """What the authenticated user of a ``connectionStatus`` reply (with ``showPrivileges``)
    lacks for ``needs``; nothing when no user is authenticated (authentication disabled)."""
    auth = status.get("authInfo", {})
    if not auth.get("authenticatedUsers"):
        return []
    privileges = auth.get("authenticatedUserPrivileges", [])
    problems = []
    for need in needs:
        missing = [a for a in need.actions if not _allows(privileges, a, need.target)]
        if missing:
            problems.append(f"user lacks {', '.join(missing)} on {need.target} {need.why} (grant {need.grant})")
    return problems


def server_info(uri: str, timeout_ms: int = TIMEOUT_MS) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``hello`` and ``connectionStatus`` (with privileges) of one server; the second is empty
    when the first shows no replica set. Raises PyMongo's ConnectionFailure when unreachable."""
    import pymongo
    from pymongo import uri_parser

    parsed = uri_parser.parse_uri(uri)
    # A timeout written in the uri is the user's choice and wins over ours.
    timeout = {} if "serverSelectionTimeoutMS" in parsed["options"] else {"serverSelectionTimeoutMS": timeout_ms}
    client: pymongo.MongoClient = pymongo.MongoClient(uri, **timeout)
    try:
        hello = client.admin.command("hello")
        if "setName" not in hello:
            return hello, {}
        return hello, client.admin.command("connectionStatus", showPrivileges=True)
    except pymongo.errors.ServerSelectionTimeoutError:
        # A client told replicaSet=... never selects a server outside that set, so a running
        # standalone would look down: ask each seed directly before calling it unreachable.
        # A live server answers hello at once, so the probes wait briefly.
        tls = {k: v for k, v in parsed["options"].items() if k.lower().startswith(("tls", "ssl"))}
        for host, port in parsed["nodelist"]:
            probe: pymongo.MongoClient = pymongo.MongoClient(
                host, port, directConnection=True, serverSelectionTimeoutMS=min(timeout_ms, 1000), **tls
            )
            try:
                hello = probe.admin.command("hello")
                if "setName" not in hello:
                    return hello, {}
            except pymongo.errors.PyMongoError:
                pass
            finally:
                probe.close()
        raise
    finally:
        client.close()


def _check_server(server: Server, needs: Sequence[Need], timeout_ms: int) -> List[Finding]:
    import pymongo

    where = f"server {server.name} ({redact.uri(server.uri)})"
    try:
        hello, status = server_info(server.uri, timeout_ms)
    except pymongo.errors.ConnectionFailure as e:
        return [Finding(server.name, f"{where} is unreachable: {e.__class__.__name__}: {redact.error(e)}", unreachable=True)]
    except (pymongo.errors.PyMongoError, ValueError) as e:  # a bad uri, failed authentication, ...
        details = e.details if isinstance(e, pymongo.errors.OperationFailure) else None
        reason = redact.text((details or {}).get("errmsg") or "") or redact.error(e)
        if getattr(e, "code", None) == 18:  # AuthenticationFailed
            reason += " (check the user, password and authSource in the uri)"
        return [Finding(server.name, f"{where}: cannot be checked: {reason}")]
    if "setName" not in hello:
        return [Finding(server.name, f"{where} is not a replica set member: start mongod with --replSet <name> and run rs.initiate() once")]
    return [Finding(server.name, f"{where}: {p}") for p in privilege_problems(status, needs)]


def check(
    servers: Mapping[str, Server],
    links: Sequence[Link],
    *,
    every_server: bool = False,
    timeout_ms: int = TIMEOUT_MS,
) -> List[Finding]:
    """Findings on each server of ``servers`` the links use (every one with ``every_server``),
    in ``servers`` order. Reads only; the servers are checked in parallel."""
    needs = requirements(links)
    if every_server:
        # A server no link here uses may serve links stored with `mmm replicate`, at either end.
        for name in servers:
            needs.setdefault(name, [READ_OPLOG, WRITE_CHECKPOINTS])
    chosen = [s for name, s in servers.items() if name in needs]
    if not chosen:
        return []
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        results = pool.map(lambda s: _check_server(s, needs[s.name], timeout_ms), chosen)
        return [f for findings in results for f in findings]
