//! The run's limits on bodies (issue 19): `--limit-rate` holds every
//! transfer together to the rate, `--speed-limit`/`--speed-time` fail and
//! retry an attempt that trickles, and `--max-filesize` refuses a file
//! larger than it, with or without `Content-Length`.
//!
//! The rate is checked as an upper bound on both sides: the bytes on disk,
//! and those the server sent, gain no more in any window of time than the
//! rate times the window plus a burst (the bucket's and the write buffer's
//! on disk; on the wire, also what the socket buffers between the two
//! hold). A slow machine only moves fewer bytes, so it cannot break it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Route, Server, content, fetch, fetch_std, files, finish, report, run, write};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const FAST: [&str; 4] = ["--retry-delay", "10ms", "--retry-max-delay", "50ms"];

/// `--limit-rate 1M` in bytes per second.
const LIMIT: usize = MIB;
/// What the files on disk may gain beyond `rate x window`: the bucket's
/// burst (50 KiB at this rate), a quantum owed per transfer, and the
/// 256 KiB a partial file gathers before a write, per transfer.
const DISK_BURST: usize = 700 * KIB;
/// What the server may send beyond `rate x window`: the same, and per
/// connection what the server's socket buffer (32 KiB here), the client's
/// (which Linux grows past a MiB as hyper reads up to 400 KiB at once) and
/// hyper's read buffer hold: 3.3 to 4.7 MiB measured for the two
/// connections here.
const SENT_BURST: usize = 8 * MIB;

/// The most bytes `samples` of `(from, to, bytes)` show gained in any
/// window beyond `rate x window`: a sample's bytes were counted at some
/// moment between its `from` and `to`, so the window between two is taken
/// at its longest, and a machine that is slow to sample cannot make it
/// look faster.
fn worst_excess(samples: &[(Instant, Instant, usize)], rate: usize) -> f64 {
    let mut worst = 0.0f64;
    for (i, &(from, _, before)) in samples.iter().enumerate() {
        for &(_, to, after) in &samples[i..] {
            let allowed = rate as f64 * (to - from).as_secs_f64();
            worst = worst.max(after as f64 - before as f64 - allowed);
        }
    }
    worst
}

/// Bytes of `name` in `dir`, whether still a partial file or in place.
fn on_disk(dir: &Path, name: &str) -> usize {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len() as usize);
    size(dir.join(format!("{name}.fetch-part"))).max(size(dir.join(name)))
}

#[test]
fn limit_rate_holds_all_transfers_together_to_the_rate_in_every_window() {
    let server = Server::start_with_send_buffer(16 * KIB as u32);
    let (a, b) = (content(1, 9 * MIB / 2), content(2, 9 * MIB / 2));
    for (path, body) in [("/a", &a), ("/b", &b)] {
        // 16 KiB frames: a fine-grained record of what was sent when.
        let route = Route { throttle: Some((16 * KIB, Duration::ZERO)), ..Route::new(body.clone()) };
        server.route(path, route);
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} a\n{} b\n", server.url("/a"), server.url("/b")));
    let stderr = std::fs::File::create(tmp.path().join("err.txt")).unwrap();
    // One stream each, so that a partial file's length is what was written.
    let mut child = fetch_std(tmp.path())
        .args(["--limit-rate", "1M", "--max-connections-per-file", "1", "-v", "--progress", "bar", "m.txt"])
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    // What the two files hold on disk, every 20 ms until the run ends.
    let mut samples = Vec::new();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60) {
        let from = Instant::now();
        let bytes = on_disk(tmp.path(), "a") + on_disk(tmp.path(), "b");
        samples.push((from, Instant::now(), bytes));
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = finish(child).status;
    let stderr = std::fs::read_to_string(tmp.path().join("err.txt")).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(std::fs::read(tmp.path().join("a")).unwrap() == a, "a differs");
    assert!(std::fs::read(tmp.path().join("b")).unwrap() == b, "b differs");

    let excess = worst_excess(&samples, LIMIT);
    assert!(excess <= DISK_BURST as f64, "{excess:.0} bytes over the rate on disk in some window");
    let sent: Vec<_> = server.sent_at().into_iter().map(|(at, n)| (at, at, n)).collect();
    let sent: Vec<_> = sent
        .iter()
        .scan(0, |total, &(at, _, n)| {
            *total += n;
            Some((at, at, *total))
        })
        .collect();
    assert_eq!(sent.last().map(|s| s.2), Some(9 * MIB));
    let excess = worst_excess(&sent, LIMIT);
    assert!(excess <= SENT_BURST as f64, "{excess:.0} bytes sent over the rate in some window");
    // Said with -v, and beside the rate on the bars.
    assert!(stderr.contains("limit       bodies limited to 1.0 MiB/s for the whole run"), "{stderr}");
    assert!(stderr.contains("(limited to 1.0 MiB/s)"), "{stderr}");
}

