#!/usr/bin/env python3
"""Markdown tables from bench/run.sh's fault scenarios (faults.tsv: scenario
tool wall verify faultd-counts dead-attempts), a row per run."""
import json
import sys
from collections import defaultdict

NOTES = {
    "ratelimit": "100 requests/s, 429 + `Retry-After: 1` beyond; 2,000 x 2 KB; ideal 20 s",
    "ratelimit-nora": "100 requests/s, 429 without `Retry-After` beyond; 2,000 x 2 KB; ideal 20 s",
    "outage": "3,000 x 2 KB, 160 ms each; the server gone for 90 s from 10 s in",
    "deadhost": "10,000 entries on a refused port, 5 before each of 2,000 on a server answering in 50 ms",
    "overloaded": "at most 4 at once, 50 ms each, 503 beyond; 1,000 x 2 KB",
}
rows = defaultdict(list)
for line in open(sys.argv[1]):
    scenario, tool, wall, verify, counts, attempts = line.rstrip("\n").split("\t")
    rows[scenario].append((tool, float(wall), verify, json.loads(counts), attempts))

for scenario, runs in rows.items():
    print(f"\n#### {scenario}: {NOTES.get(scenario, '')}\n")
    print("| tool | wall | failed | requests | 429 | 503 | 429+503 after 3 s | last 200 at | notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for tool, wall, verify, c, attempts in runs:
        failed = "0" if verify == "ok" else verify.replace("failed ", "")
        late = c["late_refused"] / c["late_requests"] if c["late_requests"] else 0
        notes = f"{c['dropped']} connections dropped" if c["dropped"] else ""
        if attempts != "-":
            notes = f"dead port: {attempts}"
        print(f"| {tool} | {wall:.1f} s | {failed} | {c['requests']:,} | {c['429']:,} | {c['503']:,} "
              f"| {late:.1%} | {c['span']:.1f} s | {notes} |")
