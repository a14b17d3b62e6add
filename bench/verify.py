#!/usr/bin/env python3
"""Check a tool's output against the source files.

usage: verify.py WORK MANIFEST OUT  -> prints "ok" or what is wrong (exit 1)
Every destination must exist with the source's size; every 50th is compared
by sha256 as well. Entries on faultd.py's port must hold its 2,000 bytes of
"x", and those on the dead port must not exist; for these, what is wrong is
counted: "failed N" (entries not downloaded), "dead present N".
"""
import hashlib
import os
import sys

FAULT, DEAD = "//127.0.0.1:18083/", "//127.0.0.1:18099/"
work, manifest, out = sys.argv[1:4]
www = os.path.join(work, "www")
problems = []
failed = dead_present = 0
with open(manifest) as f:
    for i, line in enumerate(f):
        url, path = line.split(None, 1)
        path = path.strip()
        dst = os.path.join(out, path)
        if DEAD in url:
            dead_present += os.path.exists(dst)
            continue
        if FAULT in url:
            try:
                with open(dst, "rb") as d:
                    failed += d.read() != b"x" * 2000
            except OSError:
                failed += 1
            continue
        src_rel = "one.bin" if path.startswith("many/") else path
        if "//127.0.0.1:18084/" in url:
            src_rel = os.path.join("refresh", path)
        src = os.path.join(www, src_rel)
        try:
            if os.path.getsize(dst) != os.path.getsize(src):
                problems.append(f"{path}: size {os.path.getsize(dst)} != {os.path.getsize(src)}")
            elif i % 50 == 0:
                digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
                if digest(dst) != digest(src):
                    problems.append(f"{path}: sha256 differs")
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
        if len(problems) > 5:
            break
if failed:
    problems.insert(0, f"failed {failed}")
if dead_present:
    problems.insert(0, f"dead present {dead_present}")
print("ok" if not problems else "; ".join(problems[:5]))
sys.exit(1 if problems else 0)
