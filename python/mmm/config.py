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
    verify_every: 3600      # optional: mmm run verifies the servers agree every hour

``${VAR}`` in a URI is replaced from the environment, so passwords stay out of the file.
Mistakes are reported with the file, line and key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import redact
from ._mmm import MmmError

__all__ = ["ConfigError", "Config", "Server", "Link", "load_config", "parse_config"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
LINK_KEYS = {"src", "dst", "ops", "forward", "initial_sync", "marker", "on_reject", "resolve", "on_rollover"}
ON_ROLLOVER = ("repair", "stop")
MARKERS = ("transaction", "field")
MAX_CONFIG_CHARS = 16 << 20  # reading stops here: `-c /dev/zero` must not exhaust memory
ON_REJECT = ("fail", "journal")


_UNSET: Any = None  # a link without its own policy takes the replicator's


class ConfigError(MmmError, ValueError):
    """A configuration mistake, with where it is (a ValueError too, as it always was)."""


@dataclass(frozen=True, repr=False)
class Server:
    name: str
    id: str
    uri: str

    def __post_init__(self) -> None:
        redact.remember(self.uri)

    def __repr__(self) -> str:
        return f"Server(name={self.name!r}, id={self.id!r}, uri={redact.uri(self.uri)!r})"


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
    privileges (``Unauthorized``) and refused DDL commands always stop the link."""
    resolve: Any = field(default=_UNSET, compare=False)
    """This link's conflict policy (see :mod:`mmm.policies`), overriding the replicator's:
    a policy, its name, or a mapping from namespace pattern to policy."""

    on_rollover: str = field(default="repair", compare=False)
    """When the link's position has left its source's oplog (an outage longer than the oplog
    window): "repair" catches up by sending the documents the source changed since (kept in
    the source's ``__mmm.meta``), "stop" stops the link with the remedy (``mmm resync``)."""

    def __post_init__(self) -> None:
        if self.on_rollover not in ON_ROLLOVER:
            raise ValueError(f"on_rollover is one of {', '.join(map(repr, ON_ROLLOVER))}, got {self.on_rollover!r}")
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
    uri_templates: Dict[str, str] = field(default_factory=dict, repr=False)
    """Each server's uri as written in the file, before ``${VAR}`` expansion."""
    resolve: Any = None
    """The ``resolve:`` key: conflict policies (None when absent: last writer wins)."""
    tombstone_retention: Optional[float] = None
    """The ``tombstone_retention:`` key, in seconds (``10d``, ``12h``, ``30m``, ``45s`` or a number)."""
    verify_every: Optional[float] = None
    """``verify_every:`` seconds between verifications while ``mmm run`` runs (None: never)."""


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
    if node.tag == "tag:yaml.org,2002:null":
        return None  # also the empty value, which a lone serialized scalar cannot carry
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as e:
        raise ConfigError(f"{_where(path, node, key)}: not a plain value ({getattr(e, 'problem', None) or e})") from None


# The tags plain YAML values resolve to; anything else (``!!python/name:...``, ``!!binary``,
# custom ``!tags``) has no meaning in this file and is refused rather than ignored.
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "bool", "null", "float", "map", "seq")}


def _check_nodes(root: yaml.Node, path: str) -> None:
    """Refuses what YAML allows but a configuration must not hold: explicit tags, keys that
    are not plain strings, and a key given twice in one mapping (YAML keeps the last silently).
    Each node is visited once, so aliases repeated many times (a "billion laughs" file) cost no
    more than the text that declares them."""
    seen_nodes = set()
    todo: List[Tuple[yaml.Node, str]] = [(root, "")]
    while todo:
        node, key = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        here = key or "(top level)"
        if node.tag not in _PLAIN_TAGS:
            raise ConfigError(f"{_where(path, node, here)}: YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed; write a plain value")
        if isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{key}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            names: Dict[str, yaml.Node] = {}
            for k_node, v_node in node.value:
                if not isinstance(k_node, yaml.ScalarNode) or k_node.tag not in _PLAIN_TAGS:
                    raise ConfigError(f"{_where(path, k_node, here)}: a key must be a plain name, not a {k_node.id}")
                name = str(k_node.value)
                if name in names:
                    raise ConfigError(f"{_where(path, k_node, (key + '.' if key else '') + name)}: key given twice in one mapping (first on line {names[name].start_mark.line + 1}); keep one")
                names[name] = k_node
                todo.append((v_node, (key + "." if key else "") + name))


