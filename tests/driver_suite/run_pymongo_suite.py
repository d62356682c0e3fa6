#!/usr/bin/env python3
"""Runs part of PyMongo's own test suite against ``mmm serve``.

The PyMongo source distribution matching the installed PyMongo is downloaded from PyPI (``pip
download``) into a cache directory and unpacked; its ``test/`` harness runs unmodified, pointed at
a fresh ``mmm serve`` through ``DB_IP``/``DB_PORT``. Each file runs in its own pytest process with
a per-test timeout. The script prints the counts of every file and, last, ``N passed, N failed``;
it exits non-zero when fewer tests pass than the floor recorded in ``floor.txt`` beside it (its
first number: the pass count last measured, less about 1% for tests that are flaky).

    python tests/driver_suite/run_pymongo_suite.py            # download, serve, run, compare
    python tests/driver_suite/run_pymongo_suite.py --uri mongodb://127.0.0.1:27017  # another server
    python tests/driver_suite/run_pymongo_suite.py -k test_find --files test_cursor.py

The harness needs ``pytest-asyncio`` (its configuration names that plugin's options) and
``pytest-timeout``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FLOOR_FILE = HERE / "floor.txt"

FILES = [
    "test_crud_unified.py",
    "test_collection.py",
    "test_cursor.py",
    "test_database.py",
    "test_transactions_unified.py",
    "test_sessions_unified.py",
    "test_retryable_writes_unified.py",
]


def fetch_sdist(version: str, cache: Path) -> Path:
    """The unpacked ``pymongo-<version>`` source tree, downloaded once into ``cache``."""
    tree = cache / f"pymongo-{version}"
    if (tree / "test" / "__init__.py").exists():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"pymongo-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             "--dest", str(cache), f"pymongo=={version}"],
            check=True,
        )
    if not archive.exists():
        raise SystemExit(f"pip download did not produce {archive}")
    partial = Path(tempfile.mkdtemp(dir=cache, prefix="unpack-"))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if _safe_member(m)]
            tar.extractall(partial, members=members)
        shutil.move(str(partial / f"pymongo-{version}"), str(tree))
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tree


def _safe_member(member: tarfile.TarInfo) -> bool:
    """Regular files and directories below the archive's root only (no links, no ``..``)."""
    path = Path(member.name)
    return (member.isfile() or member.isdir()) and not path.is_absolute() and ".." not in path.parts


class Server:
    """``mmm serve`` on a port the OS picks, on loopback."""

    def __init__(self, extra_args: List[str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="mmm-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmm", "serve", "--host", "127.0.0.1", "--port", "0", *extra_args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"on (\S+):(\d+),", line)
        if not match:
            self.stop()
            raise SystemExit(f"mmm serve did not start: {line!r} (log: {self.log.name})")
        self.host, self.port = match.group(1), int(match.group(2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def count_junit(path: Path) -> Tuple[int, int, int]:
    """(passed, failed, skipped) of a junit XML report; errors count as failures."""
    passed = failed = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def run_file(tree: Path, name: str, host: str, port: int, args: argparse.Namespace, out: Path) -> Tuple[int, int, int]:
    report = out / f"{name}.xml"
    cmd = [
        sys.executable, "-m", "pytest", f"test/{name}", "-q", "-p", "no:cacheprovider", "-p", "no:mmm",
        f"--timeout={args.timeout}", f"--junitxml={report}",
    ]
    if args.k:
        cmd += ["-k", args.k]
    env = dict(os.environ, DB_IP=host, DB_PORT=str(port))
    log = out / f"{name}.log"
    with open(log, "w") as f:
        try:
            subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.file_timeout)
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped after {args.file_timeout} s", file=sys.stderr)
    if not report.exists():
        print(f"{name}: no report (see {log})", file=sys.stderr)
        return 0, 0, 0
    return count_junit(report)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("MMM_DRIVER_SUITE_CACHE", ROOT / ".cache" / "driver-suite")))
    p.add_argument("--pymongo-src", type=Path, help="an unpacked PyMongo source tree to use instead of downloading")
    p.add_argument("--uri", help="run against this server (mongodb://host:port) instead of starting mmm serve")
    p.add_argument("--serve-arg", action="append", default=[], help="extra argument for mmm serve (repeatable)")
    p.add_argument("--files", nargs="+", default=FILES)
    p.add_argument("-k", help="pytest -k expression")
    p.add_argument("--timeout", type=int, default=60, help="seconds per test (default 60)")
    p.add_argument("--file-timeout", type=int, default=1200, help="seconds per file (default 1200)")
    p.add_argument("--reports", type=Path, help="keep junit reports and logs here")
    p.add_argument("--no-floor", action="store_true", help="do not compare with floor.txt")
    args = p.parse_args(argv)

    version = importlib.metadata.version("pymongo")
    tree = args.pymongo_src or fetch_sdist(version, args.cache_dir)
    out = args.reports or Path(tempfile.mkdtemp(prefix="mmm-driver-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.uri:
        match = re.match(r"mongodb://([^:/]+):(\d+)", args.uri)
        if not match:
            raise SystemExit(f"--uri must look like mongodb://host:port, got {args.uri!r}")
        host, port = match.group(1), int(match.group(2))
    else:
        server = Server(args.serve_arg)
        host, port = server.host, server.port
    totals: Dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
    started = time.monotonic()
    print(f"PyMongo {version} test suite ({tree}) against {host}:{port}")
    try:
        for name in args.files:
            passed, failed, skipped = run_file(tree, name, host, port, args, out)
            totals["passed"] += passed
            totals["failed"] += failed
            totals["skipped"] += skipped
            print(f"{name:40} {passed:5} passed {failed:5} failed {skipped:5} skipped", flush=True)
            if server and server.proc.poll() is not None:
                print(f"mmm serve exited with {server.proc.returncode} (log: {server.log.name})")
                return 1
    finally:
        if server:
            server.stop()
    ran = totals["passed"] + totals["failed"]
    rate = 100.0 * totals["passed"] / ran if ran else 0.0
    print(f"{totals['skipped']} skipped, {rate:.1f}% of the tests that ran passed, "
          f"{time.monotonic() - started:.0f} s; reports in {out}")
    print(f"{totals['passed']} passed, {totals['failed']} failed")
    if args.no_floor or args.uri or args.k or args.files != FILES:
        return 0
    floor = int(FLOOR_FILE.read_text().split()[0])
    if totals["passed"] < floor:
        print(f"FAIL: {totals['passed']} passed, below the floor of {floor} ({FLOOR_FILE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
