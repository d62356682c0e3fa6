"""pytest fixtures for code that talks to MongoDB replica sets.

Installed as a pytest plugin with mmm (entry point ``pytest11``). Fixtures:

``mongo_server``
    A fresh single-node replica set for one test; ``.uri`` is its connection string.
``mongo_server_factory``
    A callable that starts another one each time it is called (all stopped after the test).

By default the servers are mmm's embedded in-memory server. When the environment variable
``MMM_TEST_MONGOD`` names a ``mongod`` binary, the same fixtures start real single-node replica
sets instead (temporary dbpath, ``--replSet``, ``replSetInitiate``), so a test suite written
against these fixtures runs unchanged on real MongoDB.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Callable, Iterator, List, Optional, Union

import pytest

from .embedded import MongoServer, ReplicaSetMember

MONGOD_ENV = "MMM_TEST_MONGOD"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MongodProcess(ReplicaSetMember):
    """A real ``mongod`` started as a one-member replica set, with MongoServer's interface."""

    def __init__(
        self, binary: str, replset: str = "rs0", oplog_size_mb: float = 256, test_commands: bool = True
    ) -> None:
        import pymongo

        self.replset = replset
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._dbpath = tempfile.mkdtemp(prefix="mmm-mongod-")
        self._log = open(os.path.join(self._dbpath, "mongod.log"), "wb")
        self._proc = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind_ip", "127.0.0.1", "--dbpath", self._dbpath,
                "--replSet", replset, "--oplogSize", str(max(1, int(oplog_size_mb))),
                "--setParameter", "periodicNoopIntervalSecs=1",
                "--setParameter", f"enableTestCommands={int(test_commands)}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        client = pymongo.MongoClient(self.direct_uri, serverSelectionTimeoutMS=1000)
        try:
            while True:
                try:
                    client.admin.command(
                        "replSetInitiate",
                        {"_id": replset, "members": [{"_id": 0, "host": self.address}]},
                    )
                    break
                except pymongo.errors.OperationFailure as e:
                    if e.code == 23:  # AlreadyInitialized
                        break
                    raise
                except pymongo.errors.PyMongoError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mongod did not start; see {self._log.name}")
                    time.sleep(0.2)
            while not client.admin.command("hello").get("isWritablePrimary"):
                if time.monotonic() > deadline:
                    raise RuntimeError("mongod did not become primary in 60 s")
                time.sleep(0.2)
        finally:
            client.close()

    @property
    def stopped(self) -> bool:
        return self._proc.poll() is not None

    def pause(self, seconds: float) -> None:
        """Freezes the process (connections hang), then thaws it after ``seconds``."""
        self._proc.send_signal(signal.SIGSTOP)
        threading.Timer(seconds, lambda: self._proc.send_signal(signal.SIGCONT)).start()

    def drop_connections(self) -> None:
        pytest.skip("drop_connections() needs the embedded server")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()
        shutil.rmtree(self._dbpath, ignore_errors=True)

    def __enter__(self) -> "MongodProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


TestServer = Union[MongoServer, MongodProcess]


def start_test_server(replset: str = "rs0", oplog_size_mb: float = 256, test_commands: bool = True) -> TestServer:
    """A real mongod when ``MMM_TEST_MONGOD`` is set, else an embedded server.

    Test commands (fail points) are on unless ``test_commands=False``.
    """
    binary = os.environ.get(MONGOD_ENV)
    if binary:
        return MongodProcess(binary, replset=replset, oplog_size_mb=oplog_size_mb, test_commands=test_commands)
    return MongoServer(replset=replset, oplog_size_mb=oplog_size_mb, test_commands=test_commands)


@pytest.fixture
def mongo_server_factory() -> Iterator[Callable[..., TestServer]]:
    """Call it (optionally with ``replset=``, ``oplog_size_mb=``, ``test_commands=``) to start one more server."""
    started: List[TestServer] = []

    def factory(replset: str = "rs0", oplog_size_mb: float = 256, test_commands: bool = True) -> TestServer:
        server = start_test_server(replset=replset, oplog_size_mb=oplog_size_mb, test_commands=test_commands)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def mongo_server(mongo_server_factory: Callable[..., TestServer]) -> TestServer:
    """A fresh single-node replica set for this test."""
    return mongo_server_factory()


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    binary = os.environ.get(MONGOD_ENV)
    return f"mmm: fixtures start real mongod ({binary})" if binary else "mmm: fixtures start embedded servers"
