"""mmm: Python oplog triggers and multi-master replication for MongoDB replica sets.

The core (oplog tailing, applying, the embedded server) is written in Rust; this package is the
Python face of it.
"""

from __future__ import annotations

import logging

from . import _mmm
from ._mmm import MmmError, NotReplicaSetError, OplogFormatError, OplogRolloverError
from .config import ConfigError, Link, Server
from .embedded import MongoServer
from .policies import Conflict, FieldMerge, LWW, Prefer, Resolver, Stamp
from .replication import ConflictEvent, ReplicationError, Replicator
from .triggers import Tailer, diff_to_update

__version__: str = _mmm.__version__

logging.getLogger("mmm").addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "Conflict",
    "ConflictEvent",
    "FieldMerge",
    "LWW",
    "Link",
    "MmmError",
    "MongoServer",
    "NotReplicaSetError",
    "OplogFormatError",
    "OplogRolloverError",
    "Prefer",
    "ReplicationError",
    "Replicator",
    "Resolver",
    "Server",
    "Stamp",
    "Tailer",
    "__version__",
    "diff_to_update",
]
