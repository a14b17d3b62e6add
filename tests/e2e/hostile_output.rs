//! Hostile input against what `fetch` prints: no secret (URL password,
//! header value) reaches stdout, stderr or the report, whatever path the
//! error takes; no input panics; control characters in names never reach
//! the terminal raw.

use std::time::Duration;

use crate::{Route, Server, fetch, run, write};

/// A run's whole output must not hold `secret` (stdout, stderr and the
/// report file `r.jsonl` when there is one).
fn assert_nowhere(dir: &std::path::Path, out: &crate::Run, secret: &str, case: &str) {
    assert!(!out.stderr.contains(secret), "{case}: stderr: {}", out.stderr);
    assert!(!out.stdout.contains(secret), "{case}: stdout: {}", out.stdout);
    if let Ok(report) = std::fs::read_to_string(dir.join("r.jsonl")) {
        assert!(!report.contains(secret), "{case}: report: {report}");
    }
}

#[test]
fn a_malformed_header_is_refused_without_echoing_it() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "http://127.0.0.1:1/a\n");
    let malformed = [
        "Authorization Bearer SECRET-7f3a",
        "SECRET-7f3a",
        "Bearer SECRET-7f3a:x",
        "Authorization: SECRET-7f3a\u{1}",
        "--SECRET-7f3a",
    ];
    for header in malformed {
        for args in [vec!["-H", header], vec![&*format!("--header={header}")], vec!["-qH", header]] {
            let out = run(fetch(tmp.path()).args(&args).arg("m.txt"));
            assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
            assert!(out.stderr.contains("-H"), "{args:?}: the error names -H: {}", out.stderr);
            assert_nowhere(tmp.path(), &out, "SECRET-7f3a", &format!("{args:?}"));
        }
    }
    // An error about another argument does not quote a good header either.
    let out = run(fetch(tmp.path()).args(["-H", "X-Key: SECRET-7f3a", "--bogus", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_nowhere(tmp.path(), &out, "SECRET-7f3a", "--bogus");
    // Nor does a bad line of a header file.
    write(tmp.path(), "h.txt", "# ok\nX-Good: 1\nAuthorization Bearer SECRET-7f3a\n");
    let out = run(fetch(tmp.path()).args(["-H", "@h.txt", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("h.txt:3:"), "{}", out.stderr);
    assert_nowhere(tmp.path(), &out, "SECRET-7f3a", "header file");
}

#[test]
fn any_number_of_headers_is_a_usage_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "http://127.0.0.1:1/a\n");
    for count in [1001, 24_576, 40_000] {
        let lines: String = (0..count).map(|i| format!("X-H{i}: v\n")).collect();
        write(tmp.path(), "h.txt", &lines);
        let out = run(fetch(tmp.path()).args(["-H", "@h.txt", "m.txt"]));
        assert_eq!(out.code, Some(2), "{count}: {out:?}");
        assert!(out.stderr.contains("more than 1000 headers"), "{count}: {}", out.stderr);
    }
    let one_large = format!("X-Big: {}\n", "a".repeat(70_000));
    write(tmp.path(), "h.txt", &one_large);
    let out = run(fetch(tmp.path()).args(["-H", "@h.txt", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("more than 64 KiB"), "{}", out.stderr);
    let out = run(fetch(tmp.path()).args(["-H", "@/dev/zero", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("/dev/zero"), "{}", out.stderr);
}

#[test]
fn the_most_headers_a_manifest_line_holds_do_not_panic() {
    let server = Server::start();
    server.route("/a", Route::new("x"));
    let tmp = tempfile::tempdir().unwrap();
    // As many distinct names as a 64 KiB line holds, on top of 1000 -H.
    let mut line = format!("{{\"url\":\"{}\",\"headers\":{{\"h\":\"\"", server.url("/a"));
    let digits: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    let name = |mut i: usize| {
        let mut name = String::new();
        while name.is_empty() || i > 0 {
            name.push(digits[i % digits.len()]);
            i /= digits.len();
        }
        name
    };
    for i in 0.. {
        if line.len() > 64 * 1024 - 20 {
            break;
        }
        line.push_str(&format!(",\"x{}\":\"\"", name(i)));
    }
    line.push_str("}}\n");
    write(tmp.path(), "m.txt", &line);
    let global: String = (0..1000).map(|i| format!("X-G{i}: v\n")).collect();
    write(tmp.path(), "h.txt", &global);
    let out = run(fetch(tmp.path()).args(["-H", "@h.txt", "--retries", "0", "m.txt"]));
    // The test server refuses that many headers; what matters is an answer.
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("0 downloaded, 0 skipped, 1 failed"), "{}", out.stderr);
}

#[test]
fn zero_timeouts_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "http://127.0.0.1:1/a\n");
    for option in ["--read-timeout", "--connect-timeout"] {
        for zero in ["0", "0s", "0ms", "0.0000001s"] {
            let out = run(fetch(tmp.path()).args([option, zero, "m.txt"]));
            assert_eq!(out.code, Some(2), "{option} {zero}: {out:?}");
            assert!(out.stderr.contains(option) && out.stderr.contains("at least 1ms"), "{}", out.stderr);
        }
    }
    // A zero retry delay is a choice (retry at once), not a mistake.
    let out = run(fetch(tmp.path()).args(["--retry-delay", "0", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
}

#[test]
fn a_url_password_is_hidden_even_when_the_url_does_not_parse() {
    let server = Server::start();
    let port = server.addr.port();
    server.route("/there", Route { statuses: [(404, None)].into(), ..Route::new("x") });
    // A server whose redirect cannot be followed, quoting a password.
    server.route("/moved", Route { redirect: Some("http://u:k3y9#z8qv@h:x/".into()), ..Route::new("") });
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        format!("http://u:k3y9?z8qv@127.0.0.1:{port}/a"),
        format!("http://u:k3y9#z8qv@127.0.0.1:{port}/b"),
        format!("http://u:k3y9 z8qv@127.0.0.1:{port}/c"),
        format!("http://u:k3y9/z8qv@127.0.0.1:{port}/d"),
        format!("http://u:k3y9\\z8qv@127.0.0.1:{port}/e"),
        "https//u:k3y9z8qv@127.0.0.1/f".to_owned(),
        "ht!tp://u:k3y9z8qv@127.0.0.1/g".to_owned(),
        "u:k3y9z8qv@127.0.0.1/h".to_owned(),
        r#"{"url": "http://u:k3y9 z8qv@[bad/i"}"#.to_owned(),
        r#"{"url": "http://u:k3y9?z8qv@127.0.0.1:1/j", "path": "j"}"#.to_owned(),
        format!(r#"{{"url": "http://127.0.0.1:{port}/k", "headers": "Authorization: k3y9z8qv"}}"#),
        format!(r#"{{"url": "http://127.0.0.1:{port}/l", "headers": {{"k3y9z8qv y": "v"}}}}"#),
        format!(r#"{{"url": "http://127.0.0.1:{port}/m", "size": "k3y9z8qv"}}"#),
        // Parsed: the password is in the URL, and the request is made.
        format!("http://u:k3y9@z8qv@127.0.0.1:{port}/there"),
        format!("http://u:k3y9z8qv@127.0.0.1:{port}/moved"),
    ];
    write(tmp.path(), "m.txt", &(lines.join("\n") + "\n"));
    let out = run(fetch(tmp.path()).args(["-v", "--retries", "0", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("0 downloaded, 0 skipped, 15 failed"), "{}", out.stderr);
    assert!(out.stderr.contains("m.txt:1: invalid URL"), "{}", out.stderr);
    assert!(out.stderr.contains("redirect to an unusable location"), "{}", out.stderr);
    for fragment in ["k3y9", "z8qv"] {
        assert_nowhere(tmp.path(), &out, fragment, "a run");
    }
    assert_eq!(server.requests_to("/there").len(), 1);
    // A URL given where a manifest goes.
    let out = run(fetch(tmp.path()).arg(format!("http://u:k3y9?z8qv@127.0.0.1:{port}/x")));
    assert_eq!(out.code, Some(2), "{out:?}");
    for fragment in ["k3y9", "z8qv"] {
        assert_nowhere(tmp.path(), &out, fragment, "a URL for a manifest");
    }
    // A dry run prints its list on stdout, and the same errors.
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("there"), "{}", out.stdout);
    for fragment in ["k3y9", "z8qv"] {
        assert_nowhere(tmp.path(), &out, fragment, "a dry run");
    }
}

/// Names that would forge a log line, move the cursor or color the
/// terminal: from a URL (percent-decoded) and from a manifest path.
fn hostile_names() -> (Server, tempfile::TempDir) {
    let server = Server::start();
    let paths = [
        "/a%0afailed%20%20%20%20%20%20forged",
        "/%1b[31mred",
        "/r%0dfailed",
        "/bidi%e2%80%aetxt",
        "/c1%c2%9b31m",
    ];
    for path in paths {
        server.route(path, Route::new("x"));
    }
    server.route("/gone", Route { statuses: [(404, None)].into(), ..Route::new("x") });
    // Large enough for a bar of its own, labelled with its name.
    let slow =
        Route { throttle: Some((64 * 1024, Duration::from_millis(10))), ..Route::new(vec![1u8; 2 << 20]) };
    server.route("/big%1b]0;title%07", slow);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{{\"url\": \"{}\", \"path\": \"p\\u001b[2Jq\\nfailed      forged2\"}}\n",
        server.url("/a%0afailed%20%20%20%20%20%20forged"),
        server.url("/%1b[31mred"),
        server.url("/r%0dfailed"),
        server.url("/bidi%e2%80%aetxt"),
        server.url("/c1%c2%9b31m"),
        server.url("/big%1b]0;title%07"),
        server.url("/gone"),
    );
    write(tmp.path(), "m.txt", &manifest);
    (server, tmp)
}

#[test]
fn control_characters_in_names_are_escaped_in_every_line() {
    let (_server, tmp) = hostile_names();
    let out = run(fetch(tmp.path()).args(["-v", "--retries", "0", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    // The files exist under their real names; only the display escapes.
    assert!(tmp.path().join("a\nfailed      forged").is_file());
    let report = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 7, "{report}");
    for raw in ['\x1b', '\r', '\u{202e}', '\u{9b}'] {
        assert!(!out.stderr.contains(raw), "{raw:?} raw in stderr: {:?}", out.stderr);
        assert!(!report.contains(raw), "{raw:?} raw in the report: {report:?}");
    }
    assert!(report.contains(r#""path":"c1\u009b31m""#), "{report}");
    let prefixes = ["attempt     ", "split       ", "downloaded  ", "failed      ", "fetch: "];
    for line in out.stderr.lines() {
        assert!(prefixes.iter().any(|p| line.starts_with(p)), "a line fetch did not write: {line:?}");
    }
    let failed: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed, ["failed      p\\x1b[2Jq\\x0afailed      forged2: HTTP 404 Not Found"]);
    for shown in [
        "a\\x0afailed      forged  1 B",
        "\\x1b[31mred  1 B",
        "r\\x0dfailed  1 B",
        "bidi\\u{202e}txt",
        "c1\\x9b31m",
    ] {
        assert!(out.stderr.contains(&format!("downloaded  {shown}")), "{shown}: {}", out.stderr);
    }

    // A dry run's list on stdout, and bars drawn off a terminal.
    let (_server, tmp) = hostile_names();
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 7, "{}", out.stdout);
    assert!(out.stdout.lines().all(|l| l.starts_with("download  ")), "{}", out.stdout);
    assert!(!out.stdout.contains(['\x1b', '\r', '\u{202e}', '\u{9b}']), "{:?}", out.stdout);
    let out = run(fetch(tmp.path()).args(["--progress", "bar", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("big\\x1b]0;title\\x07  "), "a bar for big: {:?}", out.stderr);
    for injected in ["\x1b[31m", "\x1b[2J", "\x1b]0", "\x07", "\u{202e}", "\rfailed"] {
        assert!(!out.stderr.contains(injected), "{injected:?} in {:?}", out.stderr);
    }
    assert!(out.stderr.contains("failed      p\\x1b[2Jq\\x0afailed      forged2"), "{:?}", out.stderr);
}

#[test]
fn bars_fit_a_narrow_terminal() {
    let server = Server::start();
    let slow =
        Route { throttle: Some((64 * 1024, Duration::from_millis(20))), ..Route::new(vec![1u8; 2 << 20]) };
    server.route("/a-rather-long-file-name-for-a-narrow-terminal.bin", slow);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/a-rather-long-file-name-for-a-narrow-terminal.bin"));
    let out = run(fetch(tmp.path()).args(["--progress", "bar", "m.txt"]).env("COLUMNS", "60"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("-terminal.bin ["), "a slot bar was drawn: {:?}", out.stderr);
    // A row that starts otherwise is the wrapped end of a line.
    for row in screen_rows(&out.stderr, 60) {
        let overall = row.starts_with(|c: char| c == '[' || c == '\u{2591}' || c.is_ascii_digit());
        let slot = row.starts_with("  \u{2026}") || row.starts_with("  a-rather");
        assert!(overall || slot || row.starts_with("fetch: "), "a wrapped line: {row:?}");
    }
}

/// The rows a terminal `width` columns wide shows for what was drawn: a
/// row ends at a newline, a carriage return, an escape code that moves
/// the cursor or erases, and where it wraps. Colors are dropped.
fn screen_rows(drawn: &str, width: usize) -> Vec<String> {
    let mut rows = vec![String::new()];
    let mut chars = drawn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\r' => rows.push(String::new()),
            '\x1b' => {
                assert_eq!(chars.next(), Some('['), "only CSI codes are drawn: {drawn:?}");
                let end = chars.by_ref().find(|c| c.is_ascii_alphabetic()).unwrap();
                if end != 'm' {
                    rows.push(String::new());
                }
            }
            c => {
                if rows.last().unwrap().chars().count() == width {
                    rows.push(String::new());
                }
                rows.last_mut().unwrap().push(c);
            }
        }
    }
    rows.retain(|row| !row.is_empty());
    rows
}

/// The number and unit of `in 12ms` or `in 2.5s` on a log line.
fn logged_time(stderr: &str, name: &str) -> Duration {
    let line = stderr.lines().find(|l| l.starts_with(&format!("downloaded  {name} "))).unwrap();
    let time = line.rsplit(" in ").next().unwrap();
    match time.strip_suffix("ms") {
        Some(ms) => Duration::from_millis(ms.parse().unwrap()),
        None => Duration::from_secs_f64(time.strip_suffix('s').unwrap().parse().unwrap()),
    }
}

#[test]
fn a_log_line_shows_the_transfer_time_not_the_wait_for_a_slot() {
    let server = Server::start();
    server.route("/slow", Route { delay: Duration::from_secs(2), ..Route::new("s") });
    server.route("/fast", Route::new("f"));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", server.url("/slow"), server.url("/fast")));
    let out = run(fetch(tmp.path()).args(["-j", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let (slow, fast) = (logged_time(&out.stderr, "slow"), logged_time(&out.stderr, "fast"));
    // One job: fast waited for slow's slot (if slow went first), which
    // its line does not count.
    assert!(slow >= Duration::from_secs(2), "{}", out.stderr);
    assert!(fast < slow / 2, "{}", out.stderr);
}

#[test]
fn control_characters_in_arguments_are_escaped_in_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 3] = [
        &["--user-agent", "ua\nfailed      forged", "m.txt"],
        &["--bogus", "m\x1b[31m.txt"],
        &["no-such\x1b[31m.txt"],
    ];
    for args in cases {
        let out = run(fetch(tmp.path()).args(args));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.contains('\x1b'), "{args:?}: {:?}", out.stderr);
        assert!(!out.stderr.lines().any(|l| l.starts_with("failed")), "{args:?}: {:?}", out.stderr);
    }
    let out = run(fetch(tmp.path()).args(["--user-agent", "ua\nx", "m.txt"]));
    assert!(out.stderr.contains("'ua\\x0ax'"), "{}", out.stderr);
}
