//! The order entries start in, and running out of file descriptors.

use std::time::Duration;

use crate::server::Logged;
use crate::{Route, Server, fetch, files, run, write};

/// Paths `/f00` to `/f{n-1}` in a shuffled but fixed order (never sorted,
/// so that no accidental sort passes for manifest order).
fn shuffled(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/f{:02}", (i * 7 + 3) % n)).collect()
}

fn paths(log: &[Logged]) -> Vec<String> {
    log.iter().map(|l| l.path.clone()).collect()
}

#[test]
fn with_one_job_entries_are_requested_in_manifest_order() {
    let a = Server::start();
    let b = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    let mut expected = Vec::new();
    for (i, path) in shuffled(20).iter().enumerate() {
        // Two hosts, alternating in runs of different lengths.
        let server = if i % 3 == 0 { &a } else { &b };
        server.file(path, i as u64, 100 + i);
        manifest += &format!("{} {}{}\n", server.url(path), if i % 3 == 0 { "a" } else { "b" }, &path[1..]);
        expected.push((server.addr, path.clone()));
    }
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut log: Vec<_> = a.log().into_iter().map(|l| (l.at, a.addr, l.path)).collect();
    log.extend(b.log().into_iter().map(|l| (l.at, b.addr, l.path)));
    log.sort_by_key(|(at, ..)| *at);
    let seen: Vec<_> = log.into_iter().map(|(_, addr, path)| (addr, path)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn with_one_slot_per_host_each_host_starts_its_entries_in_manifest_order() {
    let a = Server::start();
    let b = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    let (mut for_a, mut for_b) = (Vec::new(), Vec::new());
    for (i, path) in shuffled(30).iter().enumerate() {
        let (server, list, name) = if i % 4 == 1 { (&a, &mut for_a, "a") } else { (&b, &mut for_b, "b") };
        server.file(path, i as u64, 1000);
        manifest += &format!("{} {name}{}\n", server.url(path), &path[1..]);
        list.push(path.clone());
    }
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "2", "--per-host", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(paths(&a.log()), for_a);
    assert_eq!(paths(&b.log()), for_b);
}

#[test]
fn an_entry_waiting_for_a_busy_host_does_not_hold_up_other_hosts() {
    // The first entry of host a stalls; the other a entries wait for it,
    // the b entries behind them in the manifest do not.
    let a = Server::start();
    let b = Server::start();
    let slow = Route { stalls: [(0, Duration::from_secs(4))].into(), ..Route::new(vec![1u8; 1000]) };
    a.route("/a0", slow);
    let mut manifest = format!("{} a0\n", a.url("/a0"));
    for i in 1..4 {
        a.file(&format!("/a{i}"), i, 1000);
        manifest += &format!("{} a{i}\n", a.url(&format!("/a{i}")));
    }
    for i in 0..6 {
        b.file(&format!("/b{i}"), 10 + i, 1000);
        manifest += &format!("{} b{i}\n", b.url(&format!("/b{i}")));
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "2", "--per-host", "1", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(paths(&a.log()), ["/a0", "/a1", "/a2", "/a3"]);
    assert_eq!(paths(&b.log()), ["/b0", "/b1", "/b2", "/b3", "/b4", "/b5"]);
    let a1 = a.log()[1].at;
    assert!(b.log().iter().all(|l| l.at < a1), "b entries waited for host a");
    assert_eq!(files(tmp.path()).len(), 11);
}

#[test]
fn entries_sharing_a_destination_do_not_hold_up_the_line() {
    // The first entry for `same` fails once and waits to retry, holding the
    // destination but no slot; the second for `same` waits for it, and the
    // one slot serves the third meanwhile.
    let server = Server::start();
    let flaky = Route { statuses: [(503, None)].into(), ..Route::new(vec![1u8; 1000]) };
    server.route("/flaky", flaky);
    server.file("/other", 2, 1000);
    server.file("/c", 3, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let manifest =
        format!("{} same\n{} same\n{} c\n", server.url("/flaky"), server.url("/other"), server.url("/c"));
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["-j", "1", "--retry-delay", "300ms", "m.txt"]));
    assert!(matches!(out.code, Some(0 | 1)), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("same")).unwrap(), vec![1u8; 1000]);
    assert!(tmp.path().join("c").exists());
    assert_eq!(paths(&server.log()), ["/flaky", "/c", "/flaky"]);
}

/// `fetch ARGS` in `dir` with at most `limit` open files, soft and hard
/// (fetch raises its soft limit to the hard one).
fn fetch_with_fd_limit(dir: &std::path::Path, limit: u32, args: &[&str]) -> crate::Run {
    let bin = assert_cmd::cargo::cargo_bin("fetch");
    let mut cmd = assert_cmd::Command::new("sh");
    cmd.current_dir(dir).timeout(Duration::from_secs(60));
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    cmd.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(bin)
        .arg("--no-config")
        .args(args);
    run(&mut cmd)
}

/// Run 300 entries at `-j 200` with at most `limit` open files; every
/// tenth file is large enough to need a part file.
fn out_of_descriptors(limit: u32) {
    let server = Server::start();
    let mut manifest = String::new();
    let mut bodies = Vec::new();
    for i in 0..300 {
        let len = if i % 10 == 0 { 300_000 } else { 1000 };
        bodies.push(server.file(&format!("/f{i}"), i, len));
        manifest += &format!("{} d{}/f{i}\n", server.url(&format!("/f{i}")), i % 7);
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &manifest);
    let out = fetch_with_fd_limit(tmp.path(), limit, &["-j", "200", "m.txt"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (i, body) in bodies.iter().enumerate() {
        let got = std::fs::read(tmp.path().join(format!("d{}/f{i}", i % 7))).unwrap();
        assert!(got == *body, "f{i} differs");
    }
    assert_eq!(files(tmp.path()).len(), 301, "no part file is left");
    let told: Vec<_> = out.stderr.lines().filter(|l| l.contains("at once")).collect();
    assert_eq!(told.len(), 1, "{}", out.stderr);
    assert!(told[0].starts_with("fetch: too many open files"), "{}", out.stderr);
    assert!(!out.stderr.contains("failed "), "{}", out.stderr);
}

#[test]
fn out_of_descriptors_the_run_goes_on_with_fewer_at_once() {
    out_of_descriptors(64);
}

#[test]
fn out_of_descriptors_even_for_one_download_at_once_nothing_fails() {
    // Room for one download at a time: connections and commits run out.
    out_of_descriptors(20);
}
