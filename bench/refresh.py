#!/usr/bin/env python3
"""The refresh scenario's server side and its table (issue 18).

usage: refresh.py WORK flip N     1% of www/refresh (every 100th file) becomes
                                  version N: another byte, mtime T0 + 10 N
                                  (nginx's ETag and Last-Modified follow it);
                                  N = 0 is the files gen.py made
       refresh.py WORK bytes      what nginx's access log of port 18084 says
                                  of the last run: requests, 200s, 304s,
                                  body bytes, bytes sent with headers
       refresh.py WORK table      the markdown table of WORK/refresh.tsv
"""
import os
import statistics
import sys
from collections import defaultdict

work, command = sys.argv[1], sys.argv[2]
COUNT, EVERY, T0 = 200_000, 100, 1_700_000_000

if command == "flip":
    n = int(sys.argv[3])
    for i in range(0, COUNT, EVERY):
        path = os.path.join(work, "www", "refresh", f"many/d{i % 200}/f{i}.bin")
        with open(path, "wb") as f:
            f.write(bytes([(i + n) % 256]))
        os.utime(path, (T0 + 10 * n, T0 + 10 * n))
elif command == "bytes":
    counts, sent, body = defaultdict(int), 0, 0
    with open(os.path.join(work, "logs", "refresh-access.log")) as log:
        for line in log:
            status, n, b = line.split()
            counts[status] += 1
            sent, body = sent + int(n), body + int(b)
    print(f"{sum(counts.values())}\t{counts['200']}\t{counts['304']}\t{body}\t{sent}")
elif command == "table":
    rows = defaultdict(list)
    for line in open(os.path.join(work, "refresh.tsv")):
        tool, wall, requests, ok, not_modified, body, sent = line.rstrip("\n").split("\t")
        rows[tool].append((float(wall), int(requests), int(ok), int(not_modified), int(body), int(sent)))
    noop = statistics.median(r[0] for r in rows.get("fetch, no-op skip", [(1,)]))
    print("\n#### refresh: `many` as real files, 1% (2,000) changed on the server\n")
    print("| run | wall (median) | vs no-op skip | requests | 200 | 304 | body bytes | bytes with headers |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tool, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        med = lambda k: int(statistics.median(r[k] for r in runs))
        print(f"| {tool} | {wall:.3f} s | {wall / noop:.1f}x | {med(1):,} | {med(2):,} | {med(3):,} | {med(4):,} | {med(5):,} |")
else:
    sys.exit(f"unknown command {command}")
