#!/usr/bin/env python3
"""HTTP/1.1 keep-alive file server that answers each request after a delay.

usage: latency.py ROOT PORT DELAY_MS   (nginx-light has no delay module)
"""
import asyncio
import os
import sys

root, port, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000


cache = {}


def response(path):
    """The whole response, read once: the server's own work stays small
    next to the delay, so the 16 answers of a round leave together."""
    if path not in cache:
        try:
            with open(os.path.join(root, path.lstrip("/")), "rb") as f:
                body, status = f.read(), b"200 OK"
        except OSError:
            body, status = b"not found", b"404 Not Found"
        cache[path] = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return cache[path]


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            await asyncio.sleep(delay)
            writer.write(response(path))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
