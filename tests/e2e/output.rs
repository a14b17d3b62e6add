//! What users see: log lines, -q, -v, --progress modes, the JSON report,
//! dry runs, sharding and shell completions.

use std::time::Duration;

use serde_json::Value;

use crate::{Route, Server, fetch, files, run, write};

/// A server and manifest with one file to download, one already present,
/// one 404 and one invalid line.
fn mixed() -> (Server, tempfile::TempDir) {
    let server = Server::start();
    server.file("/new", 1, 3000);
    server.file("/old", 2, 10);
    server.route("/gone", Route { statuses: [(404, None)].into(), ..Route::new("x") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "old", "already here");
    let manifest =
        format!("{}\n{}\n{}\nftp://h/bad\n", server.url("/new"), server.url("/old"), server.url("/gone"));
    write(tmp.path(), "m.txt", &manifest);
    (server, tmp)
}

#[test]
fn log_mode_prints_a_line_per_entry_and_no_escape_codes() {
    let (_server, tmp) = mixed();
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stderr);
    assert!(lines.iter().any(|l| l.starts_with("downloaded  new  2.9 KiB in ")), "{}", out.stderr);
    assert!(lines.contains(&"skipped     old  (exists)"), "{}", out.stderr);
    assert!(lines.contains(&"failed      gone: HTTP 404 Not Found"), "{}", out.stderr);
    assert!(
        lines.iter().any(|l| l.starts_with("failed      m.txt:4: unsupported URL scheme")),
        "{}",
        out.stderr
    );
    assert!(lines[4].starts_with("fetch: 1 downloaded, 1 skipped, 2 failed; 2.9 KiB in "), "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "no escape codes in log mode");
    assert!(out.stdout.is_empty());
}

#[test]
fn quiet_and_progress_none_print_failures_and_the_summary_only() {
    for flag in ["-q", "--progress=none"] {
        let (_server, tmp) = mixed();
        let out = run(fetch(tmp.path()).args([flag, "m.txt"]));
        assert_eq!(out.code, Some(1), "{out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{flag}: {}", out.stderr);
        assert!(lines[..2].iter().all(|l| l.starts_with("failed      ")), "{flag}: {}", out.stderr);
        assert!(lines[2].starts_with("fetch: 1 downloaded, 1 skipped, 2 failed"));
    }
}

#[test]
fn verbose_shows_each_attempt_and_retry_with_its_reason() {
    let server = Server::start();
    server.route(
        "/f",
        Route { statuses: [(503, None)].into(), cuts: [1000].into(), ..Route::new(vec![7u8; 5000]) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out =
        run(fetch(tmp.path()).args(["-v", "--retry-delay", "10ms", "--retry-max-delay", "20ms", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let retry1 = "retry       f: attempt 1 failed: HTTP 503 Service Unavailable; retrying in ";
    assert!(out.stderr.contains(retry1), "{}", out.stderr);
    assert!(out.stderr.contains("attempt     f: receiving 4.9 KiB"), "{}", out.stderr);
    assert!(
        out.stderr.contains("retry       f: attempt 2 failed: connection lost while receiving"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("attempt     f: resuming at 1000 B of 4.9 KiB"), "{}", out.stderr);
}

#[test]
fn forced_bars_draw_when_stderr_is_not_a_terminal() {
    let server = Server::start();
    server.route(
        "/big",
        Route { throttle: Some((64 * 1024, Duration::from_millis(20))), ..Route::new(vec![1u8; 2 << 20]) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/big"));
    let out = run(fetch(tmp.path()).args(["--progress", "bar", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("files"), "the overall bar was drawn: {:?}", out.stderr);
    assert!(out.stderr.contains("big  "), "a bar for the large download: {:?}", out.stderr);
    assert!(out.stderr.contains("\x1b["), "bars redraw with escape codes");
    assert!(!out.stderr.contains("downloaded  big"), "no log line per entry under bars");
    assert!(out.stderr.contains("fetch: 1 downloaded, 0 skipped, 0 failed"), "{:?}", out.stderr);
    assert!(!out.stderr.contains("\x1b[3"), "no colors off a terminal: {:?}", out.stderr);
}

/// Run fetch on a pseudo-terminal (through `script`), returning what it drew.
fn on_a_terminal(dir: &std::path::Path, env: &str) -> String {
    let bin = assert_cmd::cargo::cargo_bin("fetch");
    let out = run(assert_cmd::Command::new("script")
        .args(["-qec", &format!("env {env} {} --no-config m.txt", bin.display()), "/dev/null"])
        .current_dir(dir)
        .timeout(Duration::from_secs(30)));
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
}

#[test]
fn a_terminal_gets_bars_in_color_unless_no_color() {
    let server = Server::start();
    let slow =
        Route { throttle: Some((64 * 1024, Duration::from_millis(20))), ..Route::new(vec![1u8; 2 << 20]) };
    server.route("/big", slow);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/big"));
    let screen = on_a_terminal(tmp.path(), "TERM=xterm");
    assert!(screen.contains("files") && screen.contains("big  "), "auto chose bars: {screen:?}");
    assert!(screen.contains("\x1b[36m"), "cyan overall bar: {screen:?}");
    std::fs::remove_file(tmp.path().join("big")).unwrap();
    let screen = on_a_terminal(tmp.path(), "TERM=xterm NO_COLOR=1");
    assert!(screen.contains("files"), "{screen:?}");
    assert!(!screen.contains("\x1b[36m") && !screen.contains("\x1b[32m"), "NO_COLOR: {screen:?}");
}

fn report_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn the_report_has_a_record_per_entry_and_a_run_id_per_run() {
    let (server, tmp) = mixed();
    let out = run(fetch(tmp.path()).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let records = report_lines(&std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap());
    assert_eq!(records.len(), 4);
    let by_status = |s: &str| records.iter().filter(|r| r["status"] == s).cloned().collect::<Vec<_>>();
    let downloaded = &by_status("downloaded")[0];
    assert_eq!(downloaded["url"], server.url("/new"));
    assert_eq!(downloaded["path"], "new");
    assert_eq!(downloaded["bytes"], 3000);
    assert_eq!(downloaded["attempts"], 1);
    assert_eq!(downloaded["http_status"], 200);
    assert_eq!(downloaded["error"], Value::Null);
    assert_eq!(downloaded["resumed_from"], 0);
    assert!(downloaded["elapsed_ms"].is_u64());
    let skipped = &by_status("skipped")[0];
    assert_eq!((skipped["path"].as_str(), skipped["reason"].as_str()), (Some("old"), Some("exists")));
    let failed = by_status("failed");
    assert_eq!(failed.len(), 2);
    let gone = failed.iter().find(|r| r["path"] == "gone").unwrap();
    assert_eq!(
        (gone["http_status"].as_u64(), gone["error"].as_str()),
        (Some(404), Some("HTTP 404 Not Found"))
    );
    let invalid = failed.iter().find(|r| r["url"].is_null()).unwrap();
    assert!(invalid["error"].as_str().unwrap().starts_with("m.txt:4: unsupported URL scheme"), "{invalid}");

    let run_id = records[0]["run_id"].as_str().unwrap().to_owned();
    assert!(records.iter().all(|r| r["run_id"] == run_id.as_str()));
    assert_eq!(run_id.len(), 36);
    assert_eq!(&run_id[14..15], "7", "a UUIDv7: {run_id}");

    // A second run appends, with its own id.
    run(fetch(tmp.path()).args(["--report", "r.jsonl", "m.txt"]));
    let records = report_lines(&std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap());
    assert_eq!(records.len(), 8);
    assert!(records[4..].iter().all(|r| r["run_id"] != run_id.as_str()));
}

#[test]
fn report_to_stdout_carries_only_json_and_no_secrets() {
    let server = Server::start();
    server.file("/f", 1, 10);
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/f").replace("http://", "http://user:hunter2@");
    write(tmp.path(), "m.txt", &url);
    let out = run(fetch(tmp.path()).args(["--report", "-", "-H", "X-Token: tok-123", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let records = report_lines(&out.stdout);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["url"], url.replace("hunter2", "***"));
    for secret in ["hunter2", "tok-123"] {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret), "{secret} leaked");
    }
}

#[test]
fn resumed_from_is_reported_for_a_partial_of_an_earlier_run() {
    let server = Server::start();
    let body = server.file("/f", 1, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    std::fs::write(tmp.path().join("f.fetch-part"), &body[..4000]).unwrap();
    let etag = Route::new(body.clone()).etag.unwrap();
    write(
        tmp.path(),
        "f.fetch-part.meta",
        &format!("{{\"url\":\"{}\",\"etag\":{etag:?}}}", server.url("/f")),
    );
    let out = run(fetch(tmp.path()).args(["--report", "-", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let record = &report_lines(&out.stdout)[0];
    assert_eq!((record["resumed_from"].as_u64(), record["bytes"].as_u64()), (Some(4000), Some(10_000)));
    assert_eq!(record["http_status"], 206);
}

#[test]
fn dry_run_validates_and_lists_without_any_request() {
    let (server, tmp) = mixed();
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.txt"]));
    assert_eq!(out.code, Some(1), "an invalid line fails the dry run too: {out:?}");
    assert!(server.log().is_empty(), "a dry run makes no request");
    let stdout: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(stdout.len(), 3, "{}", out.stdout);
    assert!(stdout.contains(&format!("download  new  {}", server.url("/new")).as_str()), "{}", out.stdout);
    assert!(stdout.contains(&"skip      old  (exists)"), "{}", out.stdout);
    assert!(out.stderr.contains("m.txt:4: unsupported URL scheme"), "{}", out.stderr);
    assert!(out.stderr.contains("dry run: 2 to download, 1 to skip, 1 invalid"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["m.txt", "old"], "nothing created");

    let out = run(fetch(tmp.path()).args(["--dry-run", "--dir", "not/yet", "m.txt"]));
    assert!(out.stdout.contains("download  not/yet/new"), "{}", out.stdout);
    assert!(!tmp.path().join("not").exists(), "a dry run does not create --dir");

    // Folders below a --dir still to be made are inside it, not escapes.
    write(tmp.path(), "deep.txt", &format!("{} a/b/c\n", server.url("/new")));
    let out = run(fetch(tmp.path()).args(["--dry-run", "--dir", "not/yet", "deep.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("download  not/yet/a/b/c"), "{}", out.stdout);
    assert!(!tmp.path().join("not").exists());
}

#[test]
fn shards_cover_the_manifest_exactly_once() {
    let server = Server::start();
    let mut manifest = String::new();
    for i in 0..60 {
        server.file(&format!("/f{i}"), i, 10);
        manifest.push_str(&format!("{} d/f{i}\n", server.url(&format!("/f{i}"))));
    }
    // Invalid lines are sharded too: each is reported by one shard only.
    manifest.push_str("ftp://h/x one\nftp://h/y two\nnot-a-url\n");
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let mut invalid = 0;
    for k in 0..3 {
        let out = run(fetch(tmp.path()).args(["--shard", &format!("{k}/3"), "m.txt"]));
        assert!(out.code == Some(0) || out.code == Some(1), "{out:?}");
        invalid += out.stderr.matches("m.txt:").count();
        let done = out.stderr.lines().filter(|l| l.starts_with("downloaded")).count();
        assert!((5..=35).contains(&done), "shard {k} took {done} of 60");
    }
    assert_eq!(invalid, 3);
    let log = server.log();
    assert_eq!(log.len(), 60, "each file requested once over all shards");
    let mut paths: Vec<_> = log.iter().map(|l| l.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 60);

    let out = run(fetch(tmp.path()).args(["--shard", "3/3", "m.txt"]));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("expected K/N with 0 <= K < N"), "{}", out.stderr);
}

#[test]
fn shell_completions_are_printed() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(fetch(tmp.path()).args(["completions", shell]));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stdout.contains("dry-run") && out.stdout.contains("per-host"), "{shell}");
    }
}

/// `fetch manpage > fetch.1` on a full disk: an error, not a panic or a
/// truncated page with exit status 0.
#[test]
fn a_manual_page_or_completion_script_that_cannot_be_written_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [&["manpage"][..], &["completions", "bash"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = crate::fetch_std(tmp.path()).args(args).stdout(full).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("fetch: cannot write to standard output: No space left"), "{stderr}");
    }
}
