#!/usr/bin/env python3
"""Load client of benches/overload.sh: N connections (HTTP/1.1 keep-alive), each requesting the
next URL of a shared list (every URL distinct: every request a miss) until the time is up.
Prints one JSON line: per-status counts, latency percentiles of the 200s, requests per second,
the server's RSS before the load and its peak during the load (VmRSS of --pid sampled every
20 ms: VmHWM would include the upload's validation before the run), and its thread count."""
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

def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0

async def sample_rss(pid, peak, deadline):
    while time.monotonic() < deadline + 1:
        peak[0] = max(peak[0], status_kib(pid, "VmRSS:"))
        await asyncio.sleep(0.02)

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
    before = status_kib(args.pid, "VmRSS:") if args.pid else 0
    rss = [before]
    sampler = asyncio.create_task(sample_rss(args.pid, rss, deadline)) if args.pid else None
    await asyncio.gather(*(one(args.host, args.port, urls, stats, deadline) for _ in range(args.conns)))
    took = time.monotonic() - start
    if sampler:
        sampler.cancel()
    ok = stats.get(200, [])
    peak = round(rss[0] / 1024, 1) if args.pid else None
    threads = status_kib(args.pid, "Threads:") if args.pid else None
    print(json.dumps({
        "conns": args.conns, "secs": round(took, 1),
        "status": {str(k): len(v) for k, v in sorted(stats.items())},
        "ok_per_sec": round(len(ok) / took, 1),
        "p50_ms": pct(ok, 0.50), "p99_ms": pct(ok, 0.99), "max_ms": pct(ok, 1.0),
        "rss_before_mib": round(before / 1024, 1), "peak_rss_mib": peak, "threads": threads, "urls_left": len(urls),
    }))

asyncio.run(main())
