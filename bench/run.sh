#!/usr/bin/env bash
# The project's benchmark: fetch against aria2c, curl --parallel and wget2 on
# the same seeded data, served by nginx on loopback, at the same concurrency
# (16). Prints markdown tables: wall time (median of RUNS), CPU, peak RSS and
# each tool's ratio to the fastest peer, all from one run of this script.
#
#   bench/run.sh                                   # every scenario, 3 runs each
#   SCENARIOS="small latency" RUNS=5 bench/run.sh  # a subset
#
# Scenarios: small (2,000 x 16 KiB), large (4 x 256 MiB), capped (large at
# 25 MB/s per connection), latency (100 x 16 KiB, 50 ms each), many (200,000
# x 1 byte in 200 folders), noop (many again, all present), bars (small with
# progress bars on a pty vs -q), flat (peak RSS, 2,000,000-line manifest).
# fetch fsyncs every file before its rename; the peers do not.
# Needs root for apt-get when a tool is missing. Data lives in $BENCH_DIR
# (default /tmp/fetch-bench, about 1.1 GiB, and 0.4 GiB more while it runs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
WORK=${BENCH_DIR:-/tmp/fetch-bench}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"small large capped latency many noop bars flat"}
J=16

need=()
for pair in nginx:nginx-light aria2c:aria2 wget2:wget2 curl:curl /usr/bin/time:time python3:python3 script:bsdutils; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q --manifest-path "$root/Cargo.toml"
FETCH=$root/target/release/fetch

mkdir -p "$WORK"/{www,m,logs}
cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
user root;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:18080; root $WORK/www; location /many/ { rewrite ^ /one.bin break; } }
  server { listen 127.0.0.1:18081; root $WORK/www; limit_rate 25m; }
}
CONF
cleanup() {
  nginx -c "$WORK/nginx.conf" -p "$WORK" -s stop 2>/dev/null || true
  [ -n "${slow:-}" ] && kill "$slow" 2>/dev/null || true
}
# The outputs settle set aside go at the end, when no run follows.
trap 'cleanup; rm -rf "$WORK/trash"' EXIT
cleanup
nginx -c "$WORK/nginx.conf" -p "$WORK"
python3 "$bench/latency.py" "$WORK/www" 18082 50 & slow=$!

results=$WORK/results.tsv
: > "$results"

