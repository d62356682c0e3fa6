"""Oplog triggers: Python callables run for each matching operation of a replica set's oplog.

::

    tailer = mmm.Tailer("mongodb://factory:27017/?replicaSet=rs0")

    @tailer.on("factory.frames", "i")
    def queue_inspection(op):
        inspections.put(op["o"]["_id"])

    tailer.run()

The Rust core follows the oplog, reassembles transactions and filters ops on raw BSON; only
the ops some trigger wants become Python objects (decoded in batches by PyMongo's ``bson``).

Delivery: a trigger runs at least once per op (after a crash, the ops since the last saved
checkpoint run again). A trigger registered with ``transactional=True`` is called as
``func(op, session)``: what it writes with that PyMongo session commits in one transaction
with the tailer's checkpoint, so its effect happens exactly once. With ``lease=True`` only one
process per tailer name works at a time (see :class:`Tailer`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple, Union

import bson
from bson import Timestamp

from . import _mmm, redact
from ._background import BackgroundThread

log = logging.getLogger("mmm.triggers")
log.addFilter(redact.LogFilter())

Op = Dict[str, Any]
Trigger = Callable[..., Union[None, Awaitable[None]]]
Checkpoint = Union[None, str, Timestamp]

__all__ = ["Tailer", "diff_to_update"]

_OP_LETTERS = set("iudcn")


def _validate_ops(ops: str) -> str:
    if not isinstance(ops, str) or not ops:
        raise ValueError(f"operations must be a non-empty string of letters from 'iudcn' or '*', got {ops!r}")
    if ops != "*":
        unknown = sorted(set(ops) - _OP_LETTERS)
        if unknown:
            raise ValueError(
                f"unknown operation letter(s) {''.join(unknown)!r} in {ops!r}: use letters from 'iudcn' "
                "(insert, update, delete, command, no-op) or '*'"
            )
    return ops


def _validate_ns(ns: str) -> str:
    if not isinstance(ns, str):
        raise ValueError(f"namespace must be a string like 'db.coll', 'db.*' or '*', got {ns!r}")
    if ns != "*" and ("." not in ns or ns.startswith(".") or ns.endswith(".")):
        raise ValueError(f"malformed namespace {ns!r}: use 'db.coll', 'db.*' or '*'")
    return ns


class _Fenced(Exception):
    """A newer lease term claimed this tailer's checkpoint: another process took over."""


class _Position:
    """Where a tailer resumes: after ``resume``, skipping units up to ``applied`` (handled)."""

    __slots__ = ("resume", "applied")

    def __init__(self, resume: Timestamp, applied: Optional[Timestamp] = None) -> None:
        self.resume = resume
        self.applied = applied if applied is not None and applied > resume else resume


