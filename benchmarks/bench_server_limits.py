"""Memory the embedded server keeps for careless or hostile clients.

    python benchmarks/bench_server_limits.py

The server runs in its own process (``mmm serve``); its resident memory (VmRSS) is read from
/proc before (the baseline, in the same run), while the clients hold their resources, and after
they let go:

1. 40 idle sockets, each sending a 16-byte header that announces a 48 MB message and then a
   few bytes. A server that sizes its buffer from the header holds 40 x 48 MB.
2. 3,000 abandoned cursors (sorted finds with batchSize 1 over 100 documents, so each cursor
   buffers 99 documents) on a connection that is then closed. As with mongod, closing the
   connection does not kill them (drivers continue cursors on any pooled connection);
   cursorTimeoutMillis is then lowered to 1 s: the idle timeout must free them.

Freed memory goes back to the allocator, which keeps some of it for reuse: the RSS after a phase
shows what the next phase can reuse, the open-cursor count shows what is actually held.
"""

from __future__ import annotations

import socket
import struct
import time

import pymongo

from _common import ServeProcess, quick, table

OP_MSG = 2013
SOCKETS = 10 if quick() else 40
CURSORS = 300 if quick() else 3_000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_cursors(client: pymongo.MongoClient) -> int:
    return client.admin.command("serverStatus")["metrics"]["cursor"]["open"]["total"]


def settle(seconds: float = 1.5) -> None:
    time.sleep(seconds)  # the allocator returns freed pages after a short delay


def abandon_cursors(address: str, n: int) -> socket.socket:
    """Opens ``n`` cursors on one raw connection (pipelined finds) and returns it, open."""
    import bson

    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    body = bson.encode({"find": "docs", "$db": "bench", "sort": {"i": -1}, "batchSize": 1})
    msg = struct.pack("<I", 0) + b"\x00" + body
    frame = struct.pack("<iiii", 16 + len(msg), 1, 0, OP_MSG) + msg
    s.sendall(frame * n)
    # Read the n replies (their lengths are in their headers).
    pending = b""
    replies = 0
    while replies < n:
        pending += s.recv(1 << 20)
        while len(pending) >= 4 and len(pending) >= struct.unpack_from("<i", pending)[0]:
            pending = pending[struct.unpack_from("<i", pending)[0]:]
            replies += 1
    return s


def main() -> None:
    server = ServeProcess(oplog_size_mb=64)
    pid = server.proc.pid
    try:
        client = pymongo.MongoClient(server.uri)
        client.bench.docs.insert_many([{"i": i, "pad": "x" * 200} for i in range(100)])
        host, port = client.address
        address = f"{host}:{port}"
        settle()
        rows = [("phase", "server RSS MB", "open cursors")]
        rows.append(("baseline", f"{rss_mb(pid):.0f}", str(open_cursors(client))))

        socks = []
        for _ in range(SOCKETS):
            s = socket.create_connection((host, port))
            s.sendall(struct.pack("<iiii", 48_000_000, 1, 0, OP_MSG) + b"\x00" * 64)
            socks.append(s)
        settle()
        rows.append((f"{SOCKETS} sockets announcing 48 MB", f"{rss_mb(pid):.0f}", "-"))
        for s in socks:
            s.close()
        settle()
        rows.append(("  after they close", f"{rss_mb(pid):.0f}", "-"))

        conn = abandon_cursors(address, CURSORS)
        rows.append((f"{CURSORS} abandoned cursors", f"{rss_mb(pid):.0f}", str(open_cursors(client))))
        conn.close()
        settle()
        rows.append(("  after their connection closes", f"{rss_mb(pid):.0f}", str(open_cursors(client))))
        try:
            client.admin.command("setParameter", 1, cursorTimeoutMillis=1000)
        except pymongo.errors.OperationFailure as e:  # a build without the idle timeout
            print(f"setParameter cursorTimeoutMillis: {e}")
        settle(3.0)
        rows.append(("  after cursorTimeoutMillis (1 s)", f"{rss_mb(pid):.0f}", str(open_cursors(client))))
        client.close()
        table("embedded server memory under careless clients", rows)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
