#!/usr/bin/env python3
"""Fault servers for bench/run.sh: HTTP/1.1 on loopback, every body 2,000
bytes of "x".

  faultd.py ratelimit PORT N [RETRY_AFTER|none]  N requests a second (fixed
      window), 429 beyond, with Retry-After (default 1) or without.
  faultd.py overload PORT K MS     at most K requests at once, each MS ms;
      503 beyond.
  faultd.py outage PORT AFTER FOR  serves, but AFTER seconds after its first
      request drops every connection and refuses new ones for FOR seconds.
  faultd.py slow PORT              serves everything (with --delay: a
      healthy server of known speed).

--delay MS (any mode, last): every answer that is not a refusal waits MS ms,
so a clean run lasts long enough to be interrupted.

Prints a JSON line of counts every second to stdout, and at exit (SIGTERM):
requests, ok, 429, 503, dropped (connections cut by the outage),
max_in_flight, span (seconds from the first request to the last 200),
late_requests and late_refused (requests, and 429s plus 503s among them,
from LATE seconds after the first request on: what a client does once it has
had time to learn the server).
"""
import asyncio, json, signal, sys, time

LATE = 3.0
argv = sys.argv[1:]
delay = 0.0
if "--delay" in argv:
    i = argv.index("--delay")
    delay = int(argv[i + 1]) / 1000
    del argv[i:i + 2]
mode, port, args = argv[0], int(argv[1]), argv[2:]
stats = {"requests": 0, "ok": 0, "429": 0, "503": 0, "dropped": 0, "max_in_flight": 0,
         "span": 0.0, "late_requests": 0, "late_refused": 0}
BODY = b"x" * 2000
window = [0, 0]
in_flight = [0]
first = [None]
conns = set()


def head(status, reason, extra=b""):
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, reason, 0 if status != 200 else len(BODY), extra)


def refused(status, reason, extra=b""):
    stats[str(status)] += 1
    if time.time() - first[0] >= LATE:
        stats["late_refused"] += 1
    return head(status, reason, extra)


async def answer():
    if mode == "ratelimit":
        limit = int(args[0]); ra = args[1] if len(args) > 1 else "1"
        now = int(time.time())
        if now != window[0]:
            window[0], window[1] = now, 0
        window[1] += 1
        if window[1] > limit:
            extra = b"" if ra == "none" else b"Retry-After: " + ra.encode() + b"\r\n"
            return refused(429, b"Too Many Requests", extra)
    elif mode == "overload":
        k, ms = int(args[0]), int(args[1])
        if in_flight[0] >= k:
            return refused(503, b"Service Unavailable")
        in_flight[0] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], in_flight[0])
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            in_flight[0] -= 1
    if delay:
        await asyncio.sleep(delay)
    stats["ok"] += 1
    stats["span"] = round(time.time() - first[0], 3)
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
            stats["requests"] += 1
            if time.time() - first[0] >= LATE:
                stats["late_requests"] += 1
            writer.write(await answer())
            await writer.drain()
    except (Exception, asyncio.CancelledError):
        pass  # a client gone, or the server stopping with answers out
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
