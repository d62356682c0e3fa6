"""Shared helpers for the benchmark scripts (not a test: run them directly)."""

from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator, List, Tuple


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)


@contextmanager
def timed() -> Iterator[List[float]]:
    box: List[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


def table(title: str, rows: List[Tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for i, r in enumerate(rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def doc_1kb(i: int) -> dict:
    return {"_id": i, "seq": i, "payload": "x" * 960, "tags": ["a", "b"], "n": i % 97}


def quick() -> bool:
    """MMM_BENCH_QUICK=1 shrinks every size (for a smoke run)."""
    return os.environ.get("MMM_BENCH_QUICK") == "1"


class ServeProcess:
    """An embedded server in its own process (``mmm serve``), so memory is measured apart."""

    def __init__(self, oplog_size_mb: int = 4096) -> None:
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmm", "serve", "--port", str(port), "--oplog-size-mb", str(oplog_size_mb)],
            stdout=subprocess.PIPE, text=True,
        )
        self.proc.stdout.readline()
        self.uri = self.proc.stdout.readline().split("connect with", 1)[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def child_peak_rss_mb(pid: int) -> float:
    """VmHWM (peak RSS) of a running process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Proxy:
    """A TCP relay to a server, which can be cut (an outage between two sites: the processes on
    each side still reach their own server, not the other one)."""

    def __init__(self, uri: str) -> None:
        import socket
        import threading
        from urllib.parse import urlparse

        target = urlparse(uri)
        self.upstream = (target.hostname, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"mongodb://127.0.0.1:{self.listener.getsockname()[1]}/?directConnection=true"
        self.open = threading.Event()
        self.open.set()
        self.conns: list = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self.open.clear()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
