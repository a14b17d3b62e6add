#!/usr/bin/env python3
"""Check a tool's output against the source files.

usage: verify.py WORK MANIFEST OUT  -> prints "ok" or what is wrong (exit 1)
Every destination must exist with the source's size; every 50th is compared
by sha256 as well.
"""
import hashlib
import os
import sys

work, manifest, out = sys.argv[1:4]
www = os.path.join(work, "www")
problems = []
with open(manifest) as f:
    for i, line in enumerate(f):
        url, path = line.split(None, 1)
        path = path.strip()
        src_rel = "one.bin" if path.startswith("many/") else path
        src = os.path.join(www, src_rel)
        dst = os.path.join(out, path)
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
print("ok" if not problems else "; ".join(problems[:5]))
sys.exit(1 if problems else 0)
