"""mmm: Python oplog triggers and multi-master replication for MongoDB replica sets.

The core (oplog tailing, applying, the embedded server) is written in Rust; this package is the
Python face of it.
"""

from __future__ import annotations

import logging

from . import _mmm
from .embedded import MongoServer

__version__: str = _mmm.__version__

logging.getLogger("mmm").addHandler(logging.NullHandler())

__all__ = ["MongoServer", "__version__"]
