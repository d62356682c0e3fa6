"""Oplog triggers: Python callables run for each matching operation of a replica set's oplog.

::

    tailer = mmm.Tailer("mongodb://factory:27017/?replicaSet=rs0")

    @tailer.on("factory.frames", "i")
    def queue_inspection(op):
        inspections.put(op["o"]["_id"])

    tailer.run()

The Rust core follows the oplog, reassembles transactions and filters ops on raw BSON; only
the ops some trigger wants become Python objects (decoded in batches by PyMongo's ``bson``).
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
Trigger = Callable[[Op], Union[None, Awaitable[None]]]
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


class _CheckpointStore:
    """Keeps a named checkpoint in a MongoDB collection: ``{_id: name, ts: Timestamp}``."""

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

    def load(self) -> Optional[Timestamp]:
        doc = self.collection.find_one({"_id": self.name})
        return doc["ts"] if doc else None

    def save(self, ts: Timestamp) -> None:
        self.collection.replace_one({"_id": self.name}, {"_id": self.name, "ts": ts}, upsert=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Tailer:
    """Follows one replica set's oplog and calls the triggers registered for each op.

    ``checkpoint``: ``None`` or ``"now"`` (start after the newest entry), ``"oldest"`` (the
    whole oplog), or a ``bson.Timestamp`` (resume after it; it must still be in the oplog, else
    :class:`mmm.OplogRolloverError`). With ``name`` and ``checkpoint_store`` (a URI or a PyMongo
    collection) the last checkpoint is loaded at start and saved every ``save_interval`` seconds
    and at stop. ``on_error``: ``"raise"`` stops at the first trigger exception and re-raises it
    from :meth:`run` (with the op attached as ``exc.op``); ``"log"`` logs it and goes on.
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
    ) -> None:
        if on_error not in ("raise", "log"):
            raise ValueError(f"on_error must be 'raise' or 'log', got {on_error!r}")
        if checkpoint is not None and not isinstance(checkpoint, Timestamp) and checkpoint not in ("now", "oldest"):
            raise ValueError(f"checkpoint must be None, 'now', 'oldest' or a bson.Timestamp, got {checkpoint!r}")
        if checkpoint_store is not None and not name:
            raise ValueError("a checkpoint_store needs a name for this tailer's checkpoint")
        redact.remember(uri)
        if isinstance(checkpoint_store, str):
            redact.remember(checkpoint_store)
        # Validates the URI now, so a typo fails here and not in a background thread.
        _mmm.TailerCore(uri, [])
        self.uri = uri
        self.name = name
        self.on_error = on_error
        self.batch_size = batch_size
        self.save_interval = save_interval
        self._start = checkpoint
        self._store = _CheckpointStore(checkpoint_store, name) if checkpoint_store is not None else None
        self._subscriptions: List[Tuple[str, str]] = []
        self._triggers: List[Trigger] = []
        self._checkpoint: Optional[Timestamp] = checkpoint if isinstance(checkpoint, Timestamp) else None
        self._core: Optional[Any] = None
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
        self._last_save = time.monotonic()

    # -- registration ---------------------------------------------------------------------

    def register(self, namespace: str, operations: str, func: Trigger) -> Trigger:
        """Calls ``func(op)`` for each op on ``namespace`` whose letter is in ``operations``."""
        if self._running:
            raise RuntimeError("register triggers before the tailer starts")
        if not callable(func):
            raise ValueError(f"trigger must be callable, got {func!r}")
        self._subscriptions.append((_validate_ns(namespace), _validate_ops(operations)))
        self._triggers.append(func)
        return func

    def on(self, namespace: str, operations: str = "*") -> Callable[[Trigger], Trigger]:
        """Decorator form of :meth:`register`."""

        def decorator(func: Trigger) -> Trigger:
            return self.register(namespace, operations, func)

        return decorator

    # -- state ----------------------------------------------------------------------------

    @property
    def checkpoint(self) -> Optional[Timestamp]:
        """Timestamp of the last op whose triggers all returned (resume point)."""
        return self._checkpoint

    def status(self) -> Dict[str, Any]:
        """name, uri (redacted), state (``not started``, ``running``, ``stopped``, ``failed``),
        checkpoint, ops_delivered (ops whose triggers all ran), entries_read, trigger_errors,
        lag_seconds (age of the oldest op read and not handled yet, 0 when caught up), lag_ops
        (ops of the batch being handled still to go) and last_error (secrets hidden)."""
        read_at, left = self._batch_read_at, self._batch_left
        return {
            "name": self.name or f"tailer-{id(self):x}",
            "uri": redact.uri(self.uri),
            "state": self._state,
            "checkpoint": self._checkpoint,
            "ops_delivered": self.ops_delivered,
            "entries_read": self.entries_read,
            "trigger_errors": self.trigger_errors,
            "lag_seconds": time.monotonic() - read_at if read_at is not None and left else 0.0,
            "lag_ops": left,
            "last_error": self._last_error,
        }

    def serve_http(self, address: Any = "127.0.0.1:9108", **kwargs: Any) -> Any:
        """Serves this tailer's metrics, status and status page over HTTP (see
        :mod:`mmm.monitoring`); returns the server (``.address``, ``.stop()``, a context manager)."""
        from .monitoring import serve

        return serve(address, tailers=[self], **kwargs)

    def _make_core(self) -> Any:
        start: Any = self._start
        if self._store is not None and start is None:
            stored = self._store.load()
            if stored is not None:
                log.info("tailer %s resumes from stored checkpoint %s", self.name, stored)
                start = stored
                self._checkpoint = stored
        if isinstance(start, Timestamp):
            start = (start.time, start.inc)
        core = _mmm.TailerCore(self.uri, self._subscriptions, start, batch_size=self.batch_size)
        core.start()
        return core

    def _save(self) -> None:
        if self._store is not None and self._checkpoint is not None:
            self._store.save(self._checkpoint)

    # -- dispatch -------------------------------------------------------------------------

    def _ops(self, batch: "_mmm.Batch") -> Iterator[Tuple[Op, List[Trigger]]]:
        """The ops of a batch with their triggers. The checkpoint moves past an op only when the
        caller comes back for the next one, i.e. after all its triggers returned."""
        self.entries_read += batch.entries_read
        ops = bson.decode_all(batch.ops) if batch.ops else []
        checkpoint = batch.checkpoint
        self._batch_read_at, self._batch_left = time.monotonic(), len(ops)
        for op, ids, ts, end in zip(ops, batch.subscriptions, batch.ts, batch.unit_end):
            yield op, [self._triggers[i] for i in ids]
            self.ops_delivered += 1
            self._batch_left -= 1
            if end:
                self._checkpoint = Timestamp(*ts)
        if checkpoint is not None:
            self._checkpoint = Timestamp(*checkpoint)

    def _enter_running(self) -> Any:
        try:
            core = self._make_core()
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

    def run(self) -> None:
        """Follows the oplog and calls triggers on this thread until :meth:`stop` (or Ctrl-C)."""
        self._running = True
        self._stop.clear()
        core = self._core = self._enter_running()
        try:
            while not self._stop.is_set():
                batch = core.next_batch(0.2)
                if batch is None:
                    continue
                for op, triggers in self._ops(batch):
                    for trigger in triggers:
                        try:
                            trigger(op)
                        except Exception as exc:  # noqa: BLE001 - policy decides
                            self._handle_error(exc, op)
                if self._save_due():
                    self._save()
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            core.stop()
            self._save()
            self._running = False
            self._leave_running()

    async def run_async(self) -> None:
        """:meth:`run` for asyncio: ``async def`` triggers are awaited, in order."""
        self._running = True
        self._stop.clear()
        core = self._core = self._enter_running()
        try:
            while not self._stop.is_set():
                batch = await core.next_batch_async()
                if batch is None:
                    break
                for op, triggers in self._ops(batch):
                    for trigger in triggers:
                        try:
                            result = trigger(op)
                            if inspect.isawaitable(result):
                                await result
                        except Exception as exc:  # noqa: BLE001 - policy decides
                            self._handle_error(exc, op)
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
        """Asks the tailer to stop after the op it is on; the checkpoint is saved."""
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


def diff_to_update(o: Dict[str, Any]) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
    """Turns an update op's ``o`` (a ``$v:2`` diff) into an ordinary update document.

    Returns one update document, or a list of them to apply in order when one document cannot
    express the change (an array truncated and modified at once). A replacement ``o`` is returned
    unchanged.
    """
    raw = bson.encode(o)
    result = bson.decode_all(_mmm.diff_to_update(raw))
    return result[0] if len(result) == 1 else result
