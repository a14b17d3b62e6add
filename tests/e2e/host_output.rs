//! What the user is told of troubled hosts (issue 17, "Visibility"): the
//! `-v` log says each change of a host's state once, the summary lists the
//! hosts that had trouble with their counts, the report says which entries
//! waited for their host, and a network that is gone is said to be once.

use std::net::TcpListener;

use crate::{Route, Server, fetch, report, run, write};

/// Short waits; a pause long enough that its wait shows in milliseconds.
const FAST: [&str; 4] = ["--retry-delay", "10ms", "--retry-max-delay", "300ms"];

/// Lines of `stderr` that start with `prefix`.
fn lines<'a>(stderr: &'a str, prefix: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// A local address that refuses connections: a port just given back.
fn refusing() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn a_rate_limited_host_is_logged_once_listed_in_the_summary_and_its_entry_waited() {
    let limited = Server::start();
    limited.route("/f", Route { statuses: [(429, Some("1".into()))].into(), ..Route::new("ok") });
    let healthy = Server::start();
    healthy.route("/g", Route::new("fine"));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", limited.url("/f"), healthy.url("/g")));
    let out = run(fetch(tmp.path()).args(FAST).args(["-v", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let host = limited.addr.to_string();
    // One change, to paused (its end is the next request starting).
    let logged = lines(&out.stderr, &format!("host        {host}: "));
    assert_eq!(logged.len(), 1, "{}", out.stderr);
    assert!(logged[0].ends_with(" (429)") && logged[0].contains(": paused "), "{}", logged[0]);
    // The summary lists the troubled host only.
    let summary = lines(&out.stderr, "fetch: host ");
    assert_eq!(
        summary,
        [format!("fetch: host {host}: 1 busy answers (429/503), 1 pauses")],
        "{}",
        out.stderr
    );
    // The entry of the paused host waited for it; the other did not.
    let records = report(&tmp.path().join("r.jsonl"));
    let waited = |path: &str| records[path]["waited_ms"].as_u64().unwrap_or_else(|| panic!("{records:?}"));
    // Its pause: Retry-After capped at --retry-max-delay (300 ms).
    assert!(waited("f") >= 250, "{records:?}");
    assert_eq!(waited("g"), 0, "{records:?}");
}

#[test]
fn a_clean_run_lists_no_hosts_and_waits_for_none() {
    let server = Server::start();
    server.route("/f", Route::new("ok"));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(["-v", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(lines(&out.stderr, "fetch: host ").is_empty(), "{}", out.stderr);
    assert!(lines(&out.stderr, "host ").is_empty(), "{}", out.stderr);
    assert_eq!(report(&tmp.path().join("r.jsonl"))["f"]["waited_ms"], 0);
}

#[test]
fn when_every_host_is_down_the_network_is_blamed_once_and_each_host_logged_once() {
    let hosts = [refusing(), refusing(), refusing()];
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for i in 0..3 {
        for (j, host) in hosts.iter().enumerate() {
            manifest += &format!("http://{host}/f{i} h{j}/f{i}\n");
        }
    }
    write(tmp.path(), "m.txt", &manifest);
    let args = ["-v", "--host-timeout", "1s", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(FAST).args(args));
    assert_eq!(out.code, Some(1), "{out:?}");
    let blamed = lines(&out.stderr, "fetch: no host answers");
    assert_eq!(blamed.len(), 1, "{}", out.stderr);
    assert!(blamed[0].ends_with(" down): is the network down?"), "{}", blamed[0]);
    for host in &hosts {
        let logged = lines(&out.stderr, &format!("host        {host}: "));
        assert_eq!(logged.len(), 2, "down, then gone, each once: {}", out.stderr);
        assert!(logged[0].contains(": down since ") && logged[0].ends_with(", probing"), "{}", logged[0]);
        assert!(logged[1].contains(": gone: no answer since "), "{}", logged[1]);
        let summary = lines(&out.stderr, &format!("fetch: host {host}: "));
        assert_eq!(summary.len(), 1, "{}", out.stderr);
        assert!(
            summary[0].contains(", 1 outages (longest ") && summary[0].contains("; gone since "),
            "{}",
            summary[0]
        );
    }
    // Entries set aside for their down host waited for it.
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(records.len(), 9);
    assert!(records.values().any(|r| r["waited_ms"].as_u64().unwrap() > 0), "{records:?}");
}

#[test]
fn one_host_down_beside_a_healthy_one_is_not_the_network() {
    let dead = refusing();
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for i in 0..4 {
        server.route(
            &format!("/g{i}"),
            Route { delay: std::time::Duration::from_millis(200), ..Route::new("ok") },
        );
        manifest += &format!("http://{dead}/d{i}\n{}\n", server.url(&format!("/g{i}")));
    }
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(FAST).args(["-v", "--host-timeout", "1s", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(lines(&out.stderr, "fetch: no host answers").is_empty(), "{}", out.stderr);
    assert_eq!(lines(&out.stderr, &format!("host        {dead}: down since ")).len(), 1, "{}", out.stderr);
}

#[test]
fn the_bars_show_a_paused_host_while_it_is_paused() {
    let server = Server::start();
    server.route("/f", Route { statuses: [(429, Some("2".into()))].into(), ..Route::new("ok") });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    // A pause of 2 s: a score of the ticker's redraws.
    let args = ["--progress", "bar", "--retry-delay", "10ms", "--retry-max-delay", "2s", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    let shown = format!("{} paused ", server.addr);
    assert!(out.stderr.contains(&shown), "{}", out.stderr);
    assert!(out.stderr.contains(" (429)"), "{}", out.stderr);
}

/// A server that closes its first `drops` connections before any answer,
/// then answers each request with a 200 and `ok`; the thread ends when the
/// test's process does.
fn dropping_then_answering(drops: usize) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            if i < drops {
                continue;
            }
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

#[test]
fn a_host_that_comes_back_is_logged_down_then_open_and_its_outage_counted() {
    let host = dropping_then_answering(2);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("http://{host}/f\n"));
    let out = run(fetch(tmp.path()).args(FAST).args(["-v", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"ok");
    let logged = lines(&out.stderr, &format!("host        {host}: "));
    assert_eq!(logged.len(), 2, "{}", out.stderr);
    assert!(logged[0].contains(": down since ") && logged[0].ends_with(", probing"), "{}", logged[0]);
    assert!(logged[1].ends_with(": open again"), "{}", logged[1]);
    let summary = lines(&out.stderr, &format!("fetch: host {host}: "));
    assert_eq!(summary.len(), 1, "{}", out.stderr);
    assert!(summary[0].contains(", 1 outages (longest "), "{}", summary[0]);
    assert!(!summary[0].contains("gone"), "{}", summary[0]);
    // It waited for the probes, --retry-delay (10 ms) then twice that
    // after the failures; a wait is never shorter than asked.
    let records = report(&tmp.path().join("r.jsonl"));
    assert!(records["f"]["waited_ms"].as_u64().unwrap() >= 20, "{records:?}");
}

#[test]
fn an_entry_read_while_its_host_is_paused_waits_aside_and_says_so() {
    use std::io::Write;
    use std::process::Stdio;
    let server = Server::start();
    server.route("/f", Route { statuses: [(429, Some("1".into()))].into(), ..Route::new("ok") });
    server.route("/g", Route::new("ok"));
    let tmp = tempfile::tempdir().unwrap();
    // A pause of 1 s, long enough for /g to be read during it.
    let mut child = crate::fetch_std(tmp.path())
        .args(["-v", "--retry-delay", "10ms", "--retry-max-delay", "1s", "--report", "r.jsonl"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", server.url("/f")).unwrap();
    stdin.flush().unwrap();
    // /g arrives once the host is paused (logged): it is set aside.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr) {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut seen = String::new();
    while !seen.contains(": paused ") {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) else { break };
        seen += &line;
        seen += "\n";
    }
    writeln!(stdin, "{}", server.url("/g")).unwrap();
    drop(stdin);
    assert!(seen.contains(": paused "), "{seen}");
    let out = crate::finish(child);
    assert_eq!(out.status.code(), Some(0), "{seen}");
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(server.requests_to("/g").len(), 1);
    assert!(records["g"]["waited_ms"].as_u64().unwrap() > 0, "{records:?}");
}
