"""Type stubs for mmm's Rust extension module (use the friendly API in ``mmm`` instead)."""

from typing import Any, Awaitable, Dict, List, Optional, Sequence, Tuple, TypedDict, Union

__version__: str

class MmmError(Exception): ...
class OplogRolloverError(MmmError): ...
class NotReplicaSetError(MmmError): ...
class OplogFormatError(MmmError): ...

class MongoServer:
    def __init__(
        self,
        port: int = 0,
        replset: str = "rs0",
        oplog_size_mb: float = 256.0,
        host: str = "127.0.0.1",
        advertise: Optional[str] = None,
    ) -> None:
        """``advertise``: ``HOST`` or ``HOST:PORT`` that ``hello`` names (hosts, me, primary);
        default the bound address, 127.0.0.1 for a wildcard bind. ValueError when malformed."""
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def replset(self) -> str: ...
    @property
    def stopped(self) -> bool: ...
    def stop(self) -> None: ...
    def drop_connections(self) -> None: ...
    def pause(self, seconds: float) -> None: ...

# (bson bytes, subscription ids per op, ts per op, unit end per op, checkpoint, entries read)
Batch = Tuple[bytes, List[Tuple[int, ...]], List[Tuple[int, int]], List[bool], Optional[Tuple[int, int]], int]

class TailerCore:
    def __init__(
        self,
        uri: str,
        subscriptions: Sequence[Tuple[str, str]],
        start: Union[None, str, Tuple[int, int]] = None,
        batch_size: int = 5000,
        max_await_ms: int = 500,
    ) -> None: ...
    def start(self) -> None: ...
    def next_batch(self, timeout: float) -> Optional[Batch]: ...
    def next_batch_async(self) -> Awaitable[Optional[Batch]]: ...
    def stop(self) -> None: ...

class ReplicatorCore:
    def __init__(
        self,
        servers: Sequence[Tuple[str, str, str]],
        links: Sequence[Tuple[str, str, str, bool, bool, bool, str]],
    ) -> None: ...
    def link_ids(self) -> List[str]: ...
    def resync(self, link: str, mirror: bool = False) -> Tuple[int, int]:
        """Replaces the checkpoint of the link with this id by a fresh "initial sync in
        progress" state; returns the source position (time, inc) it will follow on from.
        ``mirror``: the copy also deletes destination documents the source does not have."""
    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def finished(self) -> bool: ...
    def next_event(self, timeout: float) -> Optional[Dict[str, Any]]: ...
    def status(self) -> List[Dict[str, Any]]: ...

def diff_to_update(o: bytes) -> bytes: ...

# -- the __mmm database ------------------------------------------------------------------------

MMM_DB: str
"""The database that holds mmm's state on every server (``"__mmm"``)."""
CHECKPOINTS_COLLECTION: str
"""One document per link on its destination: where the link resumes."""
LINKS_COLLECTION: str
"""Links stored by ``mmm replicate`` on their destination."""
REJECTED_COLLECTION: str
"""Ops a destination refused, journaled by links with ``on_reject="journal"``."""
TAILER_CHECKPOINTS_COLLECTION: str
"""Named positions of tailers that keep their checkpoint in MongoDB."""

def link_id(src: str, dst: str) -> str:
    """The id of the link ``src -> dst`` (the ``_id`` of its checkpoint and stored document).
    Raises ValueError for a malformed endpoint or one no link may use (``local``, ``admin``,
    ``config``, ``__mmm``, ``system.*``)."""

class Checkpoint(TypedDict):
    link: str
    origin: str
    """Server id where the ops of the last applied batch were first written."""
    src: str
    ts: Tuple[int, int]
    """The link resumes reading its source after this (time, inc)."""
    applied: Tuple[int, int]
    ops_applied: int
    conflicts: int
    rejected: int
    pending_ddl: bool
    initial_sync: Optional[Tuple[int, int]]
    """(copied, total) while an initial sync is in progress (resumed by the link's next run)."""

def read_checkpoint(uri: str, link: str, timeout: float = 5.0) -> Optional[Checkpoint]:
    """The checkpoint of ``link`` on the server at ``uri``; None if the link never ran there.
    Raises MmmError when the server cannot be read within ``timeout`` seconds."""
