#!/usr/bin/env python3
"""Markdown tables from bench results (TSV: scenario tool wall user sys rss_kb ok)."""
import statistics
import sys
from collections import defaultdict

BULK = ("large", "capped", "https-large", "check-large")
rows = defaultdict(lambda: defaultdict(list))
counts = {}
for line in open(sys.argv[1]):
    scenario, tool, wall, user, sys_, rss, ok, n = line.split("\t")
    rows[scenario][tool].append((float(wall), float(user) + float(sys_), int(rss), ok.strip(), int(n)))

for scenario, tools in rows.items():
    medians = {t: statistics.median(r[0] for r in runs) for t, runs in tools.items()}
    fastest = min(w for t, w in medians.items() if not t.startswith("fetch"))  if any(not t.startswith("fetch") for t in medians) else min(medians.values())
    best = min(medians.values())
    print(f"\n#### {scenario}\n")
    print("| tool | wall (median) | CPU user+sys | peak RSS | rate | vs fastest peer | output |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for tool, runs in tools.items():
        wall = medians[tool]
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs) / 1024
        n = runs[0][4]
        if scenario in BULK:
            # 1 GiB in all: CPU seconds per GiB, for the issue 19 target.
            rate = f"{1024 / wall:.0f} MiB/s, {cpu:.2f} CPU s/GiB"
        else:
            rate = f"{n / wall:,.0f} files/s"
        ok = "ok" if all(r[3] == "ok" for r in runs) else runs[-1][3]
        print(f"| {tool} | {wall:.3f} s | {cpu:.2f} s | {rss:.0f} MiB | {rate} | {wall / fastest:.2f}x | {ok} |")
