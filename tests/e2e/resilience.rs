//! Retries, backoff and resume: each fault a user meets on a flaky network,
//! injected by the server, and what must come of it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::{Route, Server, content, fetch, fetch_std, files, finish, run, wait_until, write};

/// Fast waits for tests that do not measure them.
const FAST: [&str; 4] = ["--retry-delay", "10ms", "--retry-max-delay", "50ms"];

fn range_start(l: &crate::server::Logged) -> Option<u64> {
    l.header("range")?.strip_prefix("bytes=")?.trim_end_matches('-').parse().ok()
}

#[test]
fn a_body_cut_midway_is_resumed_with_range() {
    let server = Server::start();
    let body = content(7, 300_000);
    server.route("/f", Route { cuts: [60_000, 70_000, 80_000].into(), ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let log = server.requests_to("/f");
    assert_eq!(log.len(), 4);
    assert_eq!(range_start(&log[0]), None);
    let starts: Vec<_> = log[1..].iter().map(|l| range_start(l).unwrap()).collect();
    assert_eq!(starts, [60_000, 130_000, 210_000]);
    let etag = Route::new(body.clone()).etag.unwrap();
    assert!(log[1..].iter().all(|l| l.header("if-range") == Some(etag.as_str())));
    assert!(server.body_bytes() < 2 * body.len(), "re-sent too much: {}", server.body_bytes());
    assert_eq!(files(tmp.path()), ["f", "m.txt"]);
}

#[test]
fn transient_statuses_are_retried_and_permanent_ones_are_not() {
    let server = Server::start();
    server.route(
        "/flaky",
        Route { statuses: [(502, None), (503, None), (500, None)].into(), ..Route::new("ok") },
    );
    server.route("/busy", Route { statuses: [(408, None), (504, None)].into(), ..Route::new("ok") });
    for code in [404, 401, 403, 410] {
        server.route(&format!("/e{code}"), Route { statuses: [(code, None)].into(), ..Route::new("x") });
    }
    let tmp = tempfile::tempdir().unwrap();
    let manifest: String = ["/flaky", "/busy", "/e404", "/e401", "/e403", "/e410"]
        .iter()
        .map(|p| server.url(p) + "\n")
        .collect();
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("flaky")).unwrap(), "ok");
    assert_eq!(server.requests_to("/flaky").len(), 4);
    assert_eq!(server.requests_to("/busy").len(), 3);
    for code in [404, 401, 403, 410] {
        assert_eq!(server.requests_to(&format!("/e{code}")).len(), 1, "{code} makes exactly one request");
        assert!(!tmp.path().join(format!("e{code}")).exists());
    }
    assert!(out.stderr.contains("e404: HTTP 404 Not Found"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["busy", "flaky", "m.txt"], "no partials after permanent failures");
}

/// How long `fetch` waited before asking for `path` again: from the
/// server's first answer to its second request.
fn wait_before_retry(server: &Server, path: &str) -> Duration {
    let log = server.requests_to(path);
    assert_eq!(log.len(), 2, "{path}: one retry");
    log[1].at.duration_since(log[0].at)
}

#[test]
fn retry_after_is_honoured_for_real() {
    let server = Server::start();
    server.route("/f", Route { statuses: [(429, Some("2".into()))].into(), ..Route::new("ok") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // The backoff alone would wait 10 ms: the 2 s can only come from Retry-After.
    let out = run(fetch(tmp.path()).args(["--retry-delay", "10ms", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let waited = wait_before_retry(&server, "/f");
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
}

#[test]
fn retry_after_dates_and_caps() {
    let server = Server::start();
    let date = httpdate_in(Duration::from_secs(3600));
    server.route("/date", Route { statuses: [(503, Some(date))].into(), ..Route::new("a") });
    server.route("/long", Route { statuses: [(429, Some("100".into()))].into(), ..Route::new("b") });
    let tmp = tempfile::tempdir().unwrap();
    let manifest: String = ["/date", "/long"].iter().map(|p| server.url(p) + "\n").collect();
    write(tmp.path(), "m.txt", &manifest);
    // An hour and 100 s, both capped at --retry-max-delay; the backoff
    // alone would wait 10 to 20 ms. Uncapped, the run would outlast this
    // 20 s limit.
    // One at a time: both answers pause their host, and each entry's
    // announced wait is its own Retry-After only when they do not overlap.
    let args = ["-v", "-j", "1", "--retry-delay", "10ms", "--retry-max-delay", "500ms", "m.txt"];
    let out = run(fetch(tmp.path()).args(args).timeout(Duration::from_secs(20)));
    assert_eq!(out.code, Some(0), "{out:?}");
    for path in ["/date", "/long"] {
        let announced = format!("retry       {}: attempt 1 failed: ", &path[1..]);
        let line =
            out.stderr.lines().find(|l| l.starts_with(&announced)).unwrap_or_else(|| panic!("{out:?}"));
        // The host's pause, capped at 500ms, as much of it as is left when
        // the line is written: a loaded machine takes a few ms of it first.
        let ms: u64 = line
            .rsplit_once("; retrying in ")
            .and_then(|(_, w)| w.strip_suffix("ms")?.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!((400..=500).contains(&ms), "{line}");
        let waited = wait_before_retry(&server, path);
        assert!(waited >= Duration::from_millis(500), "{path}: waited only {waited:?}");
    }
}

fn httpdate_in(d: Duration) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-R", "-d", &format!("+{} seconds", d.as_secs())])
        .output()
        .unwrap();
    // RFC 2822 `+0000` to the HTTP date's `GMT`.
    String::from_utf8(out.stdout).unwrap().trim().replace("+0000", "GMT")
}

#[test]
fn exhausted_retries_fail_with_the_reason_and_no_destination() {
    let server = Server::start();
    // A 500 is the entry's own failure (a 503 would pause the host instead).
    server.route("/f", Route { statuses: std::iter::repeat_n((500, None), 10).collect(), ..Route::new("x") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "2", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(server.requests_to("/f").len(), 3, "--retries 2 is three attempts");
    assert!(out.stderr.contains("f: HTTP 500 Internal Server Error (after 3 attempts)"), "{}", out.stderr);
    assert!(!tmp.path().join("f").exists());
}

#[test]
fn attempts_that_make_progress_do_not_use_up_the_budget() {
    let server = Server::start();
    let body = content(3, 200_000);
    server.route("/f", Route { cuts: std::iter::repeat_n(20_000, 8).collect(), ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // Eight cuts with two retries allowed: each cut brought new bytes.
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "2", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    assert_eq!(server.requests_to("/f").len(), 9);
}

#[test]
fn a_server_that_ignores_range_restarts_cleanly() {
    let server = Server::start();
    let body = content(4, 200_000);
    server.route("/f", Route { cuts: [50_000].into(), ignore_range: true, ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let log = server.requests_to("/f");
    assert_eq!((range_start(&log[1]), log[1].status), (Some(50_000), 200));
}

#[test]
fn content_that_changes_between_attempts_ends_as_the_new_content() {
    let server = Server::start();
    let old = content(5, 200_000);
    let new = content(6, 150_000);
    let changed = Route::new(new.clone());
    assert_ne!(changed.etag, Route::new(old.clone()).etag);
    server.route("/f", Route { cuts: [50_000].into(), then: Some(Box::new(changed)), ..Route::new(old) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), new);
    let log = server.requests_to("/f");
    assert_eq!(
        (range_start(&log[1]), log[1].status),
        (Some(50_000), 200),
        "If-Range made the server send it all"
    );
}

#[test]
fn a_content_length_that_lies_never_yields_a_destination() {
    let server = Server::start();
    server.route("/f", Route { content_length: Some(20_000), ..Route::new(content(1, 10_000)) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // The retry finds the connection closed before any answer: the host
    // is down, and fails its entry after --host-timeout.
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "1", "--host-timeout", "1s", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!tmp.path().join("f").exists());
}

#[test]
fn a_stalled_body_is_retried_and_resumed() {
    let server = Server::start();
    let body = content(8, 50_000);
    server.route(
        "/f",
        Route { stalls: [(20_000, Duration::from_secs(30))].into(), ..Route::new(body.clone()) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).args(["--read-timeout", "300ms", "-v", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    // The stalled response was given up (not waited out), then resumed.
    let log = server.requests_to("/f");
    assert_eq!(log.len(), 2);
    assert!(log[0].stalled);
    assert_eq!(range_start(&log[1]), Some(20_000));
    assert!(out.stderr.contains("retry       f: attempt 1 failed"), "{}", out.stderr);
}

/// Start a throttled download of an 8 MB file (then the manifest lines in
/// `more`) and return once its partial holds at least 200 kB. At 1.6 MB/s
/// it takes 5 s: time to interrupt it even on a loaded machine.
fn start_throttled(
    server: &Server,
    dir: &Path,
    extra: &[&str],
    more: &str,
) -> (std::process::Child, Vec<u8>) {
    let body = content(9, 8_000_000);
    server.route(
        "/big",
        Route { throttle: Some((16 * 1024, Duration::from_millis(10))), ..Route::new(body.clone()) },
    );
    let sha = crate::core::sha256_hex(&body);
    let first =
        format!("{{\"url\": \"{}\", \"path\": \"big\", \"sha256\": \"{sha}\"}}\n", server.url("/big"));
    write(dir, "m.txt", &(first + more));
    let stderr = std::fs::File::create(dir.join("stderr.txt")).unwrap();
    let child = fetch_std(dir).args(extra).arg("m.txt").stderr(stderr).stdin(Stdio::null()).spawn().unwrap();
    let part = dir.join("big.fetch-part");
    let grew =
        wait_until(Duration::from_secs(20), || std::fs::metadata(&part).is_ok_and(|m| m.len() >= 200_000));
    assert!(grew, "the download did not start");
    (child, body)
}

#[test]
fn after_kill_9_the_next_run_resumes() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, body) = start_throttled(&server, tmp.path(), &[], "");
    child.kill().unwrap(); // SIGKILL
    finish(child);
    assert!(!tmp.path().join("big").exists(), "no destination after kill -9");
    let kept = std::fs::metadata(tmp.path().join("big.fetch-part")).unwrap().len();
    assert!(kept > 0);

    // The rerun is not throttled; it must continue, not start over.
    server.route("/big", Route::new(body.clone()));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("big")).unwrap(), body, "sha256 covered the resumed bytes too");
    let rerun = server.requests_to("/big").pop().unwrap();
    assert_eq!(rerun.status, 206);
    let start = range_start(&rerun).unwrap();
    assert!(start > 0 && start <= kept, "resumed at {start}, {kept} kept");
    assert!(rerun.header("if-range").is_some());
    assert!(out.stderr.contains("resumed at"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["big", "m.txt", "stderr.txt"]);
}

#[test]
fn ctrl_c_keeps_the_partial_and_exits_130_then_resumes() {
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let server = Server::start();
        let tmp = tempfile::tempdir().unwrap();
        // With -j 1 most small files wait behind the big one: those not
        // started are left for the next run, not reported as failures.
        server.file("/small", 1, 10);
        let more: String = (0..20).map(|i| format!("{} small{i}\n", server.url("/small"))).collect();
        let (mut child, body) =
            start_throttled(&server, tmp.path(), &["-v", "-j", "1", "--report", "r.jsonl"], &more);
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        assert!(status.unwrap().success());
        let exited = wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
        assert!(exited, "fetch did not stop on SIG{signal}");
        assert_eq!(finish(child).status.code(), Some(code));
        let stderr = std::fs::read_to_string(tmp.path().join("stderr.txt")).unwrap();
        let report = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
        assert!(stderr.contains(" downloaded, 0 skipped, "), "summary printed: {stderr}\n{report}");
        // Every entry reported was started: done, or interrupted. (The
        // tasks may start in any order, so a small file may come first.)
        for line in report.lines() {
            let ok = line.contains("\"status\":\"downloaded\"") || line.contains("\"error\":\"interrupted\"");
            assert!(ok, "{line}\n{stderr}");
        }
        // The report is written on interrupt: the interrupted entry is in it.
        let big =
            report.lines().find(|l| l.contains("\"path\":\"big\"")).unwrap_or_else(|| panic!("{report}"));
        assert!(big.contains("\"status\":\"failed\"") && big.contains("\"error\":\"interrupted\""), "{big}");
        assert!(!tmp.path().join("big").exists());
        assert!(std::fs::metadata(tmp.path().join("big.fetch-part")).unwrap().len() >= 200_000);

        // Each small file was either started and reported, or left for the
        // next run; how many is up to the scheduler. (An attempt that a
        // loaded machine's server never saw still counts as started, so the
        // server's log is an upper bound only for those downloaded.)
        let small: Vec<_> = report.lines().filter(|l| l.contains("\"path\":\"small")).collect();
        let downloaded = small.iter().filter(|l| l.contains("\"status\":\"downloaded\"")).count();
        assert!(downloaded <= server.requests_to("/small").len(), "{report}");
        let done = small.iter().filter(|l| l.contains("\"status\":\"downloaded\"")).count();
        server.route("/big", Route::new(body.clone()));
        let out = run(fetch(tmp.path()).arg("m.txt"));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(std::fs::read(tmp.path().join("big")).unwrap(), body);
        assert!((0..20).all(|i| tmp.path().join(format!("small{i}")).exists()), "{out:?}");
        let summary = format!("{} downloaded, {done} skipped, 0 failed", 21 - done);
        assert!(out.stderr.contains(&summary), "{summary}: {}", out.stderr);
        assert!(range_start(&server.requests_to("/big").pop().unwrap()).unwrap() >= 200_000);
    }
}

#[test]
fn partials_without_a_validator_or_with_no_resume_start_over() {
    let server = Server::start();
    let body = server.file("/f", 1, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // Bytes with no meta beside them: nothing says what they are.
    write(tmp.path(), "f.fetch-part", "garbage");
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    assert_eq!(server.requests_to("/f")[0].header("range"), None);

    // A good partial and meta, but --no-resume.
    std::fs::remove_file(tmp.path().join("f")).unwrap();
    std::fs::write(tmp.path().join("f.fetch-part"), &body[..5000]).unwrap();
    let etag = Route::new(body.clone()).etag.unwrap();
    let meta = format!("{{\"url\":\"{}\",\"etag\":{etag:?},\"total\":10000}}", server.url("/f"));
    write(tmp.path(), "f.fetch-part.meta", &meta);
    let out = run(fetch(tmp.path()).args(["--no-resume", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/f")[1].header("range"), None);

    // The same partial without --no-resume is continued.
    std::fs::remove_file(tmp.path().join("f")).unwrap();
    std::fs::write(tmp.path().join("f.fetch-part"), &body[..5000]).unwrap();
    write(tmp.path(), "f.fetch-part.meta", &meta);
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(range_start(&server.requests_to("/f")[2]), Some(5000));
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
}

#[test]
fn a_complete_partial_is_committed_on_416() {
    let server = Server::start();
    let body = server.file("/f", 1, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    std::fs::write(tmp.path().join("f.fetch-part"), &body).unwrap();
    let etag = Route::new(body.clone()).etag.unwrap();
    write(
        tmp.path(),
        "f.fetch-part.meta",
        &format!("{{\"url\":\"{}\",\"etag\":{etag:?}}}", server.url("/f")),
    );
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let log = server.requests_to("/f");
    assert_eq!((log.len(), log[0].status), (1, 416));
    assert_eq!(server.body_bytes(), 0);
}

#[test]
fn two_processes_on_one_manifest_never_share_a_file() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (first, body) = start_throttled(&server, tmp.path(), &[], "");
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("skipped     big  (being downloaded by another fetch process)"),
        "{}",
        out.stderr
    );
    assert_eq!(finish(first).status.code(), Some(0));
    assert_eq!(std::fs::read(tmp.path().join("big")).unwrap(), body);
    assert_eq!(server.requests_to("/big").len(), 1, "the second process made no request");
}

#[test]
fn a_small_file_interrupted_in_memory_is_kept_for_resume() {
    // 100 kB fits the download buffer: nothing is on disk until the signal.
    let server = Server::start();
    let body = content(4, 100_000);
    let slow = Route { throttle: Some((4096, Duration::from_millis(40))), ..Route::new(body.clone()) };
    server.route("/s", slow);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} sub/s\n", server.url("/s")));
    let mut child = fetch_std(tmp.path()).arg("m.txt").stderr(Stdio::null()).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || server.body_bytes() >= 30_000),
        "the download did not start"
    );
    assert!(!tmp.path().join("sub/s.fetch-part").exists(), "a small file is not on disk before its end");
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(status.unwrap().success());
    assert!(
        wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some()),
        "fetch did not stop"
    );
    assert_eq!(finish(child).status.code(), Some(130));
    let kept = std::fs::metadata(tmp.path().join("sub/s.fetch-part")).unwrap().len();
    assert!(kept >= 20_000, "{kept} bytes kept");
    assert!(tmp.path().join("sub/s.fetch-part.meta").exists());

    server.route("/s", Route::new(body.clone()));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("sub/s")).unwrap(), body);
    assert_eq!(range_start(&server.requests_to("/s").pop().unwrap()), Some(kept));
    assert_eq!(files(&tmp.path().join("sub")), ["s"]);
}

#[test]
fn another_process_in_a_directory_this_run_created_is_still_respected() {
    // The first run makes `d`, so it looks for nothing in it; a second run
    // starts on the same file meanwhile. Whichever writes its part file
    // first downloads it; the other stands aside.
    let server = Server::start();
    let big = content(6, 4_000_000);
    let throttle = Some((16 * 1024, Duration::from_millis(10)));
    server.route("/big", Route { throttle, delay: Duration::from_millis(300), ..Route::new(big.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} d/big\n", server.url("/big")));
    let spawn = || {
        let mut cmd = fetch_std(tmp.path());
        cmd.args(["--dir", "out", "m.txt"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let first = spawn();
    assert!(wait_until(Duration::from_secs(20), || server.requests_to("/big").len() == 1));
    let second = spawn();
    let (first, second) = (finish(first), finish(second));
    let stderr: Vec<_> = [&first, &second].map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).into();
    assert_eq!((first.status.code(), second.status.code()), (Some(0), Some(0)), "{stderr:?}");
    let stood_aside =
        stderr.iter().filter(|e| e.contains("(being downloaded by another fetch process)")).count();
    let downloaded = stderr.iter().filter(|e| e.contains("downloaded  out/d/big")).count();
    assert_eq!((stood_aside, downloaded), (1, 1), "{stderr:?}");
    assert_eq!(server.requests_to("/big").len(), 2);
    assert_eq!(std::fs::read(tmp.path().join("out/d/big")).unwrap(), big);
    assert_eq!(files(&tmp.path().join("out")), ["d/big"]);
}

/// Run `f` with `dir` mounted as a tmpfs with `opts`, if this process may mount.
fn with_tmpfs(dir: &Path, opts: &str, f: impl FnOnce()) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::process::Command::new("umount").arg(dir).status().unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
    mounted
}

#[test]
fn disk_errors_fail_those_entries_only_and_permanently() {
    let server = Server::start();
    let small = server.file("/small", 1, 1000);
    // Held in memory until it is placed; written while it streams.
    let big = server.file("/big", 2, 200_000);
    let large = server.file("/large", 3, 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{} ro/small\n{} full/big\n{} full/large\n{} ok/small\n",
        server.url("/small"),
        server.url("/big"),
        server.url("/large"),
        server.url("/small")
    );
    write(tmp.path(), "m.txt", &manifest);
    let ro = tmp.path().join("ro");
    let full = tmp.path().join("full");
    let fetch_all = || run(fetch(tmp.path()).args(FAST).args(["--report", "r.jsonl", "m.txt"]));
    // A failed entry: its reason, one attempt, and nothing left where it failed.
    let failed = |out: &crate::Run, path: &str, reason: &str, dir: &Path| {
        assert!(out.stderr.contains(&format!("failed      {path}: ")), "{}", out.stderr);
        let record = &crate::report(&tmp.path().join("r.jsonl"))[path];
        assert_eq!(record["status"], "failed", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(reason), "{path}: {error}");
        assert_eq!(record["attempts"], 1, "a disk error is permanent: {record}");
        assert_eq!(files(dir), Vec::<String>::new(), "no partial or destination left in {}", dir.display());
    };
    let mounted = with_tmpfs(&ro, "ro,size=64k", || {
        let both = with_tmpfs(&full, "size=64k", || {
            let out = fetch_all();
            assert_eq!(out.code, Some(1), "{out:?}");
            assert!(out.stderr.contains("1 downloaded, 0 skipped, 3 failed"), "{}", out.stderr);
            failed(&out, "ro/small", "ead-only file system", &ro);
            failed(&out, "full/big", "No space left on device", &full);
            failed(&out, "full/large", "No space left on device", &full);
            assert_eq!(std::fs::read(tmp.path().join("ok/small")).unwrap(), small);
            // Permanent: no second request for the full disk's entries.
            assert_eq!(server.requests_to("/big").len(), 1);
            assert_eq!(server.requests_to("/large").len(), 1);
            assert!(server.requests_to("/small").len() <= 2);
        });
        assert!(both, "mounted a tmpfs on ro/ but not on full/");
    });
    if !mounted {
        // Not root: a directory without write permission does the same;
        // full/ is an ordinary directory then.
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        let out = fetch_all();
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("3 downloaded, 0 skipped, 1 failed"), "{}", out.stderr);
        failed(&out, "ro/small", "Permission denied", &ro);
        assert_eq!(std::fs::read(tmp.path().join("ok/small")).unwrap(), small);
        assert_eq!(std::fs::read(tmp.path().join("full/big")).unwrap(), big);
        assert_eq!(std::fs::read(tmp.path().join("full/large")).unwrap(), large);
        assert!(server.requests_to("/small").len() <= 2);
    }
}

/// `FETCH_SOAK_FILES=500 cargo test soak -- --nocapture` for a longer soak.
#[test]
fn soak_every_file_completes_through_cuts_and_503s() {
    let count: u64 = std::env::var("FETCH_SOAK_FILES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let server = Server::start();
    let mut manifest = String::new();
    let mut bodies = Vec::new();
    for i in 0..count {
        let len = 1000 + (i as usize * 7919) % 60_000;
        bodies.push(server.file(&format!("/s{i}"), i, len));
        manifest.push_str(&format!("{} s/{i}\n", server.url(&format!("/s{i}"))));
    }
    server.chaos(20, 10, 42);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "10", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(&std::fs::read(tmp.path().join(format!("s/{i}"))).unwrap(), body, "file {i}");
    }
    let total: usize = bodies.iter().map(Vec::len).sum();
    let log = server.log();
    let ranged = log.iter().filter(|l| l.header("range").is_some()).count();
    let failed = log.iter().filter(|l| l.status == 503).count();
    eprintln!(
        "soak: {count} files, {total} bytes; {} requests ({failed} answered 503, {ranged} resumed with Range); \
         {} body bytes sent, {} re-sent ({:.1}%)",
        log.len(),
        server.body_bytes(),
        server.body_bytes() - total,
        100.0 * (server.body_bytes() - total) as f64 / total as f64
    );
    assert!(server.body_bytes() < total * 3 / 2, "re-sent {} of {total}", server.body_bytes() - total);
}
