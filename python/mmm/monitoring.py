"""Metrics and a status page over HTTP: Prometheus ``/metrics``, ``/status`` as JSON, and ``/``,
a page with the same table that refreshes itself.

::

    with replicator.serve_http("127.0.0.1:9108") as http:   # port 0 picks a free one
        print(http.url)                                       # http://127.0.0.1:9108/

or, for several replicators and tailers in one process::

    http = mmm.monitoring.serve("127.0.0.1:9108", replicators=[r], tailers=[t1, t2])
    ...
    http.stop()

Everything shown is read from ``Replicator.status()`` and ``Tailer.status()`` when asked for;
lag histograms are fed by sampling both every ``sample_interval`` seconds. No URI is shown
unredacted, and every string passes through :mod:`mmm.redact` once more on its way out.
The metrics format is ``prometheus_client``'s; the server is the standard library's WSGI server,
one thread per connection, at most :data:`MAX_CONNECTIONS` at once, each idle one dropped after
:data:`CLIENT_TIMEOUT` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import logging
import math
import socket
import socketserver
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from . import _mmm, redact

log = logging.getLogger("mmm.monitoring")
log.addFilter(redact.LogFilter())

__all__ = ["MonitoringServer", "parse_address", "serve"]

DEFAULT_PORT = 9108
MAX_CONNECTIONS = 32
"""Connections served at once; more are closed at once (so a flood costs no threads)."""
CLIENT_TIMEOUT = 10.0
"""Seconds a connection may stay silent before it is dropped (a slow or stuck client)."""
LINGER = 1.0
"""Seconds spent reading what a client still sends after its answer (at most 1 MiB)."""

LAG_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, math.inf)
LAG_OPS_BUCKETS = (0, 1, 10, 100, 1000, 10_000, 100_000, 1_000_000, math.inf)

#: Where a link's oplog headroom (seconds of history its source's oplog still holds ahead of the
#: link's position) may appear in its status, in order of preference: a number, or a mapping
#: holding one under "margin_seconds" (``status()["oplog"]``) or "seconds".
HEADROOM_KEYS = ("oplog", "oplog_headroom_seconds", "headroom_seconds", "oplog_headroom", "headroom")

LINK_STATES = ("not started", "starting", "initial-sync", "running", "retrying", "stopped", "failed")
TAILER_STATES = ("not started", "running", "stopped", "failed")

Address = Union[str, Tuple[str, int]]


# -- addresses -------------------------------------------------------------------------------

def parse_address(address: Address) -> Tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``":port"`` (loopback), ``"host"`` (port 9108) or a
    ``(host, port)`` tuple, as ``(host, port)``; ValueError with one line otherwise."""
    if isinstance(address, tuple):
        if len(address) != 2:
            raise ValueError(f"an address is (host, port), got {address!r}")
        host, port_value = address
        port_text = str(port_value)
    elif isinstance(address, str):
        text = address.strip()
        shown = text if len(text) <= 100 else text[:100] + "..."
        if not text:
            raise ValueError("an HTTP address is HOST:PORT, e.g. 127.0.0.1:9108, got an empty string")
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid HTTP address {shown!r}: write an IPv6 host as [::1]:9108")
            port_text = rest[1:] if rest else str(DEFAULT_PORT)
        elif text.count(":") > 1:
            raise ValueError(f"invalid HTTP address {shown!r}: write an IPv6 host as [::1]:9108")
        else:
            host, sep, port_text = text.partition(":")
            if not sep:
                port_text = str(DEFAULT_PORT)
        host = host or "127.0.0.1"
    else:
        raise ValueError(f"an HTTP address is 'HOST:PORT' or (host, port), got {type(address).__name__}")
    if not isinstance(host, str) or not host or len(host) > 253 or any(c.isspace() or ord(c) < 32 for c in host):
        raise ValueError(f"invalid host in HTTP address {str(address)[:100]!r}")
    if isinstance(port_text, bool) or not str(port_text).isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in HTTP address {str(address)[:100]!r}: a port is 0-65535 (0 picks a free one)")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- what is shown ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-ready copy: timestamps as [time, inc], tuples as lists, every string redacted."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return redact.text(value)
    if hasattr(value, "time") and hasattr(value, "inc"):  # bson.Timestamp
        return [value.time, value.inc]
    if isinstance(value, dict):
        return {redact.text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return None
    return redact.text(value)


def headroom_seconds(link: Dict[str, Any]) -> Optional[float]:
    """The link's oplog headroom in seconds, if its status reports one (see HEADROOM_KEYS)."""
    for key in HEADROOM_KEYS:
        value = link.get(key)
        if isinstance(value, dict):
            value = value.get("margin_seconds", value.get("seconds", value.get("headroom_seconds")))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _number(row: Dict[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


class _Sources:
    """The replicators and tailers one server shows (more may be added while it runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.replicators: List[Any] = []
        self.tailers: List[Any] = []

    def add(self, replicators: Iterable[Any], tailers: Iterable[Any]) -> None:
        with self._lock:
            self.replicators.extend(r for r in replicators if r not in self.replicators)
            self.tailers.extend(t for t in tailers if t not in self.tailers)

    def links(self) -> List[Dict[str, Any]]:
        with self._lock:
            replicators = list(self.replicators)
        out: List[Dict[str, Any]] = []
        for r in replicators:
            try:
                rows = r.status()
            except Exception as e:  # noqa: BLE001 - one broken source must not hide the others
                log.warning("status of a replicator unavailable: %s", redact.error(e))
                continue
            for row in rows:
                row = dict(row)
                headroom = headroom_seconds(row)
                if headroom is not None:
                    row["oplog_headroom_seconds"] = headroom
                out.append(row)
        return out

    def tailers_status(self) -> List[Dict[str, Any]]:
        with self._lock:
            tailers = list(self.tailers)
        out = []
        for t in tailers:
            try:
                out.append(dict(t.status()))
            except Exception as e:  # noqa: BLE001 - as above
                log.warning("status of a tailer unavailable: %s", redact.error(e))
        return out

    def servers(self) -> List[Dict[str, Any]]:
        with self._lock:
            replicators = list(self.replicators)
        seen: Dict[str, Dict[str, Any]] = {}
        for r in replicators:
            for s in getattr(r, "servers", {}).values():
                seen.setdefault(s.name, {"name": s.name, "id": s.id, "uri": redact.uri(s.uri)})
        return list(seen.values())

    def snapshot(self) -> Dict[str, Any]:
        return _plain({
            "mmm": {"version": _mmm.__version__, "time": time.time()},
            "servers": self.servers(),
            "links": self.links(),
            "tailers": self.tailers_status(),
        })


# -- metrics ---------------------------------------------------------------------------------

LINK_LABELS = ("link", "src", "dst")


class _StatusCollector(Collector):
    """Reads every status when Prometheus scrapes (no copies kept, so nothing goes stale)."""

    def __init__(self, sources: _Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        links = self.sources.links()
        counters = [
            ("ops_applied", "mmm_link_ops_applied", "Operations applied on the destination."),
            ("batches_applied", "mmm_link_batches_applied", "Batches (transactions) applied on the destination."),
            ("conflicts", "mmm_link_conflicts", "Documents changed on both sides since they last synced."),
            ("retries", "mmm_link_retries", "Times the link started again after transient trouble (unreachable server, failover)."),
            ("rejected", "mmm_link_rejected", "Operations the destination refused, journaled in __mmm.rejected."),
            ("echoes_skipped", "mmm_link_echoes_skipped", "Operations not sent back to the server they came from."),
        ]
        for key, name, doc in counters:
            family = CounterMetricFamily(name, doc, labels=LINK_LABELS)
            for row in links:
                if key in row:
                    family.add_metric(_link_labels(row), _number(row, key))
            yield family
        gauges = [
            ("lag_seconds", "mmm_link_current_lag_seconds", "Age of the oldest operation read from the source and not applied yet (0 when caught up)."),
            ("lag_ops", "mmm_link_current_lag_ops", "Operations read from the source and not applied yet."),
            ("oplog_headroom_seconds", "mmm_link_oplog_headroom_seconds", "Seconds of history the source's oplog holds ahead of the link's position (when the link reports it)."),
        ]
        for key, name, doc in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=LINK_LABELS)
            for row in links:
                if key in row:
                    gauge.add_metric(_link_labels(row), _number(row, key))
            yield gauge
        checkpoint = GaugeMetricFamily(
            "mmm_link_checkpoint_timestamp_seconds",
            "Source oplog time (Unix seconds) of the last operation applied on the destination.",
            labels=LINK_LABELS)
        copy = GaugeMetricFamily("mmm_link_initial_sync_documents",
                                 "Initial sync: documents copied and documents to copy.",
                                 labels=LINK_LABELS + ("kind",))
        state = GaugeMetricFamily("mmm_link_state", "1 for the link's current state, 0 for the others.",
                                  labels=LINK_LABELS + ("state",))
        for row in links:
            labels = _link_labels(row)
            ck = row.get("checkpoint")
            if ck is not None and hasattr(ck, "time"):
                checkpoint.add_metric(labels, float(ck.time))
            sync = row.get("initial_sync")
            if isinstance(sync, (tuple, list)) and len(sync) == 2:
                copy.add_metric(labels + ["copied"], float(sync[0]))
                copy.add_metric(labels + ["total"], float(sync[1]))
            current = str(row.get("state", ""))
            for name in LINK_STATES + ((current,) if current not in LINK_STATES else ()):
                state.add_metric(labels + [redact.text(name)], 1.0 if name == current else 0.0)
        yield checkpoint
        yield copy
        yield state

        tailers = self.sources.tailers_status()
        counters = [
            ("ops_delivered", "mmm_tailer_ops_delivered", "Operations whose triggers all ran."),
            ("entries_read", "mmm_tailer_entries_read", "Oplog entries read, matched or not."),
            ("trigger_errors", "mmm_tailer_trigger_errors", "Exceptions raised by triggers."),
        ]
        for key, name, doc in counters:
            counter = CounterMetricFamily(name, doc, labels=("tailer",))
            for row in tailers:
                counter.add_metric([_tailer_label(row)], _number(row, key))
            yield counter
        lag = GaugeMetricFamily("mmm_tailer_current_lag_seconds",
                                "Age of the oldest operation read and not handled by its triggers yet (0 when caught up).",
                                labels=("tailer",))
        lag_ops = GaugeMetricFamily("mmm_tailer_current_lag_ops",
                                    "Operations read and not handled by their triggers yet.", labels=("tailer",))
        tstate = GaugeMetricFamily("mmm_tailer_state", "1 for the tailer's current state, 0 for the others.",
                                   labels=("tailer", "state"))
        for row in tailers:
            label = _tailer_label(row)
            lag.add_metric([label], _number(row, "lag_seconds"))
            lag_ops.add_metric([label], _number(row, "lag_ops"))
            current = str(row.get("state", ""))
            for name in TAILER_STATES + ((current,) if current not in TAILER_STATES else ()):
                tstate.add_metric([label, redact.text(name)], 1.0 if name == current else 0.0)
        yield lag
        yield lag_ops
        yield tstate


def _link_labels(row: Dict[str, Any]) -> List[str]:
    return [redact.text(row.get(key, "")) for key in ("id", "src", "dst")]


def _tailer_label(row: Dict[str, Any]) -> str:
    return redact.text(row.get("name", ""))


class _LagSampler:
    """Feeds the lag histograms: every link's and tailer's lag, every ``interval`` seconds."""

    def __init__(self, sources: _Sources, registry: CollectorRegistry, interval: float) -> None:
        self.sources = sources
        self.interval = interval
        self.link_seconds = Histogram(
            "mmm_link_lag_seconds", f"Link lag in seconds, sampled every {interval:g} s.",
            LINK_LABELS, registry=registry, buckets=LAG_SECONDS_BUCKETS)
        self.link_ops = Histogram(
            "mmm_link_lag_ops", f"Link lag in operations, sampled every {interval:g} s.",
            LINK_LABELS, registry=registry, buckets=LAG_OPS_BUCKETS)
        self.tailer_seconds = Histogram(
            "mmm_tailer_lag_seconds", f"Tailer lag in seconds, sampled every {interval:g} s.",
            ("tailer",), registry=registry, buckets=LAG_SECONDS_BUCKETS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmm-http-sampler", daemon=True)

    def sample(self) -> None:
        for row in self.sources.links():
            if "lag_seconds" not in row:
                continue  # not started: no lag to speak of
            labels = _link_labels(row)
            self.link_seconds.labels(*labels).observe(_number(row, "lag_seconds"))
            self.link_ops.labels(*labels).observe(_number(row, "lag_ops"))
        for row in self.sources.tailers_status():
            if row.get("state") == "running":
                self.tailer_seconds.labels(_tailer_label(row)).observe(_number(row, "lag_seconds"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampling hiccup must not end the sampling
                log.exception("sampling the lag failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the page --------------------------------------------------------------------------------

_SCRIPT = """
"use strict";
const LINK_COLUMNS = [["id", "link"], ["state", "state"], ["lag_seconds", "lag s"], ["lag_ops", "lag ops"],
  ["ops_applied", "applied"], ["batches_applied", "batches"], ["conflicts", "conflicts"],
  ["retries", "retries"], ["rejected", "rejected"], ["oplog_headroom_seconds", "headroom s"],
  ["checkpoint", "checkpoint"], ["last_error", "last error"]];
const TAILER_COLUMNS = [["name", "tailer"], ["state", "state"], ["lag_seconds", "lag s"], ["lag_ops", "lag ops"],
  ["ops_delivered", "delivered"], ["trigger_errors", "trigger errors"], ["entries_read", "entries read"],
  ["checkpoint", "checkpoint"], ["last_error", "last error"]];
const PERIOD_MS = 2000;
let updates = 0;

function cell(key, value) {
  if (value === null || value === undefined) return "";
  if (key === "checkpoint" && Array.isArray(value)) return value[0] + "." + value[1];
  if (key === "state" && Array.isArray(value)) return String(value);
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  return String(value);
}

function fill(tableId, columns, rows, rowKey) {
  const table = document.getElementById(tableId);
  const head = document.createElement("tr");
  for (const [, title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const body = [head];
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.id = String(row[rowKey]);
    tr.className = "state-" + String(row.state).replace(/[^a-z-]/g, "");
    for (const [key] of columns) {
      const td = document.createElement("td");
      td.dataset.field = key;
      td.textContent = cell(key, row[key]);
      tr.appendChild(td);
    }
    body.push(tr);
  }
  table.replaceChildren(...body);
  table.hidden = rows.length === 0;
}

async function refresh() {
  const note = document.getElementById("updated");
  try {
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    fill("links", LINK_COLUMNS, status.links, "id");
    fill("tailers", TAILER_COLUMNS, status.tailers, "name");
    updates += 1;
    document.body.dataset.updates = String(updates);
    note.textContent = "mmm " + status.mmm.version + ", updated " + new Date(status.mmm.time * 1000).toISOString();
    note.className = "";
  } catch (e) {
    note.textContent = "status unavailable: " + e.message;
    note.className = "error";
  }
}

refresh();
setInterval(refresh, PERIOD_MS);
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmm status</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
td[data-field$="seconds"], td[data-field$="ops"], td[data-field$="applied"], td[data-field="conflicts"],
td[data-field="retries"], td[data-field="rejected"], td[data-field$="errors"], td[data-field$="delivered"],
td[data-field$="read"] {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.state-failed {{ background: #fdd; }}
tr.state-retrying {{ background: #ffd; }}
.error {{ color: #a00; }}
</style>
</head>
<body data-updates="0">
<h1>mmm status</h1>
<p id="updated">loading...</p>
<noscript><p>This page needs JavaScript; the same data is at <a href="status">/status</a>.</p></noscript>
<h2>Links</h2>
<table id="links" hidden></table>
<h2>Tailers</h2>
<table id="tailers" hidden></table>
<p><a href="metrics">Prometheus metrics</a> &middot; <a href="status">status as JSON</a></p>
<script>{_SCRIPT}</script>
</body>
</html>
""".encode()

_PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    # Only this page's own script and style; data only from this server; no framing.
    ("Content-Security-Policy",
     f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
     "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]
_COMMON_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]


# -- the server ------------------------------------------------------------------------------

def _make_app(sources: _Sources, registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def text(status: str, body: str, extra: Sequence[Tuple[str, str]] = ()) -> Tuple[str, List[Tuple[str, str]], bytes]:
        return status, [("Content-Type", "text/plain; charset=utf-8"), *extra], body.encode()

    def route(environ: Dict[str, Any]) -> Tuple[str, List[Tuple[str, str]], bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/", "/metrics", "/status"):
            return text("404 Not Found", "not found: try /, /status or /metrics\n")
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return text("405 Method Not Allowed", "use GET or HEAD\n", [("Allow", "GET, HEAD")])
        if path == "/":
            return "200 OK", list(_PAGE_HEADERS), _PAGE
        if path == "/status":
            body = json.dumps(sources.snapshot(), indent=1).encode()
            return "200 OK", [("Content-Type", "application/json")], body
        answer: Dict[str, Any] = {}

        def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
            answer.update(status=status, headers=headers)

        body = b"".join(metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response))
        return answer["status"], list(answer["headers"]), body

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            status, headers, body = route(environ)
        except Exception:  # noqa: BLE001 - reported to the client as a 500, logged here
            log.exception("serving %s failed", redact.text(environ.get("PATH_INFO", ""))[:200])
            status, headers, body = "500 Internal Server Error", [("Content-Type", "text/plain")], b"internal error\n"
        headers = [h for h in headers if h[0].lower() != "content-length"]
        headers += [("Content-Length", str(len(body))), *_COMMON_HEADERS]
        start_response(status, headers)
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return app


class _ErrorsToLog(io.TextIOBase):
    """``wsgi.errors`` for the WSGI handler: what it would print on stderr (a failure while
    answering, e.g. a client that stops reading) becomes one log record per flush."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: List[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._parts = "".join(self._parts).strip(), []
        if text:
            log.warning("answering an HTTP request failed: %s", redact.text(text)[-2000:])


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT
    server_version = "mmm"
    sys_version = ""

    def get_stderr(self) -> Any:
        return _ErrorsToLog()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), redact.text(format % args)[:500])

    def address_string(self) -> str:
        return str(self.client_address[0])

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, socket.timeout):
            pass  # the client went away or stayed silent: nothing to answer


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # HTTPServer's server_bind looks the host's name up (getfqdn), which may wait on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= MAX_CONNECTIONS
            if not full:
                self._active += 1
        if full:
            log.warning("HTTP connection from %s refused: %d connections already open",
                        client_address[0], MAX_CONNECTIONS)
            self.close_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def shutdown_request(self, request: Any) -> None:
        # Closing with unread input (a request refused as too long) would reset the
        # connection, and the client could lose the answer: read what is left first, briefly.
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER)
            deadline, left = time.monotonic() + LINGER, 1 << 20
            while left > 0 and time.monotonic() < deadline:
                chunk = request.recv(65536)
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP connection from %s ended on an error", client_address[0], exc_info=True)


def _server_class(family: int) -> type:
    return type("_Server", (_ThreadingWSGIServer,), {"address_family": family})


class MonitoringServer:
    """Serves ``/``, ``/status`` and ``/metrics`` from a background thread until :meth:`stop`.

    ``address`` is ``"host:port"`` (port 0 picks a free one; :attr:`port` tells which).
    Raises ValueError for a malformed address and OSError when it cannot listen there.
    """

    def __init__(self, address: Address = f"127.0.0.1:{DEFAULT_PORT}", *,
                 replicators: Iterable[Any] = (), tailers: Iterable[Any] = (),
                 sample_interval: float = 1.0) -> None:
        if isinstance(sample_interval, bool) or not isinstance(sample_interval, (int, float)) \
                or not math.isfinite(sample_interval) or sample_interval <= 0:
            raise ValueError(f"sample_interval must be a number of seconds > 0, got {sample_interval!r}")
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        family, _, _, _, sockaddr = infos[0]
        self.sources = _Sources()
        self.sources.add(replicators, tailers)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(self.sources))
        self._sampler = _LagSampler(self.sources, self.registry, float(sample_interval))
        try:
            self._server = _server_class(family)(sockaddr[:2], _Handler)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {_join(host, port)}: {e.strerror or e}") from None
        self._server.set_app(_make_app(self.sources, self.registry))
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mmm-http", daemon=True)
        self._thread.start()
        self._sampler.sample()
        self._sampler.start()
        self._stopped = False
        if not _is_loopback(host):
            log.warning("metrics and status page on %s are open to anyone who can reach this "
                        "machine (they show link names, positions and errors, no passwords)", self.url)
        log.info("metrics on %smetrics, status page on %s", self.url, self.url)

    @property
    def address(self) -> str:
        """``host:port`` actually listened on (the port chosen when 0 was asked for)."""
        return _join(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def add(self, replicators: Iterable[Any] = (), tailers: Iterable[Any] = ()) -> "MonitoringServer":
        """Shows more replicators or tailers from now on."""
        self.sources.add(replicators, tailers)
        return self

    def stop(self) -> None:
        """Stops listening (idempotent); connections being answered finish on their own."""
        if self._stopped:
            return
        self._stopped = True
        self._sampler.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "MonitoringServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MonitoringServer({self.url!r}{', stopped' if self._stopped else ''})"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(address: Address = f"127.0.0.1:{DEFAULT_PORT}", *, replicators: Iterable[Any] = (),
          tailers: Iterable[Any] = (), sample_interval: float = 1.0) -> MonitoringServer:
    """Starts a :class:`MonitoringServer` for these replicators and tailers."""
    return MonitoringServer(address, replicators=replicators, tailers=tailers, sample_interval=sample_interval)
