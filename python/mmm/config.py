"""The YAML configuration file.

The original MongoMultiMaster format (one entry per server, with ``id`` and ``uri``) works
unchanged; links may be declared under a ``links`` key::

    factory:
      id: 0d6c7e5e-factory
      uri: mongodb://factory-db:27017/?replicaSet=rs0
    cloud:
      id: 8b1f1f1a-cloud
      uri: mongodb://${CLOUD_USER}:${CLOUD_PASSWORD}@cloud-db/?replicaSet=rs0
    links:
      - {src: factory/vision.*, dst: cloud/vision.*, ops: iud}
      - {src: cloud/vision.results, dst: factory/vision.results}

``${VAR}`` in a URI is replaced from the environment, so passwords stay out of the file.
Mistakes are reported with the file, line and key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

__all__ = ["ConfigError", "Config", "Server", "Link", "load_config", "parse_config"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
LINK_KEYS = {"src", "dst", "ops", "forward", "initial_sync", "marker", "on_reject"}
MARKERS = ("transaction", "field")
ON_REJECT = ("fail", "journal")


class ConfigError(ValueError):
    """A configuration mistake, with where it is."""


@dataclass(frozen=True)
class Server:
    name: str
    id: str
    uri: str


@dataclass(frozen=True)
class Link:
    src: str
    dst: str
    ops: str = "iud"
    forward: bool = False
    initial_sync: bool = False
    marker: str = "transaction"
    """How replicated writes are marked: "transaction" (no field added to documents) or
    "field" (also write ``__mmm: {origin, ts}`` into every document the link writes)."""
    on_reject: str = "fail"
    """What a write the destination refuses (a unique index, a validator, a document too large)
    does: "fail" stops the link (state ``failed``, the error names the namespace, ``_id`` and
    MongoDB's code and message); "journal" records the op in ``__mmm.rejected`` on the
    destination, in the transaction that moves the checkpoint past it, and goes on. Missing
    privileges (``Unauthorized``) always stop the link."""

    def __post_init__(self) -> None:
        if self.marker not in MARKERS:
            raise ValueError(f"marker is one of {', '.join(map(repr, MARKERS))}, got {self.marker!r}")
        if self.on_reject not in ON_REJECT:
            raise ValueError(f"on_reject is one of {', '.join(map(repr, ON_REJECT))}, got {self.on_reject!r}")
        self.id  # checks both endpoints: well formed, and nothing a link may not carry

    @property
    def id(self) -> str:
        """The link's id (``src->dst``), also the ``_id`` of its checkpoint on the destination."""
        from . import _mmm

        return _mmm.link_id(self.src, self.dst)

    def core_tuple(self) -> Tuple[str, str, str, bool, bool, bool, str]:
        """The link as the replication core takes it."""
        return (self.src, self.dst, self.ops, self.forward, self.initial_sync, self.marker == "field", self.on_reject)

    @property
    def src_server(self) -> str:
        return self.src.split("/", 1)[0]

    @property
    def dst_server(self) -> str:
        return self.dst.split("/", 1)[0]

    def as_dict(self) -> Dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "ops": self.ops, "forward": self.forward,
                "initial_sync": self.initial_sync, "marker": self.marker, "on_reject": self.on_reject}


@dataclass
class Config:
    servers: Dict[str, Server] = field(default_factory=dict)
    links: List[Link] = field(default_factory=list)
    path: Optional[str] = None


def _where(path: str, node: yaml.Node, key: str) -> str:
    return f"{path}, line {node.start_mark.line + 1}, key {key!r}"


def _expand(value: str, path: str, node: yaml.Node, key: str) -> str:
    def sub(m: "re.Match[str]") -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(f"{_where(path, node, key)}: environment variable {name} is not set")
        return os.environ[name]

    return _VAR.sub(sub, value)


def _scalar(node: yaml.Node, path: str, key: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{_where(path, node, key)}: expected a single value")
    return yaml.safe_load(yaml.serialize(node))


def _link(node: yaml.Node, path: str, index: int) -> Link:
    key = f"links[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node, key)}: a link is a mapping with src, dst and optionally ops, forward, initial_sync, marker, on_reject")
    values: Dict[str, Any] = {}
    for k_node, v_node in node.value:
        k = k_node.value
        if k not in LINK_KEYS:
            raise ConfigError(f"{_where(path, k_node, key + '.' + str(k))}: unknown key (expected one of {', '.join(sorted(LINK_KEYS))})")
        values[k] = _scalar(v_node, path, f"{key}.{k}")
    for required in ("src", "dst"):
        if not isinstance(values.get(required), str):
            raise ConfigError(f"{_where(path, node, key)}: '{required}' (like server/db.collection) is required")
    ops = values.get("ops", "iud")
    if not isinstance(ops, str):
        raise ConfigError(f"{_where(path, node, key + '.ops')}: ops is a string of letters from 'iudc'")
    for flag in ("forward", "initial_sync"):
        if flag in values and not isinstance(values[flag], bool):
            raise ConfigError(f"{_where(path, node, key + '.' + flag)}: expected true or false")
    marker = values.get("marker", "transaction")
    if marker not in MARKERS:
        raise ConfigError(f"{_where(path, node, key + '.marker')}: marker is one of {', '.join(MARKERS)}")
    on_reject = values.get("on_reject", "fail")
    if on_reject not in ON_REJECT:
        raise ConfigError(f"{_where(path, node, key + '.on_reject')}: on_reject is one of {', '.join(ON_REJECT)}")
    try:
        return Link(values["src"], values["dst"], ops, bool(values.get("forward", False)),
                    bool(values.get("initial_sync", False)), marker, on_reject)
    except ValueError as e:
        raise ConfigError(f"{_where(path, node, key)}: {e}") from None


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parses configuration text; raises ConfigError naming the line and key of a mistake."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    config = Config(path=path)
    if root is None:
        return config
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}, line {root.start_mark.line + 1}: the file must be a mapping of server names to {{id, uri}}")
    for k_node, v_node in root.value:
        name = k_node.value
        if name == "links":
            if not isinstance(v_node, yaml.SequenceNode):
                raise ConfigError(f"{_where(path, v_node, 'links')}: links is a list")
            config.links.extend(_link(n, path, i) for i, n in enumerate(v_node.value))
            continue
        if not isinstance(v_node, yaml.MappingNode):
            raise ConfigError(f"{_where(path, v_node, name)}: a server entry is a mapping with id and uri")
        fields = {k.value: (k, v) for k, v in v_node.value}
        unknown = set(fields) - {"id", "uri"}
        if unknown:
            k, _ = fields[sorted(unknown)[0]]
            raise ConfigError(f"{_where(path, k, name + '.' + k.value)}: unknown key (a server has id and uri)")
        for required in ("id", "uri"):
            if required not in fields:
                raise ConfigError(f"{_where(path, v_node, name)}: missing '{required}'")
        server_id = _scalar(fields["id"][1], path, f"{name}.id")
        uri = _scalar(fields["uri"][1], path, f"{name}.uri")
        if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"{_where(path, fields['uri'][1], name + '.uri')}: expected a mongodb:// or mongodb+srv:// URI")
        if name in config.servers:
            raise ConfigError(f"{_where(path, k_node, name)}: server defined twice")
        config.servers[name] = Server(name, str(server_id), _expand(uri, path, fields["uri"][1], f"{name}.uri"))
    for i, link in enumerate(config.links):
        for end in (link.src_server, link.dst_server):
            if end not in config.servers:
                raise ConfigError(f"{path}: links[{i}] names unknown server {end!r} (known: {', '.join(config.servers) or 'none'})")
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, path)
