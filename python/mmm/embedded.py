"""The embedded MongoDB-compatible server.

An in-memory, single-node replica-set primary that PyMongo and other drivers talk to over TCP.
It writes its oplog (``local.oplog.rs``) as MongoDB 7.0 does, so oplog triggers and replication
can be developed and tested with no MongoDB installed::

    from mmm.embedded import MongoServer

    with MongoServer() as server:
        client = pymongo.MongoClient(server.uri)
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Optional, Union

from . import _mmm

log = logging.getLogger("mmm.embedded")

__all__ = ["MongoServer"]


def _ip(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_wildcard(host: str) -> bool:
    """True for a bind address meaning every interface (``0.0.0.0``, ``::``)."""
    ip = _ip(host)
    return ip is not None and ip.is_unspecified


def is_loopback(host: str) -> bool:
    """True when only this machine can connect (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    ip = _ip(host)
    return host == "localhost" if ip is None else ip.is_loopback


def reachable_hostname() -> Optional[str]:
    """This machine's hostname when it resolves (what a server bound to every interface
    advertises); ``None`` lets the server fall back to 127.0.0.1."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return None
    return name


class ReplicaSetMember:
    """Connection strings of the one member of replica set ``replset`` at ``address``."""

    address: str
    replset: str

    @property
    def uri(self) -> str:
        """A connection string for drivers (replica-set discovery with this one member)."""
        return f"mongodb://{self.address}/?replicaSet={self.replset}"

    @property
    def direct_uri(self) -> str:
        """A connection string with ``directConnection=true``."""
        return f"mongodb://{self.address}/?directConnection=true"


class MongoServer(ReplicaSetMember):
    """An embedded server listening on ``host:port`` (``port=0`` lets the OS choose).

    It runs on background threads of this process until :meth:`stop` (or the end of a ``with``
    block). Several servers can run in one process. Data lives in memory only.

    There is no authentication: a ``host`` other than loopback logs a warning. ``advertise``
    (``HOST`` or ``HOST:PORT``) is the address ``hello`` names and :attr:`uri` uses; by default
    the bound address, and for ``0.0.0.0``/``::`` this machine's hostname (or 127.0.0.1).

    ``test_commands`` (on by default, as ``mongod --setParameter enableTestCommands=1``) enables
    ``configureFailPoint`` and its fail points; turn it off to serve like a production ``mongod``.
    """

    def __init__(
        self,
        port: int = 0,
        replset: str = "rs0",
        oplog_size_mb: float = 256,
        host: str = "127.0.0.1",
        advertise: Optional[str] = None,
        test_commands: bool = True,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
        if advertise is None and is_wildcard(host):
            advertise = reachable_hostname()
        self._server = _mmm.MongoServer(
            port=port, replset=replset, oplog_size_mb=float(oplog_size_mb), host=host,
            advertise=advertise, test_commands=bool(test_commands),
        )
        if not is_loopback(host):
            log.warning(
                "the embedded MongoDB server listens on %s: anyone who can reach it can read "
                "and write every database without a password (it has no authentication)",
                host,
            )
        log.info("embedded MongoDB server listening on %s (replica set %s)", self.address, replset)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def address(self) -> str:
        """``host:port`` exactly as the server reports it in ``hello``."""
        return self._server.address

    @property
    def replset(self) -> str:
        return self._server.replset

    @property
    def stopped(self) -> bool:
        return self._server.stopped

    def stop(self) -> None:
        """Stops listening and closes every connection. Idempotent."""
        if not self._server.stopped:
            self._server.stop()
            log.info("embedded MongoDB server %s stopped", self.address)

    def drop_connections(self) -> None:
        """Closes every open client connection; data is kept and clients may reconnect."""
        self._server.drop_connections()

    def pause(self, seconds: float) -> None:
        """For ``seconds``, refuses new connections and closes open ones (an outage); data is kept."""
        self._server.pause(seconds)

    def hold_majority(self) -> None:
        """Freezes the majority commit point where it is, as a lagging secondary would.

        Until :meth:`release_majority`: ``readConcern: "majority"`` reads (mmm's tailers and
        replicators read sources that way) see no later write; ``hello`` and
        ``replSetGetStatus`` report the frozen point; writes with ``w: "majority"`` (the
        implicit default when a write names no ``w``) are applied but their acknowledgement waits
        for the release, their ``wtimeout`` or their ``maxTimeMS``. Holding again changes nothing.
        """
        self._server.hold_majority()
        log.info("embedded MongoDB server %s: majority commit point held", self.address)

    def release_majority(self) -> None:
        """Lets the majority commit point catch up with every write; without a hold, does nothing."""
        if self._server.majority_held:
            self._server.release_majority()
            log.info("embedded MongoDB server %s: majority commit point released", self.address)

    @property
    def majority_held(self) -> bool:
        """Whether :meth:`hold_majority` froze the majority commit point."""
        return self._server.majority_held

    def __enter__(self) -> "MongoServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"<MongoServer {self.address} replset={self.replset!r} {state}>"
