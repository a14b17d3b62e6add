//! Mirrors (issue 18, item 6): a JSON line's `urls` are tried in order; a
//! URL whose failure stands, or whose host does not answer, is left for
//! the next; the report names the URL that served the file; bytes from one
//! URL are continued from another only when its `206` proves them the same
//! file. Each test counts what the servers saw and reads the files and the
//! report; none measures how long a run took.

use crate::server::Logged;
use crate::{Route, Server, content, fetch, refusing_addr, report, run, write};

/// A manifest line giving `urls` and `path`.
fn line(urls: &[String], path: &str) -> String {
    format!("{}\n", serde_json::json!({ "urls": urls, "path": path }))
}

fn range_start(l: &Logged) -> Option<u64> {
    l.range().map(|(start, _)| start)
}

#[test]
fn a_url_that_answers_404_falls_back_to_the_next_and_the_report_names_it() {
    let (a, b) = (Server::start(), Server::start());
    let body = b.file("/f", 1, 5_000);
    let tmp = tempfile::tempdir().unwrap();
    // Both in log mode: the plain line says where it came from, -v why.
    write(tmp.path(), "m.txt", &line(&[a.url("/f"), b.url("/f")], "f"));
    let out = run(fetch(tmp.path()).args(["-v", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    assert_eq!(a.requests_to("/f").iter().map(|l| l.status).collect::<Vec<_>>(), [404]);
    assert_eq!(b.requests_to("/f").len(), 1);
    let record = &report(&tmp.path().join("r.jsonl"))["f"];
    assert_eq!(record["status"], "downloaded", "{record}");
    assert_eq!(record["url"], a.url("/f"), "the entry is known by its first URL");
    assert_eq!(record["served_by"], b.url("/f"), "{record}");
    let leaving =
        format!("mirror      f: {} failed: HTTP 404 Not Found; trying {}", a.url("/f"), b.url("/f"));
    assert!(out.stderr.contains(&leaving), "{}", out.stderr);
    assert!(out.stderr.contains(&format!(", from {}", b.url("/f"))), "{}", out.stderr);

    // An entry served by its first URL says nothing more.
    write(tmp.path(), "m2.txt", &line(&[b.url("/f"), a.url("/f")], "g"));
    let out = run(fetch(tmp.path()).args(["--report", "r2.jsonl", "m2.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(report(&tmp.path().join("r2.jsonl"))["g"]["served_by"], b.url("/f"));
    assert!(!out.stderr.contains(", from "), "{}", out.stderr);
    assert_eq!(a.requests_to("/f").len(), 1, "the second URL is not asked");
}

#[test]
fn a_host_that_refuses_connections_is_left_at_once_for_the_next() {
    let b = Server::start();
    let dead = refusing_addr();
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    let mut bodies = Vec::new();
    for i in 0..20 {
        let path = format!("/f{i}");
        let body = content(i, 3_000);
        b.route(&path, Route { delay: std::time::Duration::from_millis(20), ..Route::new(body.clone()) });
        bodies.push(body);
        manifest += &line(&[format!("http://{dead}{path}"), b.url(&path)], &format!("f{i}"));
    }
    write(tmp.path(), "m.txt", &manifest);
    // The default --host-timeout (10 minutes) is far beyond the command's
    // own limit of a minute: the run ends only if nothing waits for the
    // dead host. B has its own --per-host, whatever slots of the dead
    // host the entries were given first.
    let out = run(fetch(tmp.path()).args(["-v", "--per-host", "1", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let records = report(&tmp.path().join("r.jsonl"));
    for (i, body) in bodies.iter().enumerate() {
        let name = format!("f{i}");
        assert_eq!(&std::fs::read(tmp.path().join(&name)).unwrap(), body);
        assert_eq!(records[&name]["served_by"], b.url(&format!("/f{i}")), "{}", records[&name]);
    }
    assert_eq!(b.log().len(), 20, "one request each");
    assert_eq!(b.max_in_flight(), 1, "--per-host 1");
    assert!(out.stderr.contains(&format!("host        127.0.0.1:{}: down", dead.port())), "{}", out.stderr);
}

#[test]
fn a_paused_host_is_waited_for_not_left() {
    let (a, b) = (Server::start(), Server::start());
    let body = content(3, 2_000);
    a.route("/f", Route { statuses: [(429, Some("1".into()))].into(), ..Route::new(body.clone()) });
    b.route("/f", Route::new(content(4, 2_000)));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &line(&[a.url("/f"), b.url("/f")], "f"));
    let out = run(fetch(tmp.path()).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    assert_eq!(a.requests_to("/f").iter().map(|l| l.status).collect::<Vec<_>>(), [429, 200]);
    assert!(b.log().is_empty(), "a host that asked for a pause was left");
    assert_eq!(report(&tmp.path().join("r.jsonl"))["f"]["served_by"], a.url("/f"));
}

#[test]
fn when_every_url_fails_the_error_names_each_and_hides_passwords() {
    let (a, b) = (Server::start(), Server::start());
    b.route("/f", Route { statuses: [(500, None), (500, None)].into(), ..Route::new("x") });
    let dead = refusing_addr();
    let tmp = tempfile::tempdir().unwrap();
    let with_password = a.url("/f").replacen("http://", "http://u:hunter2@", 1);
    let urls = [with_password, b.url("/f"), format!("http://{dead}/f")];
    write(tmp.path(), "m.txt", &line(&urls, "f"));
    let args = ["--retries", "1", "--retry-delay", "10ms", "--host-timeout", "1s", "--report", "r.jsonl"];
    let out = run(fetch(tmp.path()).args(args).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!tmp.path().join("f").exists());
    assert_eq!(b.requests_to("/f").len(), 2, "the retry budget is spent on each URL");
    let record = &report(&tmp.path().join("r.jsonl"))["f"];
    let error = record["error"].as_str().unwrap();
    let shown = a.url("/f").replacen("http://", "http://u:***@", 1);
    for part in [
        format!("every URL failed: {shown}: HTTP 404 Not Found; "),
        format!("{}: HTTP 500 Internal Server Error; ", b.url("/f")),
        format!("http://{dead}/f: "),
    ] {
        assert!(error.contains(&part), "{part:?} not in {error}");
    }
    assert_eq!(record["url"], shown);
    assert!(record.get("served_by").is_none(), "{record}");
    let report_text = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    for text in [&out.stdout, &out.stderr, &report_text] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert!(out.stderr.contains(&format!("failed      f: {error}")), "{}", out.stderr);
}

/// A partial file of the first `have` bytes of `body`, as a run that got
/// them from `url` with this ETag or Last-Modified and total left it.
fn partial(
    dir: &std::path::Path,
    body: &[u8],
    have: usize,
    url: &str,
    validator: &str,
    total: Option<usize>,
) {
    std::fs::write(dir.join("f.fetch-part"), &body[..have]).unwrap();
    let mut meta = serde_json::json!({ "url": url });
    let key = if validator.starts_with('"') { "etag" } else { "last_modified" };
    meta[key] = validator.into();
    if let Some(total) = total {
        meta["total"] = total.into();
    }
    write(dir, "f.fetch-part.meta", &meta.to_string());
}

const DATE: &str = "Tue, 01 Jan 2030 00:00:00 GMT";

#[test]
fn a_partial_from_one_mirror_is_continued_from_another_that_proves_it_the_same_file() {
    let (a, b) = (Server::start(), Server::start());
    let body = content(5, 300_000);
    let route = Route::new(body.clone());
    let etag = route.etag.clone().unwrap();
    b.route("/f", route);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &line(&[a.url("/f"), b.url("/f")], "f"));
    // A answers 404 now: B has the same strong ETag and length.
    partial(tmp.path(), &body, 100_000, &a.url("/f"), &etag, Some(body.len()));
    let out = run(fetch(tmp.path()).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let seen = b.requests_to("/f");
    assert_eq!(seen.len(), 1);
    assert_eq!((range_start(&seen[0]), seen[0].header("if-range")), (Some(100_000), Some(etag.as_str())));
    assert_eq!((seen[0].status, seen[0].sent()), (206, 200_000));
    let record = &report(&tmp.path().join("r.jsonl"))["f"];
    assert_eq!(
        (record["resumed_from"].as_u64(), record["served_by"].as_str()),
        (Some(100_000), Some(&*b.url("/f")))
    );

    // The same by Last-Modified, from a partial B left, continued from A
    // (the first URL, up again) though A's ETag is its own.
    std::fs::remove_file(tmp.path().join("f")).unwrap();
    a.route(
        "/f",
        Route { last_modified: Some(DATE.into()), etag: Some("\"a-1\"".into()), ..Route::new(body.clone()) },
    );
    partial(tmp.path(), &body, 50_000, &b.url("/f"), DATE, Some(body.len()));
    let out = run(fetch(tmp.path()).args(["--report", "r2.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let seen = a.requests_to("/f");
    let last = seen.last().unwrap();
    assert_eq!((range_start(last), last.header("if-range"), last.status), (Some(50_000), Some(DATE), 206));
    assert_eq!(b.requests_to("/f").len(), 1, "B is not asked again");
}

#[test]
fn a_partial_restarts_at_another_mirror_that_does_not_prove_it_the_same_file() {
    let (a, b) = (Server::start(), Server::start());
    let old = content(6, 300_000);
    // B has another version of the same length: another ETag.
    let new = content(7, 300_000);
    b.route("/f", Route::new(new.clone()));
    let old_etag = Route::new(old.clone()).etag.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &line(&[a.url("/f"), b.url("/f")], "f"));
    partial(tmp.path(), &old, 100_000, &a.url("/f"), &old_etag, Some(old.len()));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), new);
    let seen = b.requests_to("/f");
    assert_eq!(seen.len(), 1);
    // Asked with the old validator, B sent the whole file.
    assert_eq!((range_start(&seen[0]), seen[0].header("if-range")), (Some(100_000), Some(old_etag.as_str())));
    assert_eq!((seen[0].status, seen[0].sent()), (200, 300_000));

    // A partial whose length was never known is not offered to another
    // URL at all: no Range, whether it is found at the start of a run (B
    // left it, A serves) or when its own URL fails (A left it and 404s).
    for (left_by, serves) in [(&b, &a), (&a, &b)] {
        std::fs::remove_file(tmp.path().join("f")).unwrap();
        serves.route("/f", Route::new(old.clone()));
        partial(tmp.path(), &old, 100_000, &left_by.url("/f"), &old_etag, None);
        if left_by.url("/f") == a.url("/f") {
            a.route("/f", Route { statuses: [(404, None)].into(), ..Route::new(old.clone()) });
        }
        let out = run(fetch(tmp.path()).arg("m.txt"));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), old);
        let last = serves.requests_to("/f").pop().unwrap();
        assert_eq!((last.header("range"), last.status), (None, 200));
    }
}

#[test]
fn bytes_cut_short_at_one_mirror_are_continued_from_the_next() {
    let (a, b) = (Server::start(), Server::start());
    let body = content(8, 400_000);
    a.route("/f", Route { cuts: [150_000].into(), ..Route::new(body.clone()) });
    b.route("/f", Route::new(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &line(&[a.url("/f"), b.url("/f")], "f"));
    let out = run(fetch(tmp.path()).args(["--retries", "0", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let seen = b.requests_to("/f");
    assert_eq!(seen.len(), 1);
    let start = range_start(&seen[0]).expect("B was asked for the rest");
    assert!(start > 0 && start <= 150_000, "{start}");
    assert_eq!((seen[0].status, seen[0].sent() as u64), (206, 400_000 - start));
}

#[test]
fn bad_urls_are_line_errors_and_the_other_lines_download() {
    let server = Server::start();
    let body = server.file("/ok", 9, 100);
    let tmp = tempfile::tempdir().unwrap();
    let many: Vec<String> = (0..17).map(|i| server.url(&format!("/m{i}"))).collect();
    let lines = [
        r#"{"urls": [], "path": "a"}"#.to_owned(),
        format!(r#"{{"url": "{0}", "urls": ["{0}"], "path": "b"}}"#, server.url("/ok")),
        line(&many, "c"),
        format!(r#"{{"urls": ["{}", "ftp://h/x"], "path": "d"}}"#, server.url("/ok")),
        line(&[server.url("/ok")], "ok"),
    ];
    write(tmp.path(), "m.txt", &lines.iter().map(|l| l.trim_end().to_owned() + "\n").collect::<String>());
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    for (at, reason) in [
        (1, "invalid \"urls\": the list is empty"),
        (2, "invalid \"urls\": give \"url\" or \"urls\", not both"),
        (3, "invalid \"urls\": more than 16 URLs"),
        (4, "unsupported URL scheme \"ftp\""),
    ] {
        assert!(out.stderr.contains(&format!("m.txt:{at}: {reason}")), "{reason}: {}", out.stderr);
    }
    assert_eq!(std::fs::read(tmp.path().join("ok")).unwrap(), body);
    assert_eq!(server.log().len(), 1, "no request for an invalid line");
}

#[test]
fn entries_waiting_for_a_host_that_goes_are_served_by_their_other_urls() {
    let (a, b) = (Server::start(), Server::start());
    // A pauses for 2 s and is gone after 1 s of trouble: the entries
    // waiting for a slot of A, and those read later and set aside for A
    // (read because the plain entries of B between them finish meanwhile),
    // go on to B rather than fail with A.
    a.host_statuses(std::iter::repeat_n((429, Some("2")), 600));
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for i in 0..300 {
        let path = format!("/f{i}");
        b.file(&path, i, 100);
        manifest += &line(&[a.url(&path), b.url(&path)], &format!("f{i}"));
        b.file(&format!("/g{i}"), i, 100);
        manifest += &format!("{} g{i}\n", b.url(&format!("/g{i}")));
    }
    write(tmp.path(), "m.txt", &manifest);
    let args = ["-j", "2", "--retry-max-delay", "2s", "--host-timeout", "1s", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(0), "{out:?}");
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(records.len(), 600);
    for i in 0..300 {
        let record = &records[&format!("f{i}")];
        assert_eq!(record["served_by"], b.url(&format!("/f{i}")), "{record}");
    }
    // The requests A saw (one per slot at most, sent before its first
    // answer) were all answered 429, so A never answered.
    let statuses: Vec<u16> = a.log().iter().map(|l| l.status).collect();
    assert!(
        !statuses.is_empty() && statuses.len() <= 2 && statuses.iter().all(|&s| s == 429),
        "{statuses:?}"
    );
}

#[test]
fn entries_read_when_every_host_of_theirs_is_gone_name_each_url() {
    let c = Server::start();
    let (dead1, dead2) = (refusing_addr(), refusing_addr());
    let tmp = tempfile::tempdir().unwrap();
    let mirrored =
        |i: usize| line(&[format!("http://{dead1}/f{i}"), format!("http://{dead2}/f{i}")], &format!("f{i}"));
    // The first entry finds both hosts down; they are gone after 1 s. The
    // slow entries of a healthy host after it hold the lookahead (80 with
    // -j 1) for about 3 s, so the last entries are read after that.
    let mut manifest = mirrored(0);
    for i in 0..300 {
        let path = format!("/g{i}");
        c.route(&path, Route { delay: std::time::Duration::from_millis(10), ..Route::new("g") });
        manifest += &format!("{} g{i}\n", c.url(&path));
    }
    for i in 1..20 {
        manifest += &mirrored(i);
    }
    write(tmp.path(), "m.txt", &manifest);
    let args = ["-j", "1", "--retry-delay", "10ms", "--host-timeout", "1s", "--report", "r.jsonl", "m.txt"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(1), "{out:?}");
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(records.len(), 320);
    for i in 0..20 {
        let error = records[&format!("f{i}")]["error"].as_str().unwrap();
        for dead in [dead1, dead2] {
            assert!(error.contains(&format!("http://{dead}/f{i}: ")), "f{i}: {error}");
        }
    }
}

#[test]
fn a_dry_run_lists_every_url_in_the_order_tried_with_passwords_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    let urls = ["http://127.0.0.1:9/a", "http://u:secret@127.0.0.2:9/b"].map(String::from);
    write(tmp.path(), "m.txt", &line(&urls, "f"));
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("download  f  http://127.0.0.1:9/a http://u:***@127.0.0.2:9/b"), "{out:?}");
    assert!(!out.stdout.contains("secret") && !out.stderr.contains("secret"), "{out:?}");
}
