//! Split downloads: a large file over several connections, each range
//! retried on its own, resumed across runs from the recorded ranges, and a
//! clean single-stream restart when the server cannot be trusted with ranges.

use std::process::Stdio;
use std::time::Duration;

use crate::core::sha256_hex;
use crate::server::Logged;
use crate::{Route, Server, content, fetch, fetch_std, files, run, wait_until, write};

const MIB: usize = 1 << 20;
const FAST: [&str; 4] = ["--retry-delay", "10ms", "--retry-max-delay", "50ms"];

/// About 3 MiB/s per connection: slow enough that a file of 16 MiB is
/// worth splitting (over 2 s on one connection).
fn throttled(body: &[u8]) -> Route {
    Route { throttle: Some((64 * 1024, Duration::from_millis(20))), ..Route::new(body.to_vec()) }
}

/// The `(first, last)` byte of every request that asked for a range.
fn ranges(log: &[Logged]) -> Vec<(u64, u64)> {
    log.iter()
        .filter_map(Logged::range)
        .map(|(start, end)| (start, end.expect("ranges of a split file have an end")))
        .collect()
}

/// Check that the range requests in `log` asked for no byte twice, were
/// each sent in full, and together asked for `from..total`; returns `from`.
fn asked_once(log: &[Logged], total: u64) -> u64 {
    let mut asked: Vec<_> = log.iter().filter(|l| l.range().is_some()).collect();
    for l in &asked {
        let (start, last) = l.range().map(|(s, e)| (s, e.unwrap())).unwrap();
        assert_eq!(l.sent() as u64, last + 1 - start, "{start}-{last} was not sent in full");
    }
    asked.sort_by_key(|l| l.range());
    let ranges = ranges(&asked.into_iter().cloned().collect::<Vec<_>>());
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "asked twice or never: {ranges:?}");
    }
    assert_eq!(ranges.last().unwrap().1 + 1, total, "{ranges:?}");
    ranges[0].0
}

