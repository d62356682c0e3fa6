"""The Python/Rust boundary: typed values in and out, the stubs match the module, errors are
in one hierarchy, and a forked child gets a RuntimeError instead of a hang."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import bson
import pymongo
import pytest

import mmm
from mmm import _mmm

HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_stubs_match_the_extension_module():
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases",
         "--allowlist", str(HERE / "stubtest_allowlist.txt"), "mmm._mmm"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_public_name_of_the_module_is_in_the_stubs():
    stub = (Path(mmm.__file__).parent / "_mmm.pyi").read_text()
    for name in dir(_mmm):
        if not name.startswith("_"):
            assert f"class {name}" in stub or f"def {name}(" in stub or f"\n{name}: " in stub, name


def test_errors_form_one_hierarchy():
    for exc in (mmm.ConfigError, mmm.ReplicationError, mmm.OplogRolloverError,
                mmm.NotReplicaSetError, mmm.OplogFormatError):
        assert issubclass(exc, mmm.MmmError), exc
    assert issubclass(mmm.ConfigError, ValueError)  # as before
    with pytest.raises(mmm.MmmError):
        mmm.config.parse_config("a:\n  id: null\n  uri: mongodb://h\n")


def test_core_reads_servers_and_links_by_name_not_position():
    @dataclass
    class S:
        uri: str
        id: str
        name: str

    @dataclass
    class L:
        on_reject: str
        marker: str
        initial_sync: bool
        forward: bool
        ops: str
        dst: str
        src: str

    servers = [S("mongodb://h1", "A", "a"), S("mongodb://h2", "B", "b")]
    core = _mmm.ReplicatorCore(servers, [L("fail", "transaction", False, False, "iud", "b/d.c", "a/d.c")])
    assert core.link_ids() == ["a/d.c->b/d.c"]
    assert core.status()[0]["state"] == "not started"
    assert [l["state"] for l in _mmm.ReplicatorCore(servers, [mmm.Link("a/d.*", "b/d.*")]).status()] == ["not started"]
    with pytest.raises(AttributeError):
        _mmm.ReplicatorCore([("a", "A", "mongodb://h1")], [])
    with pytest.raises(ValueError, match="marker"):
        _mmm.ReplicatorCore(servers, [L("fail", "tag", False, False, "iud", "b/d.c", "a/d.c")])
    with pytest.raises(ValueError, match="on_reject"):
        _mmm.ReplicatorCore(servers, [L("retry", "transaction", False, False, "iud", "b/d.c", "a/d.c")])


def test_tailer_core_yields_typed_batches(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri)
    try:
        client.d.c.insert_many([{"_id": i} for i in range(3)])
        core = _mmm.TailerCore(mongo_server.uri, [("d.c", "i"), ("d.*", "*")], start="oldest")
        core.start()
        ops = []
        deadline = time.monotonic() + 10
        while len(ops) < 3 and time.monotonic() < deadline:
            batch = core.next_batch(0.5)
            if batch is None:
                continue
            assert isinstance(batch, _mmm.Batch)
            docs = bson.decode_all(batch.ops) if batch.ops else []
            assert len(batch) == len(docs) == len(batch.ts) == len(batch.unit_end) == len(batch.subscriptions)
            assert batch.entries_read >= len(docs)
            ops.extend(d for d, subs in zip(docs, batch.subscriptions) if d.get("ns") == "d.c" and subs == [0, 1])
        core.stop()
        assert [op["o"]["_id"] for op in ops] == [0, 1, 2]
        assert "Batch(ops=" in repr(batch)
    finally:
        client.close()


def test_a_forked_child_gets_a_runtime_error_not_a_hang(mongo_server):
    server = _mmm.MongoServer()  # the runtime now runs in this process
    try:
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                os.close(read)
                results = []
                for attempt in (lambda: _mmm.MongoServer(),
                                lambda: _mmm.ReplicatorCore([mmm.Server("a", "A", mongo_server.uri)], []).start(),
                                lambda: _mmm.TailerCore(mongo_server.uri, [])):
                    try:
                        attempt()
                        results.append("ok")
                    except RuntimeError as e:
                        results.append("RuntimeError" if "fork" in str(e) else f"other: {e}")
                    except BaseException as e:  # noqa: BLE001 - a panic would land here
                        results.append(f"{type(e).__name__}: {e}")
                os.write(write, ",".join(results).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        answer = os.read(read, 4096).decode()
        os.close(read)
        assert os.WEXITSTATUS(status) == 0
        assert answer == "RuntimeError,RuntimeError,RuntimeError", answer
        # the parent is unaffected
        assert _mmm.MongoServer().port > 0
    finally:
        server.stop()
