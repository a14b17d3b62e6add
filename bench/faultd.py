#!/usr/bin/env python3
"""Fault servers for bench/run.sh: HTTP/1.1 on loopback, every body 2,000 bytes.

  faultd.py ratelimit PORT N [RETRY_AFTER|none]  N requests a second (fixed
      window), 429 beyond, with Retry-After (default 1) or without.
  faultd.py overload PORT K MS     at most K requests at once, each MS ms;
      503 beyond.
  faultd.py outage PORT AFTER FOR  serves, but AFTER seconds after its first
      request drops every connection and refuses new ones for FOR seconds.

Prints a JSON line of counts (ok, 429, 503, dropped, max_in_flight) every
second to stdout, and at exit (SIGTERM).
"""
import asyncio, json, signal, sys, time

mode, port = sys.argv[1], int(sys.argv[2])
args = sys.argv[3:]
stats = {"ok": 0, "429": 0, "503": 0, "dropped": 0, "max_in_flight": 0}
BODY = b"x" * 2000
window = [0, 0]
in_flight = [0]
first = [None]
conns = set()

def head(status, reason, extra=b""):
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, reason, 0 if status != 200 else len(BODY), extra)

async def answer():
    if mode == "ratelimit":
        limit = int(args[0]); ra = args[1] if len(args) > 1 else "1"
        now = int(time.time())
        if now != window[0]:
            window[0], window[1] = now, 0
        window[1] += 1
        if window[1] > limit:
            stats["429"] += 1
            extra = b"" if ra == "none" else b"Retry-After: " + ra.encode() + b"\r\n"
            return head(429, b"Too Many Requests", extra)
    elif mode == "overload":
        k, ms = int(args[0]), int(args[1])
        if in_flight[0] >= k:
            stats["503"] += 1
            return head(503, b"Service Unavailable")
        in_flight[0] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], in_flight[0])
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            in_flight[0] -= 1
    stats["ok"] += 1
    return head(200, b"OK", b'ETag: "e"\r\n') + BODY

async def handle(reader, writer):
    conns.add(writer)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if first[0] is None:
                first[0] = time.time()
            writer.write(await answer())
            await writer.drain()
    except Exception:
        pass
    finally:
        conns.discard(writer)
        writer.close()

async def outage(server_box):
    after, length = float(args[0]), float(args[1])
    while first[0] is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(after)
    server_box[0].close()
    for w in list(conns):
        stats["dropped"] += 1
        w.transport.abort()
    await asyncio.sleep(length)
    server_box[0] = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, reuse_address=True)

async def main():
    box = [await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, reuse_address=True)]
    if mode == "outage":
        asyncio.create_task(outage(box))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
        print(json.dumps(stats), flush=True)

asyncio.run(main())
