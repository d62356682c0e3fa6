"""Conflict policies: what every server does when two of them changed one document
concurrently (neither had seen the other's change).

Choose one per namespace with ``resolve=`` on :class:`~mmm.Replicator` or :class:`~mmm.Link`,
``resolve:`` in the YAML file or ``--resolve`` on the command line::

    Replicator(servers, links, resolve=mmm.LWW())                       # every namespace
    Replicator(servers, links, resolve={"plant.recipes": mmm.Prefer("cloud"),
                                        "plant.*": "lww", "*": mmm.LWW(deletes="delete_wins")})

The most specific pattern wins (``db.coll``, then ``db.*``, then ``*``); namespaces no pattern
names use last-writer-wins. ``None`` (or ``"none"``) means detection only: conflicts are
journaled and reported, and the two versions may stay different.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import bson

__all__ = ["Conflict", "FieldMerge", "LWW", "Policy", "Prefer", "Resolver", "Stamp", "parse_policy", "normalize_resolve"]

DELETES = ("lww", "delete_wins", "update_wins")


def _check_deletes(deletes: str) -> str:
    if deletes not in DELETES:
        raise ValueError(f"deletes is one of {', '.join(map(repr, DELETES))}, got {deletes!r}")
    return deletes


class Policy:
    """Base class of the conflict policies."""

    kind: str = ""
    deletes: str = "lww"

    def _spec(self, server_ids: Mapping[str, str]) -> Tuple[str, str, str]:
        """(kind, server id or "", deletes) for the core."""
        return (self.kind, "", self.deletes)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.deletes))


def _server_id(name: str, server_ids: Mapping[str, str], what: str) -> str:
    if name in server_ids:
        return server_ids[name]
    if name in server_ids.values():
        return name
    known = ", ".join(sorted(server_ids)) or "none"
    raise ValueError(f"{what}: {name!r} is not a server of this topology (known: {known})")


class LWW(Policy):
    """Last writer wins (the default): the version with the later stamp wins, whole document.
    Stamps are hybrid logical clocks: a change made after seeing another always wins over it;
    concurrent changes further apart than the servers' clock skew go to the later one in real
    time; ties go to the larger server id. A delete is a change like any other."""

    kind = "lww"

    def __init__(self, deletes: str = "lww") -> None:
        self.deletes = _check_deletes(deletes)

    def __repr__(self) -> str:
        return f"LWW(deletes={self.deletes!r})"


class FieldMerge(Policy):
    """Last writer wins per top-level field (``"fields"``): concurrent changes to different
    top-level fields of one document are all kept; for the same field the later write wins
    (stamps as for :class:`LWW`). A field's value is taken whole (no merge inside embedded
    documents or arrays). Inserts, replacements and deletes write every field, absent ones
    included; so an update made after (by the clock) a concurrent delete brings the document
    back with only the fields that update wrote. Values converge; the order of fields inside a
    document may differ between servers. With ``deletes="delete_wins"`` a delete met by a
    concurrent update leaves the document deleted everywhere; with ``"update_wins"`` the updated
    document stays whole (every field it held, not only those the update wrote). Either way the
    server that meets the conflict writes that outcome as a new version, and the conflict is
    journaled."""

    kind = "fields"

    def __init__(self, deletes: str = "lww") -> None:
        self.deletes = _check_deletes(deletes)

    def __repr__(self) -> str:
        return f"FieldMerge(deletes={self.deletes!r})"


class Prefer(Policy):
    """The named server's version wins concurrent conflicts (``"prefer:cloud"``). That server
    decides: where another server's version won by clock, it writes its own again, and that
    write travels like any other. Until it arrives, other servers hold the LWW result."""

    kind = "prefer"

    def __init__(self, server: str, deletes: str = "lww") -> None:
        if not isinstance(server, str) or not server:
            raise ValueError(f"Prefer needs a server name, got {server!r}")
        self.server = server
        self.deletes = _check_deletes(deletes)

    def _spec(self, server_ids: Mapping[str, str]) -> Tuple[str, str, str]:
        return (self.kind, _server_id(self.server, server_ids, "Prefer"), self.deletes)

    def __repr__(self) -> str:
        return f"Prefer({self.server!r}, deletes={self.deletes!r})"


class Resolver(Policy):
    """Your function decides: ``func(conflict)`` gets a :class:`Conflict` and returns the merged
    document, or ``None`` to delete. It runs once per conflict, on the ``arbiter`` server's link
    (the process running a link *to* the arbiter), and its result is written there as a new
    version that travels like any other write. If it raises, the later version is kept and
    the error is logged."""

    kind = "resolver"

    def __init__(self, func: Callable[["Conflict"], Optional[Mapping[str, Any]]], arbiter: str, deletes: str = "lww") -> None:
        if not callable(func):
            raise ValueError(f"Resolver needs a callable, got {func!r}")
        if not isinstance(arbiter, str) or not arbiter:
            raise ValueError(f"Resolver needs an arbiter server name, got {arbiter!r}")
        self.func = func
        self.arbiter = arbiter
        self.deletes = _check_deletes(deletes)

    def _spec(self, server_ids: Mapping[str, str]) -> Tuple[str, str, str]:
        return (self.kind, _server_id(self.arbiter, server_ids, "Resolver"), self.deletes)

    def __hash__(self) -> int:
        return hash((self.arbiter, id(self.func)))

    def __repr__(self) -> str:
        return f"Resolver({getattr(self.func, '__qualname__', self.func)!r}, arbiter={self.arbiter!r}, deletes={self.deletes!r})"


@dataclass(frozen=True)
class Stamp:
    """Which server wrote a version, and when by its hybrid logical clock."""

    clock: int
    server: str
    """The server id (``<id>#r`` for a version written to resolve a conflict)."""

    @property
    def time(self) -> datetime:
        """The wall-clock part of the stamp."""
        return datetime.fromtimestamp((self.clock >> 16) / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class Conflict:
    """What a :class:`Resolver` function gets."""

    namespace: str
    id: Any
    ours: Optional[Dict[str, Any]]
    """The arbiter's version (``None``: deleted)."""
    theirs: Optional[Dict[str, Any]]
    """The arriving version (``None``: deleted)."""
    ours_stamp: Stamp
    theirs_stamp: Stamp
    base: Optional[Dict[str, Any]] = field(default=None)
    """The common ancestor; mmm does not keep history, so this is ``None``."""


def _call_resolver(func: Callable[[Conflict], Any], namespace: str, id_bson: bytes, ours: Optional[bytes], theirs: Optional[bytes],
                   ours_stamp: Tuple[int, str], theirs_stamp: Tuple[int, str]) -> Optional[bytes]:
    """Called by the core on the arbiter: BSON in, BSON out."""
    conflict = Conflict(
        namespace=namespace,
        id=bson.decode(id_bson)["_id"],
        ours=bson.decode(ours) if ours is not None else None,
        theirs=bson.decode(theirs) if theirs is not None else None,
        ours_stamp=Stamp(*ours_stamp),
        theirs_stamp=Stamp(*theirs_stamp),
    )
    result = func(conflict)
    if result is None:
        return None
    if not isinstance(result, Mapping):
        raise TypeError(f"a resolver returns a document (a mapping) or None, got {type(result).__name__}")
    return bson.encode(dict(result))


PolicyLike = Union[Policy, str, None]


def parse_policy(value: PolicyLike) -> Optional[Policy]:
    """A policy from its object or its name: ``"lww"``, ``"fields"``, ``"prefer:<server>"``, ``"none"`` (or ``None``: detection only). A suffix ``,deletes=delete_wins`` (or
    ``update_wins``) sets the delete rule: ``"lww,deletes=delete_wins"``."""
    if value is None or isinstance(value, Policy):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a conflict policy is an mmm policy object or a name like 'lww', 'prefer:cloud', got {value!r}")
    name, _, rest = value.strip().partition(",")
    deletes = "lww"
    if rest:
        key, _, val = rest.partition("=")
        if key.strip() != "deletes" or not val:
            raise ValueError(f"conflict policy {value!r}: the only option is ',deletes=lww|delete_wins|update_wins'")
        deletes = _check_deletes(val.strip())
    name = name.strip()
    if name == "none":
        if rest:
            raise ValueError(f"conflict policy {value!r}: 'none' takes no options")
        return None
    if name == "lww":
        return LWW(deletes=deletes)
    if name == "fields":
        return FieldMerge(deletes=deletes)
    if name.startswith("prefer:") and name[len("prefer:"):]:
        return Prefer(name[len("prefer:"):], deletes=deletes)
    raise ValueError(f"unknown conflict policy {value!r} (expected 'lww', 'fields', 'prefer:<server>' or 'none')")


_PATTERN = re.compile(r"^(\*|[^.*$\x00]+\.(\*|[^*\x00]+))$")


def normalize_resolve(value: Any) -> Dict[str, Optional[Policy]]:
    """``resolve=`` as a mapping from namespace pattern to policy."""
    if isinstance(value, Mapping):
        out: Dict[str, Optional[Policy]] = {}
        for pattern, policy in value.items():
            if not isinstance(pattern, str) or not _PATTERN.match(pattern):
                raise ValueError(f"resolve patterns are strings like 'db.coll', 'db.*' or '*', got {pattern!r}")
            out[pattern] = parse_policy(policy)
        return out
    return {"*": parse_policy(value)}


def core_policies(resolve: Mapping[str, Optional[Policy]], server_ids: Mapping[str, str]) -> Tuple[Dict[str, Tuple[str, str, str]], Dict[str, Callable[..., Any]]]:
    """What the core takes: per pattern (kind, server id, deletes), and per pattern the
    resolver functions."""
    specs: Dict[str, Tuple[str, str, str]] = {}
    funcs: Dict[str, Callable[..., Any]] = {}
    for pattern, policy in resolve.items():
        if policy is None:
            specs[pattern] = ("none", "", "lww")
            continue
        specs[pattern] = policy._spec(server_ids)
        if isinstance(policy, Resolver):
            funcs[pattern] = policy.func
    return specs, funcs
