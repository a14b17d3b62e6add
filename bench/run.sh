#!/usr/bin/env bash
# The project's benchmark: fetch against aria2c, curl --parallel and wget2 on
# the same seeded data, served by nginx on loopback, at the same concurrency
# (16). Prints markdown tables: wall time (median of RUNS), CPU, peak RSS and
# each tool's ratio to the fastest peer, all from one run of this script.
#
#   bench/run.sh                                   # every scenario, 3 runs each
#   SCENARIOS="small latency" RUNS=5 bench/run.sh  # a subset
#
# Scenarios: small (2,000 x 16 KiB), large (4 x 256 MiB), https-small and
# https-large (the same over TLS: nginx with a certificate of a CA made here,
# HTTP/2 offered by ALPN, every tool given the CA), capped (large at
# 25 MB/s per connection), latency (100 x 16 KiB, 50 ms each), many (200,000
# x 1 byte in 200 folders), noop (many again, all present), bars (small with
# progress bars on a pty vs -q), flat (peak RSS, 2,000,000-line manifest);
# check (fetch --check on many's 200,000 files and large's 1 GiB, with
# SHA256SUMS files, against sha256sum -c of the same files; no server);
# host health against bench/faultd.py (issue 17): ratelimit and
# ratelimit-nora (100 requests/s, 429 with Retry-After: 1 or without),
# outage (90 s mid-run; one run of each tool, two minutes each), deadhost
# (refused port among a healthy one), overloaded (4 at once, 503 beyond);
# refresh (issue 18): `many` with a file behind each URL, downloaded, then
# 1% changed on the server: fetch --refresh, --overwrite and wget2 -N, and
# fetch --refresh with nothing changed against the no-op skip run, with
# the bytes nginx sent (headers included).
# Fault tables: a row per run, with the server's counts; the peers retry
# as issue 17 asks (curl --retry 5 --retry-all-errors, wget2 --tries=6,
# aria2c --max-tries=6).
# fetch fsyncs every file before its rename; the peers do not.
# Needs root for apt-get when a tool is missing. Data lives in $BENCH_DIR
# (default /tmp/fetch-bench, about 1.1 GiB, and 0.4 GiB more while it runs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
WORK=${BENCH_DIR:-/tmp/fetch-bench}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"small large https-small https-large capped latency many noop bars flat check ratelimit ratelimit-nora outage deadhost overloaded refresh"}
J=16

need=()
for pair in nginx:nginx-light aria2c:aria2 wget2:wget2 curl:curl /usr/bin/time:time python3:python3 script:bsdutils \
  strace:strace; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q --manifest-path "$root/Cargo.toml"
FETCH=$root/target/release/fetch

mkdir -p "$WORK"/{www,m,logs,tls}
# A CA and a certificate for 127.0.0.1 that it signs (a self-signed one
# from openssl req -x509 is a CA, which rustls refuses as a server's).
CA=$WORK/tls/ca.pem
if [ ! -s "$WORK/tls/server.pem" ]; then
  (
    cd "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj /CN=bench-ca \
      -keyout ca.key -out ca.pem 2> /dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
      -keyout server.key -out server.csr 2> /dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 3650 -extfile server.ext \
      -out server.pem 2> /dev/null
  )
fi
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
  # refresh: real files, so that each has its own ETag; conditional requests
  # are nginx's own (etag on, if_modified_since exact).
  log_format sent '\$status \$bytes_sent \$body_bytes_sent';
  server {
    listen 127.0.0.1:18084; root $WORK/www/refresh;
    access_log $WORK/logs/refresh-access.log sent buffer=64k flush=100ms;
  }
  server {
    listen 127.0.0.1:18443 ssl http2; root $WORK/www;
    ssl_certificate $WORK/tls/server.pem; ssl_certificate_key $WORK/tls/server.key;
    # TLS 1.3 as servers offer it today (nginx before 1.23.4 leaves it out).
    ssl_protocols TLSv1.2 TLSv1.3;
  }
}
CONF
cleanup() {
  nginx -c "$WORK/nginx.conf" -p "$WORK" -s stop 2>/dev/null || true
  [ -n "${slow:-}" ] && kill "$slow" 2>/dev/null || true
  [ -n "${faultd:-}" ] && kill "$faultd" 2>/dev/null || true
}
# The outputs settle set aside go at the end, when no run follows.
trap 'cleanup; rm -rf "$WORK/trash"' EXIT
cleanup
# check makes no request: alone, it needs no server.
if [ "$SCENARIOS" != check ]; then
  nginx -c "$WORK/nginx.conf" -p "$WORK"
  python3 "$bench/latency.py" "$WORK/www" 18082 50 & slow=$!
