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

log = logging.getLogger("mmm.replication")
log.addFilter(redact.LogFilter())

__all__ = ["ConflictEvent", "ReplicationError", "Replicator"]

LINKS_COLLECTION = _mmm.LINKS_COLLECTION


class ReplicationError(_mmm.MmmError):
    """A link stopped on an error that needs attention (its message says which and why)."""


def _core(servers: Iterable[Server], links: Iterable[Link]) -> Any:
    """A replication core: checks the topology and every URI (ValueError without secrets)."""
    try:
        return _mmm.ReplicatorCore(list(servers), list(links))
    except ValueError as e:
        raise ValueError(redact.text(e)) from None


@dataclass(frozen=True)
class ConflictEvent:
    """A document changed on both sides since they last synced."""

    server: str
    """Server id where the incoming write was applied over a local change."""
    source: str
    """Server id the incoming write came from."""
    namespace: str
    id: Any
    local_ts: Timestamp
    incoming_ts: Timestamp


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
        self.conflicts: List[ConflictEvent] = []
        if load_stored_links:
            self.links.extend(l for l in self.stored_links() if l not in self.links)
        self._core = self._make_core()  # validates the topology now
        self._stop = threading.Event()
        self._background = BackgroundThread()

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> "Replicator":
        """Servers and links from a YAML file, plus links stored with :meth:`replicate`."""
        config = load_config(path)
        kwargs.setdefault("load_stored_links", True)
        return cls(list(config.servers.values()), config.links, **kwargs)

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> "Replicator":
        kwargs.setdefault("load_stored_links", True)
        return cls(list(config.servers.values()), config.links, **kwargs)

    def _make_core(self) -> Any:
        return _core(self.servers.values(), self.links)

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
        _core(self.servers.values(), self._with_link(link))

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

    # -- running --------------------------------------------------------------------------

    def status(self) -> List[Dict[str, Any]]:
        """Per link: state, checkpoint, lag (seconds and ops), ops applied, conflicts, ops
        rejected (journaled in ``__mmm.rejected``), last error, and ``lease`` (None without one):
        ``held`` (this process runs the link), ``term``, ``holder`` (``id``, ``host``, ``pid``),
        ``expires`` (UTC datetime, by the destination's clock), ``error``."""
        from .triggers import _utc

        out = []
        for s in self._core.status():
            if s.get("lease") is not None:
                s["lease"]["expires"] = _utc(s["lease"].pop("expires_ms"))
            if s.get("last_error"):
                s["last_error"] = redact.error(Exception(s["last_error"]))
            if s.get("checkpoint") is not None:
                s["checkpoint"] = Timestamp(*s["checkpoint"])
            out.append(s)
        return out

    def _handle(self, event: Dict[str, Any]) -> None:
        if event["kind"] == "conflict":
            conflict = ConflictEvent(
                server=event["server"], source=event["from"], namespace=event["namespace"],
                id=bson.decode(event["id_bson"])["_id"],
                local_ts=Timestamp(*event["local_ts"]), incoming_ts=Timestamp(*event["incoming_ts"]),
            )
            self.conflicts.append(conflict)
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