#[test]
fn a_large_file_is_fetched_over_several_connections_at_once() {
    let server = Server::start();
    let body = content(21, 64 * MIB);
    // About 12.5 MiB/s per connection: 5 s on one.
    server
        .route("/big", Route { throttle: Some((256 * 1024, Duration::from_millis(20))), ..throttled(&body) });
    let tmp = tempfile::tempdir().unwrap();
    let line = format!(
        "{{\"url\": \"{}\", \"path\": \"big\", \"sha256\": \"{}\"}}",
        server.url("/big"),
        sha256_hex(&body)
    );
    write(tmp.path(), "m.txt", &line);
    let out = run(fetch(tmp.path()).args(["-v", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    assert!(out.stderr.contains("split       big: 16 connections"), "{}", out.stderr);

    let log = server.requests_to("/big");
    assert_eq!((log[0].range(), log[0].status), (None, 200), "a plain GET decides");
    let etag = Route::new(body.clone()).etag.unwrap();
    assert!(log[1..].iter().all(|l| l.status == 206 && l.header("if-range") == Some(etag.as_str())));
    let ranges = ranges(&log[1..]);
    assert!(ranges.len() >= 7, "{ranges:?}");
    assert!(server.max_in_flight() >= 6, "only {} requests at once", server.max_in_flight());
    // The plain GET is the only request cut short: it stops where the
    // ranges begin, and what its connection had in flight then (its socket
    // buffers: 32 to 260 KiB in 10 runs on a loaded machine) is the only
    // part of the file sent twice.
    let ranges_from = asked_once(&log[1..], body.len() as u64) as usize;
    let over = log[0].sent() - ranges_from;
    assert_eq!(server.body_bytes(), body.len() + over);
    assert!(over <= 4 * MIB, "the first response ran {over} bytes past its end");

    let report: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    assert_eq!(report["bytes"], body.len());
    assert_eq!(report["attempts"], log.len());
    assert_eq!(files(tmp.path()), ["big", "m.txt", "r.jsonl"]);
}

#[test]
fn pieces_from_a_fast_server_land_at_their_offsets() {
    // A fast server is not worth splitting for, except to finish a split
    // an earlier run began: then every connection starts at once and the
    // unthrottled ranges race each other. Here nothing was done yet.
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let bodies: Vec<_> = (0..3).map(|i| content(30 + i, 12 * MIB + 12345 * i as usize)).collect();
    let mut manifest = String::new();
    for (i, body) in bodies.iter().enumerate() {
        let route = Route::new(body.clone());
        let url = server.url(&format!("/f{i}"));
        let meta = serde_json::json!({"url": url, "etag": route.etag, "total": body.len(), "done": []});
        std::fs::write(tmp.path().join(format!("f{i}.fetch-part.meta")), meta.to_string()).unwrap();
        let part = std::fs::File::create(tmp.path().join(format!("f{i}.fetch-part"))).unwrap();
        part.set_len(body.len() as u64).unwrap();
        server.route(&format!("/f{i}"), route);
        manifest +=
            &format!("{{\"url\": \"{url}\", \"path\": \"f{i}\", \"sha256\": \"{}\"}}\n", sha256_hex(body));
    }
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["--split-size", "4M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    for (i, body) in bodies.iter().enumerate() {
        assert!(std::fs::read(tmp.path().join(format!("f{i}"))).unwrap() == *body, "f{i} differs");
        let asked = ranges(&server.requests_to(&format!("/f{i}")));
        assert!(asked.len() >= 6, "f{i} was not split: {asked:?}");
    }
    assert_eq!(files(tmp.path()), ["f0", "f1", "f2", "m.txt"]);
}

#[test]
fn a_fault_in_one_range_is_retried_in_that_range_alone() {
    let server = Server::start();
    let body = content(22, 16 * MIB);
    // The first response (the plain GET) is good; then one range gets a
    // 503 and the next is cut 1 MiB into its body.
    let faulty = Route { statuses: [(503, None)].into(), cuts: [MIB].into(), ..throttled(&body) };
    server.route("/big", Route { then: Some(Box::new(faulty)), ..throttled(&body) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big", server.url("/big")));
    let out = run(fetch(tmp.path()).args(FAST).args([
        "-v",
        "--split-size",
        "1M",
        "--max-connections-per-file",
        "4",
        "m.txt",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");

    let log = server.requests_to("/big");
    assert!(log.iter().any(|l| l.status == 503), "{log:?}");
    let (cut_start, _) = log.iter().find(|l| l.cut.is_some()).and_then(Logged::range).unwrap();
    let resumed_at = cut_start + MIB as u64;
    assert!(
        log.iter().any(|l| l.range().is_some_and(|(start, _)| start == resumed_at)),
        "no request resumed the cut range at its cut, {resumed_at}: {log:?}"
    );
    // Pieces given up to a thief end their responses early, so a little
    // more than the file is sent; restarting a range would send far more.
    let sent = server.body_bytes();
    assert!(sent < body.len() + 2 * MIB, "{sent} bytes sent for {}", body.len());
    assert!(out.stderr.contains("retry       big"), "{}", out.stderr);
    assert!(out.stderr.contains("16.0 MiB in"), "received bytes are counted once: {}", out.stderr);
}

#[test]
fn a_range_spends_its_budget_only_on_failures_without_progress() {
    // A split begun by an earlier run, finished on one connection: one
    // worker, one budget, two retries allowed.
    let server = Server::start();
    let body = content(31, 4 * MIB);
    let url = server.url("/big");
    let tmp = tempfile::tempdir().unwrap();
    let etag = Route::new(body.clone()).etag;
    let meta = serde_json::json!({"url": url, "etag": etag, "total": body.len(), "done": []});
    std::fs::write(tmp.path().join("big.fetch-part.meta"), meta.to_string()).unwrap();
    std::fs::File::create(tmp.path().join("big.fetch-part")).unwrap().set_len(body.len() as u64).unwrap();
    write(tmp.path(), "m.txt", &format!("{url} big"));
    let args = ["--retries", "2", "--max-connections-per-file", "1", "m.txt"];

    // Failures of the entry's own (a 500, while the host is not paused)
    // that bring nothing: given up after three attempts, each wait the
    // fixed 50 ms backoff.
    let failing = std::iter::repeat_n((500, None), 10).collect();
    server.route("/big", Route { statuses: failing, ..Route::new(body.clone()) });
    let fixed = ["--retry-delay", "50ms", "--retry-max-delay", "50ms"];
    let out = run(fetch(tmp.path()).args(fixed).arg("-v").args(args));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("big: HTTP 500 Internal Server Error (after 3 attempts)"), "{}", out.stderr);
    let waits: Vec<_> =
        out.stderr.lines().filter_map(|l| l.split_once("; retrying in ")).map(|(_, w)| w).collect();
    assert_eq!(waits, ["50ms", "50ms"], "{}", out.stderr);
    assert_eq!(server.requests_to("/big").len(), 3);

    // Five cuts in a row, each after new bytes: every one starts afresh.
    let cut = 100_000;
    server.route("/big", Route { cuts: std::iter::repeat_n(cut, 5).collect(), ..Route::new(body.clone()) });
    let out = run(fetch(tmp.path()).args(FAST).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    let log = &server.requests_to("/big")[3..];
    let starts: Vec<_> = log.iter().take(6).map(|l| l.range().unwrap().0).collect();
    assert_eq!(starts, (0..6).map(|i| i * cut as u64).collect::<Vec<_>>(), "each retry resumed at its cut");
    assert_eq!(log.iter().filter(|l| l.cut.is_some()).count(), 5);
}

#[test]
fn after_kill_9_a_split_download_fetches_only_the_missing_ranges() {
    let server = Server::start();
    let body = content(23, 32 * MIB);
    // About 3 MiB/s per connection: 2.5 s over four.
    server.route(
        "/big",
        Route { throttle: Some((64 * 1024, Duration::from_millis(20))), ..Route::new(body.clone()) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big", server.url("/big")));
    let args = ["--split-size", "1M", "--max-connections-per-file", "4", "m.txt"];
    let mut child =
        fetch_std(tmp.path()).args(args).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let meta = tmp.path().join("big.fetch-part.meta");
    let done = || -> Vec<(u64, u64)> {
        let Ok(text) = std::fs::read(&meta) else { return Vec::new() };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else { return Vec::new() };
        let ranges = value["done"].as_array().cloned().unwrap_or_default();
        ranges.iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect()
    };
    let bytes = |ranges: &[(u64, u64)]| ranges.iter().map(|(s, e)| e - s).sum::<u64>();
    let recorded = wait_until(Duration::from_secs(20), || bytes(&done()) >= 4 * MIB as u64);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(recorded, "no ranges were recorded");
    let done = done();
    assert!(bytes(&done) < body.len() as u64, "killed too late: {done:?}");
    assert!(!tmp.path().join("big").exists());

    let before = server.log().len();
    let sent_before = server.body_bytes();
    let out = run(fetch(tmp.path()).args(args).arg("-v"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    let rerun = &server.log()[before..];
    let asked = ranges(rerun);
    assert_eq!(asked.len(), rerun.len(), "every request of the rerun is for a range: {rerun:?}");
    for &(start, last) in &asked {
        for &(s, e) in &done {
            assert!(last < s || start >= e, "{start}-{last} asks again for recorded bytes {s}..{e}");
        }
    }
    let sent = (server.body_bytes() - sent_before) as u64;
    let missing = body.len() as u64 - bytes(&done);
    assert!(sent >= missing && sent < missing + MIB as u64, "sent {sent} for {missing} missing bytes");
    assert!(out.stderr.contains("resuming at"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["big", "m.txt"]);
}

#[test]
fn a_server_that_ignores_ranges_gets_one_clean_stream() {
    let server = Server::start();
    let body = content(24, 16 * MIB);
    // Slow at first, so that the file is split; then fast, so that the
    // single stream it falls back to does not hold the test up.
    let fast = Route { ignore_range: true, ..Route::new(body.clone()) };
    server.route("/big", Route { ignore_range: true, then: Some(Box::new(fast)), ..throttled(&body) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big", server.url("/big")));
    let out = run(fetch(tmp.path()).args(["-v", "--split-size", "1M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    assert!(out.stderr.contains("downloading as one stream"), "{}", out.stderr);
    // A range request aborted with the split may reach the server after
    // the plain GET that replaced it: look for that GET, not at the end.
    let log = server.requests_to("/big");
    let first_range = log.iter().position(|l| l.range().is_some()).expect("the file was split");
    let clean = log[first_range..].iter().any(|l| (l.range(), l.status) == (None, 200));
    assert!(clean, "no plain GET after the ranges: {log:?}");
    assert_eq!(files(tmp.path()), ["big", "m.txt"]);
}

#[test]
fn a_file_that_changes_during_a_split_download_restarts_cleanly() {
    let server = Server::start();
    let old = content(25, 16 * MIB);
    let new = content(26, 16 * MIB);
    server.route("/big", Route { then: Some(Box::new(Route::new(new.clone()))), ..throttled(&old) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big", server.url("/big")));
    let out = run(fetch(tmp.path()).args(["-v", "--split-size", "1M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == new, "not the new file's bytes");
    assert!(out.stderr.contains("downloading as one stream"), "{}", out.stderr);
}

#[test]
fn an_idle_connection_takes_over_the_rest_of_a_stalled_range() {
    // A split begun by an earlier run: two pieces of 3 MiB, each worker
    // asking for 1 MiB first. The first request stalls; the other worker
    // finishes its piece meanwhile and takes half of what the stalled one
    // has not asked for, without asking for any byte twice.
    let server = Server::start();
    let body = content(27, 6 * MIB);
    let stalling = Route { stalls: [(0, Duration::from_secs(4))].into(), ..Route::new(body.clone()) };
    let url = server.url("/big");
    let tmp = tempfile::tempdir().unwrap();
    let meta = serde_json::json!({"url": url, "etag": stalling.etag, "total": body.len(), "done": []});
    std::fs::write(tmp.path().join("big.fetch-part.meta"), meta.to_string()).unwrap();
    let part = std::fs::File::create(tmp.path().join("big.fetch-part")).unwrap();
    part.set_len(body.len() as u64).unwrap();
    server.route("/big", stalling);
    write(tmp.path(), "m.txt", &format!("{url} big"));
    let out = run(fetch(tmp.path()).args(["--split-size", "1M", "--max-connections-per-file", "2", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    let log = server.requests_to("/big");
    assert_eq!(asked_once(&log, body.len() as u64), 0);
    assert_eq!(server.body_bytes(), body.len(), "no byte is sent twice");
    let (start, last) = log.iter().find(|l| l.stalled).and_then(Logged::range).unwrap();
    let (last, piece_end) = (last.unwrap(), if start == 0 { 3 * MIB as u64 } else { body.len() as u64 });
    assert_eq!(last + 1 - start, MIB as u64, "the first window is 1 MiB");
    let asked = ranges(&log);
    let taken = asked.iter().find(|&&(s, _)| s > last + 1 && s < piece_end);
    assert!(taken.is_some(), "nothing of the stalled piece {start}..{piece_end} was taken over: {asked:?}");
    assert!(asked.iter().all(|(s, _)| s % 4096 == 0), "pieces are split at page boundaries: {asked:?}");
}

/// Fetch `/slow` (16 s on one connection) from `slow_at` beside `/fast`
/// (32 MiB in `chunks` chunks 8 ms apart) from `fast_at`, and check that
/// both arrive and `/slow` is split. Returns the run's stderr and how much
/// of `/fast` had been sent when the first range of `/slow` was asked for
/// (what was done then, whatever the clock of a loaded machine says),
/// over all of `/fast`'s requests: on one server exactly, from the server's
/// log; on two, at most, read as soon as the range is seen.
fn slow_beside_fast(slow_at: &Server, fast_at: &Server, chunks: usize) -> (String, usize) {
    let slow = content(29, 16 * MIB);
    slow_at
        .route("/slow", Route { throttle: Some((64 * 1024, Duration::from_millis(60))), ..throttled(&slow) });
    let fast = content(30, 32 * MIB);
    let chunk = fast.len() / chunks;
    fast_at.route("/fast", Route { throttle: Some((chunk, Duration::from_millis(8))), ..throttled(&fast) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} slow\n{} fast\n", slow_at.url("/slow"), fast_at.url("/fast")));
    let mut child = fetch_std(tmp.path())
        .args(["-v", "--split-size", "1M", "m.txt"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first_range = || slow_at.requests_to("/slow").into_iter().find(|l| l.range().is_some());
    // Until the split, or the run's end without one.
    wait_until(Duration::from_secs(60), || first_range().is_some() || child.try_wait().unwrap().is_some());
    let split = first_range().is_some();
    let fast_sent_by_then: usize = fast_at.requests_to("/fast").iter().map(Logged::sent).sum();
    let out = crate::finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(split, "/slow was never split: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(std::fs::read(tmp.path().join("slow")).unwrap() == slow);
    assert!(std::fs::read(tmp.path().join("fast")).unwrap() == fast);
    assert!(stderr.contains("split       slow: 16 connections"), "{stderr}");
    let ranges: Vec<_> = slow_at.requests_to("/slow").into_iter().filter(|l| l.range().is_some()).collect();
    assert!(ranges.len() >= 7, "{ranges:?}");
    let fast = ranges[0].earlier_sent.iter().filter(|(path, _)| path == "/fast").map(|&(_, sent)| sent);
    let same_server = std::ptr::eq(slow_at, fast_at);
    (stderr, if same_server { fast.sum() } else { fast_sent_by_then })
}

#[test]
fn a_file_outpaced_by_the_others_splits_only_once_they_are_done() {
    // `/slow` alone would split at once, but while `/fast` takes most of
    // what the host sends, the bottleneck is shared and more connections
    // cannot help: it splits only once `/fast` is all sent.
    let server = Server::start();
    let (stderr, fast_sent) = slow_beside_fast(&server, &server, 128);
    assert!(!stderr.contains("split       fast"), "{stderr}");
    assert_eq!(fast_sent, 32 * MIB, "split while /fast was still being sent");
}

#[test]
fn a_file_capped_by_its_host_splits_while_another_host_runs_fast() {
    // The same pair, but `/fast` comes from another host (and takes 16 s):
    // `/slow` is capped by its own server, which more connections do get
    // around. It splits while `/fast` is still being sent.
    let server = Server::start();
    let other = Server::start_on("127.0.0.2".parse().unwrap());
    let (_, fast_sent) = slow_beside_fast(&server, &other, 2048);
    assert!(fast_sent < 32 * MIB, "split only once /fast was done");
}

#[test]
fn small_files_and_one_connection_per_file_are_not_split() {
    let server = Server::start();
    let body = content(28, 4 * MIB);
    server.route("/big", Route::new(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} a\n", server.url("/big")));
    // Under the default --split-size of 64M.
    assert_eq!(run(fetch(tmp.path()).arg("m.txt")).code, Some(0));
    write(tmp.path(), "m.txt", &format!("{} b\n", server.url("/big")));
    let out = run(fetch(tmp.path()).args(["--split-size", "1M", "--max-connections-per-file", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/big").len(), 2);
    assert!(std::fs::read(tmp.path().join("b")).unwrap() == body);
    // Over --split-size, but so fast that more connections would not help:
    // done before it is first judged, or (at about 8 MiB/s) judged a few
    // times, every 100 ms, with under a second to go, where a split needs
    // over two.
    let paced = Route { throttle: Some((64 * 1024, Duration::from_millis(8))), ..Route::new(body.clone()) };
    server.route("/paced", paced);
    for (path, dest) in [("/big", "c"), ("/paced", "d")] {
        write(tmp.path(), "m.txt", &format!("{} {dest}\n", server.url(path)));
        let out = run(fetch(tmp.path()).args(["-v", "--split-size", "1M", "m.txt"]));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(std::fs::read(tmp.path().join(dest)).unwrap() == body);
        assert!(!out.stderr.contains("split "), "{}", out.stderr);
    }
    assert_eq!(server.requests_to("/big").len(), 3);
    assert_eq!(server.requests_to("/paced").len(), 1);
    let bad = run(fetch(tmp.path()).args(["--split-size", "1X", "m.txt"]));
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("invalid size unit"), "{}", bad.stderr);
}
