"""mmm's Rust extension module: the reference for what crosses the Python/Rust boundary.

Use the friendly API in ``mmm`` (``Tailer``, ``Replicator``, ``MongoServer``) instead; this is
what it is built on. Every value going in or out is typed here: positional tuples appear only
for ``(time, inc)`` timestamps.
"""

from typing import Any, Awaitable, Callable, Dict, List, Literal, Optional, Protocol, Sequence, Tuple, TypedDict, Union, final

# Names below that only exist for type checkers (aliases, TypedDicts, Protocols) are imported
# under `if TYPE_CHECKING:`; tests/stubtest_allowlist.txt lists them for mypy's stubtest.

__version__: str

OpLetter = Literal["i", "u", "d", "c", "n"]
"""An oplog entry's ``op``: insert, update, delete, command (DDL, transactions), no-op."""

LinkState = Literal["not started", "starting", "initial-sync", "running", "retrying", "stopped", "failed", "standby"]
"""A replication link's state in :meth:`ReplicatorCore.status`."""

TimestampTuple = Tuple[int, int]
"""A BSON timestamp as ``(time, inc)``; ``bson.Timestamp(*t)`` makes one."""

class MmmError(Exception):
    """Base class of mmm's errors (``mmm.ConfigError`` and ``mmm.ReplicationError`` too)."""

class OplogRolloverError(MmmError):
    """A checkpoint is older than the oldest entry still in the source's oplog: operations were
    lost to this reader and a resync is needed."""

class NotReplicaSetError(MmmError):
    """The server is not a replica-set member, so it has no oplog."""

class OplogFormatError(MmmError):
    """An oplog entry could not be understood."""

@final
class MongoServer:
    """The embedded MongoDB-compatible server, listening on ``host:port`` (0 picks a free port)
    as the single member of replica set ``replset``, with an oplog capped at ``oplog_size_mb``.
    ``advertise``: ``HOST`` or ``HOST:PORT`` that ``hello`` names (hosts, me, primary); default
    the bound address, 127.0.0.1 for a wildcard bind. ValueError on a bad argument, OSError when
    the address cannot be bound, RuntimeError when mmm was started in this process's parent
    before a fork.
    ``test_commands``: enable test commands (``configureFailPoint``), as mongod's
    ``enableTestCommands``."""

    # replset defaults to "rs0" and host to "127.0.0.1" (computed defaults, shown as ...)
    def __new__(
        cls,
        port: int = 0,
        replset: str = ...,
        oplog_size_mb: float = 256.0,
        host: str = ...,
        advertise: Optional[str] = None,
        test_commands: bool = True,
    ) -> "MongoServer": ...
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str:
        """``host:port``."""
    @property
    def replset(self) -> str: ...
    @property
    def stopped(self) -> bool: ...
    def stop(self) -> None:
        """Closes the listener and every connection."""
    def drop_connections(self) -> None:
        """Closes every client connection (the listener stays): a network failure for clients."""
    def pause(self, seconds: float) -> None:
        """Holds every reply for ``seconds``: a slow or hung server for clients."""
    def hold_majority(self) -> None:
        """Freezes the majority commit point at the last write (idempotent)."""
    def release_majority(self) -> None:
        """Lets the majority commit point catch up (nothing happens without a hold)."""
    @property
    def majority_held(self) -> bool: ...

@final
class Batch:
    """The ops of one delivery that some trigger wants, in oplog order. Per-op lists have one
    entry per op, in the order of the documents in ``ops``."""

    @property
    def ops(self) -> bytes:
        """The matched ops as concatenated BSON documents (``bson.decode_all``)."""
    @property
    def subscriptions(self) -> List[List[int]]:
        """Per op: the indexes (into ``TailerCore``'s ``subscriptions``) it matched."""
    @property
    def ts(self) -> List[TimestampTuple]:
        """Per op: its ``ts`` (a transaction's ops share the commit's)."""
    @property
    def unit_end(self) -> List[bool]:
        """Per op: True when it ends its unit (a transaction's last op), so a checkpoint may
        move to its ``ts``."""
    @property
    def checkpoint(self) -> Optional[TimestampTuple]:
        """Where a consumer may checkpoint once every op here is handled (it also covers
        entries that matched nothing)."""
    @property
    def entries_read(self) -> int:
        """Oplog entries read to produce this batch, matched or not."""
    def __len__(self) -> int:
        """The number of ops."""

