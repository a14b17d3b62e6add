#!/usr/bin/env python3
"""Seeded benchmark data and one manifest per tool for a scenario.

usage: gen.py WORK SCENARIO [COUNT]

Files go under WORK/www/<scenario>/; destination paths equal URL paths (minus
the leading slash) so wget2's -nH -x layout matches everyone else's.
Manifests: WORK/m/<scenario>.{fetch,aria2,curl,wget2}.
"""
import os
import random
import sys

work, scenario = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 0
www = os.path.join(work, "www")
PLAIN, CAPPED, SLOW = "http://127.0.0.1:18080", "http://127.0.0.1:18081", "http://127.0.0.1:18082"
# nginx over TLS, with the certificate run.sh makes: https-small and
# https-large are small and large, the same files, fetched over HTTPS.
HTTPS = "https://127.0.0.1:18443"
# faultd.py's port, and one where nothing listens (verify.py knows both).
FAULT, DEAD = "http://127.0.0.1:18083", "http://127.0.0.1:18099"
FAULTS = {"ratelimit": 2000, "outage": 3000, "overloaded": 1000}
# Real files, one per URL, for refresh (nginx gives each its own ETag).
REFRESH = "http://127.0.0.1:18084"


def make(path, size, seed):
    full = os.path.join(www, path)
    if os.path.exists(full) and os.path.getsize(full) == size:
        return
    os.makedirs(os.path.dirname(full), exist_ok=True)
    rng = random.Random(seed)
    with open(full, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(rng.randbytes(n))
            left -= n


entries = []  # (url, path)
if scenario in ("small", "https-small"):
    base = PLAIN if scenario == "small" else HTTPS
    for i in range(2000):
        make(f"small/f{i}.bin", 16 * 1024, i)
        entries.append((f"{base}/small/f{i}.bin", f"small/f{i}.bin"))
elif scenario in ("large", "capped", "https-large"):
    base = {"large": PLAIN, "capped": CAPPED, "https-large": HTTPS}[scenario]
    for i in range(4):
        make(f"large/f{i}.bin", 256 << 20, 1000 + i)
        entries.append((f"{base}/large/f{i}.bin", f"large/f{i}.bin"))
elif scenario == "latency":
    for i in range(100):
        make(f"latency/f{i}.bin", 16 * 1024, 2000 + i)
        entries.append((f"{SLOW}/latency/f{i}.bin", f"latency/f{i}.bin"))
elif scenario == "many":
    # One 1-byte file on the server (nginx maps every /many/ URL to it);
    # COUNT distinct destinations in 200 folders.
    make("one.bin", 1, 3000)
    n = count or 200_000
    for i in range(n):
        p = f"many/d{i % 200}/f{i}.bin"
        entries.append((f"{PLAIN}/{p}", p))
elif scenario == "refresh":
    # `many` with a file of its own behind every URL, under www/refresh/:
    # 200,000 files of 1 byte in 200 folders. bench/refresh.py changes 1%.
    n = count or 200_000
    for i in range(n):
        p = f"many/d{i % 200}/f{i}.bin"
        full = os.path.join(www, "refresh", p)
        if not os.path.exists(full):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(bytes([i % 256]))
        entries.append((f"{REFRESH}/{p}", p))
elif scenario in FAULTS:
    # Nothing on disk: faultd.py makes every body.
    for i in range(FAULTS[scenario]):
        p = f"{scenario}/f{i}.bin"
        entries.append((f"{FAULT}/{p}", p))
elif scenario == "deadhost":
    # 10,000 entries on the dead port, five before each of 2,000 healthy
    # ones; deadhost-alone.fetch holds the healthy ones only.
    for i in range(12000):
        p = f"deadhost/{'ok' if i % 6 == 5 else 'dead'}/f{i}.bin"
        entries.append((f"{FAULT if i % 6 == 5 else DEAD}/{p}", p))
else:
    sys.exit(f"unknown scenario {scenario}")

m = os.path.join(work, "m")
os.makedirs(m, exist_ok=True)
suffix = f"-{count}" if count else ""
with open(f"{m}/{scenario}{suffix}.fetch", "w") as f:
    f.writelines(f"{u} {p}\n" for u, p in entries)
with open(f"{m}/{scenario}{suffix}.aria2", "w") as f:
    f.writelines(f"{u}\n  out={p}\n" for u, p in entries)
with open(f"{m}/{scenario}{suffix}.curl", "w") as f:
    f.writelines(f'url = "{u}"\noutput = "{p}"\n' for u, p in entries)
with open(f"{m}/{scenario}{suffix}.wget2", "w") as f:
    f.writelines(f"{u}\n" for u, p in entries)
if scenario == "deadhost":
    with open(f"{m}/deadhost-alone.fetch", "w") as f:
        f.writelines(f"{u} {p}\n" for u, p in entries if u.startswith(FAULT))