fi

results=$WORK/results.tsv
: > "$results"
: > "$WORK/faults.tsv"
: > "$WORK/refresh.tsv"

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
    small | https-small | bars) echo "$WORK/www/small" ;;
    latency) echo "$WORK/www/latency" ;;
    large | https-large | capped) echo "$WORK/www/large" ;;
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
    if [[ $scenario == noop || $scenario == check-* ]]; then sync; else settle "$out" "$(served "$scenario")"; fi
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

# peers SCENARIO N: every tool on one scenario's manifests; over https,
# each given the CA by its own option.
peers() {
  local s=$1 n=$2 m=$WORK/m/$1 out=$WORK/out
  local fetch_ca=() aria2_ca=() curl_ca=() wget2_ca=()
  if [[ $s == https-* ]]; then
    fetch_ca=(--cacert "$CA") aria2_ca=(--ca-certificate="$CA") curl_ca=(--cacert "$CA")
    wget2_ca=(--ca-certificate="$CA")
  fi
  measure "$s" fetch "$out" "$m.fetch" "$n" "$FETCH" -q -j $J "${fetch_ca[@]}" --dir "$out" "$m.fetch"
  measure "$s" aria2c "$out" "$m.fetch" "$n" aria2c -q -j $J -x 1 -s 1 "${aria2_ca[@]}" --file-allocation=none \
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
  measure "$s" "curl --parallel" "$out" "$m.fetch" "$n" curl -s --parallel --parallel-max $J "${curl_ca[@]}" \
    --create-dirs --output-dir "$out" -K "$m.curl"
  measure "$s" wget2 "$out" "$m.fetch" "$n" wget2 -q --max-threads=$J "${wget2_ca[@]}" -nH -x -P "$out" \
    -i "$m.wget2"
}