@final
class TailerCore:
    """Follows one replica set's oplog on mmm's background runtime and yields :class:`Batch`es
    of the ops matching ``subscriptions``: ``(namespace pattern, op letters)`` pairs, where a
    pattern is ``db.coll``, ``db.*`` or ``*`` and letters come from ``"iudcn"`` (or ``"*"``).
    ``start``: None or ``"now"`` (after the newest entry), ``"oldest"``, or ``(time, inc)``
    (after that entry, which must still be in the oplog, else :class:`OplogRolloverError`).
    ValueError names a bad pattern, letter or URI (its secrets hidden)."""

    def __new__(
        cls,
        uri: str,
        subscriptions: Sequence[Tuple[str, str]],
        start: Union[None, Literal["now", "oldest"], TimestampTuple] = None,
        batch_size: int = 5000,
        max_await_ms: int = 500,
        skip_through: Optional[TimestampTuple] = None,
    ) -> "TailerCore": ...
    def start(self) -> None:
        """Starts following; RuntimeError if already started."""
    def next_batch(self, timeout: float) -> Optional[Batch]:
        """Waits up to ``timeout`` seconds (Ctrl-C is honoured); None on timeout or after
        :meth:`stop`. Raises :class:`OplogRolloverError`, :class:`NotReplicaSetError`,
        :class:`OplogFormatError`, or RuntimeError in a process forked after :meth:`start`."""
    def next_batch_async(self) -> Awaitable[Optional[Batch]]:
        """:meth:`next_batch` for asyncio, without a timeout (None after :meth:`stop`)."""
    def stop(self) -> None:
        """Stops the background task; pending waits return None."""
    def check_process(self) -> None:
        """RuntimeError when this tailer was started in another process (before a fork)."""

class ServerLike(Protocol):
    """What the core reads from a server (``mmm.Server`` has it): attributes, not positions."""

    @property
    def name(self) -> str: ...
    @property
    def id(self) -> str:
        """Stable identity written into checkpoints as the origin of writes."""
    @property
    def uri(self) -> str: ...

class LinkLike(Protocol):
    """What the core reads from a link (``mmm.Link`` has it)."""

    @property
    def src(self) -> str:
        """``server/db.coll``, ``server/db.*`` or ``server/*``."""
    @property
    def dst(self) -> str: ...
    @property
    def ops(self) -> str:
        """Letters from ``"iudc"``."""
    @property
    def forward(self) -> bool: ...
    @property
    def initial_sync(self) -> bool: ...
    @property
    def marker(self) -> str:
        """"transaction" or "field"."""
    @property
    def on_reject(self) -> str:
        """"fail" or "journal"."""
    @property
    def on_rollover(self) -> str:
        """"repair" or "stop"."""

class LeaseHolder(TypedDict):
    id: str
    """Random per lease keeper (one per tailer or link in a process)."""
    host: str
    pid: int

class LeaseInfo(TypedDict):
    held: bool
    """This process holds the lease and works."""
    term: Optional[int]
    """The lease's term as last read (grows by one at each takeover)."""
    holder: Optional[LeaseHolder]
    expires_ms: Optional[int]
    """When the lease lapses unless renewed, in ms since the epoch, by its server's clock."""
    error: Optional[str]
    """The last error talking to the lease's server."""

class _LinkStatusRequired(TypedDict):
    id: str
    """The link's id, also its checkpoint's ``_id``: ``src->dst`` with the endpoints normalised."""
    src: str
    """Source server name."""
    dst: str
    """Destination server name."""
    state: LinkState

class LinkStatus(_LinkStatusRequired, total=False):
    """One link in :meth:`ReplicatorCore.status`; a core not started yet gives only the
    required keys, with state ``"not started"``."""

    checkpoint: Optional[TimestampTuple]
    """The last source entry applied (with its effects) on the destination."""
    lag_seconds: float
    lag_ops: int
    ops_applied: int
    batches_applied: int
    echoes_skipped: int
    """Ops not sent back to the server they were replicated from."""
    conflicts: int
    retries: int
    """Sessions ended by transient trouble (unreachable server, failover) and started again."""
    rejected: int
    """Ops the destination refused, journaled in ``__mmm.rejected`` (``on_reject="journal"``)."""
    initial_sync: Tuple[int, int]
    """(documents copied, documents to copy)."""
    last_error: Optional[str]
    """The last error, one line, secrets hidden."""
    oplog: Optional[Dict[str, Any]]
    """The source's oplog headroom (:func:`oplog_headroom`'s first item, plus this link's
    ``margin_seconds`` and ``near_rollover``); None until it was first read."""
    lease: Optional[LeaseInfo]
    """The link's lease, when the core was started with one."""

class VerifyProgress(TypedDict):
    """What :meth:`ReplicatorCore.verify` passes to its ``progress`` callback."""

    pair: str
    pairs_done: int
    pairs: int
    phase: str
    """"survey", "re-check N" or "done"."""
    compared: int
    estimate: int
    """About how many documents the pair holds (the larger side)."""
    ranges_differing: int

