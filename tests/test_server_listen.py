"""Where the embedded server listens and what it advertises: ``mmm serve --host/--advertise``
and ``MongoServer(host=, advertise=)``. Binding beyond loopback warns (there is no
authentication); ``hello`` must name an address clients can dial, never a wildcard."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys

import pymongo
import pytest
from pymongo.uri_parser import parse_uri

MMM = [sys.executable, "-m", "mmm"]


def serve(*args):
    """Starts ``mmm serve --port 0 ARGS``; returns (process, address line, uri)."""
    proc = subprocess.Popen(MMM + ["serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    uri_line = proc.stdout.readline()
    if "connect with" not in uri_line:
        proc.kill()
        raise AssertionError(line + uri_line + proc.stderr.read())
    return proc, line, uri_line.split("connect with", 1)[1].strip()


def stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    return proc.stderr.read()


def hello_via(port: int, host: str = "127.0.0.1") -> dict:
    c = pymongo.MongoClient(host, port, directConnection=True, serverSelectionTimeoutMS=5000)
    try:
        return c.admin.command("hello")
    finally:
        c.close()


def port_of(uri: str) -> int:
    return parse_uri(uri)["nodelist"][0][1]


def test_a_wildcard_bind_warns_and_advertises_a_reachable_address():
    proc, _, uri = serve("--host", "0.0.0.0")
    try:
        assert "0.0.0.0" not in uri
        host, port = parse_uri(uri)["nodelist"][0]
        hello = hello_via(port)
        assert hello["me"] == hello["primary"] == hello["hosts"][0]
        assert not hello["me"].startswith("0.0.0.0")
        assert hello["me"].rsplit(":", 1)[0] in (socket.gethostname(), "127.0.0.1")
        # The URI it printed works as a replica-set URI.
        c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        assert c.admin.command("ping")["ok"] == 1.0
        c.close()
    finally:
        err = stop(proc)
    assert "WARNING" in err and "WITHOUT A PASSWORD" in err


def test_advertise_sets_hello_and_the_printed_uri():
    proc, _, uri = serve("--host", "127.0.0.1", "--advertise", "localhost")
    try:
        port = port_of(uri)
        assert uri.startswith(f"mongodb://localhost:{port}/")
        hello = hello_via(port)
        assert hello["me"] == hello["primary"] == f"localhost:{port}"
        assert hello["hosts"] == [f"localhost:{port}"]
    finally:
        err = stop(proc)
    assert "WARNING" not in err


def test_advertise_with_a_port_keeps_that_port():
    proc, _, uri = serve("--advertise", "db.example.com:4000")
    try:
        assert "db.example.com:4000" in uri
    finally:
        stop(proc)


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")
def test_an_ipv6_bind_prints_a_valid_uri():
    proc, _, uri = serve("--host", "::1")
    try:
        assert uri.startswith("mongodb://[::1]:")
        parsed = parse_uri(uri)  # raises on mongodb://:::port/
        port = parsed["nodelist"][0][1]
        assert hello_via(port, "[::1]")["me"] == f"[::1]:{port}"
    finally:
        stop(proc)


@pytest.mark.parametrize("bad", ["a b", "0.0.0.0", "host:0", "host:70000", "user:pw@host", "h/x"])
def test_a_bad_advertised_address_is_one_clear_line(bad):
    out = subprocess.run(MMM + ["serve", "--port", "0", "--advertise", bad], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "advertised address" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_python_server_warns_and_advertises_too(caplog):
    from mmm.embedded import MongoServer

    with caplog.at_level(logging.WARNING, logger="mmm.embedded"):
        with MongoServer(host="0.0.0.0") as server:
            assert not server.address.startswith("0.0.0.0")
            hello = hello_via(server.port)
            assert hello["me"] == server.address
    assert any("without a password" in r.getMessage() for r in caplog.records)
    with MongoServer(advertise="localhost") as server:
        assert server.address == f"localhost:{server.port}"
    with pytest.raises(ValueError):
        MongoServer(advertise="bad host")