def _server_id(node: yaml.Node, path: str, key: str) -> str:
    value = _scalar(node, path, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ConfigError(f"{_where(path, node, key)}: the id must be a non-empty string that identifies this server for good (e.g. a UUID), got {'an empty value' if value in (None, '') else repr(value)}")
    return str(value)


def _link(node: yaml.Node, path: str, index: int) -> Link:
    key = f"links[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node, key)}: a link is a mapping with src, dst and optionally ops, forward, initial_sync, marker, on_reject")
    values: Dict[str, Any] = {}
    for k_node, v_node in node.value:
        k = k_node.value
        if k not in LINK_KEYS:
            raise ConfigError(f"{_where(path, k_node, key + '.' + str(k))}: unknown key (expected one of {', '.join(sorted(LINK_KEYS))})")
        if k == "resolve":
            values[k] = _resolve(v_node, path, f"{key}.resolve")
            continue
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
                    bool(values.get("initial_sync", False)), marker, on_reject,
                    values.get("resolve", _UNSET), values.get("on_rollover", "repair"))
    except ValueError as e:
        raise ConfigError(f"{_where(path, node, key)}: {e}") from None


def _resolve(node: yaml.Node, path: str, key: str) -> Any:
    """A ``resolve:`` value: a policy name, or a mapping from namespace pattern to policy name
    (checked here, so a typo is reported with its line)."""
    from .policies import normalize_resolve

    if isinstance(node, yaml.MappingNode):
        value: Any = {k.value: _scalar(v, path, f"{key}.{k.value}") for k, v in node.value}
    else:
        value = _scalar(node, path, key)
        if value is None:
            value = "none"
    try:
        normalize_resolve(value)
    except ValueError as e:
        raise ConfigError(f"{_where(path, node, key)}: {e}") from None
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(node: yaml.Node, path: str, key: str) -> float:
    value = _scalar(node, path, key)
    m = _DURATION.match(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or not 0 < seconds < 1e10:
        raise ConfigError(f"{_where(path, node, key)}: a positive duration like 10d, 12h, 30m, 45s or a number of seconds, got {value!r}")
    return seconds


def _uri_problem(uri: str) -> Optional[str]:
    """Why PyMongo cannot parse a ``mongodb://`` URI (hosts, port, options), secrets hidden, or
    None. ``mongodb+srv://`` URIs are left to connection time: checking them needs DNS."""
    if not uri.startswith("mongodb://"):
        return None
    from pymongo import uri_parser
    from pymongo.errors import ConfigurationError, InvalidURI

    try:
        uri_parser.parse_uri(uri, validate=True, warn=False)
    except (InvalidURI, ConfigurationError, ValueError) as e:
        return f"not a valid MongoDB URI: {redact.text(e, extra_uris=[uri])}"
    return None


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parses configuration text; raises ConfigError naming the line and key of a mistake."""
    try:
        root = yaml.compose(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    config = Config(path=path)
    if root is None:
        return config
    _check_nodes(root, path)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}, line {root.start_mark.line + 1}: the file must be a mapping of server names to {{id, uri}}")
    for k_node, v_node in root.value:
        name = k_node.value
        if name == "resolve":
            config.resolve = _resolve(v_node, path, "resolve")
            continue
        if name == "tombstone_retention":
            config.tombstone_retention = _duration(v_node, path, name)
        if name == "verify_every":
            value = _scalar(v_node, path, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"{_where(path, v_node, name)}: verify_every is a number of seconds > 0")
            config.verify_every = float(value)
            continue
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
        server_id = _server_id(fields["id"][1], path, f"{name}.id")
        uri_node = fields["uri"][1]
        template = _scalar(uri_node, path, f"{name}.uri")
        if not isinstance(template, str):
            raise ConfigError(f"{_where(path, uri_node, name + '.uri')}: expected a mongodb:// or mongodb+srv:// URI")
        # Checked after expansion, so that a whole URI may come from a variable; a message
        # never quotes the expanded value.
        uri = _expand(template, path, uri_node, f"{name}.uri")
        redact.remember(uri)
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"{_where(path, uri_node, name + '.uri')}: expected a mongodb:// or mongodb+srv:// URI, got {redact.uri(template, keep_variables=True)!r}")
        problem = redact.userinfo_problem(uri) or _uri_problem(uri)
        if problem:
            raise ConfigError(f"{_where(path, uri_node, name + '.uri')}: {problem}")
        if name in config.servers:
            raise ConfigError(f"{_where(path, k_node, name)}: server defined twice")
        config.servers[name] = Server(name, server_id, uri)
        config.uri_templates[name] = template
    for i, link in enumerate(config.links):
        for end in (link.src_server, link.dst_server):
            if end not in config.servers:
                raise ConfigError(f"{path}: links[{i}] names unknown server {end!r} (known: {', '.join(config.servers) or 'none'})")
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_CHARS + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_CHARS // (1 << 20)} MiB; a configuration file is a short list of servers and links")
    return parse_config(text, path)