class VerifyDifference(TypedDict):
    id_bson: bytes
    """``{"_id": ...}`` as BSON."""
    a: Optional[bytes]
    """The document on the pair's first end (BSON), None when absent there."""
    b: Optional[bytes]

class VerifyPair(TypedDict):
    """One pair of namespaces in :meth:`ReplicatorCore.verify`'s result."""

    key: str
    a: Tuple[str, str]
    """(server, namespace) of the first end."""
    b: Tuple[str, str]
    as_of_ms: int
    """When its survey began (milliseconds since the epoch, UTC)."""
    compared: int
    suspect_ranges: int
    differences: int
    listed: List[VerifyDifference]
    unsettled: List[bytes]
    """``{"_id": ...}`` as BSON of documents still changing at every re-check."""
    lagging_links: List[str]
    resumed: Optional[str]

# A document changed concurrently on two servers. ``server``: id of the server where the link
# met it; ``from``: id of the server the arriving version came from (a keyword, hence this
# form); ``id_bson``: ``{"_id": <the document's _id>}`` as BSON; ``ours``/``theirs``: the
# versions' stamps (clock, server id); ``winner``: what the policy decided.
ConflictEventDict = TypedDict(
    "ConflictEventDict",
    {
        "kind": Literal["conflict"],
        "server": str,
        "from": str,
        "namespace": str,
        "id_bson": bytes,
        "ours": Tuple[int, str],
        "theirs": Tuple[int, str],
        "policy": str,
        "winner": str,
    },
)

class FailedEventDict(TypedDict):
    """A link stopped on an error that needs attention."""

    kind: Literal["failed"]
    link: str
    error: str

LinkEvent = Union[ConflictEventDict, FailedEventDict]

@final
class ReplicatorCore:
    """The replication engine: ``servers`` and ``links`` as objects with named attributes
    (:class:`ServerLike`, :class:`LinkLike`). Checks the topology now (ValueError naming the
    problem: unknown server, duplicate id or link, a write that could reach a server and
    namespace by two paths, a malformed URI with its secrets hidden)."""

    def __new__(
        cls,
        servers: Sequence[ServerLike],
        links: Sequence[LinkLike],
        policies: Optional[Dict[str, Dict[str, Tuple[str, str, str]]]] = None,
        resolvers: Optional[Dict[str, Dict[str, Callable[..., Any]]]] = None,
        tombstone_retention: float = 864000.0,
    ) -> "ReplicatorCore":
        """``policies``: per link id, per namespace pattern, (kind, server id, deletes), kind
        one of ``lww``, ``fields`` (deletes ``lww`` only), ``prefer``, ``resolver``, ``none``;
        ``resolvers``: per link id, per pattern, the resolver function;
        ``tombstone_retention``: seconds a tombstone is kept at least (ValueError unless
        positive)."""
    def repair_document(self, a_server: str, a_ns: str, b_server: str, b_ns: str, id_bson: bytes) -> Optional[Tuple[str, int, str]]:
        """Brings one ``_id`` into agreement between two servers; (winner, clock, site) of the
        version both now hold, or None when they agreed. ValueError for an unknown server or a
        malformed ``id_bson``; RuntimeError when a server cannot be read or written."""
    def link_ids(self) -> List[str]:
        """Link ids in declaration order."""
    def resync(self, link: str, mirror: bool = False) -> TimestampTuple:
        """Replaces the checkpoint of the link with this id by a fresh "initial sync in
        progress" state; returns the source position it will follow on from. ``mirror``: the
        copy also deletes destination documents the source does not have. ValueError for an
        unknown id (listing the known ones), RuntimeError while running or when a server
        cannot be reached or written."""
    def verify(
        self,
        ns: Optional[str] = None,
        range_size: int = 1000,
        catch_up_timeout: float = 30.0,
        max_rounds: int = 4,
        max_listed: int = 100,
        restart: bool = False,
        progress: Optional[Callable[[VerifyProgress], Any]] = None,
        progress_every: float = 1.0,
    ) -> List[VerifyPair]:
        """Compares every pair of namespaces the links join (or those naming ``ns``), resuming
        a saved run unless ``restart``. ValueError for a bad ``ns``, RuntimeError when a server
        cannot be read (secrets hidden)."""
    def start(self, lease_ttl: Optional[float] = None) -> None:
        """Starts every link on the background runtime; RuntimeError if running already.
        ``lease_ttl`` (seconds): each link works only while this process holds its lease, on
        its destination (ValueError for a TTL outside 0.1 to 86400 s)."""
    def stop(self) -> None:
        """Asks every link to stop after its current batch."""
    @property
    def finished(self) -> bool:
        """True once every link has stopped or failed."""
    def next_event(self, timeout: float) -> Optional[LinkEvent]:
        """Waits up to ``timeout`` seconds for an event; None when nothing happened."""
    def status(self) -> List[LinkStatus]:
        """One entry per link, in declaration order."""

