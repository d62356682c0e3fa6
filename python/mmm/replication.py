"""Multi-master replication between MongoDB replica sets.

::

    r = mmm.Replicator(
        servers={"factory": {"id": "f1", "uri": factory_uri}, "cloud": {"id": "c1", "uri": cloud_uri}},
        links=[("factory/vision.*", "cloud/vision.*"), ("cloud/vision.*", "factory/vision.*")],
    )
    r.start()
    ...
    print(r.status())
    r.stop(); r.join()

Each link tails its source's oplog and applies batches on its destination in transactions that
also move the link's checkpoint (``__mmm.checkpoints`` on the destination), so a crash loses
nothing and applies nothing twice; replicated batches are recognised by that checkpoint write
and never sent back to their origin. No field is added to user documents.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import bson
from bson import Timestamp

from . import _mmm, preflight as _preflight, redact
from ._background import BackgroundThread
from .config import Config, Link, Server, load_config
from .policies import LWW, Stamp, core_policies, normalize_resolve

log = logging.getLogger("mmm.replication")
log.addFilter(redact.LogFilter())

__all__ = ["ConflictEvent", "Difference", "PairResult", "ReplicationError", "Replicator", "VerifyResult"]

LINKS_COLLECTION = _mmm.LINKS_COLLECTION
CONFLICTS_COLLECTION = "conflicts"


class ReplicationError(_mmm.MmmError):
    """A link stopped on an error that needs attention (its message says which and why)."""


def _core(servers: Iterable[Server], links: Iterable[Link], resolve: Any = None, tombstone_retention: float = 864000.0) -> Any:
    """A replication core: checks the topology and every URI (ValueError without secrets).
    ``resolve``: the replicator's conflict policies; a link's own ``resolve`` wins over them."""
    servers = list(servers)
    links = list(links)
    server_ids = {s.name: s.id for s in servers}
    policies: Dict[str, Any] = {}
    resolvers: Dict[str, Any] = {}
    default = normalize_resolve(LWW() if resolve is _DEFAULT else resolve)
    owns: Dict[str, Dict[str, Any]] = {}
    for link in links:
        own = default if link.resolve is None else normalize_resolve(link.resolve)
        specs, funcs = core_policies(own, server_ids)
        link_id = link.id
        policies[link_id] = specs
        owns[link_id] = own
        if funcs:
            resolvers[link_id] = funcs
    _check_opposite_links_agree(links, policies, owns)
    try:
        return _mmm.ReplicatorCore(servers, links, policies, resolvers, tombstone_retention)
    except ValueError as e:
        raise ValueError(redact.text(e)) from None


_DEFAULT: Any = object()


def _check_opposite_links_agree(links: List[Link], policies: Dict[str, Any], owns: Dict[str, Dict[str, Any]]) -> None:
    """Two links carrying the same documents in opposite directions decide each conflict once
    on each side: with different policies the two sides would each keep what their own policy
    picks, and never agree. Refused here, before anything runs (links run by other processes
    cannot be seen from here: give every process the same policies)."""
    by_route = {(link.src, link.dst): link for link in links}
    for link in links:
        back = by_route.get((link.dst, link.src))
        if back is None or link.id >= back.id or policies[link.id] == policies[back.id]:
            continue

        def shown(own: Dict[str, Any]) -> str:
            return "{" + ", ".join(f"{k!r}: {'none' if v is None else v!r}" for k, v in sorted(own.items())) + "}"

        raise ValueError(f"links {link.id} and {back.id} carry the same documents both ways with different conflict "
                         f"policies ({shown(owns[link.id])} and {shown(owns[back.id])}): the servers would never agree "
                         "on a conflict; give both links the same resolve")


@dataclass(frozen=True)
class ConflictEvent:
    """A document changed concurrently on two servers (neither change saw the other), met by
    a link and decided by the namespace's policy. It is also in ``__mmm.conflicts`` on
    ``server`` (see :meth:`Replicator.conflicts`)."""

    server: str
    """Server id where the conflict was met (the link's destination)."""
    source: str
    """Server id the arriving version came from (the link's source)."""
    namespace: str
    id: Any
    ours: Stamp
    """The version ``server`` held."""
    theirs: Stamp
    """The arriving version."""
    policy: str
    winner: str
    """``ours``, ``theirs``, ``rewrite-ours``/``rewrite-theirs`` (a new version written by a
    delete rule or ``Prefer``), ``resolver``, or ``as-is`` (detection only)."""


@dataclass(frozen=True)
class Difference:
    """An ``_id`` whose documents differ between the two ends of a pair."""

    id: Any
    versions: Dict[str, Optional[Dict[str, Any]]]
    """Per end (``server/db.coll``): the document there, None when it is absent."""


@dataclass
class PairResult:
    """The verification of one pair of namespaces (``server/db.coll`` at each end)."""

    ends: Tuple[str, str]
    as_of: datetime.datetime
    """When its survey began (UTC): writes made before then and replicated are reflected."""
    compared: int
    """``_id``s compared."""
    suspect_ranges: int
    """Ranges whose hashes differed at the first read (lag included) and were re-checked."""
    differences: int
    """Documents that differ after the links caught up (counted; see ``listed``)."""
    listed: List[Difference]
    """The first ``max_listed`` of them, with both versions."""
    unsettled: List[Any]
    """``_id``s that kept changing through every re-check (their differences may be lag)."""
    lagging_links: List[str]
    """Links that had not caught up when a re-check stopped waiting (their writes may be the
    differences), or had never run."""
    resumed: Optional[str]
    """Set when this run resumed one that was interrupted: what it resumed."""

    @property
    def consistent(self) -> bool:
        return self.differences == 0


@dataclass
class VerifyResult:
    """What :meth:`Replicator.verify` found, pair by pair."""

    pairs: List[PairResult]

    @property
    def consistent(self) -> bool:
        return all(p.consistent for p in self.pairs)

    @property
    def as_of(self) -> Optional[datetime.datetime]:
        """The earliest survey start: every pair is consistent at least as of then."""
        return min((p.as_of for p in self.pairs), default=None)

    @property
    def differences(self) -> List[Difference]:
        return [d for p in self.pairs for d in p.listed]

    def summary(self) -> Dict[str, Any]:
        """What :meth:`Replicator.status` shows as the last result."""
        return {
            "consistent": self.consistent, "as_of": self.as_of,
            "differences": sum(p.differences for p in self.pairs),
            "unsettled": sum(len(p.unsettled) for p in self.pairs),
            "pairs": len(self.pairs),
            "at": datetime.datetime.now(datetime.timezone.utc),
        }


def _pair_result(raw: Dict[str, Any]) -> PairResult:
    a, b = "/".join(raw["a"]), "/".join(raw["b"])
    listed = [
        Difference(
            id=bson.decode(d["id_bson"])["_id"],
            versions={a: bson.decode(d["a"]) if d["a"] is not None else None,
                      b: bson.decode(d["b"]) if d["b"] is not None else None},
        )
        for d in raw["listed"]
    ]
    return PairResult(
        ends=(a, b),
        as_of=datetime.datetime.fromtimestamp(raw["as_of_ms"] / 1000, datetime.timezone.utc),
        compared=raw["compared"], suspect_ranges=raw["suspect_ranges"], differences=raw["differences"], listed=listed,
        unsettled=[bson.decode(u)["_id"] for u in raw["unsettled"]],
        lagging_links=list(raw["lagging_links"]), resumed=raw["resumed"],
    )


LinkLike = Union[Link, Tuple[str, str], Tuple[str, str, str], Mapping[str, Any]]


def _as_link(spec: LinkLike) -> Link:
    if isinstance(spec, Link):
        return spec
    if isinstance(spec, Mapping):
        return Link(**spec)
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        return Link(*spec)
    raise ValueError(f"a link is a Link, a (src, dst[, ops]) tuple or a mapping, got {spec!r}")


class Replicator:
    """Runs a replication topology: servers by name and links between them.

    With ``preflight=True`` (the default), :meth:`start` and :meth:`run` first check every
    server a link uses, writing nothing: one that is reachable but not a replica set member, or
    whose authenticated user lacks a privilege the links need, makes them raise
    :class:`ReplicationError` listing every such problem before any link starts. An unreachable
    server is only logged (warning on ``mmm.replication``): its links retry until it is back.
    ``preflight=False`` skips the check.

    ``lease=True``: each link works only while this process holds the link's lease, kept in
    ``__mmm.leases`` on the link's destination (one lease per link, beside the checkpoint it
    fences): start the same replicator in several processes or hosts and one of them runs each
    link; the others show it as ``standby`` and take over within ``lease_ttl`` plus one renewal
    interval (``lease_ttl / 3``) when its holder stops, dies or hangs. A holder paused past its
    lease cannot apply a batch or move a checkpoint (every checkpoint write is fenced by the
    lease's term). :meth:`status` shows each link's ``lease``.
    """

    def __init__(
        self,
        servers: Union[Mapping[str, Mapping[str, str]], Iterable[Server]],
        links: Sequence[LinkLike] = (),
        *,
        on_conflict: Optional[Callable[[ConflictEvent], Any]] = None,
        load_stored_links: bool = False,
        preflight: bool = True,
        resolve: Any = _DEFAULT,
        tombstone_retention: float = 10 * 24 * 3600,
        verify_every: Optional[float] = None,
        lease: bool = False,
        lease_ttl: float = _mmm.DEFAULT_LEASE_TTL,
    ) -> None:
        if lease:
            _mmm.validate_lease("link", float(lease_ttl))
        self.lease = lease
        self.lease_ttl = float(lease_ttl)
        if isinstance(servers, Mapping):
            parsed = {}
            for name, spec in servers.items():
                if not isinstance(spec, Mapping) or "uri" not in spec:
                    raise ValueError(f"server {name!r} needs a uri (and an id)")
                server_id = spec.get("id", name)
                if isinstance(server_id, bool) or not isinstance(server_id, (str, int)) or not str(server_id).strip():
                    raise ValueError(f"server {name!r}: the id must be a non-empty string, got {server_id!r}")
                parsed[name] = Server(name, str(server_id), spec["uri"])
            self.servers: Dict[str, Server] = parsed
        else:
            self.servers = {s.name: s for s in servers}
        self.links: List[Link] = [_as_link(l) for l in links]
        self.on_conflict = on_conflict
        self.preflight = preflight
        self.resolve = resolve
        if isinstance(tombstone_retention, bool) or not isinstance(tombstone_retention, (int, float)) or not 0 < tombstone_retention < 1e10:
            raise ValueError(f"tombstone_retention is a positive number of seconds, got {tombstone_retention!r}")
        self.tombstone_retention = float(tombstone_retention)
        normalize_resolve(LWW() if resolve is _DEFAULT else resolve)  # a bad policy fails here
        self.conflict_events: List[ConflictEvent] = []
        """Conflicts met by links this replicator runs, since it started (the journal,
        :meth:`conflicts`, keeps every server's)."""
        if verify_every is not None and (isinstance(verify_every, bool) or not isinstance(verify_every, (int, float))
                                         or not verify_every > 0 or verify_every != verify_every or verify_every == float("inf")):
            raise ValueError(f"verify_every is a number of seconds > 0, got {verify_every!r}")
        self.verify_every = verify_every
        self.last_verify: Optional[VerifyResult] = None
        self._verify_thread: Optional[threading.Thread] = None
        if load_stored_links:
            self.links.extend(l for l in self.stored_links() if l not in self.links)
        self._core = self._make_core()  # validates the topology now
        self._stop = threading.Event()
        self._background = BackgroundThread()

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> "Replicator":
        """Servers and links from a YAML file, plus links stored with :meth:`replicate`."""
        return cls.from_config(load_config(path), **kwargs)

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> "Replicator":
        kwargs.setdefault("load_stored_links", True)
        if config.resolve is not None:
            kwargs.setdefault("resolve", config.resolve)
        if config.tombstone_retention is not None:
            kwargs.setdefault("tombstone_retention", config.tombstone_retention)
        if config.verify_every is not None:
            kwargs.setdefault("verify_every", config.verify_every)
        return cls(list(config.servers.values()), config.links, **kwargs)

    def _make_core(self) -> Any:
        return _core(self.servers.values(), self.links, self.resolve, self.tombstone_retention)

    # -- the original verbs ---------------------------------------------------------------

    def _client(self, server: str):
        import pymongo

        if server not in self.servers:
            raise ValueError(f"unknown server {server!r} (known: {', '.join(self.servers)})")
        uri = self.servers[server].uri
        # A timeout written in the uri is the user's choice and wins over ours.
        if "serverselectiontimeoutms" in uri.lower():
            return pymongo.MongoClient(uri)
        return pymongo.MongoClient(uri, serverSelectionTimeoutMS=_preflight.TIMEOUT_MS)

    def _with_link(self, link: Link) -> List[Link]:
        """The links once ``link`` is stored: it replaces a link between the same endpoints
        (storing again updates the options)."""
        return [l for l in self.links if (l.src, l.dst) != (link.src, link.dst)] + [link]

    def check_new_link(self, link: Link) -> None:
        """Runs the checks :meth:`start` runs on the topology with ``link`` added (names, ids,
        URIs, one path per write and namespace); ValueError naming the problem. Writes nothing."""
        _core(self.servers.values(), self._with_link(link), self.resolve, self.tombstone_retention)

    def replicate(self, src: str, dst: str, ops: str = "iud", *, forward: bool = False,
                  initial_sync: bool = False, marker: str = "transaction", on_reject: str = "fail") -> Link:
        """Adds a link and stores it in the destination's ``__mmm.links`` (as the original did),
        after the topology checks :meth:`start` runs (ValueError, nothing stored)."""
        link = Link(src, dst, ops, forward, initial_sync, marker, on_reject)
        self.check_new_link(link)
        client = self._client(link.dst_server)
        try:
            link_id = _mmm.link_id(src, dst)
            client[_mmm.MMM_DB][LINKS_COLLECTION].replace_one(
                {"_id": link_id}, {"_id": link_id, **link.as_dict()}, upsert=True
            )
        finally:
            client.close()
        self.links = self._with_link(link)
        self._core = self._make_core()
        return link

    def stored_links(self) -> List[Link]:
        """Links stored on the servers by :meth:`replicate`. A server that cannot be reached
        is skipped with a warning (its stored links are loaded by the next start). The servers
        are read in parallel, so unreachable ones cost one timeout, not one each."""
        from concurrent.futures import ThreadPoolExecutor

        if not self.servers:
            return []
        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            per_server = list(pool.map(self._stored_links_on, list(self.servers)))
        return [link for links in per_server for link in links]

    def _stored_links_on(self, name: str) -> List[Link]:
        import pymongo

        found = []
        client = self._client(name)
        try:
            for doc in client[_mmm.MMM_DB][LINKS_COLLECTION].find():
                try:
                    found.append(Link(doc["src"], doc["dst"], doc.get("ops", "iud"),
                                      doc.get("forward", False), doc.get("initial_sync", False),
                                      doc.get("marker", "transaction"), doc.get("on_reject", "fail")))
                except (KeyError, TypeError, ValueError) as e:
                    # One bad stored link (written by hand, or by a version that allowed
                    # it) must not keep every other link from running.
                    log.warning("link %r stored on server %s ignored: %s", doc.get("_id"), name, e)
        except pymongo.errors.ConnectionFailure as e:
            log.warning("links stored on server %s not loaded: it is unreachable (%s)",
                        name, redact.error(e))
        except pymongo.errors.OperationFailure as e:
            raise ReplicationError(
                f"server {name}: cannot read the links stored in {_mmm.MMM_DB}.{LINKS_COLLECTION}: "
                f"{redact.text(e.details.get('errmsg', e) if e.details else e)} (grant read on {_mmm.MMM_DB})"
            ) from None
        finally:
            client.close()
        return found

    def resync(self, link: Union[str, LinkLike], *, mirror: bool = False) -> Timestamp:
        """Starts one link over: its checkpoint on the destination is replaced by a fresh
        "initial sync in progress" state at the source's newest oplog position, so its next run
        copies the source's documents again, then follows the oplog from that position. The
        remedy for a link stopped by an oplog rollover. Other links, and their checkpoints on
        the same server, are untouched.

        ``link`` is the link's id as :meth:`status` and ``mmm status`` show it
        (``src/ns->dst/ns``; spaces around ``->`` are allowed), or a :class:`Link` or
        ``(src, dst)`` of this replicator. Returns the source position the link will follow on
        from.

        The copy adds and replaces documents; a document deleted at the source while the link's
        position was lost stays on the destination. ``mirror=True`` also deletes, in the copied
        collections, every destination document the source does not have (marked as replicated
        from the source, so a reverse link does not send the deletes back). Use it when the
        destination only mirrors the source: writes made on the destination and not yet
        replicated elsewhere are deleted too.

        Raises ValueError for an unknown link (naming the known ones), RuntimeError while this
        replicator runs, ReplicationError when a server cannot be reached or written.
        """
        link_id = self._link_id(link)
        if self.running:
            raise RuntimeError("stop the replicator before resyncing a link")
        try:
            time_, inc = self._core.resync(link_id, mirror)
        except RuntimeError as e:
            raise ReplicationError(str(e)) from None
        log.info("link %s starts over with an initial sync at its next run", link_id)
        return Timestamp(time_, inc)

    def _link_id(self, link: Union[str, LinkLike]) -> str:
        """The id of one of this replicator's links, given as an id or as a link."""
        ids = self._core.link_ids()
        known = f"(known: {', '.join(ids) or 'none'})"
        if isinstance(link, str):
            wanted = "->".join(part.strip() for part in link.split("->"))
            by_endpoints = [i for l, i in zip(self.links, ids) if f"{l.src}->{l.dst}" == wanted]
            if wanted in ids:
                return wanted
            if by_endpoints:
                return by_endpoints[0]
            shown = link if len(link) <= 200 else link[:200] + "..."
            raise ValueError(f"unknown link {shown!r} {known}")
        if not isinstance(link, (Link, tuple, Mapping)):
            raise TypeError(f"a link is given by its id (a str) or as a Link, got {type(link).__name__}")
        wanted_link = _as_link(link)
        for l, i in zip(self.links, ids):
            if (l.src, l.dst) == (wanted_link.src, wanted_link.dst):
                return i
        raise ValueError(f"unknown link {wanted_link.src}->{wanted_link.dst} {known}")

    def repair(self, ns: Optional[str] = None, *, wait: float = 30.0,
               progress: Optional[Callable[[Dict[str, Any]], Any]] = None) -> Dict[str, Any]:
        """Brings the servers of every link (or the pairs naming ``ns``) into agreement, moving
        only the documents that differ: :meth:`verify` finds them, then each is decided by the
        namespace's policy (a delete rule between a present and an absent document,
        ``Prefer``'s server, else the later stamp; with no metadata on either side, the larger
        server id) and the winner's content is written on both servers as a new version, so no
        link sends it back. Every decision is journaled in ``__mmm.conflicts`` on both servers
        (winner ``repair:<server id>``). Returns ``{"repaired": n, "decisions": [...],
        "verify": VerifyResult}`` where the last is a verification run after the repair.
        Writes go on meanwhile; run it when the links are caught up (``verify`` waits for them)."""
        found = self.verify(ns, wait=wait, max_listed=1_000_000_000, progress=progress)
        decisions = []
        for pair in found.pairs:
            (a_server, a_ns), (b_server, b_ns) = (end.split("/", 1) for end in pair.ends)
            for d in pair.listed:
                try:
                    done = self._core.repair_document(a_server, a_ns, b_server, b_ns, bson.encode({"_id": d.id}))
                except RuntimeError as e:
                    raise ReplicationError(redact.text(e)) from None
                if done is not None:
                    winner, clock, site = done
                    decisions.append({"namespace": b_ns, "id": d.id, "winner": winner, "stamp": Stamp(clock, site)})
                    log.info("repair: %s _id %r: %s's version kept on both", b_ns, d.id, winner)
        after = self.verify(ns, wait=wait, progress=progress) if decisions else found
        return {"repaired": len(decisions), "decisions": decisions, "verify": after}

    def verify(self, ns: Optional[str] = None, *, range_size: int = 1000, wait: float = 30.0,
               max_rounds: int = 4, max_listed: int = 100, restart: bool = False,
               progress: Optional[Callable[[Dict[str, Any]], Any]] = None) -> VerifyResult:
        """Compares the documents of every namespace the links carry, server against server
        (both directions of a pair are one comparison; renamed namespaces are compared under
        their two names), or only the pairs naming ``ns`` (``db.coll``) at either end.

        Reads only, with no lock, while writes and the links go on: both sides are read in
        ``_id`` order and compared by ranges of ``range_size`` ``_id``s with hashes that ignore
        field order but not BSON types; ranges that differ are re-read, down to the documents,
        after every link between the two servers has caught up (waiting up to ``wait`` seconds
        each time), so lag is not reported as a difference. Progress is saved in ``__mmm.verify``
        on each pair's home server: after an interruption the next call resumes from there
        (``PairResult.resumed`` says so) unless ``restart=True``. ``progress(dict)`` is called
        about once a second while it runs; progress is also logged (``mmm`` logger).

        Raises ValueError for an ``ns`` no link carries or that mmm never replicates,
        ReplicationError when a server cannot be read.
        """
        if ns is not None and not isinstance(ns, str):
            raise TypeError(f"ns is a namespace db.collection, got {type(ns).__name__}")
        try:
            raw = self._core.verify(ns, range_size, wait, max_rounds, max_listed, restart, progress)
        except RuntimeError as e:
            raise ReplicationError(redact.text(f"verify: {e}")) from None
        except ValueError as e:
            raise ValueError(redact.text(e)) from None
        result = VerifyResult([_pair_result(p) for p in raw])
        self.last_verify = result
        for p in result.pairs:
            if p.resumed:
                log.info("%s", p.resumed)
        return result

    def _verify_periodically(self) -> None:
        """``verify_every``: a verification every so many seconds while the links run."""
        assert self.verify_every is not None
        while not self._stop.wait(self.verify_every):
            try:
                result = self.verify()
            except Exception as e:  # noqa: BLE001 - logged; the next round tries again
                log.warning("periodic verify failed: %s", redact.error(e))
                continue
            if result.consistent:
                log.info("verify: consistent as of %s", result.as_of)
            else:
                log.warning("verify: %d document(s) differ: %s", result.summary()["differences"],
                            ", ".join(f"{p.ends[0]} vs {p.ends[1]}: {p.differences}" for p in result.pairs if p.differences))

    # -- running --------------------------------------------------------------------------

    def conflicts(self, namespace: Optional[str] = None, *, server: Optional[str] = None,
                  since: Optional[Any] = None, limit: int = 100) -> List[Dict[str, Any]]:
        """The conflict journal (``__mmm.conflicts``) of every server, or of ``server`` (a
        name), newest first: per entry the namespace (``ns``) and ``id``, the ``server`` that met
        it and the one the arriving version came ``from``, ``ours`` and ``theirs`` (``h``: the
        clock, ``site``: the server id that wrote it, ``deleted``, ``doc``), the ``policy``, the
        ``winner``, the ``resolution`` stamp when a new version was written, ``at`` (when), and
        ``conflict``: an id both servers' entries share. ``since``: a datetime. A server that
        cannot be reached is skipped with a warning."""
        import pymongo

        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit is a positive integer, got {limit!r}")
        names = [server] if server is not None else list(self.servers)
        query: Dict[str, Any] = {}
        if namespace is not None:
            query["ns"] = namespace
        if since is not None:
            query["at"] = {"$gte": since}
        out: List[Dict[str, Any]] = []
        for name in names:
            client = self._client(name)
            try:
                cursor = client[_mmm.MMM_DB][CONFLICTS_COLLECTION].find(query).sort("at", -1).limit(limit)
                out.extend(cursor)
            except pymongo.errors.ConnectionFailure as e:
                log.warning("conflicts on server %s not read: it is unreachable (%s)", name, redact.error(e))
            finally:
                client.close()
        out.sort(key=lambda e: e.get("at") or 0, reverse=True)
        return out[:limit]

    def status(self) -> List[Dict[str, Any]]:
        """Per link: state, checkpoint, lag (seconds and ops), ops applied, batches applied,
        conflicts, retries, ops
        rejected (journaled in ``__mmm.rejected``), last error, ``oplog`` (the source's oplog
        headroom: ``capacity_seconds`` of history at the current write rate, this link's
        ``margin_seconds`` before its position falls off, ``near_rollover`` within 20%), and
        ``last_verify`` (the last :meth:`verify` result's summary) once there is one, and ``lease``
        (None without one): ``held`` (this process runs the link), ``term``, ``holder`` (``id``,
        ``host``, ``pid``), ``expires`` (UTC datetime, by the destination's clock), ``error``."""
        from .triggers import _utc

        out = []
        for s in self._core.status():
            if s.get("lease") is not None:
                s["lease"]["expires"] = _utc(s["lease"].pop("expires_ms"))
            if s.get("last_error"):
                s["last_error"] = redact.error(Exception(s["last_error"]))
            if s.get("checkpoint") is not None:
                s["checkpoint"] = Timestamp(*s["checkpoint"])
            if self.last_verify is not None:
                s["last_verify"] = self.last_verify.summary()
            out.append(s)
        return out

    def serve_http(self, address: Any = "127.0.0.1:9108", **kwargs: Any) -> Any:
        """Serves this replicator's Prometheus metrics (``/metrics``), status as JSON
        (``/status``) and a status page (``/``) over HTTP from a background thread, whether or
        not it runs yet (see :mod:`mmm.monitoring`). ``address`` is ``"host:port"``, port 0
        picking a free one. Returns the server: ``.address``, ``.url``, ``.stop()``, and a
        context manager. ValueError for a malformed address, OSError when it cannot listen."""
        from .monitoring import serve

        return serve(address, replicators=[self], **kwargs)

    def _handle(self, event: Dict[str, Any]) -> None:
        if event["kind"] == "conflict":
            conflict = ConflictEvent(
                server=event["server"], source=event["from"], namespace=event["namespace"],
                id=bson.decode(event["id_bson"])["_id"],
                ours=Stamp(*event["ours"]), theirs=Stamp(*event["theirs"]),
                policy=event["policy"], winner=event["winner"],
            )
            self.conflict_events.append(conflict)
            if self.on_conflict is not None:
                try:
                    self.on_conflict(conflict)
                except Exception:  # noqa: BLE001 - a callback must not stop replication
                    log.exception("on_conflict callback failed")
        elif event["kind"] == "failed":
            raise ReplicationError(redact.text(f"link {event['link']} stopped: {event['error']}"))

    def _check_servers(self) -> None:
        """The preflight check (see the class): raises ReplicationError naming every problem,
        logs unreachable servers. Writes nothing."""
        problems = []
        for finding in _preflight.check(self.servers, self.links):
            if finding.unreachable:
                log.warning("%s; its links will retry until it is reachable", finding.message)
            else:
                problems.append(finding.message)
        if problems:
            raise ReplicationError(redact.text(f"cannot start replication: {'; '.join(problems)}"))

    def _launch(self, ready_timeout: float) -> None:
        self._stop.clear()
        self._core = self._make_core()
        if self.preflight:
            self._check_servers()  # before the core starts: a failed check leaves no trace
        self._core.start(self.lease_ttl if self.lease else None)
        log.info("replicating %d link(s)%s", len(self.links), " (with leases)" if self.lease else "")
        if self.verify_every is not None:
            self._verify_thread = threading.Thread(target=self._verify_periodically, name="mmm-verify", daemon=True)
            self._verify_thread.start()
        # Wait until every link has its starting position, so writes made after this returns
        # are replicated (a link with no checkpoint starts at the source's newest entry).
        deadline = time.monotonic() + ready_timeout
        # A leased link waits for its lease's first answer (held, or standby behind a holder).
        def deciding(s: Dict[str, Any]) -> bool:
            lease = s.get("lease")
            undecided = lease is not None and lease["holder"] is None and lease["error"] is None
            return s["state"] == "starting" or (s["state"] == "standby" and undecided)

        while time.monotonic() < deadline and any(deciding(s) for s in self._core.status()):
            time.sleep(0.02)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                event = self._core.next_event(0.2)
                if event is not None:
                    self._handle(event)
        finally:
            self._core.stop()
            while not self._core.finished:
                self._core.next_event(0.05)

    def run(self, ready_timeout: float = 10.0) -> None:
        """Replicates until :meth:`stop` (or Ctrl-C); raises ReplicationError if the preflight
        check finds a problem (see the class) or a link fails."""
        self._launch(ready_timeout)
        self._loop()

    async def run_async(self) -> None:
        """:meth:`run` for asyncio (the work happens on mmm's own threads either way)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.run)

    def start(self, ready_timeout: float = 10.0) -> "Replicator":
        """Checks the servers unless ``preflight=False`` (ReplicationError on a problem, see the
        class), starts every link (waiting up to ``ready_timeout`` s for their starting
        positions), then follows events in a background thread."""
        if self.running:
            raise RuntimeError("the replicator is already running")
        self._launch(ready_timeout)
        self._background.start(self._loop, "mmm-replicator", "replicator")
        return self

    @property
    def running(self) -> bool:
        """True while :meth:`start`'s background thread runs."""
        return self._background.alive

    def stop(self) -> None:
        self._stop.set()
        self._core.stop()  # the event loop wakes as soon as every link has ended

    def join(self, timeout: Optional[float] = None) -> None:
        """Waits for the background thread; re-raises what stopped it, if anything."""
        self._background.join(timeout)

    def __enter__(self) -> "Replicator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()
