//! Host health (issue 17): a rate limit, an overloaded server, an outage
//! and a dead host cost no entry, and a dead host holds up no other.
//! Each test counts what the server saw (requests, statuses, requests at
//! once) and what the run reported; none measures how long a run took,
//! but some check that a wait lasted at least so long.

use std::time::Duration;

use crate::server::Logged;
use crate::{Server, fetch, files, refusing_addr, report, run, write};

/// `n` files of 2 KB at `/{name}N` on `server`, as manifest lines that save
/// them as `{name}/N`.
fn serve(server: &Server, name: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let path = format!("/{name}{i}");
            server.file(&path, i as u64, 2000);
            format!("{} {name}/{i}\n", server.url(&path))
        })
        .collect()
}

fn answered(log: &[Logged], status: u16) -> usize {
    log.iter().filter(|l| l.status == status).count()
}

/// The statuses of a `--report` by destination: how many ended each way.
fn outcomes(path: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for record in report(path).values() {
        *counts.entry(record["status"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    counts
}

fn rate_limited(retry_after: Option<&str>) {
    let server = Server::start();
    server.rate_limit(100, Duration::from_secs(1), retry_after);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &serve(&server, "f", 300).concat());
    // --retries 1: an entry the host keeps refusing while it answers
    // others fails at its third 429 (see retry::Budget::host_fault).
    let args = ["--retries", "1", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(outcomes(&tmp.path().join("r.jsonl")).get("downloaded"), Some(&300));
    assert_eq!(files(&tmp.path().join("f")).len(), 300);
    let log = server.log();
    let limited = answered(&log, 429);
    assert!(limited > 0, "the run never met the rate limit");
    // Without pausing and pacing, 85% of the requests are 429s.
    assert!(limited * 100 <= log.len() * 25, "{limited} of {} requests answered 429", log.len());
}

#[test]
fn a_rate_limit_with_retry_after_fails_nothing_and_is_rarely_hit() {
    rate_limited(Some("1"));
}

#[test]
fn a_rate_limit_without_retry_after_fails_nothing_and_is_rarely_hit() {
    rate_limited(None);
}

#[test]
fn an_overloaded_server_sees_fetch_settle_near_its_capacity() {
    let server = Server::start();
    server.capacity(4);
    let tmp = tempfile::tempdir().unwrap();
    let lines = serve(&server, "f", 200);
    for i in 0..200 {
        let body = crate::content(i, 2000);
        server.route(
            &format!("/f{i}"),
            crate::Route { delay: Duration::from_millis(20), ..crate::Route::new(body) },
        );
    }
    write(tmp.path(), "m.txt", &lines.concat());
    let args = ["-j", "16", "--retries", "1", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(outcomes(&tmp.path().join("r.jsonl")).get("downloaded"), Some(&200));
    let log = server.log();
    let refused = answered(&log, 503);
    // The first burst of 16 meets a capacity of 4: 12 refused; after it,
    // a try past the capacity now and then.
    assert!(refused >= 12, "{refused} refused");
    assert!(refused <= 12 + 20, "{refused} of {} requests answered 503", log.len());
    assert!(server.max_at_work() <= 4);
    let later = log.iter().skip(60).map(|l| l.in_flight).max().unwrap();
    // One past the capacity as fetch tries for more (seen: 5), and one
    // more of slack: a loaded client may not fill its slots for a while,
    // and grows them meanwhile. Without the decrease it stays at 16.
    assert!(later <= 6, "{later} requests at once after the first burst");
}

#[test]
fn an_outage_fails_nothing_in_flight() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let lines = serve(&server, "f", 8);
    for i in 0..8 {
        let body = crate::content(i, 2000);
        server.route(
            &format!("/f{i}"),
            crate::Route { delay: Duration::from_millis(500), ..crate::Route::new(body) },
        );
    }
    write(tmp.path(), "m.txt", &lines.concat());
    // All eight are out when the host goes; then its probes find it
    // down. Each entry would spend its one retry on the outage, and those
    // that probed it a second.
    server.outage(8, Duration::from_secs(2));
    let args = ["-v", "-j", "8", "--retries", "1", "--retry-delay", "100ms", "--retry-max-delay", "1s"];
    let out = run(fetch(tmp.path()).args(args).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(outcomes(&tmp.path().join("r.jsonl")).get("downloaded"), Some(&8));
    let outages = server.outages();
    assert_eq!(outages.len(), 1);
    let ended = outages[0].1.expect("the outage ended");
    assert!(server.log().iter().any(|l| l.at > ended), "no request after the outage");
    assert!(out.stderr.contains(": down since ") && out.stderr.contains(", probing"), "{}", out.stderr);
    let refused = out.stderr.matches("Connection refused").count();
    assert!(refused >= 1, "no probe met the outage: {}", out.stderr);
}

/// Manifest lines for `dead` entries on a host that refuses connections,
/// `healthy` entries of `server` after every `every` of them.
fn dead_and_healthy(server: &Server, dead: usize, healthy: usize) -> (String, String) {
    let addr = refusing_addr();
    let good = serve(server, "ok", healthy);
    let every = dead / healthy;
    let mut manifest = String::new();
    for i in 0..dead {
        manifest += &format!("http://{addr}/d{i} dead/{i}\n");
        if i % every == every - 1 {
            manifest += &good[i / every];
        }
    }
    (manifest, addr.to_string())
}

#[test]
fn a_dead_host_fails_its_entries_after_the_host_timeout_with_few_attempts() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (manifest, dead) = dead_and_healthy(&server, 100, 100);
    write(tmp.path(), "m.txt", &manifest);
    let args = ["--retries", "1", "--retry-delay", "100ms", "--host-timeout", "2s", "--report", "r.jsonl"];
    let start = std::time::Instant::now();
    let out = run(fetch(tmp.path()).args(args).arg("m.txt"));
    assert!(start.elapsed() >= Duration::from_secs(2), "failed before --host-timeout");
    assert_eq!(out.code, Some(1), "{out:?}");
    let records = report(&tmp.path().join("r.jsonl"));
    let mut attempts = 0;
    for (path, record) in &records {
        if path.starts_with("ok/") {
            assert_eq!(record["status"], "downloaded", "{record}");
            continue;
        }
        assert_eq!(record["status"], "failed", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(&dead) && error.contains("longer than --host-timeout"), "{error}");
        attempts += record["attempts"].as_u64().unwrap();
    }
    assert_eq!(records.len(), 200);
    assert_eq!(files(&tmp.path().join("ok")).len(), 100);
    // Each on its own: 2 attempts each, 200 in all.
    assert!(attempts <= 20, "{attempts} connection attempts");
    assert!(out.stderr.contains("longer than --host-timeout"), "{}", out.stderr);
}

#[test]
fn a_dead_host_holds_up_no_healthy_entry() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    // More dead entries than the lookahead of -j 2 (96) holds, twice over.
    let (manifest, _) = dead_and_healthy(&server, 300, 100);
    write(tmp.path(), "m.txt", &manifest);
    let args = ["-j", "2", "--retries", "1", "--retry-delay", "100ms", "--host-timeout", "10s"];
    let out = run(fetch(tmp.path()).args(args).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let text = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    let order: Vec<bool> = text.lines().map(|l| l.contains("\"path\":\"ok/")).collect();
    assert_eq!(order.len(), 400);
    let first_dead = order.iter().position(|ok| !ok).unwrap();
    let healthy_before = order[..first_dead].len();
    assert_eq!(
        healthy_before, 100,
        "{healthy_before} healthy entries finished before the first dead one failed"
    );
}

#[test]
fn max_rate_spaces_the_requests_to_a_host() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &serve(&server, "f", 60).concat());
    let out = run(fetch(tmp.path()).args(["--max-rate", "50", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let log = server.log();
    assert_eq!(log.len(), 60);
    let span = log.last().unwrap().at - log[0].at;
    let gap = span / 59;
    assert!(gap >= Duration::from_millis(18), "{gap:?} between requests on average at --max-rate 50");
}

#[test]
fn a_host_that_answers_only_503_fails_its_entries_after_the_host_timeout() {
    let server = Server::start();
    server.host_statuses(std::iter::repeat_n((503, None), 10_000));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &serve(&server, "f", 2).concat());
    let args = ["--retries", "1", "--retry-delay", "100ms", "--host-timeout", "2s", "m.txt"];
    let start = std::time::Instant::now();
    let out = run(fetch(tmp.path()).args(args));
    assert!(start.elapsed() >= Duration::from_secs(2), "failed before --host-timeout");
    assert_eq!(out.code, Some(1), "{out:?}");
    for i in 0..2 {
        let failed = out.stderr.lines().find(|l| l.starts_with(&format!("failed      f/{i}:"))).unwrap();
        assert!(failed.contains("longer than --host-timeout; last: HTTP 503"), "{failed}");
    }
    // More than --retries allows each entry: their budgets were not spent.
    let requests = server.log().len();
    assert!(requests > 4, "{requests} requests");
}

#[test]
fn failures_of_the_host_spend_no_entry_budget() {
    let server = Server::start();
    // More refusals than any entry's budget of two attempts.
    server.host_statuses(std::iter::repeat_n((503, None), 8));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &serve(&server, "f", 6).concat());
    let args = ["--retries", "1", "--retry-delay", "50ms", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(outcomes(&tmp.path().join("r.jsonl")).get("downloaded"), Some(&6));
    assert_eq!(answered(&server.log(), 503), 8);
}