# settle OUT SERVED: the state every timed run starts from. The last run's
# output is put out of the way and written back, and the kernel's caches are
# dropped; the served files and the tools are then read back in. On ext4
# without a journal a new inode skips every inode deleted in the last minute
# (recently_deleted()), one by one from the start of its group, each skip a
# buffer-cache lookup: after an rm -rf of the last run's 2,000 files that
# scan was a third of all CPU time of the next small run, whoever ran it
# (fetch 0.21 s either way, curl 0.21 s; into a new directory with nothing
# deleted, fetch 0.13 s, curl 0.10 s). Users do not delete thousands of
# files just before a download, so an output on the data's disk of 101 to
# 10,000 files (small) is set aside, deleted when the script ends (about
# 0.4 GiB meanwhile), and after a larger one (many) the next run waits out
# the minute. tmpfs (bars) has no such window.
settle() {
  local many=0
  # (head closes the pipe early: no pipefail for this count)
  [ -d "$1" ] && many=$(set +o pipefail; find "$1" -type f | head -10001 | wc -l)
  if [ "$many" -gt 100 ] && [ "$many" -le 10000 ] && [[ $1 == "$WORK"/* ]]; then
    mkdir -p "$WORK/trash"
    mv "$1" "$WORK/trash/$(date +%s%N)"
  else
    rm -rf "$1"
  fi
  sync
  if [ "$many" -gt 10000 ]; then sleep 61; sync; fi
  [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches
  find "$2" -type f -exec cat {} + > /dev/null
  for t in "$FETCH" aria2c curl wget2; do "$t" --version > /dev/null 2>&1 || true; done
}

# served SCENARIO: the files nginx serves for it.
served() {
  case $1 in
    small | bars) echo "$WORK/www/small" ;;
    latency) echo "$WORK/www/latency" ;;
    large | capped) echo "$WORK/www/large" ;;
    *) echo "$WORK/www/one.bin" ;;
  esac
}

# measure SCENARIO TOOL OUT MANIFEST N CMD...: RUNS timed runs into a fresh OUT
# (kept as is, and the caches warm, for noop), each verified against the
# sources.
measure() {
  local scenario=$1 tool=$2 out=$3 manifest=$4 n=$5
  shift 5
  for _ in $(seq "$RUNS"); do
    if [ "$scenario" = noop ]; then sync; else settle "$out" "$(served "$scenario")"; fi
    mkdir -p "$out"
    # Wall time to the millisecond (GNU time's %e has 10 ms steps, a tenth
    # of a small run); CPU and peak RSS from GNU time.
    local start end
    start=$(date +%s%N)
    /usr/bin/time -f "%U %S %M" -o "$WORK/time.txt" "$@" > "$WORK/logs/$scenario-${tool//[^A-Za-z0-9.-]/_}.log" 2>&1 || true
    end=$(date +%s%N)
    ok=$(python3 "$bench/verify.py" "$WORK" "$manifest" "$out" || true)
    read -r user sys rss < <(tail -1 "$WORK/time.txt")
    wall=$(awk -v ns=$((end - start)) 'BEGIN {printf "%.3f", ns / 1e9}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$wall" "$user" "$sys" "$rss" "$ok" "$n" >> "$results"
    echo "  $scenario $tool: ${wall}s $ok" >&2
  done
}

# peers SCENARIO N: every tool on one scenario's manifests.
peers() {
  local s=$1 n=$2 m=$WORK/m/$1 out=$WORK/out
  measure "$s" fetch "$out" "$m.fetch" "$n" "$FETCH" -q -j $J --dir "$out" "$m.fetch"
  measure "$s" aria2c "$out" "$m.fetch" "$n" aria2c -q -j $J -x 1 -s 1 --file-allocation=none \
    --auto-file-renaming=false --allow-overwrite=true --summary-interval=0 --dir "$out" -i "$m.aria2"
  if [ "$s" = capped ]; then
    # aria2c -j 16 -x 16 opens up to 16 connections per file, 64 for these
    # four; fetch's -j bounds all of its connections, so it is measured at
    # 64 as well.
    measure "$s" "aria2c -x16 -s16 -k1M" "$out" "$m.fetch" "$n" aria2c -q -j $J -x 16 -s 16 -k 1M \
      --file-allocation=none --auto-file-renaming=false --allow-overwrite=true --summary-interval=0 \
      --dir "$out" -i "$m.aria2"
    measure "$s" "fetch -j 64" "$out" "$m.fetch" "$n" "$FETCH" -q -j 64 --dir "$out" "$m.fetch"
  fi
  measure "$s" "curl --parallel" "$out" "$m.fetch" "$n" curl -s --parallel --parallel-max $J --create-dirs \
    --output-dir "$out" -K "$m.curl"
  measure "$s" wget2 "$out" "$m.fetch" "$n" wget2 -q --max-threads=$J -nH -x -P "$out" -i "$m.wget2"
}

for s in $SCENARIOS; do
  echo "== $s" >&2
  case $s in
    small | latency) python3 "$bench/gen.py" "$WORK" "$s"; peers "$s" $([ "$s" = small ] && echo 2000 || echo 100) ;;
    large | capped) python3 "$bench/gen.py" "$WORK" "$s"; peers "$s" 4 ;;
    many) python3 "$bench/gen.py" "$WORK" many; peers many 200000 ;;
    noop)
      # Every destination present: what a cron rerun costs. curl has no skip
      # option before 8.10; aria2c would re-request; wget2 -nc skips.
      python3 "$bench/gen.py" "$WORK" many
      out=$WORK/out-noop m=$WORK/m/many
      [ -f "$out/many/d199/f199999.bin" ] || "$FETCH" -q -j $J --dir "$out" "$m.fetch"
      measure noop fetch "$out" "$m.fetch" 200000 "$FETCH" -q -j $J --dir "$out" "$m.fetch"
      measure noop "wget2 -nc" "$out" "$m.fetch" 200000 wget2 -q -nc --max-threads=$J -nH -x -P "$out" -i "$m.wget2"
      ;;
    bars)
      # The display's cost, not the disk's: output on tmpfs, where fsync is
      # nearly free and run-to-run noise small, and three times the runs.
      python3 "$bench/gen.py" "$WORK" small
      m=$WORK/m/small out=/dev/shm/fetch-bench-out
      # Both on a pty made by script(1), which costs about 10 ms of its own.
      RUNS=$((RUNS * 3)) measure bars "fetch -q on a pty" "$out" "$m.fetch" 2000 \
        script -qec "$FETCH -q -j $J --dir $out $m.fetch" /dev/null
      RUNS=$((RUNS * 3)) measure bars "fetch, bars on a pty" "$out" "$m.fetch" 2000 \
        script -qec "$FETCH -j $J --progress bar --dir $out $m.fetch" /dev/null
      rm -rf "$out"
      ;;
    flat)
      # Memory must not grow with the manifest: 2,000,000 lines, of which
      # --shard 0/10 downloads about 200,000, against the 200,000-line run.
      # RUNS runs each: one run's peak RSS varies by 2-3 MiB.
      python3 "$bench/gen.py" "$WORK" many
      python3 "$bench/gen.py" "$WORK" many 2000000
      m=$WORK/m/many-2000000 out=$WORK/out
      measure flat "fetch, 200,000 lines" "$out" "$WORK/m/many.fetch" 200000 \
        "$FETCH" -q -j $J --dir "$out" "$WORK/m/many.fetch"
      # The shard's own entries, for verification, listed by a dry run.
      "$FETCH" --dry-run --shard 0/10 --dir "$WORK/none" "$m.fetch" 2>/dev/null |
        awk -v p="$WORK/none/" '{ print $3, substr($2, length(p) + 1) }' > "$m.shard0"
      measure flat "fetch, 2,000,000 lines --shard 0/10" "$out" "$m.shard0" "$(wc -l < "$m.shard0")" \
        "$FETCH" -q -j $J --dir "$out" --shard 0/10 "$m.fetch"
      ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

echo "## fetch benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo
echo "fetch $("$FETCH" --version | cut -d' ' -f2) (fsync on), $(aria2c --version | head -1), $(curl --version | head -1 | cut -d' ' -f1-2), $(wget2 --version | head -1 | cut -d' ' -f1-3); concurrency $J; median of $RUNS runs."
if [ -f "$WORK/www/large/f0.bin" ]; then
  cat "$WORK/www/large/f0.bin" > /dev/null
  speed=$(curl -s -o /dev/null -w '%{speed_download}' http://127.0.0.1:18080/large/f0.bin)
  disk=$(dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=512 conv=fdatasync 2>&1 | tail -1 | awk -F', ' '{print $NF}')
  rm -f "$WORK/dd.bin"
  # The disk without the page cache: large's four files written at once,
  # directly (O_DIRECT). With fsync on, large cannot end sooner than this;
  # the peers leave their bytes in memory and need not wait for it.
  sync
  start=$(date +%s%N) pids=()
  for i in 0 1 2 3; do
    dd if=/dev/zero of="$WORK/dd$i.bin" bs=1M count=256 oflag=direct 2>/dev/null &
    pids+=($!)
  done
  direct_ok=yes
  for pid in "${pids[@]}"; do wait "$pid" || direct_ok=no; done
  end=$(date +%s%N)
  rm -f "$WORK"/dd?.bin
  direct="not measured (no O_DIRECT here)"
  if [ $direct_ok = yes ]; then
    direct=$(awk -v ns=$((end - start)) 'BEGIN {printf "%.3f s (%.0f MB/s)", ns / 1e9, 1073741824 / (ns / 1e9) / 1e6}')
  fi
  echo
  echo "Ceilings: loopback \`curl -o /dev/null\` of one 256 MiB file: $(awk -v s="$speed" 'BEGIN {printf "%.0f MiB/s", s/1048576}'); disk \`dd conv=fdatasync\` 512 MiB: $disk; disk, four \`dd oflag=direct\` of 256 MiB at once: $direct."
fi
python3 "$bench/table.py" "$results"