# fault SCENARIO TOOL MANIFEST LIMIT SERVER CMD...: RUNS runs of CMD (cut
# off after LIMIT seconds) against a fresh faultd.py started with the
# arguments in SERVER; a row of faults.tsv each: wall time, what verify.py
# says, faultd's counts, and for fetch's --report the attempts on the dead
# port.
fault() {
  local scenario=$1 tool=$2 manifest=$3 limit=$4 server=$5 out=$WORK/out
  shift 5
  for _ in $(seq "$RUNS"); do
    rm -rf "$out" "$WORK/logs/report.jsonl" "$WORK/logs/connect.txt" && mkdir -p "$out" && sync
    # shellcheck disable=SC2086 # SERVER is a list of arguments
    python3 "$bench/faultd.py" $server > "$WORK/logs/faultd.jsonl" & faultd=$!
    until (exec 3<> /dev/tcp/127.0.0.1/18083) 2> /dev/null; do sleep 0.05; done
    local start end rc=0
    start=$(date +%s%N)
    timeout -s INT "$limit" "$@" > "$WORK/logs/$scenario-${tool//[^A-Za-z0-9.-]/_}.log" 2>&1 || rc=$?
    end=$(date +%s%N)
    kill -TERM "$faultd" && wait "$faultd" || true
    faultd=
    local ok attempts=-
    ok=$(python3 "$bench/verify.py" "$WORK" "$manifest" "$out" || true)
    [ $rc = 124 ] && ok="cut off at ${limit} s; $ok"
    if [ -s "$WORK/logs/connect.txt" ]; then
      attempts="$(grep -c 'htons(18099)' "$WORK/logs/connect.txt" || true) connection attempts"
    fi
    if [ -s "$WORK/logs/report.jsonl" ]; then
      attempts+="; $(python3 -c 'import json, sys
a = [json.loads(l)["attempts"] for l in open(sys.argv[1]) if ":18099/" in l]
print(f"attempts {sum(a)} in all, at most {max(a)} each")' "$WORK/logs/report.jsonl")"
    fi
    wall=$(awk -v ns=$((end - start)) 'BEGIN {printf "%.3f", ns / 1e9}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$wall" "$ok" "$(tail -1 "$WORK/logs/faultd.jsonl")" \
      "$attempts" >> "$WORK/faults.tsv"
    echo "  $scenario $tool: ${wall}s $ok $(tail -1 "$WORK/logs/faultd.jsonl") $attempts" >&2
  done
}

# fault_peers SCENARIO MANIFEST LIMIT SERVER: every tool, fetch with default
# options (its -j is 16, as the peers are run), the peers with the retries
# of issue 17.
fault_peers() {
  local s=$1 m=$2 limit=$3 server=$4 out=$WORK/out
  fault "$s" fetch "$m.fetch" "$limit" "$server" "$FETCH" -q --dir "$out" "$m.fetch"
  fault "$s" "aria2c --max-tries=6" "$m.fetch" "$limit" "$server" aria2c -q -j $J -x 1 -s 1 --max-tries=6 \
    --file-allocation=none --auto-file-renaming=false --allow-overwrite=true --summary-interval=0 \
    --dir "$out" -i "$m.aria2"
  fault "$s" "curl --retry 5 --retry-all-errors" "$m.fetch" "$limit" "$server" curl -s --parallel \
    --parallel-max $J --retry 5 --retry-all-errors --create-dirs --output-dir "$out" -K "$m.curl"
  fault "$s" "wget2 --tries=6" "$m.fetch" "$limit" "$server" wget2 -q --max-threads=$J --tries=6 -nH -x \
    -P "$out" -i "$m.wget2"
}

# refresh_measure TOOL OUT CMD...: one timed run against the refresh set as
# it is now, from warm caches as noop; a row of results.tsv, and one of
# refresh.tsv with what nginx's access log says it sent.
refresh_measure() {
  local tool=$1 out=$2 start end
  shift 2
  sync
  : > "$WORK/logs/refresh-access.log"
  start=$(date +%s%N)
  /usr/bin/time -f "%U %S %M" -o "$WORK/time.txt" "$@" > "$WORK/logs/refresh-${tool//[^A-Za-z0-9.-]/_}.log" 2>&1 || true
  end=$(date +%s%N)
  sleep 0.5 # nginx writes its log buffer every 100 ms
  ok=$(python3 "$bench/verify.py" "$WORK" "$WORK/m/refresh.fetch" "$out" || true)
  read -r user sys rss < <(tail -1 "$WORK/time.txt")
  wall=$(awk -v ns=$((end - start)) 'BEGIN {printf "%.3f", ns / 1e9}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' refresh "$tool" "$wall" "$user" "$sys" "$rss" "$ok" 200000 >> "$results"
  printf '%s\t%s\t%s\n' "$tool" "$wall" "$(python3 "$bench/refresh.py" "$WORK" bytes)" >> "$WORK/refresh.tsv"
  echo "  refresh $tool: ${wall}s $ok $(python3 "$bench/refresh.py" "$WORK" bytes)" >&2
}

for s in $SCENARIOS; do
  echo "== $s" >&2
  case $s in
    small | https-small | latency)
      python3 "$bench/gen.py" "$WORK" "$s"; peers "$s" $([ "$s" = latency ] && echo 100 || echo 2000) ;;
    large | https-large | capped) python3 "$bench/gen.py" "$WORK" "$s"; peers "$s" 4 ;;
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
    check)
      # What is on disk, against the manifest and a SHA256SUMS: many's
      # 200,000 one-byte files (written by checkdata.py, not downloaded) and
      # large's four 256 MiB files, read from a warm page cache (hashing,
      # not the disk: BENCH_DIR on tmpfs keeps other processes' cache drops
      # out). Peers: sha256sum -c, one process (one core), and one per core
      # for large.
      python3 "$bench/gen.py" "$WORK" many
      python3 "$bench/gen.py" "$WORK" large
      python3 "$bench/checkdata.py" "$WORK"
      m=$WORK/m out=$WORK/out-check
      cat "$out"/many/d0/* "$WORK"/www/large/*.bin > /dev/null
      measure check-many "fetch --check" "$out" "$m/many.fetch" 200000 \
        "$FETCH" --check -q -j $J --dir "$out" --checksums "$m/check-many.sha256" "$m/many.fetch"
      measure check-many "sha256sum -c" "$out" "$m/many.fetch" 200000 \
        sh -c "cd '$out' && sha256sum -c --quiet '$m/check-many.sha256'"
      measure check-large "fetch --check" "$WORK/www" "$m/large.fetch" 4 \
        "$FETCH" --check -q -j $J --dir "$WORK/www" --checksums "$m/check-large.sha256" "$m/large.fetch"
      measure check-large "sha256sum -c" "$WORK/www" "$m/large.fetch" 4 \
        sh -c "cd '$WORK/www' && sha256sum -c --quiet '$m/check-large.sha256'"
      measure check-large "sha256sum, $(nproc) at once" "$WORK/www" "$m/large.fetch" 4 \
        sh -c "cd '$WORK/www' && ls large/*.bin | xargs -P $(nproc) -n 1 sha256sum > /dev/null"
      # OpenSSL uses the CPU's SHA extensions, as the sha2 crate does;
      # coreutils' sha256sum does not.
      if command -v openssl > /dev/null; then
        measure check-large "openssl dgst -sha256" "$WORK/www" "$m/large.fetch" 4 \
          sh -c "cd '$WORK/www' && openssl dgst -sha256 large/*.bin > /dev/null"
      fi
      ;;
    ratelimit | ratelimit-nora)
      # 100 requests a second, 429 beyond, with Retry-After: 1 or without.
      python3 "$bench/gen.py" "$WORK" ratelimit
      fault_peers "$s" "$WORK/m/ratelimit" 600 "ratelimit 18083 100$([ "$s" = ratelimit-nora ] && echo " none")"
      ;;
    outage)
      # Each answer takes 160 ms, so 16 at once make 100 files a second and
      # a clean run about 30 s; the server goes 10 s after the first request
      # for 90 s. Once each: a run lasts two minutes.
      python3 "$bench/gen.py" "$WORK" outage
      m=$WORK/m/outage
      RUNS=1 fault outage "fetch, no outage" "$m.fetch" 600 "slow 18083 --delay 160" \
        "$FETCH" -q --dir "$WORK/out" "$m.fetch"
      RUNS=1 fault_peers outage "$m" 600 "outage 18083 10 90 --delay 160"
      ;;
    deadhost)
      # Nothing listens on 18099; the healthy server answers in 50 ms, so
      # its 2,000 entries alone take about 6 s at 16 at once. Every tool's
      # connection attempts to the dead port are counted (strace: connect(),
      # and sendto() for wget2's TCP Fast Open), fetch's also from its
      # --report. Peers cut off after 300 s.
      python3 "$bench/gen.py" "$WORK" deadhost
      m=$WORK/m/deadhost server="slow 18083 --delay 50"
      # (Tracing sendto() of the others too would stop them at every write.)
      trace=(strace -f -qq -o "$WORK/logs/connect.txt" -e trace=connect --seccomp-bpf)
      fault deadhost "fetch, healthy entries alone" "$WORK/m/deadhost-alone.fetch" 600 "$server" \
        "$FETCH" -q --dir "$WORK/out" "$WORK/m/deadhost-alone.fetch"
      fault deadhost "fetch --host-timeout 30s" "$m.fetch" 600 "$server" "${trace[@]}" \
        "$FETCH" -q --host-timeout 30s --report "$WORK/logs/report.jsonl" --dir "$WORK/out" "$m.fetch"
      fault deadhost "aria2c --max-tries=6" "$m.fetch" 300 "$server" "${trace[@]}" aria2c -q -j $J -x 1 -s 1 \
        --max-tries=6 --file-allocation=none --auto-file-renaming=false --allow-overwrite=true \
        --summary-interval=0 --dir "$WORK/out" -i "$m.aria2"
      fault deadhost "curl --retry 5 --retry-all-errors" "$m.fetch" 300 "$server" "${trace[@]}" curl -s \
        --parallel --parallel-max $J --retry 5 --retry-all-errors --create-dirs --output-dir "$WORK/out" \
        -K "$m.curl"
      fault deadhost "wget2 --tries=6" "$m.fetch" 300 "$server" "${trace[@]/%connect/connect,sendto}" wget2 -q --max-threads=$J \
        --tries=6 -nH -x -P "$WORK/out" -i "$m.wget2"
      ;;
    overloaded)
      # At most 4 requests at once, 50 ms each, 503 beyond: 1,000 files take
      # 12.5 s at best, which fetch -j 4 measures.
      python3 "$bench/gen.py" "$WORK" overloaded
      m=$WORK/m/overloaded
      fault overloaded "fetch -j 4 (K at a time)" "$m.fetch" 600 "overload 18083 4 50" \
        "$FETCH" -q -j 4 --dir "$WORK/out" "$m.fetch"
      fault_peers overloaded "$m" 600 "overload 18083 4 50"
      ;;
    refresh)
      # Each tool first brings its own copy up to date (untimed: a fresh
      # download the first time); then, RUNS times, 1% of the files become
      # a new version (bench/refresh.py flip) and the tool runs. fetch keeps
      # its validators in xattrs, wget2 -N its files' mtimes.
      python3 "$bench/gen.py" "$WORK" refresh
      m=$WORK/m/refresh version=0
      python3 "$bench/refresh.py" "$WORK" flip 0
      f=$WORK/out-refresh w=$WORK/out-refresh-wget2
      "$FETCH" -q -j $J --refresh --dir "$f" "$m.fetch" || true
      wget2 -q -N --max-threads=$J -nH -x -P "$w" -i "$m.wget2" || true
      for tool in "fetch --refresh" "fetch --overwrite" "wget2 -N"; do
        for _ in $(seq "$RUNS"); do
          version=$((version + 1))
          python3 "$bench/refresh.py" "$WORK" flip $version
          case $tool in
            "fetch --refresh") refresh_measure "$tool" "$f" "$FETCH" -q -j $J --refresh --dir "$f" "$m.fetch" ;;
            "fetch --overwrite") refresh_measure "$tool" "$f" "$FETCH" -q -j $J --overwrite --dir "$f" "$m.fetch" ;;
            # (wget2 missed the versions fetch ran against: still 1% changed.)
            "wget2 -N") refresh_measure "$tool" "$w" wget2 -q -N --max-threads=$J -nH -x -P "$w" -i "$m.wget2" ;;
          esac
        done
      done
      # wget2's runs changed the files again since fetch's last run.
      "$FETCH" -q -j $J --refresh --dir "$f" "$m.fetch" || true
      for _ in $(seq "$RUNS"); do
        refresh_measure "fetch --refresh, nothing changed" "$f" "$FETCH" -q -j $J --refresh --dir "$f" "$m.fetch"
        refresh_measure "wget2 -N, nothing changed" "$w" wget2 -q -N --max-threads=$J -nH -x -P "$w" -i "$m.wget2"
        refresh_measure "fetch, no-op skip" "$f" "$FETCH" -q -j $J --dir "$f" "$m.fetch"
      done
      ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

echo "## fetch benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo
echo "fetch $("$FETCH" --version | cut -d' ' -f2) (fsync on), $(aria2c --version | head -1), $(curl --version | head -1 | cut -d' ' -f1-2), $(wget2 --version | head -1 | cut -d' ' -f1-3); concurrency $J; median of $RUNS runs."
if [ -f "$WORK/www/large/f0.bin" ] && [ "$SCENARIOS" != check ]; then
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
python3 "$bench/faults.py" "$WORK/faults.tsv"
if [ -s "$WORK/refresh.tsv" ]; then python3 "$bench/refresh.py" "$WORK" table; fi