#[test]
fn a_file_slow_only_because_of_the_limit_is_not_split() {
    let server = Server::start();
    let body = server.file("/big", 10, 8 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big\n", server.url("/big")));
    // Four seconds at the limit, on one connection: slow enough to split,
    // but more connections would be no faster, and each would hold more
    // bytes in its buffers beyond the limit.
    let out = run(fetch(tmp.path()).args(["-v", "--limit-rate", "2M", "--split-size", "1M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    assert_eq!(server.requests_to("/big").len(), 1, "split: {}", out.stderr);
}

#[test]
fn a_trickling_server_is_failed_as_too_slow_and_the_retry_resumes() {
    let server = Server::start();
    let body = content(3, 64 * KIB);
    // A byte every 200 ms, then (the next response) at full speed.
    let trickle = Route {
        throttle: Some((1, Duration::from_millis(200))),
        then: Some(Box::new(Route::new(body.clone()))),
        ..Route::new(body.clone())
    };
    server.route("/slow", trickle);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} slow\n", server.url("/slow")));
    let out = run(fetch(tmp.path())
        .args(["-v", "--speed-limit", "1K", "--speed-time", "2s", "--report", "r.jsonl", "m.txt"])
        .args(FAST));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("slow")).unwrap() == body, "bytes differ");
    assert!(
        out.stderr.contains("attempt 1 failed: too slow: ")
            && out.stderr.contains("below --speed-limit 1024 bytes/s for --speed-time 2s"),
        "{}",
        out.stderr
    );
    let log = server.requests_to("/slow");
    assert_eq!(log.len(), 2, "{log:?}");
    // The retry resumed where the trickle stopped.
    let (from, _) = log[1].range().expect("the retry resumes");
    assert!(from > 0 && from as usize <= log[0].sent(), "resumed at {from} of {}", log[0].sent());
    assert_eq!(report(&tmp.path().join("r.jsonl"))["slow"]["attempts"], 2);
}

#[test]
fn a_slow_server_above_the_speed_limit_is_not_failed() {
    let server = Server::start();
    // 8 KiB every 100 ms: about 80 KiB/s for 3 s, far above 1 KiB/s.
    let body = content(4, 240 * KIB);
    server.route(
        "/slow",
        Route { throttle: Some((8 * KIB, Duration::from_millis(100))), ..Route::new(body.clone()) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} slow\n", server.url("/slow")));
    let out = run(fetch(tmp.path()).args(["--speed-limit", "1K", "--speed-time", "2s", "m.txt"]).args(FAST));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("slow")).unwrap() == body, "bytes differ");
    assert_eq!(server.requests_to("/slow").len(), 1);
}

#[test]
fn max_filesize_refuses_an_announced_length_before_writing() {
    let server = Server::start();
    let exact = server.file("/exact", 5, 1000);
    server.file("/big", 6, 1001);
    server.file("/listed", 7, 500);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{} exact\n{} big\n{{\"url\": \"{}\", \"path\": \"listed\", \"size\": 5000}}\n",
        server.url("/exact"),
        server.url("/big"),
        server.url("/listed"),
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path())
        .args(["--max-filesize", "1000", "--retries", "3", "--report", "r.jsonl", "m.txt"])
        .args(FAST));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(std::fs::read(tmp.path().join("exact")).unwrap() == exact, "a file at the limit is fetched");
    let records = report(&tmp.path().join("r.jsonl"));
    let error = |path: &str| records[path]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(error("big"), "the file is 1001 bytes, over --max-filesize 1000 bytes");
    assert_eq!(error("listed"), "the file is 5000 bytes, over --max-filesize 1000 bytes");
    // No retry; the manifest's size is refused before any request.
    assert_eq!(server.requests_to("/big").len(), 1);
    assert_eq!(server.requests_to("/listed").len(), 0);
    assert_eq!(files(tmp.path()), ["exact", "m.txt", "r.jsonl"], "no partial is left behind");
}

#[test]
fn max_filesize_stops_a_body_without_length_as_soon_as_it_passes() {
    let server = Server::start();
    let exact = content(8, 1000);
    server.route("/exact", Route { chunked: true, ..Route::new(exact.clone()) });
    server.route("/endless", Route { chunked: true, ..Route::new(content(9, 64 * MIB)) });
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "m.txt",
        &format!("{} exact\n{} endless\n", server.url("/exact"), server.url("/endless")),
    );
    let out = run(fetch(tmp.path())
        .args(["--max-filesize", "1000", "--retries", "3", "--report", "r.jsonl", "m.txt"])
        .args(FAST));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(std::fs::read(tmp.path().join("exact")).unwrap() == exact, "a body at the limit is fetched");
    let records = report(&tmp.path().join("r.jsonl"));
    let error = records["endless"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("the file is over --max-filesize 1000 bytes (no length announced; stopped at "),
        "{error}"
    );
    let log = server.requests_to("/endless");
    assert_eq!(log.len(), 1, "no retry");
    assert!(log[0].header("range").is_none());
    // Stopped at once: not read to the end of 64 MiB.
    assert!(log[0].sent() < 16 * MIB, "{} bytes sent", log[0].sent());
    assert_eq!(files(tmp.path()), ["exact", "m.txt", "r.jsonl"], "no partial is left behind");
}

#[test]
fn limits_that_cannot_work_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "");
    let out = run(fetch(tmp.path()).args(["--limit-rate", "1M", "--speed-limit", "1M", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--speed-limit (1048576 bytes/s) is not below --limit-rate"),
        "{}",
        out.stderr
    );
    let out = run(fetch(tmp.path()).args(["--limit-rate", "0", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--limit-rate 0"), "{}", out.stderr);
    // curl's -y alone: a floor of 1 byte/s, below any rate limit.
    let out = run(fetch(tmp.path()).args(["--limit-rate", "1K", "--speed-time", "5s", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
}
