#!/usr/bin/env python3
"""Load client of benches/overload.sh: N connections (HTTP/1.1 keep-alive), each requesting the
next URL of a shared list (every URL distinct: every request a miss) until the time is up.
Prints one JSON line: per-status counts, latency percentiles of the 200s, requests per second,
and the server's peak RSS (VmHWM of --pid, read at the end)."""
import argparse, asyncio, json, time

async def one(host, port, urls, stats, deadline):
    reader, writer = await asyncio.open_connection(host, port)
    while time.monotonic() < deadline and urls:
        path = urls.pop()
        t = time.monotonic()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            break
        status = int(status_line.split()[1])
        length, close, retry = 0, False, 0.0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "connection" and v.strip().lower() == "close":
                close = True
            elif k == "retry-after":
                retry = min(float(v.strip() or 1), 5.0)
        await reader.readexactly(length)
        stats.setdefault(status, []).append(time.monotonic() - t)
        if status in (429, 503):
            # A well-behaved client (a CDN, a browser's retry) honours Retry-After instead of
            # hammering: without this the bench measures a 503 loop, not the server.
            await asyncio.sleep(retry or 1.0)
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()

def pct(v, p):
    v = sorted(v)
    return round(v[min(len(v) - 1, int(len(v) * p))] * 1000, 1) if v else None

async def main():
    a = argparse.ArgumentParser()
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--urls", required=True)
    a.add_argument("--conns", type=int, default=32)
    a.add_argument("--secs", type=float, default=20)
    a.add_argument("--pid", type=int)
    args = a.parse_args()
    urls = [u.strip() for u in open(args.urls) if u.strip()]
    urls.reverse()
    stats = {}
    start = time.monotonic()
    deadline = start + args.secs
    await asyncio.gather(*(one(args.host, args.port, urls, stats, deadline) for _ in range(args.conns)))
    took = time.monotonic() - start
    ok = stats.get(200, [])
    peak = None
    if args.pid:
        for line in open(f"/proc/{args.pid}/status"):
            if line.startswith("VmHWM:"):
                peak = round(int(line.split()[1]) / 1024, 1)
    print(json.dumps({
        "conns": args.conns, "secs": round(took, 1),
        "status": {str(k): len(v) for k, v in sorted(stats.items())},
        "ok_per_sec": round(len(ok) / took, 1),
        "p50_ms": pct(ok, 0.50), "p99_ms": pct(ok, 0.99), "max_ms": pct(ok, 1.0),
        "peak_rss_mib": peak, "urls_left": len(urls),
    }))

asyncio.run(main())
