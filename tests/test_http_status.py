"""Metrics and the status page over HTTP: /metrics read with Prometheus' own text-format parser,
/status as JSON, the page in a real headless browser, hostile requests, no password anywhere."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

import pymongo
import pytest
from prometheus_client.parser import text_string_to_metric_families

import mmm
from mmm import monitoring
from conftest import wait_for

MMM = [sys.executable, "-m", "mmm"]
SECRET = "S3cr"
UNREACHABLE = f"mongodb://admin:{SECRET}etPw@127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300&connectTimeoutMS=300"


def get(url: str, method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metrics(http) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (sample name, sorted labels)."""
    status, headers, body = get(http.url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def link_labels(link_id: str, src: str, dst: str, **more: str) -> Tuple[Tuple[str, str], ...]:
    return tuple(sorted({"link": link_id, "src": src, "dst": dst, **more}.items()))


def status_json(http) -> dict:
    status, headers, body = get(http.url + "status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return json.loads(body)


def one_way(a, b, **kwargs) -> mmm.Replicator:
    return mmm.Replicator({"a": {"id": "A", "uri": a.uri}, "b": {"id": "B", "uri": b.uri}},
                          [("a/app.*", "b/app.*")], **kwargs)


def histogram(samples, name: str, labels: Tuple[Tuple[str, str], ...]) -> Tuple[List[Tuple[float, float]], float, float]:
    """(buckets as (le, cumulative count), count, sum) of one labelled histogram."""
    buckets = []
    for (sample, sample_labels), value in samples.items():
        if sample == name + "_bucket":
            le = dict(sample_labels).pop("le")
            if tuple(sorted((k, v) for k, v in sample_labels if k != "le")) == labels:
                buckets.append((float(le), value))
    return sorted(buckets), samples[(name + "_count", labels)], samples[(name + "_sum", labels)]


# -- metrics and status follow real replication -------------------------------------------------

def test_metrics_and_status_follow_replication(pair):
    a, b, ca, cb = pair
    r = one_way(a, b)
    link = "a/app.*->b/app.*"
    with r.serve_http("127.0.0.1:0", sample_interval=0.1) as http, r:
        ca.app.t.insert_many([{"_id": i} for i in range(20)])
        ca.app.t.update_many({"_id": {"$lt": 5}}, {"$set": {"seen": True}})
        ca.app.t.delete_many({"_id": {"$gte": 15}})
        wait_for(lambda: r.status()[0]["ops_applied"] == 30, timeout=20)
        assert cb.app.t.count_documents({}) == 15
        time.sleep(0.3)  # a few lag samples
        status = r.status()[0]
        samples = metrics(http)
        labels = link_labels(link, "a", "b")
        assert samples[("mmm_link_ops_applied_total", labels)] == 30
        assert samples[("mmm_link_batches_applied_total", labels)] == status["batches_applied"] >= 1
        assert samples[("mmm_link_conflicts_total", labels)] == 0
        assert samples[("mmm_link_retries_total", labels)] == 0
        assert samples[("mmm_link_current_lag_ops", labels)] == 0
        assert samples[("mmm_link_checkpoint_timestamp_seconds", labels)] == status["checkpoint"].time
        assert samples[("mmm_link_state", link_labels(link, "a", "b", state="running"))] == 1
        assert samples[("mmm_link_state", link_labels(link, "a", "b", state="failed"))] == 0
        for name in ("mmm_link_lag_seconds", "mmm_link_lag_ops"):
            buckets, count, total = histogram(samples, name, labels)
            assert count >= 2 and buckets[-1] == (float("inf"), count)
            assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative
        body = status_json(http)
        (row,) = body["links"]
        assert row["id"] == link and row["state"] == "running"
        assert row["ops_applied"] == 30 and row["batches_applied"] == status["batches_applied"]
        assert row["checkpoint"] == [status["checkpoint"].time, status["checkpoint"].inc]
        assert {s["name"] for s in body["servers"]} == {"a", "b"}
        assert body["tailers"] == [] and body["mmm"]["version"] == mmm.__version__
    # stopped: the port is closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http.port), timeout=2).close()


def test_lag_histograms_record_a_stalled_destination(pair):
    a, b, ca, cb = pair
    r = one_way(a, b)
    labels = link_labels("a/app.*->b/app.*", "a", "b")
    with r, r.serve_http("127.0.0.1:0", sample_interval=0.05) as http:
        b.pause(1.5)
        ca.app.frames.insert_many([{"_id": i} for i in range(500)])
        wait_for(lambda: r.status()[0]["lag_ops"] > 0)
        time.sleep(0.5)
        stalled = metrics(http)
        assert stalled[("mmm_link_current_lag_ops", labels)] > 0
        assert stalled[("mmm_link_current_lag_seconds", labels)] > 0.2
        wait_for(lambda: r.status()[0]["ops_applied"] == 500, timeout=20)
        samples = metrics(http)
    buckets, count, total = histogram(samples, "mmm_link_lag_ops", labels)
    assert dict(buckets)[0.0] < count and total > 0  # some samples saw ops waiting
    buckets, count, total = histogram(samples, "mmm_link_lag_seconds", labels)
    assert dict(buckets)[0.01] < count and total > 0.2


def test_tailer_ops_delivered_trigger_errors_and_state(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri)
    tailer = mmm.Tailer(mongo_server.uri, "oldest", name="inspections", on_error="log")
    seen = []

    @tailer.on("app.frames", "i")
    def inspect(op):
        seen.append(op["o"]["_id"])
        if op["o"]["_id"] % 2:
            raise ValueError("odd frame")

    with tailer.serve_http("127.0.0.1:0", sample_interval=0.05) as http:
        assert status_json(http)["tailers"][0]["state"] == "not started"
        with tailer:
            client.app.frames.insert_many([{"_id": i} for i in range(6)])
            client.app.other.insert_one({"_id": 1})
            wait_for(lambda: tailer.ops_delivered == 6)
            time.sleep(0.2)
            samples = metrics(http)
            label = (("tailer", "inspections"),)
            assert samples[("mmm_tailer_ops_delivered_total", label)] == 6
            assert samples[("mmm_tailer_trigger_errors_total", label)] == 3
            assert samples[("mmm_tailer_entries_read_total", label)] >= 7
            assert samples[("mmm_tailer_state", (("state", "running"), ("tailer", "inspections")))] == 1
            assert samples[("mmm_tailer_current_lag_seconds", label)] == 0
            assert samples[("mmm_tailer_lag_seconds_count", label)] >= 1
            row = status_json(http)["tailers"][0]
            assert (row["name"], row["state"], row["ops_delivered"], row["trigger_errors"]) == ("inspections", "running", 6, 3)
            assert row["last_error"] == "odd frame" and row["checkpoint"] is not None
        assert status_json(http)["tailers"][0]["state"] == "stopped"
    client.close()


def test_tailer_lag_grows_while_a_trigger_is_busy(mongo_server):
    import threading

    client = pymongo.MongoClient(mongo_server.uri)
    release = threading.Event()
    tailer = mmm.Tailer(mongo_server.uri, "oldest", name="slow")
    tailer.register("app.jobs", "i", lambda op: release.wait(20))
    label = (("tailer", "slow"),)
    with tailer.serve_http("127.0.0.1:0", sample_interval=0.05) as http, tailer:
        client.app.jobs.insert_many([{"_id": i} for i in range(3)])
        wait_for(lambda: tailer.status()["lag_ops"] == 3)
        time.sleep(0.5)
        busy = metrics(http)
        release.set()
        wait_for(lambda: tailer.ops_delivered == 3)
        time.sleep(0.2)
        done = metrics(http)
    client.close()
    assert busy[("mmm_tailer_current_lag_ops", label)] == 3
    assert busy[("mmm_tailer_current_lag_seconds", label)] >= 0.5
    assert done[("mmm_tailer_current_lag_seconds", label)] == 0 and done[("mmm_tailer_current_lag_ops", label)] == 0
    buckets, count, total = histogram(done, "mmm_tailer_lag_seconds", label)
    assert dict(buckets)[0.25] < count and total >= 0.5


def test_a_password_never_appears_and_retries_are_counted(mongo_server, caplog):
    caplog.set_level("DEBUG")
    r = mmm.Replicator({"a": {"id": "A", "uri": mongo_server.uri}, "down": {"id": "D", "uri": UNREACHABLE}},
                       [("a/app.t", "down/app.t")], preflight=False)
    tailer = mmm.Tailer(UNREACHABLE, name="far")
    with monitoring.serve("127.0.0.1:0", replicators=[r], tailers=[tailer], sample_interval=0.05) as http, r:
        tailer.start()
        wait_for(lambda: r.status()[0].get("retries", 0) >= 2, timeout=20)
        labels = link_labels("a/app.t->down/app.t", "a", "down")
        samples = metrics(http)
        assert samples[("mmm_link_retries_total", labels)] >= 2
        assert samples[("mmm_link_state", link_labels("a/app.t->down/app.t", "a", "down", state="retrying"))] == 1
        row = status_json(http)["links"][0]
        assert row["state"] == "retrying" and row["last_error"]
        shown = [get(http.url + path)[2].decode() for path in ("", "status", "metrics", "nope", "status?x=" + SECRET[:2])]
        assert "***" in shown[1]  # the URIs are there, redacted
        tailer.stop()
        tailer_row = status_json(http)["tailers"][0]
        assert "***" in tailer_row["uri"]
    try:
        tailer.join(10)
    except Exception:  # noqa: BLE001 - an unreachable source may end the tailer with an error
        pass
    for text in shown + [json.dumps(tailer_row)] + [rec.getMessage() for rec in caplog.records]:
        assert SECRET not in text, text


# -- the HTTP surface under hostile input --------------------------------------------------------

def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends ``data`` on a fresh connection and returns everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may close first: what it answered is still to be read
            pass
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def status_line(answer: bytes) -> int:
    """The answer's status code; an error answered to a request taken for HTTP/0.9 has no
    status line, only the error page naming the code."""
    if answer.startswith(b"HTTP/"):
        return int(answer.split(b" ", 2)[1])
    found = re.search(rb"Error code: (\d+)", answer)
    return int(found.group(1)) if found else 0


@pytest.fixture
def idle_http(mongo_server):
    r = mmm.Replicator({"a": {"id": "A", "uri": mongo_server.uri}, "b": {"id": "B", "uri": mongo_server.uri}},
                       [("a/app.t", "b/app.u")])
    with r.serve_http("127.0.0.1:0") as http:
        yield http


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /nope HTTP/1.0\r\n\r\n", 404),
    (b"GET /../../etc/passwd HTTP/1.0\r\n\r\n", 404),
    (b"GET /metrics/../status HTTP/1.0\r\n\r\n", 404),
    (b"GET /\xc3\xa9\xff HTTP/1.0\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", 405),
    (b"PUT /status HTTP/1.0\r\n\r\n", 405),
    (b"DELETE / HTTP/1.0\r\n\r\n", 405),
    (b"OPTIONS /metrics HTTP/1.0\r\n\r\n", 405),
    (b"BREW /status HTTP/1.0\r\n\r\n", 405),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET /status HTTP/1.0\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    (b"GET /status HTTP/1.0\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    (b"\x00\xff\xfe garbage\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /status HTTP/9.9\r\n\r\n", 505),
    (b"GET /metrics?name[]=" + b"x" * 5000 + b" HTTP/1.0\r\n\r\n", 200),
    (b"GET /status?" + b"%ff" * 1000 + b" HTTP/1.0\r\n\r\n", 200),
    (b"", 0),
])
def test_hostile_requests_are_answered_and_the_server_goes_on(idle_http, request_bytes, expected):
    answer = raw(idle_http.port, request_bytes)
    assert status_line(answer) == expected, answer[:200]
    assert b"Traceback" not in answer
    status, _, body = get(idle_http.url + "status")
    assert status == 200 and json.loads(body)["links"][0]["state"] == "not started"


def test_head_answers_headers_only(idle_http):
    for path in ("", "status", "metrics"):
        get_status, get_headers, get_body = get(idle_http.url + path)
        answer = raw(idle_http.port, f"HEAD /{path} HTTP/1.0\r\n\r\n".encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert status_line(answer) == 200 and body == b""
        assert f"Content-Type: {get_headers['Content-Type']}".encode() in head


def test_the_page_loads_nothing_from_elsewhere(idle_http):
    status, headers, body = get(idle_http.url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    page = body.decode()
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_silent_and_surplus_connections_do_not_starve_the_server(idle_http, monkeypatch):
    monkeypatch.setattr(monitoring._Handler, "timeout", 0.5)
    silent = socket.create_connection(("127.0.0.1", idle_http.port))
    silent.sendall(b"GET /sta")  # and then nothing
    time.sleep(1.5)
    silent.settimeout(5)
    assert silent.recv(100) == b""  # dropped after the timeout
    silent.close()
    monkeypatch.setattr(monitoring._Handler, "timeout", 30)
    flood = [socket.create_connection(("127.0.0.1", idle_http.port)) for _ in range(monitoring.MAX_CONNECTIONS + 10)]
    try:
        time.sleep(0.5)
        closed = 0
        for s in flood:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
        assert closed >= 10  # the surplus was closed at once, holding no thread
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: get(idle_http.url + "status")[0] == 200, timeout=10)


@pytest.mark.parametrize("address", ["", "host:", "abc:xyz", "1.2.3.4:99999", "h:-1", "[::1", "[::1]x", "::1:80",
                                     "a" * 300 + ":1", "\x00:1", "ho st:1", ("h", "x"), ("h", 1, 2), 9108, None])
def test_malformed_addresses_are_one_line_errors(address):
    with pytest.raises(ValueError) as e:
        monitoring.MonitoringServer(address)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_port_zero_reports_the_port_and_a_busy_port_is_an_error():
    with monitoring.serve("127.0.0.1:0") as first:
        assert first.port > 0 and first.address == f"127.0.0.1:{first.port}"
        assert get(first.url + "status")[0] == 200
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            monitoring.serve(("127.0.0.1", first.port))
        first.stop()
        first.stop()  # twice is fine
    with pytest.raises(OSError, match="cannot listen on"):
        monitoring.serve("no-such-host.invalid:0")


def test_ipv6_and_default_hosts():
    with monitoring.serve(":0") as http:
        assert http.address.startswith("127.0.0.1:")  # no host: loopback, never every interface
    try:
        http = monitoring.serve("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with http:
        assert http.address == f"[::1]:{http.port}" and http.url == f"http://[::1]:{http.port}/"
        assert get(http.url + "status")[0] == 200


# -- mmm run --http ------------------------------------------------------------------------------

def test_cli_run_serves_metrics_until_sigterm(pair, tmp_path):
    a, b, ca, cb = pair
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                   "links:\n  - {src: a/app.*, dst: b/app.*}\n")
    proc = subprocess.Popen(MMM + ["-c", str(cfg), "run", "--http", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "metrics on http://127.0.0.1:" in line, line
        url = line.split("status page on ", 1)[1].strip()
        assert "replicating 1 link" in proc.stderr.readline()
        wait_for(lambda: json.loads(get(url + "status")[2])["links"][0]["state"] == "running", timeout=20)
        ca.app.t.insert_many([{"_id": i} for i in range(12)])
        wait_for(lambda: cb.app.t.count_documents({}) == 12, timeout=20)

        class Http:
            pass

        http = Http()
        http.url = url
        wait_for(lambda: metrics(http)[("mmm_link_ops_applied_total", link_labels("a/app.*->b/app.*", "a", "b"))] == 12)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "status", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("address, code, message", [
    ("bogus:port", 2, "invalid port"),
    ("", 2, "empty"),
    ("[::1", 2, "IPv6"),
])
def test_cli_bad_http_address_is_a_usage_error(pair, tmp_path, address, code, message):
    a, b, _, _ = pair
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                   "links:\n  - {src: a/app.*, dst: b/app.*}\n")
    out = subprocess.run(MMM + ["-c", str(cfg), "run", "--http", address], capture_output=True, text=True, timeout=60)
    assert out.returncode == code and message in out.stderr and "Traceback" not in out.stderr
    with pymongo.MongoClient(b.uri) as cb:
        assert "__mmm" not in cb.list_database_names()


def test_cli_busy_http_port_fails_before_replicating(pair, tmp_path):
    a, b, _, cb = pair
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{a.uri}'\nb:\n  id: B\n  uri: '{b.uri}'\n"
                   "links:\n  - {src: a/app.*, dst: b/app.*}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(MMM + ["-c", str(cfg), "run", "--http", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip() == f"mmm: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "__mmm" not in cb.list_database_names()


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Rows(html.parser.HTMLParser):
    """Cells of the page's tables: ``{table id: {row data-id: {field: text}}}``; also keeps every
    start tag seen, and the body's data-updates."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: Dict[str, Dict[str, Dict[str, str]]] = {}
        self.tags: List[str] = []
        self.updates = 0
        self._table: Optional[str] = None
        self._row: Optional[str] = None
        self._field: Optional[str] = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "body":
            self.updates = int(attrs.get("data-updates") or 0)
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = {}
        elif tag == "tr" and self._table and "data-id" in attrs:
            self._row = attrs["data-id"]
            self.tables[self._table][self._row] = {}
        elif tag == "td" and self._row is not None:
            self._field = attrs.get("data-field")
            self.tables[self._table][self._row][self._field] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._field = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._field is not None:
            self.tables[self._table][self._row][self._field] += data


def browse(url: str) -> Rows:
    """The page's DOM after 7 s of the page's own (virtual) time: several refreshes."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--virtual-time-budget=7000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = Rows()
    rows.feed(out.stdout)
    return rows


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_status_page_in_a_headless_browser(pair):
    a, b, ca, cb = pair
    r = one_way(a, b)
    tailer = mmm.Tailer(a.uri, "oldest", name="<img src=x onerror=alert(1)>")
    tailer.register("app.*", "i", lambda op: None)
    with r, tailer, monitoring.serve("127.0.0.1:0", replicators=[r], tailers=[tailer]) as http:
        ca.app.t.insert_many([{"_id": i} for i in range(7)])
        wait_for(lambda: r.status()[0]["ops_applied"] == 7 and tailer.ops_delivered == 7, timeout=20)
        page = browse(http.url)
    assert page.updates >= 2  # it refreshed itself
    link = page.tables["links"]["a/app.*->b/app.*"]
    assert link["state"] == "running" and link["ops_applied"] == "7" and link["lag_ops"] == "0"
    assert link["batches_applied"] == str(r.status()[0]["batches_applied"]) and link["retries"] == "0"
    tail = page.tables["tailers"]["<img src=x onerror=alert(1)>"]  # shown as text, not markup
    assert tail["ops_delivered"] == "7" and tail["trigger_errors"] == "0" and tail["state"] == "running"
    assert "img" not in page.tags


class OddReplicator:
    """Something with a ``status()`` whose rows carry what a newer core may add (the oplog
    headroom) and values no core should send: the server reads them defensively."""

    servers: dict = {}

    def status(self):
        return [
            {"id": 'a/x."q"\\->b/x', "src": "a", "dst": "b\nc", "state": "running", "lag_seconds": 0.5,
             "lag_ops": 3, "ops_applied": 7, "oplog_headroom_seconds": 3600.0},
            {"id": "h2", "src": "a", "dst": "b", "state": "novel-state", "lag_seconds": float("nan"),
             "lag_ops": "many", "ops_applied": True, "oplog_headroom": {"seconds": 12}, "extra": b"\x00\xff",
             "nested": {"deep": [[[{"x": float("inf")}]]]}},
            {"id": "h3", "src": "a", "dst": "b", "state": "running", "oplog_headroom": "soon"},
        ]


class BrokenTailer:
    def status(self):
        raise RuntimeError(f"cannot tell: mongodb://u:{SECRET}x@h/")


def test_odd_status_values_are_read_defensively():
    with monitoring.serve("127.0.0.1:0", replicators=[OddReplicator()], tailers=[BrokenTailer()],
                          sample_interval=0.05) as http:
        time.sleep(0.2)
        samples = metrics(http)
        body = status_json(http)
        page_status = get(http.url)[0]
    first = link_labels('a/x."q"\\->b/x', "a", "b\nc")  # label values survive escaping
    assert samples[("mmm_link_oplog_headroom_seconds", first)] == 3600
    assert samples[("mmm_link_current_lag_seconds", first)] == 0.5
    assert samples[("mmm_link_ops_applied_total", first)] == 7
    assert samples[("mmm_link_oplog_headroom_seconds", link_labels("h2", "a", "b"))] == 12
    assert ("mmm_link_oplog_headroom_seconds", link_labels("h3", "a", "b")) not in samples
    assert samples[("mmm_link_current_lag_seconds", link_labels("h2", "a", "b"))] == 0  # NaN is no number
    assert samples[("mmm_link_current_lag_ops", link_labels("h2", "a", "b"))] == 0
    assert samples[("mmm_link_state", link_labels("h2", "a", "b", state="novel-state"))] == 1
    assert histogram(samples, "mmm_link_lag_seconds", first)[1] >= 2
    assert [row["id"] for row in body["links"]] == ['a/x."q"\\->b/x', "h2", "h3"]
    assert body["links"][1]["lag_seconds"] is None and body["links"][1]["extra"] is None
    assert body["links"][1]["oplog_headroom_seconds"] == 12
    assert body["tailers"] == [] and page_status == 200


def test_a_failure_while_answering_goes_to_the_log_not_stderr(idle_http, monkeypatch, caplog, capfd):
    from wsgiref.simple_server import ServerHandler

    def broken(self):
        raise RuntimeError(f"write failed for mongodb://u:{SECRET}x@h/")

    monkeypatch.setattr(ServerHandler, "finish_response", broken)
    answer = raw(idle_http.port, b"GET /status HTTP/1.0\r\n\r\n")
    monkeypatch.undo()
    assert status_line(answer) in (0, 500)  # its error answer fails the same way: closed
    wait_for(lambda: any("answering an HTTP request failed" in r.getMessage() for r in caplog.records))
    record = next(r for r in caplog.records if "answering an HTTP request failed" in r.getMessage())
    assert record.name == "mmm.monitoring" and "RuntimeError" in record.getMessage()
    assert SECRET not in record.getMessage()
    assert "Traceback" not in capfd.readouterr().err
    assert get(idle_http.url + "status")[0] == 200
