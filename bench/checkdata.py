#!/usr/bin/env python3
"""Data for the check scenario, made without a server.

usage: checkdata.py WORK

- WORK/out-check/many/...: the destinations of many's manifest, 200,000
  one-byte files as a download would leave them (one.bin's byte), written
  here once and kept;
- WORK/m/check-many.sha256 and WORK/m/check-large.sha256: sha256sum-style
  checksum files for them and for large's four files (run gen.py for many
  and large first).
"""
import hashlib
import os
import sys

work = sys.argv[1]
www, m = os.path.join(work, "www"), os.path.join(work, "m")
out = os.path.join(work, "out-check")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


one = open(os.path.join(www, "one.bin"), "rb").read()
one_sha = hashlib.sha256(one).hexdigest()
with open(os.path.join(m, "many.fetch")) as manifest, open(os.path.join(m, "check-many.sha256"), "w") as sums:
    for line in manifest:
        path = line.split(None, 1)[1].strip()
        dst = os.path.join(out, path)
        if not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(one)
        sums.write(f"{one_sha}  {path}\n")
with open(os.path.join(m, "large.fetch")) as manifest, open(os.path.join(m, "check-large.sha256"), "w") as sums:
    for line in manifest:
        path = line.split(None, 1)[1].strip()
        sums.write(f"{sha256(os.path.join(www, path))}  {path}\n")
