#!/usr/bin/env bash
# Try fetch without the internet: serve generated files from a local web
# server (Python's http.server on 127.0.0.1, on a port the system picks) and
# download them, one deliberate 404 included; then run again to see skips.
#   examples/offline.sh            # uses `fetch` from PATH, else target/release
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fetch=$(command -v fetch || echo "$root/target/release/fetch")
if [ ! -x "$fetch" ]; then
  echo "no fetch binary: run 'cargo install --locked --path $root' first" >&2
  exit 2
fi
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

mkdir -p "$work/www/data"
for i in $(seq 1 200); do head -c $((i * 997)) /dev/urandom > "$work/www/data/file$i.bin"; done
# Port 0: the system picks a free one; the server prints it first.
python3 -u -c '
import functools, http.server, sys

class Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops the 16 connections at once

handler = functools.partial(Quiet, directory=sys.argv[1])
with Server(("127.0.0.1", 0), handler) as httpd:
    print(httpd.server_address[1])
    httpd.serve_forever()
' "$work/www" > "$work/port" &
server=$!
for _ in $(seq 1 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(head -1 "$work/port")
[ -n "$port" ] || { echo "the local web server did not start" >&2; exit 2; }

for i in $(seq 1 200); do echo "http://127.0.0.1:$port/data/file$i.bin  out/file$i.bin"; done > "$work/manifest.txt"
echo "http://127.0.0.1:$port/data/missing.bin" >> "$work/manifest.txt"   # a 404, to see a failure

cd "$work"
status=0
"$fetch" -j 16 manifest.txt 2> first.log || status=$?
tail -n 3 first.log
if [ "$status" -eq 1 ] && grep -q "200 downloaded, 0 skipped, 1 failed" first.log; then
  echo "--- exit status 1: the one missing file failed, as planned"
else
  echo "--- unexpected: exit status $status" >&2
  exit 1
fi
echo "--- a second run skips what is there:"
"$fetch" -q manifest.txt || true
diff -r www/data out && echo "--- all 200 files are byte-identical"
