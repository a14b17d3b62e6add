#!/usr/bin/env bash
# Try fetch without the internet: serve generated files from a local web
# server (Python's http.server on 127.0.0.1) and download them.
#   examples/offline.sh            # uses `fetch` from PATH, else target/release
set -euo pipefail
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
fetch=$(command -v fetch || echo "$(cd "$(dirname "$0")/.." && pwd)/target/release/fetch")

mkdir -p "$work/www/data"
for i in $(seq 1 200); do head -c $((i * 997)) /dev/urandom > "$work/www/data/file$i.bin"; done
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" 8731 >/dev/null 2>&1 &
server=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/8731) 2>/dev/null && break; sleep 0.1; done

for i in $(seq 1 200); do echo "http://127.0.0.1:8731/data/file$i.bin  out/file$i.bin"; done > "$work/manifest.txt"
echo "http://127.0.0.1:8731/data/missing.bin" >> "$work/manifest.txt"   # a 404, to see a failure

cd "$work"
"$fetch" -j 16 manifest.txt || echo "(exit status $? : one entry failed, as planned)"
echo "--- a second run skips what is there:"
"$fetch" -q manifest.txt || true
diff -r www/data out && echo "--- all 200 files are byte-identical"