class _CheckpointStore:
    """Keeps a named checkpoint in a MongoDB collection:
    ``{_id: name, ts: <resume after>, applied: <last op handled>, term: <lease term>}``.
    With a lease term, every write is fenced by it (see ``src/store/leases.rs``)."""

    def __init__(self, store: Any, name: str) -> None:
        from pymongo import MongoClient
        from pymongo.collection import Collection

        self.name = name
        self._client = None
        if isinstance(store, str):
            problem = redact.userinfo_problem(store)
            if problem:
                raise ValueError(f"checkpoint_store {redact.uri(store)!r}: {problem}")
            try:
                self._client = MongoClient(store)
            except Exception as e:  # noqa: BLE001 - PyMongo's URI errors may quote the URI
                raise ValueError(f"checkpoint_store {redact.uri(store)!r}: {redact.text(e)}") from None
            db = self._client.get_default_database(default=_mmm.MMM_DB)
            self.collection: Collection = db[_mmm.TAILER_CHECKPOINTS_COLLECTION]
        elif isinstance(store, Collection):
            self.collection = store
        else:
            raise ValueError("checkpoint_store must be a MongoDB URI or a pymongo Collection")

    @property
    def client(self) -> Any:
        return self.collection.database.client

    def load(self) -> Optional[_Position]:
        doc = self.collection.find_one({"_id": self.name})
        if not doc or not isinstance(doc.get("ts"), Timestamp):
            return None  # none yet, or only a lease term's claim
        applied = doc.get("applied")
        return _Position(doc["ts"], applied if isinstance(applied, Timestamp) else None)

    def save(self, position: _Position, term: Optional[int] = None, session: Any = None) -> None:
        from pymongo.errors import DuplicateKeyError

        doc: Dict[str, Any] = {"_id": self.name, "ts": position.resume, "applied": position.applied}
        if term is None:
            self.collection.replace_one({"_id": self.name}, doc, upsert=True, session=session)
            return
        doc["term"] = term
        try:
            self.collection.replace_one(self._fence(term), doc, upsert=True, session=session)
        except DuplicateKeyError:
            raise _Fenced(f"tailer {self.name}: a newer lease term than {term} claimed the checkpoint") from None

    def claim(self, term: int, first: Optional[_Position]) -> bool:
        """Stamps ``term`` on the checkpoint (see ``leases::claim``), storing ``first`` when
        there is none yet; False when fenced."""
        from pymongo.errors import DuplicateKeyError

        update: Dict[str, Any] = {"$set": {"term": term}}
        if first is not None:
            update["$setOnInsert"] = {"ts": first.resume, "applied": first.applied}
        try:
            self.collection.update_one(self._fence(term), update, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    def _fence(self, term: int) -> Dict[str, Any]:
        return bson.decode(_mmm.fence_filter(self.name, term))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Tailer:
    """Follows one replica set's oplog and calls the triggers registered for each op.

    ``checkpoint``: ``None`` or ``"now"`` (start after the newest entry), ``"oldest"`` (the
    whole oplog), or a ``bson.Timestamp`` (resume after it; it must still be in the oplog, else
    :class:`mmm.OplogRolloverError`). With ``name`` and ``checkpoint_store`` (a URI or a PyMongo
    collection) the checkpoint is saved every ``save_interval`` seconds and at stop, and a
    stored checkpoint takes precedence over ``checkpoint``, which then only says where to start
    the first time. ``on_error``: ``"raise"`` stops at the first trigger exception and
    re-raises it from :meth:`run` (with the op attached as ``exc.op``); ``"log"`` logs it and
    goes on.

    ``lease=True`` (needs ``name``): every process running this tailer may start it, but only
    the one holding the lease ``tailer:<name>`` in ``__mmm.leases`` works; the others wait and
    take over, from the stored checkpoint, within ``lease_ttl`` plus one renewal interval
    (``lease_ttl / 3``) when it stops, dies or hangs. The lease lives with the checkpoint, on
    ``checkpoint_store`` (default: the server followed, database ``__mmm``), which must then be
    a URI. Every checkpoint save is fenced by the lease's term: a holder paused past its lease
    cannot move the checkpoint or commit a transactional trigger's writes; it stops and waits.
    A single trigger call that lasts longer than ``lease_ttl`` counts as hung: the lease is not
    renewed meanwhile, so choose a TTL above your slowest trigger.
    """

    def __init__(
        self,
        uri: str,
        checkpoint: Checkpoint = None,
        *,
        name: Optional[str] = None,
        checkpoint_store: Any = None,
        on_error: str = "raise",
        batch_size: int = 5000,
        save_interval: float = 1.0,
        lease: bool = False,
        lease_ttl: float = _mmm.DEFAULT_LEASE_TTL,
    ) -> None:
        if on_error not in ("raise", "log"):
            raise ValueError(f"on_error must be 'raise' or 'log', got {on_error!r}")
        if checkpoint is not None and not isinstance(checkpoint, Timestamp) and checkpoint not in ("now", "oldest"):
            raise ValueError(f"checkpoint must be None, 'now', 'oldest' or a bson.Timestamp, got {checkpoint!r}")
        if checkpoint_store is not None and not name:
            raise ValueError("a checkpoint_store needs a name for this tailer's checkpoint")
        if lease:
            if not isinstance(name, str) or not name:
                raise ValueError("lease=True needs a name: the lease and the checkpoint are kept under it")
            if checkpoint_store is None:
                checkpoint_store = uri
            if not isinstance(checkpoint_store, str):
                raise ValueError("lease=True needs checkpoint_store as a URI (the lease is kept on that server)")
        redact.remember(uri)
        if isinstance(checkpoint_store, str):
            redact.remember(checkpoint_store)
        # Validates the URI now, so a typo fails here and not in a background thread.
        _mmm.TailerCore(uri, [])
        # The same for the lease: its name and TTL.
        self._lease_args = (checkpoint_store, _mmm.tailer_lease_id(name), float(lease_ttl)) if lease else None
        if self._lease_args is not None:
            _mmm.LeaseCore(*self._lease_args)
        self.uri = uri
        self.name = name
        self.on_error = on_error
        self.batch_size = batch_size
        self.save_interval = save_interval
        self.lease_ttl = float(lease_ttl)
        self._start = checkpoint
        self._store = _CheckpointStore(checkpoint_store, name) if checkpoint_store is not None else None
        self._subscriptions: List[Tuple[str, str]] = []
        self._triggers: List[Trigger] = []
        self._transactional: List[bool] = []
        self._position: Optional[_Position] = _Position(checkpoint) if isinstance(checkpoint, Timestamp) else None
        self._core: Optional[Any] = None
        self._lease: Optional[Any] = None
        self._stop = threading.Event()
        self._background = BackgroundThread()
        self._running = False
        self.ops_delivered = 0
        self.entries_read = 0
        self.trigger_errors = 0
        self._state = "not started"
        self._last_error: Optional[str] = None
        # The batch being handled: when it was read, and how many of its ops are left.
        self._batch_read_at: Optional[float] = None
        self._batch_left = 0
        self.takeovers = 0
        self._last_save = time.monotonic()

    # -- registration ---------------------------------------------------------------------

    def register(self, namespace: str, operations: str, func: Trigger, *, transactional: bool = False) -> Trigger:
        """Calls ``func(op)`` for each op on ``namespace`` whose letter is in ``operations``.

        ``transactional=True``: calls ``func(op, session)`` with a PyMongo ``ClientSession`` on
        the checkpoint store's client, inside a transaction that also saves the checkpoint past
        the op; writes made with ``session`` happen exactly once across crashes, restarts and
        takeovers. They must go to the checkpoint store's replica set. Needs a
        ``checkpoint_store`` (or ``lease=True``)."""
        if self._running:
            raise RuntimeError("register triggers before the tailer starts")
        if not callable(func):
            raise ValueError(f"trigger must be callable, got {func!r}")
        if transactional and self._store is None:
            raise ValueError("a transactional trigger needs the tailer's checkpoint_store (or lease=True): "
                             "its writes commit with the checkpoint")
        self._subscriptions.append((_validate_ns(namespace), _validate_ops(operations)))
        self._triggers.append(func)
        self._transactional.append(bool(transactional))
        return func

    def on(self, namespace: str, operations: str = "*", *, transactional: bool = False) -> Callable[[Trigger], Trigger]:
        """Decorator form of :meth:`register`."""

        def decorator(func: Trigger) -> Trigger:
            return self.register(namespace, operations, func, transactional=transactional)

        return decorator

    # -- state ----------------------------------------------------------------------------

    @property
    def checkpoint(self) -> Optional[Timestamp]:
        """Timestamp of the last op whose triggers all returned (resume point)."""
        return self._position.applied if self._position is not None else None

    def status(self) -> Dict[str, Any]:
        """name, uri (redacted), state (``not started``, ``running``, ``stopped``, ``failed``),
        checkpoint, ops_delivered (ops whose triggers all ran), entries_read, trigger_errors,
        lag_seconds (age of the oldest op read and not handled yet, 0 when caught up), lag_ops
        (ops of the batch being handled still to go), last_error (secrets hidden), takeovers, and
        ``lease`` (None without one): ``held`` (this process works), ``term``, ``holder``
        (``id``, ``host``, ``pid``), ``expires`` (a UTC datetime, by the lease server's clock),
        ``error``."""
        read_at, left = self._batch_read_at, self._batch_left
        lease = None
        if self._lease is not None:
            lease = self._lease.info()
            if lease is not None:
                lease["expires"] = _utc(lease.pop("expires_ms"))
        return {
            "name": self.name or f"tailer-{id(self):x}",
            "uri": redact.uri(self.uri),
            "state": self._state,
            "checkpoint": self.checkpoint,
            "ops_delivered": self.ops_delivered,
            "entries_read": self.entries_read,
            "trigger_errors": self.trigger_errors,
            "lag_seconds": time.monotonic() - read_at if read_at is not None and left else 0.0,
            "lag_ops": left,
            "last_error": self._last_error,
            "takeovers": self.takeovers,
            "lease": lease,
        }

    def serve_http(self, address: Any = "127.0.0.1:9108", **kwargs: Any) -> Any:
        """Serves this tailer's metrics, status and status page over HTTP (see
        :mod:`mmm.monitoring`); returns the server (``.address``, ``.stop()``, a context manager)."""
        from .monitoring import serve

        return serve(address, tailers=[self], **kwargs)

    def _starting_position(self, term: Optional[int]) -> Any:
        """The stored position if there is one (it wins over ``checkpoint=``), else the start
        asked for."""
        if self._store is not None:
            stored = self._store.load()
            if stored is not None:
                log.info("tailer %s resumes from stored checkpoint %s", self.name, stored.resume)
                self._position = stored
                return stored
        if isinstance(self._start, Timestamp):
            return _Position(self._start)
        return self._start

    def _oplog_edge(self, start: Any) -> Timestamp:
        """The position "now" (newest entry) or "oldest" (just before the oldest) stands for."""
        import pymongo

        client: Any = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=10000)
        try:
            oldest = start == "oldest"
            entry = client.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", 1 if oldest else -1)])
        finally:
            client.close()
        if entry is None:
            return Timestamp(0, 0)
        ts = entry["ts"]
        if not oldest:
            return ts
        return Timestamp(ts.time, ts.inc - 1) if ts.inc > 0 else Timestamp(max(ts.time - 1, 0), 0xFFFFFFFF)

    def _make_core(self, term: Optional[int] = None) -> Any:
        start = self._starting_position(term)
        skip = None
        if isinstance(start, _Position):
            skip = (start.applied.time, start.applied.inc)
            start = (start.resume.time, start.resume.inc)
        core = _mmm.TailerCore(self.uri, self._subscriptions, start, batch_size=self.batch_size, skip_through=skip)
        core.start()
        return core

    def _save(self, term: Optional[int] = None) -> None:
        if self._store is not None and self._position is not None:
            self._store.save(self._position, term)

    # -- dispatch -------------------------------------------------------------------------

    def _ops(self, batch: "_mmm.Batch") -> Iterator[Tuple[Op, List[int], Optional[Timestamp]]]:
        """The ops of a batch with the indexes of their triggers, and the unit's ts when the op
        ends its unit (a checkpoint may then move past it)."""
        self.entries_read += batch.entries_read
        ops = bson.decode_all(batch.ops) if batch.ops else []
        self._batch_read_at, self._batch_left = time.monotonic(), len(ops)
        lease = self._lease
        for op, ids, ts, end in zip(ops, batch.subscriptions, batch.ts, batch.unit_end):
            if lease is not None:
                lease.beat()  # a trigger stuck longer than the TTL lets the lease lapse
            yield op, list(ids), Timestamp(*ts) if end else None
            self.ops_delivered += 1
            self._batch_left -= 1

    def _after(self, batch: "_mmm.Batch", position: Optional[_Position]) -> Optional[_Position]:
        """The position once every op of ``batch`` is handled."""
        if batch.checkpoint is None:
            return position
        resume = Timestamp(*batch.checkpoint)
        applied = max(position.applied, resume) if position is not None else resume
        return _Position(resume, applied)

    def _enter_running(self) -> Any:
        try:
            core = self._make_core(None)
        except BaseException as exc:
            self._fail(exc)
            self._running = False
            raise
        self._state = "running"
        return core

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            return  # a way of stopping, not a failure
        self._state = "failed"
        self._last_error = redact.error(exc)

    def _leave_running(self) -> None:
        self._batch_read_at, self._batch_left = None, 0
        if self._state == "running":
            self._state = "stopped"

    def _save_due(self) -> bool:
        if time.monotonic() - self._last_save < self.save_interval:
            return False
        self._last_save = time.monotonic()
        return True

    def _handle_error(self, exc: BaseException, op: Op) -> None:
        self.trigger_errors += 1
        self._last_error = redact.error(exc)
        if self.on_error == "log":
            log.exception("trigger failed on op %s %s at %s", op.get("op"), op.get("ns"), op.get("ts"))
            return
        try:
            exc.op = op  # type: ignore[attr-defined]
            exc.add_note(f"while running a trigger on op {op.get('op')!r} {op.get('ns')!r} at {op.get('ts')}")
        except AttributeError:
            pass
        raise exc

    def _call(self, index: int, op: Op, session: Any) -> Any:
        if self._transactional[index]:
            return self._triggers[index](op, session)
        return self._triggers[index](op)

    def _wants_transaction(self, batch: "_mmm.Batch") -> bool:
        return any(self._transactional[i] for ids in batch.subscriptions for i in ids)

    def _handle_batch(self, batch: "_mmm.Batch", term: Optional[int]) -> None:
        """Runs the batch's triggers. With a transactional trigger among them, the whole batch
        runs in one transaction on the checkpoint store that ends by saving the checkpoint past
        it (fenced by ``term``); a transient transaction error runs the batch again."""
        if not self._wants_transaction(batch):
            for op, ids, unit_ts in self._ops(batch):
                for i in ids:
                    try:
                        self._call(i, op, None)
                    except Exception as exc:  # noqa: BLE001 - policy decides
                        self._handle_error(exc, op)
                if unit_ts is not None:
                    resume = self._position.resume if self._position is not None else unit_ts
                    self._position = _Position(resume, unit_ts)
            self._position = self._after(batch, self._position)
            if self._save_due():
                self._save(term)
            return
        self._run_in_transaction(lambda session: self._transactional_batch(batch, session, term), term)

    def _transactional_batch(self, batch: "_mmm.Batch", session: Any, term: Optional[int]) -> _Position:
        delivered = self.ops_delivered
        try:
            for op, ids, _unit_ts in self._ops(batch):
                for i in ids:
                    try:
                        self._call(i, op, session)
                    except Exception as exc:  # noqa: BLE001 - policy decides
                        self._handle_error(exc, op)
        except BaseException:
            self.ops_delivered = delivered
            raise
        after = self._after(batch, self._position)
        assert after is not None and self._store is not None
        self._store.save(after, term, session=session)
        return after

    def _run_in_transaction(self, body: Callable[[Any], _Position], term: Optional[int]) -> None:
        from pymongo.errors import PyMongoError

        assert self._store is not None
        delay = 0.01
        while True:
            entries, delivered = self.entries_read, self.ops_delivered
            with self._store.client.start_session() as session:
                try:
                    with session.start_transaction():
                        after = body(session)
                    self._position = after
                    self._last_save = time.monotonic()
                    return
                except PyMongoError as e:
                    if not e.has_error_label("TransientTransactionError") or self._stop.is_set():
                        raise
                    if term is not None and self._lease is not None and self._lease.term != term:
                        raise _Fenced(f"tailer {self.name}: lost the lease (term {term})") from None
                    log.info("tailer %s: transaction retried after %s", self.name, redact.error(e))
            # The batch runs again: its counters count it once.
            self.entries_read, self.ops_delivered = entries, delivered
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _follow(self, term: Optional[int]) -> None:
        """Runs batches until stop (or, with a lease, until the lease is lost)."""
        core = self._core = self._make_core(term)
        try:
            while not self._stop.is_set():
                if term is not None and self._lease is not None:
                    self._lease.beat()
                    if self._lease.term != term:
                        raise _Fenced(f"tailer {self.name}: lease term {term} lapsed")
                batch = core.next_batch(0.2)
                if batch is None:
                    continue
                self._handle_batch(batch, term)
        finally:
            core.stop()
            try:
                self._save(term)
            except _Fenced:
                pass

    def _run_leased(self) -> None:
        lease = self._lease = _mmm.LeaseCore(*self._lease_args)  # type: ignore[misc]
        lease.start()
        try:
            while not self._stop.is_set():
                term = lease.wait(0.2)
                if term is None:
                    continue
                try:
                    # A first position goes with the claim: a stored checkpoint always says
                    # where to resume, so a takeover before any op starts there.
                    first = None
                    if self._store.load() is None:  # type: ignore[union-attr]
                        start = self._start
                        first = _Position(start if isinstance(start, Timestamp) else self._oplog_edge(start))
                    if not self._store.claim(term, first):  # type: ignore[union-attr]
                        raise _Fenced(f"tailer {self.name}: a newer term than {term} claimed the checkpoint")
                    log.info("tailer %s holds its lease (term %s)", self.name, term)
                    self.takeovers += 1
                    self._follow(term)
                except _Fenced as e:
                    log.warning("%s; standing by", e)
                    # Until the lease itself says so (its next renewal fails), do not retry.
                    while not self._stop.is_set() and lease.term == term:
                        self._stop.wait(0.05)
        finally:
            lease.stop()

    def run(self) -> None:
        """Follows the oplog and calls triggers on this thread until :meth:`stop` (or Ctrl-C)."""
        self._running = True
        self._stop.clear()
        self._state = "running"
        try:
            if self._lease_args is not None:
                self._run_leased()
            else:
                self._follow(None)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._running = False
            self._leave_running()

    async def run_async(self) -> None:
        """:meth:`run` for asyncio: ``async def`` triggers are awaited, in order. Leases and
        transactional triggers need :meth:`run` (or :meth:`start`)."""
        if self._lease_args is not None or any(self._transactional):
            raise RuntimeError("a tailer with a lease or transactional triggers runs with run() or start()")
        self._running = True
        self._stop.clear()
        core = self._core = self._enter_running()
        try:
            while not self._stop.is_set():
                batch = await core.next_batch_async()
                if batch is None:
                    break
                for op, ids, unit_ts in self._ops(batch):
                    for i in ids:
                        try:
                            result = self._triggers[i](op)
                            if inspect.isawaitable(result):
                                await result
                        except Exception as exc:  # noqa: BLE001 - policy decides
                            self._handle_error(exc, op)
                    if unit_ts is not None:
                        resume = self._position.resume if self._position is not None else unit_ts
                        self._position = _Position(resume, unit_ts)
                self._position = self._after(batch, self._position)
                if self._save_due():
                    await asyncio.get_running_loop().run_in_executor(None, self._save)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            core.stop()
            self._save()
            self._running = False
            self._leave_running()

    # -- background thread ----------------------------------------------------------------

    def start(self) -> "Tailer":
        """Runs :meth:`run` in a background thread."""
        self._background.start(self.run, f"mmm-tailer-{self.name or id(self)}", "tailer")
        return self

    def stop(self) -> None:
        """Asks the tailer to stop after the op it is on; the checkpoint is saved (and the
        lease released, so a waiting process takes over at once)."""
        self._stop.set()
        if self._core is not None:
            self._core.stop()

    def join(self, timeout: Optional[float] = None) -> None:
        """Waits for the background thread; re-raises the exception that stopped it, if any."""
        self._background.join(timeout)

    def __enter__(self) -> "Tailer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()


def _utc(ms: Optional[int]) -> Any:
    import datetime

    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


def diff_to_update(o: Dict[str, Any]) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
    """Turns an update op's ``o`` (a ``$v:2`` diff) into an ordinary update document.

    Returns one update document, or a list of them to apply in order when one document cannot
    express the change (an array truncated and modified at once). A replacement ``o`` is returned
    unchanged.
    """
    raw = bson.encode(o)
    result = bson.decode_all(_mmm.diff_to_update(raw))
    return result[0] if len(result) == 1 else result