class Reach(TypedDict):
    """Whose writes to one namespace reach whom."""

    namespace: str
    """The namespace (pattern) as the servers writing it call it."""
    servers: List[str]
    """Every server that writes or receives it, in declaration order."""
    reach: Dict[str, List[Tuple[str, str, bool]]]
    """Per server whose writes go anywhere: ``(server reached, namespace there, all of it)``;
    ``False`` when only part of the namespace gets there."""
    warnings: List[str]
    """A server whose writes reach some servers of the namespace but not others."""

def oplog_headroom(uri: str, positions: Sequence[TimestampTuple] = ...) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A source's oplog: ``oldest``, ``newest``, ``size_bytes``, ``max_size_bytes``,
    ``window_seconds``, ``capacity_seconds`` (history held at the current write rate, None
    while unknown), ``bytes_per_second``; and per position ``margin_seconds`` (before the oplog
    rolls over it) and ``near_rollover`` (within 20% of the capacity). RuntimeError when the
    server cannot be read."""

def reach(servers: Sequence[ServerLike], links: Sequence[LinkLike]) -> List[Reach]:
    """Per namespace a link reads, whose writes reach whom (ValueError as
    :class:`ReplicatorCore`)."""

def redact_uri(uri: str, keep_variables: bool = False) -> str:
    """``uri`` with its userinfo and secret options (``authMechanismProperties`` values,
    ``*password*``, ``*secret*``, ``*token*``) replaced by ``***``; with ``keep_variables``,
    parts written only as ``${VAR}`` stay."""

def uri_secrets(uri: str) -> List[str]:
    """The secrets of ``uri`` as they may be quoted (as written and percent-decoded), longest
    first."""

def redact_text(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every ``mongodb://`` URI redacted and every one of ``secrets`` hidden."""

def uri_userinfo_problem(uri: str) -> Optional[str]:
    """Why the user name and password of ``uri`` cannot be read unambiguously (a character that
    must be percent-encoded), or None. The answer never quotes them."""

def diff_to_update(o: bytes) -> bytes:
    """Translates an update op's ``o`` (BSON) into update documents (concatenated BSON)."""

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

LEASES_COLLECTION: str
"""One lease per tailer name (``tailer:<name>``) or link (``link:<link id>``)."""
DEFAULT_LEASE_TTL: float
"""Seconds a lease lasts without renewal unless told otherwise (10)."""

@final
class LeaseCore:
    """Keeps the lease ``name`` (a full lease id) in ``__mmm.leases`` of the server at ``uri``:
    takes it when free or expired, renews it every ``ttl / 3`` seconds. ValueError for an empty
    name, one over 64 KiB or with NUL, a TTL outside 0.1 to 86400 s, or a bad URI."""

    def __new__(cls, uri: str, name: str, ttl: float) -> "LeaseCore": ...
    def start(self) -> None:
        """Starts keeping the lease in the background; RuntimeError if started already."""
    @property
    def term(self) -> Optional[int]:
        """The term this process holds while its lease is valid, else None."""
    def wait(self, timeout: float) -> Optional[int]:
        """Waits up to ``timeout`` s for this process to hold the lease: its term, or None.
        Counts as a :meth:`beat`."""
    def beat(self) -> None:
        """The working loop's sign of life: the lease is renewed or taken only while this is
        called at least once per TTL, so stuck work lets the lease lapse."""
    def info(self) -> Optional[LeaseInfo]:
        """Who holds the lease (None before :meth:`start`)."""
    def stop(self) -> None:
        """Stops renewing and releases the lease if held."""

def fence_filter(id: str, term: int) -> bytes:
    """The filter (BSON) of a checkpoint write fenced by lease term ``term``: written with
    upsert, it fails with DuplicateKey once a greater term has claimed document ``id``."""

def tailer_lease_id(name: str) -> str:
    """The lease id of a tailer name; ValueError for a name no lease can have."""

class StoredLease(TypedDict):
    term: Optional[int]
    holder: Optional[LeaseHolder]
    expires_ms: Optional[int]
    expired: bool
    """Expired by the server's clock: nobody works until another process takes it."""

def read_lease(uri: str, name: str, timeout: float = 5.0) -> Optional[StoredLease]:
    """The lease ``name`` (a full lease id) stored on the server at ``uri``, or None. Raises
    MmmError when the server cannot be read within ``timeout`` seconds."""

def validate_lease(name: str, ttl: float) -> None:
    """ValueError for a lease name or TTL (seconds) no lease can have."""

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
