//! The core downloader: manifest forms and errors, destinations,
//! verification, redirects, headers, concurrency, output and exit codes.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use sha2_hex::sha256_hex;

use crate::{Route, Server, fetch, fetch_std, files, report, run, wait_until, write};

mod sha2_hex {
    /// sha256 through the `sha256sum` tool, so the test does not share the
    /// implementation it checks.
    pub fn sha256_hex(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = crate::finish(child);
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    }
}

#[test]
fn downloads_every_line_form_and_leaves_no_temp_files() {
    let server = Server::start();
    let a = server.file("/a.bin", 1, 100_000);
    let b = server.file("/dir/b%20c.txt", 2, 10);
    let c = server.file("/c", 3, 70_000);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "# a comment\n\n{} out/a.bin\n   {}\n{{\"url\": \"{}\", \"path\": \"json/c\", \"size\": 70000, \"sha256\": \"{}\"}}\n",
        server.url("/a.bin"),
        server.url("/dir/b%20c.txt"),
        server.url("/c"),
        sha256_hex(&c),
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("out/a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(tmp.path().join("b c.txt")).unwrap(), b);
    assert_eq!(std::fs::read(tmp.path().join("json/c")).unwrap(), c);
    assert_eq!(files(tmp.path()), ["b c.txt", "json/c", "m.txt", "out/a.bin"], "no temp files remain");
    assert!(out.stderr.contains("downloaded  out/a.bin"), "{}", out.stderr);
    assert!(out.stderr.contains("fetch: 3 downloaded, 0 skipped, 0 failed"), "{}", out.stderr);
}

#[test]
fn invalid_lines_are_located_counted_and_the_rest_download() {
    let server = Server::start();
    server.file("/ok1", 1, 10);
    server.file("/ok2", 2, 10);
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        format!("{} one", server.url("/ok1")),                // 1
        "not-a-url x".to_owned(),                             // 2
        "ftp://example.com/f x".to_owned(),                   // 3
        "# comment".to_owned(),                               // 4
        "{\"url\": \"http://h/x\", \"bogus\": 1}".to_owned(), // 5
        "{\"url\": ".to_owned(),                              // 6
        format!("{} ../escape", server.url("/ok2")),          // 7
        format!("{}/", server.url("")),                       // 8: no file name
        String::new(),                                        // 9
        format!("{} two", server.url("/ok2")),                // 10
    ];
    write(tmp.path(), "m.txt", &lines.join("\n"));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    for (line, word) in
        [(2, "invalid URL"), (3, "scheme"), (5, "bogus"), (6, "JSON"), (7, "leaves --dir"), (8, "file name")]
    {
        let want = format!("m.txt:{line}: ");
        let found = out.stderr.lines().find(|l| l.contains(&want));
        assert!(
            found.is_some_and(|l| l.contains(word)),
            "line {line} ({word}) not reported:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("2 downloaded, 0 skipped, 6 failed"), "{}", out.stderr);
    assert_eq!(std::fs::read(tmp.path().join("one")).unwrap(), crate::content(1, 10));
    assert_eq!(std::fs::read(tmp.path().join("two")).unwrap(), crate::content(2, 10));
    assert_eq!(server.log().len(), 2, "invalid lines make no request");
}

#[test]
fn a_piped_manifest_is_streamed_before_stdin_closes() {
    let server = Server::start();
    server.file("/first", 1, 1000);
    server.file("/second", 2, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let mut child = fetch_std(tmp.path()).stdin(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", server.url("/first")).unwrap();
    stdin.flush().unwrap();
    let landed = wait_until(Duration::from_secs(10), || tmp.path().join("first").exists());
    let still_running = child.try_wait().unwrap().is_none();
    writeln!(stdin, "{}", server.url("/second")).unwrap();
    drop(stdin);
    let status = crate::finish(child).status;
    assert!(landed, "the first file must land while stdin is still open");
    assert!(still_running);
    assert_eq!(status.code(), Some(0));
    assert!(tmp.path().join("second").exists());
}

#[test]
fn manifests_are_read_in_order_and_dash_is_stdin() {
    let server = Server::start();
    server.file("/a", 1, 10);
    server.file("/b", 2, 10);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m1.txt", &server.url("/a"));
    let out = run(fetch(tmp.path()).args(["m1.txt", "-"]).write_stdin(server.url("/b") + "\n"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(tmp.path().join("a").exists() && tmp.path().join("b").exists());
}

#[test]
fn a_terminal_on_stdin_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("fetch");
    // `script` gives the child a pseudo-terminal as stdin.
    let out = run(assert_cmd::Command::new("script")
        .args(["-qec", &format!("{} --no-config ; echo exit=$?", bin.display()), "/dev/null"])
        .current_dir(tmp.path())
        .timeout(Duration::from_secs(20)));
    assert!(out.stdout.contains("exit=2"), "{out:?}");
    assert!(out.stdout.contains("standard input is a terminal"), "{out:?}");
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    let server = Server::start();
    server.file("/a", 1, 10);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/a"));
    write(tmp.path(), "not-a-dir", "");
    let cases: [&[&str]; 6] = [
        &["missing.txt"],
        &["m.txt", "missing.txt"],
        &["--jobs", "0", "m.txt"],
        &["--bogus", "m.txt"],
        &["--dir", "not-a-dir", "m.txt"],
        &["--retry-delay", "3s", "--retry-max-delay", "1s", "m.txt"],
    ];
    for args in cases {
        let out = run(fetch(tmp.path()).args(args));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty());
    }
    let out = run(fetch(tmp.path()).args(["missing.txt"]));
    assert!(out.stderr.contains("fetch: cannot read manifest missing.txt"), "{}", out.stderr);
    assert!(server.log().is_empty());
}

#[test]
fn destinations_stay_inside_dir() {
    let server = Server::start();
    server.file("/f", 1, 10);
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), tmp.path().join("out/link")).unwrap();
    let abs = outside.path().join("abs.bin");
    let url = server.url("/f");
    let manifest = format!(
        "{url} nested/deep/a.bin\n{url} ../up.bin\n{url} {}\n{url} link/evil.bin\n{url} link/sub/evil.bin\n{url} x/../ok.bin\n",
        abs.display()
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["--dir", "out", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(tmp.path().join("out/nested/deep/a.bin").exists());
    assert!(tmp.path().join("out/ok.bin").exists());
    assert!(!tmp.path().join("up.bin").exists());
    assert_eq!(files(outside.path()), Vec::<String>::new(), "nothing written outside --dir");
    assert!(out.stderr.contains("m.txt:2: "), "{}", out.stderr);
    assert!(out.stderr.contains("m.txt:3: absolute"), "{}", out.stderr);
    assert!(out.stderr.contains("outside --dir"), "{}", out.stderr);
    assert!(out.stderr.contains("2 downloaded, 0 skipped, 4 failed"), "{}", out.stderr);

    // -P lets a manifest you wrote yourself put files anywhere.
    let out = run(fetch(tmp.path()).args(["--dir", "out", "-P", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(abs.exists() && tmp.path().join("up.bin").exists());
    assert!(outside.path().join("evil.bin").exists() && outside.path().join("sub/evil.bin").exists());
}

#[test]
fn an_existing_file_whose_size_is_not_the_manifests_is_downloaded_again() {
    let server = Server::start();
    let right = server.file("/right", 2, 100);
    let wrong = server.file("/wrong", 3, 100);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("right"), &right).unwrap();
    // Truncated, empty, and a directory of that name (kept: not a file).
    write(tmp.path(), "wrong", "trunc");
    write(tmp.path(), "empty", "");
    std::fs::create_dir(tmp.path().join("dir")).unwrap();
    let line = |path: &str, name: &str| {
        format!("{{\"url\": \"{}\", \"path\": \"{name}\", \"size\": 100}}\n", server.url(path))
    };
    let manifest = line("/right", "right")
        + &line("/wrong", "wrong")
        + &line("/wrong", "empty")
        + &line("/wrong", "dir");
    write(tmp.path(), "m.jsonl", &manifest);
    let out = run(fetch(tmp.path()).args(["--report", "r.jsonl", "m.jsonl"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(server.requests_to("/right").is_empty(), "the right size is trusted: no request");
    assert_eq!(server.requests_to("/wrong").len(), 2, "wrong and empty, not the directory");
    assert_eq!(std::fs::read(tmp.path().join("wrong")).unwrap(), wrong);
    assert_eq!(std::fs::read(tmp.path().join("empty")).unwrap(), wrong);
    assert!(tmp.path().join("dir").is_dir());
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(records["right"]["status"], "skipped", "{records:?}");
    assert_eq!(records["wrong"]["status"], "downloaded", "{records:?}");
    // --dry-run says the same.
    write(tmp.path(), "wrong", "trunc again");
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.jsonl"]));
    assert!(out.stdout.contains("skip      right  (exists)"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l.starts_with("download  wrong ")), "{}", out.stdout);
}

#[test]
fn a_file_gets_the_servers_last_modified_as_its_mtime_unless_told_not_to() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start();
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    let stamped = |body: Vec<u8>| Route { last_modified: Some(date.into()), ..Route::new(body) };
    // One that stays in memory until its commit, one that outgrows the buffer.
    server.route("/small", stamped(b"small".to_vec()));
    server.route("/large", stamped(vec![7; 600_000]));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", server.url("/small"), server.url("/large")));
    let mtime = |name: &str| std::fs::metadata(tmp.path().join(name)).unwrap().mtime();
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((mtime("small"), mtime("large")), (1_445_412_480, 1_445_412_480));
    // Replaced with --overwrite: the same; with --no-remote-time: now.
    let out = run(fetch(tmp.path()).args(["--overwrite", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((mtime("small"), mtime("large")), (1_445_412_480, 1_445_412_480));
    let out = run(fetch(tmp.path()).args(["--overwrite", "--no-remote-time", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(mtime("small") > 1_700_000_000 && mtime("large") > 1_700_000_000);
}

#[test]
fn existing_files_are_skipped_without_a_request_and_overwrite_is_atomic() {
    let server = Server::start();
    let fresh = server.file("/f", 1, 5000);
    server.route("/gone", Route { statuses: [(404, None)].into(), ..Route::new("x") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "f", "old");
    write(tmp.path(), "gone", "keep me");
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", server.url("/f"), server.url("/gone")));

    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(server.log().is_empty(), "a skip makes no request");
    assert!(out.stderr.contains("skipped     f  (exists)"), "{}", out.stderr);

    let out = run(fetch(tmp.path()).args(["--overwrite", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), fresh);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("gone")).unwrap(),
        "keep me",
        "a failed overwrite keeps the old file"
    );
    assert_eq!(files(tmp.path()), ["f", "gone", "m.txt"]);
}

#[test]
fn one_destination_twice_downloads_once() {
    // Also with --overwrite: the first to complete wins, the later is skipped.
    // (With another URL the later line is invalid: manifest::a_destination_given_again_*.)
    for extra in [&[][..], &["--overwrite"][..]] {
        let server = Server::start();
        server.route("/a", Route { delay: Duration::from_millis(300), ..Route::new(crate::content(1, 100)) });
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "m.txt", &format!("{} same\n{} ./same\n", server.url("/a"), server.url("/a")));
        let out = run(fetch(tmp.path()).args(extra).arg("m.txt"));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stderr.contains("1 downloaded, 1 skipped, 0 failed"), "{extra:?}: {}", out.stderr);
        assert_eq!(server.log().len(), 1, "{extra:?}: the later entry makes no request");
        assert_eq!(std::fs::read(tmp.path().join("same")).unwrap(), crate::content(1, 100));
    }
}

#[test]
fn a_destination_named_again_much_later_is_skipped_without_a_request() {
    // In a directory this run created, long after the first entry is done.
    let server = Server::start();
    server.file("/a", 1, 100);
    server.file("/c", 3, 10);
    let tmp = tempfile::tempdir().unwrap();
    let between: String = (0..300).map(|i| format!("{} sub/c{i}\n", server.url("/c"))).collect();
    let manifest = format!("{} sub/same\n{between}{} sub/same\n", server.url("/a"), server.url("/a"));
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("301 downloaded, 1 skipped, 0 failed"), "{}", out.stderr);
    assert_eq!(server.requests_to("/a").len(), 1, "the later entry makes no request");
    assert_eq!(std::fs::read(tmp.path().join("sub/same")).unwrap(), crate::content(1, 100));
}

#[test]
fn another_process_in_a_directory_this_run_created_costs_some_downloads_not_all() {
    // As soon as this run has made d/, "another process" fills it, while
    // the run fetches one file per 5 ms. Entries already under way (the
    // lookahead: 80 at -j 1) download and are declined; once one is, the
    // rest look before they download.
    let server = Server::start();
    server.file("/a", 1, 10);
    server.route("/f", Route { delay: Duration::from_millis(5), ..Route::new(crate::content(3, 10)) });
    let tmp = tempfile::tempdir().unwrap();
    let n = 400;
    let rest: String = (0..n).map(|i| format!("{} d/f{i}\n", server.url("/f"))).collect();
    write(tmp.path(), "m.txt", &format!("{} d/a\n{rest}", server.url("/a")));
    let child = fetch_std(tmp.path()).args(["-j", "1", "m.txt"]).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || tmp.path().join("d").exists()));
    let theirs: Vec<_> = (0..n)
        .filter(|i| {
            let path = tmp.path().join(format!("d/f{i}"));
            std::fs::File::create_new(path).and_then(|mut f| f.write_all(b"theirs")).is_ok()
        })
        .collect();
    let out = crate::finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(theirs.len() > n / 2, "only {} written before the run got there", theirs.len());
    let downloaded = n + 1 - theirs.len();
    assert!(
        stderr.contains(&format!("{downloaded} downloaded, {} skipped, 0 failed", theirs.len())),
        "{stderr}"
    );
    let declined = server.requests_to("/f").len() + 1 - downloaded;
    assert!(declined < theirs.len() / 2, "{declined} of {} downloaded only to be declined", theirs.len());
    for i in theirs {
        assert_eq!(std::fs::read(tmp.path().join(format!("d/f{i}"))).unwrap(), b"theirs");
    }
}

#[test]
fn verification_failures_leave_no_destination() {
    let server = Server::start();
    let body = server.file("/f", 1, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/f");
    let wrong = "0".repeat(64);
    let manifest = format!(
        "{{\"url\": \"{url}\", \"path\": \"bad-sha\", \"sha256\": \"{wrong}\"}}\n\
         {{\"url\": \"{url}\", \"path\": \"bad-size\", \"size\": 999}}\n\
         {{\"url\": \"{url}\", \"path\": \"good\", \"size\": 1000, \"sha256\": \"{}\"}}\n",
        sha256_hex(&body)
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("bad-sha: sha256 mismatch"), "{}", out.stderr);
    assert!(
        out.stderr.contains("bad-size: server says the file is 1000 bytes, the manifest says 999"),
        "{}",
        out.stderr
    );
    assert_eq!(files(tmp.path()), ["good", "m.txt"]);
    // A wrong digest on a single clean download is not worth a retry.
    assert_eq!(server.log().len(), 3);
}

#[test]
fn ten_redirects_succeed_and_an_eleventh_fails() {
    let server = Server::start();
    server.file("/target", 1, 10);
    for i in 0..11 {
        let next = if i == 0 { "/target".to_owned() } else { format!("/r{}", i - 1) };
        server.route(&format!("/r{i}"), Route { redirect: Some(next), ..Route::default() });
    }
    let tmp = tempfile::tempdir().unwrap();
    // /r9 is ten redirects from the file, /r10 eleven.
    write(tmp.path(), "m.txt", &format!("{} ten\n{} eleven\n", server.url("/r9"), server.url("/r10")));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("ten")).unwrap(), crate::content(1, 10));
    assert!(!tmp.path().join("eleven").exists());
    assert!(out.stderr.contains("eleven: more than 10 redirects"), "{}", out.stderr);
    assert_eq!(server.requests_to("/r10").len(), 1, "too many redirects is not retried");
}

#[test]
fn headers_are_sent_but_not_to_another_host() {
    let home = Server::start();
    let other = Server::start_on("127.0.0.2".parse().unwrap());
    other.file("/f", 1, 10);
    home.route("/away", Route { redirect: Some(other.url("/f")), ..Route::default() });
    home.route("/here", Route { redirect: Some("/f".into()), ..Route::default() });
    home.route("/f", Route { require: Some(("x-api-key".into(), "k1".into())), ..Route::new("home") });
    home.route("/json", Route { require: Some(("x-entry".into(), "e1".into())), ..Route::new("json") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "headers.txt", "# secrets\nX-Api-Key: k1\n\n");
    let manifest = format!(
        "{} away\n{} here\n{{\"url\": \"{}\", \"headers\": {{\"X-Entry\": \"e1\"}}}}\n",
        home.url("/away"),
        home.url("/here"),
        home.url("/json")
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args([
        "-H",
        "Authorization: Bearer s3cret",
        "-H",
        "@headers.txt",
        "--user-agent",
        "test-agent/1",
        "m.txt",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("here")).unwrap(), "home");
    assert_eq!(std::fs::read_to_string(tmp.path().join("json")).unwrap(), "json");
    let first = &home.requests_to("/away")[0];
    assert_eq!(first.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(first.header("user-agent"), Some("test-agent/1"));
    let crossed = &other.requests_to("/f")[0];
    assert_eq!(crossed.header("authorization"), None, "credentials must not cross hosts");
    assert_eq!(crossed.header("x-api-key"), None);
    assert_eq!(crossed.header("user-agent"), Some("test-agent/1"));
    assert!(!out.stderr.contains("s3cret") && !out.stderr.contains("k1"), "{}", out.stderr);
}

#[test]
fn a_stalled_body_fails_after_the_read_timeout() {
    let server = Server::start();
    server.route(
        "/slow",
        Route { stalls: [(1000, Duration::from_secs(20))].into(), ..Route::new(crate::content(1, 5000)) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/slow"));
    // Were the timeout not applied, the body would end after the stall
    // and the run succeed.
    let out = run(fetch(tmp.path()).args(["--read-timeout", "300ms", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!tmp.path().join("slow").exists());
    assert!(out.stderr.contains("failed      slow: timed out"), "{}", out.stderr);
    let log = server.requests_to("/slow");
    assert_eq!(log.len(), 1);
    assert!(log[0].stalled);
}

#[test]
fn jobs_bound_concurrency_and_overlap_delays() {
    let server = Server::start();
    let mut manifest = String::new();
    for i in 0..12 {
        let path = format!("/d{i}");
        server
            .route(&path, Route { delay: Duration::from_millis(400), ..Route::new(crate::content(i, 100)) });
        manifest.push_str(&format!("{}\n", server.url(&path)));
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "4", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.log().len(), 12);
    // Each request takes 400 ms: four at once at some point means the
    // delays overlapped, never five means -j bounds them.
    assert_eq!(server.max_in_flight(), 4);
}

#[test]
fn per_host_bounds_each_host() {
    let a = Server::start();
    let b = Server::start_on("127.0.0.2".parse().unwrap());
    let mut manifest = String::new();
    for i in 0..8 {
        for (name, server) in [("a", &a), ("b", &b)] {
            let path = format!("/{name}{i}");
            server.route(&path, Route { delay: Duration::from_millis(150), ..Route::new("x") });
            manifest.push_str(&format!("{}\n", server.url(&path)));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "8", "--per-host", "2", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((a.max_in_flight(), b.max_in_flight()), (2, 2));
}

#[test]
fn passwords_and_header_values_are_never_printed() {
    let server = Server::start();
    server.route("/f", Route { statuses: [(404, None)].into(), ..Route::new("x") });
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/f").replace("http://", "http://user:hunter2@");
    write(tmp.path(), "m.txt", &format!("{url}\nhttp://u:pw2@[bad/x y\n"));
    let out = run(fetch(tmp.path()).args(["-v", "-H", "X-Token: tok-123", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    for secret in ["hunter2", "pw2", "tok-123"] {
        assert!(!out.stderr.contains(secret), "{secret} leaked: {}", out.stderr);
    }
    // The password still reached the server, as basic auth.
    assert!(server.log()[0].header("authorization").is_some_and(|v| v.starts_with("Basic ")));
}

#[test]
fn content_encoding_is_saved_as_served() {
    let server = Server::start();
    let gz: Vec<u8> = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
    server.route(
        "/f.gz",
        Route { headers: vec![("content-encoding".into(), "gzip".into())], ..Route::new(gz.clone()) },
    );
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f.gz"));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f.gz")).unwrap(), gz);
    assert_eq!(server.log()[0].header("accept-encoding"), None);
}

#[test]
fn tls_certificates_are_verified_unless_insecure() {
    let server = Server::start_tls();
    let body = server.file("/f", 1, 5000);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // A bad certificate is permanent: one handshake, no retry.
    let out = run(fetch(tmp.path()).args(["-v", "--retry-delay", "10ms", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("certificate"), "{}", out.stderr);
    assert!(!out.stderr.contains("retry "), "retried a certificate error: {}", out.stderr);
    assert_eq!(crate::report(&tmp.path().join("r.jsonl"))["f"]["attempts"], 1);
    assert_eq!(server.connections(), 1, "retried a certificate error");
    assert!(server.log().is_empty());

    let out = run(fetch(tmp.path()).args(["--insecure", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);

    // From plain http to https within one attempt.
    let plain = Server::start();
    plain.route("/r", Route { redirect: Some(server.url("/f")), ..Route::default() });
    write(tmp.path(), "m.txt", &format!("{} r\n", plain.url("/r")));
    let out = run(fetch(tmp.path()).args(["--insecure", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("r")).unwrap(), body);
}

#[test]
fn plain_http_needs_no_ca_certificates_and_https_without_them_fails_clearly() {
    let server = Server::start();
    let body = server.file("/f", 1, 100);
    let tls = Server::start_tls();
    tls.file("/g", 2, 100);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", server.url("/f"), tls.url("/g")));
    let none = tmp.path().join("no-such-certificates");
    let out = run(fetch(tmp.path()).env("SSL_CERT_FILE", &none).env("SSL_CERT_DIR", &none).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    assert!(out.stderr.contains("No CA certificates were loaded"), "{}", out.stderr);
    assert!(!tmp.path().join("g").exists());
    assert!(tls.log().is_empty());
}

#[test]
fn proxies_from_the_environment_are_used() {
    let proxy = Server::start();
    proxy.file("/f", 1, 100);
    let tmp = tempfile::tempdir().unwrap();
    // No such host: only the proxy can answer.
    write(tmp.path(), "m.txt", "http://fetch-test.invalid/f\n");
    let out = run(fetch(tmp.path()).env("HTTP_PROXY", proxy.url("")).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), crate::content(1, 100));

    std::fs::remove_file(tmp.path().join("f")).unwrap();
    let out = run(fetch(tmp.path())
        .env("HTTP_PROXY", proxy.url(""))
        .env("NO_PROXY", "fetch-test.invalid")
        .args(["--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "NO_PROXY must bypass the proxy: {out:?}");
    assert_eq!(proxy.log().len(), 1);
}

#[test]
fn a_connect_that_hangs_fails_after_the_connect_timeout() {
    // A listener that never accepts: once its accept queue is full, the
    // kernel drops further SYNs and a connect hangs, as on a dead route.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(stream);
        assert!(held.len() < 5000, "the accept queue never filled");
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("http://{addr}/f"));
    let start = Instant::now();
    let out = run(fetch(tmp.path()).args([
        "--connect-timeout",
        "300ms",
        // Nothing else may time out within fetch()'s 60 s limit (the read
        // timeout covers a connect too): "timed out" is the connect timeout.
        "--read-timeout",
        "10m",
        "--retries",
        "1",
        "--retry-delay",
        "10ms",
        // A host that does not answer is down: probed until this passes.
        "--host-timeout",
        "1s",
        "m.txt",
    ]));
    let elapsed = start.elapsed();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("longer than --host-timeout; last: timed out"), "{}", out.stderr);
    let attempts: u32 =
        out.stderr.split("(after ").nth(1).and_then(|s| s.split(' ').next()?.parse().ok()).unwrap();
    assert!(attempts >= 2, "a connect timeout is retried: {}", out.stderr);
    // Two connects that each waited out the timeout.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    drop(listener);
}

/// The test server itself: a handler that panics fails the test, even when
/// `fetch` retries the dropped connection and succeeds.
#[test]
#[should_panic(expected = "the test server's handlers panicked")]
fn a_handler_that_panics_fails_the_test() {
    // An invalid header name panics in `respond`, the first time only.
    let panics = Route { headers: vec![("bad name".into(), "x".into())], ..Route::new("ok") };
    let server = Server::start();
    server.route("/f", Route { then: Some(Box::new(Route::new("ok"))), ..panics });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // `fetch` retries the dropped connection and succeeds: only the server
    // knows that something went wrong.
    let out = run(fetch(tmp.path()).args(["--retry-delay", "10ms", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("f")).unwrap(), "ok");
    assert_eq!(server.requests_to("/f").len(), 1, "the request that panicked is not logged");
}
