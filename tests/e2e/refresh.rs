//! `--refresh` (issue 18): an existing destination is asked about with a
//! condition made from the validators stored with it (or its mtime); a
//! `304` leaves it untouched, a new version replaces it once complete, and
//! a failure keeps it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::server::refresh::Traffic;
use crate::{Route, Server, content, fetch, files, report, run, write};

const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
/// `DATE` in seconds since the epoch.
const DATE_SECS: u64 = 1_445_412_480;

/// (inode, mtime in nanoseconds, bytes) of a file: what "untouched" means.
fn snapshot(path: &Path) -> (u64, i128, Vec<u8>) {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.ino(), mtime, std::fs::read(path).unwrap())
}

/// A route that answers conditions, dated `DATE`.
fn dated(body: Vec<u8>) -> Route {
    Route { last_modified: Some(DATE.into()), ..Route::new(body) }.conditional()
}

#[test]
fn an_unchanged_file_is_asked_about_by_its_etag_and_left_untouched() {
    let server = Server::start();
    let body = content(1, 1000);
    let route = dated(body.clone());
    let etag = route.etag.clone().unwrap();
    server.route("/a", route);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    let before = snapshot(&tmp.path().join("a"));

    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let asked = &server.requests_to("/a")[1];
    assert_eq!(asked.header("if-none-match"), Some(etag.as_str()), "the ETag stored by the first run");
    assert_eq!(asked.header("if-modified-since"), None, "one condition: the ETag wins");
    assert_eq!(server.traffic("/a"), Traffic { requests: 2, not_modified: 1, bytes: 1000 });
    assert_eq!(snapshot(&tmp.path().join("a")), before, "the same inode, mtime and bytes");
    let record = &report(&tmp.path().join("r.jsonl"))["a"];
    assert_eq!((record["status"].as_str(), record["http_status"].as_u64()), (Some("unchanged"), Some(304)));
    assert!(out.stderr.contains("unchanged   a\n"), "{}", out.stderr);
    assert!(out.stderr.contains("fetch: 0 downloaded, 1 unchanged, 0 skipped, 0 failed"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["a", "m.txt", "r.jsonl"], "no part file left");

    let out = run(fetch(tmp.path()).args(["--refresh", "--dry-run", "m.txt"]));
    assert!(out.stdout.starts_with("refresh   a  "), "{}", out.stdout);
    assert!(out.stderr.contains("0 to download, 1 to refresh, 0 to skip"), "{}", out.stderr);
    let out = run(fetch(tmp.path()).args(["--refresh", "--overwrite", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn a_changed_file_is_replaced_in_one_move_and_its_new_etag_asked_next_time() {
    let server = Server::start();
    let (old, new) = (content(2, 1000), content(3, 600_000));
    let (v1, v2) = (dated(old.clone()), dated(new.clone()));
    let (etag1, etag2) = (v1.etag.clone().unwrap(), v2.etag.clone().unwrap());
    server.route("/a", v1);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    // Nothing there yet: a plain download, with no condition.
    assert_eq!(run(fetch(tmp.path()).args(["--refresh", "m.txt"])).code, Some(0));
    assert_eq!(server.requests_to("/a")[0].header("if-none-match"), None);
    // A second name for the old file: were it written in place, it would show.
    let dest = tmp.path().join("a");
    std::fs::hard_link(&dest, tmp.path().join("old")).unwrap();

    server.route("/a", v2);
    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/a")[1].header("if-none-match"), Some(etag1.as_str()));
    assert_eq!(std::fs::read(&dest).unwrap(), new);
    assert_eq!(std::fs::read(tmp.path().join("old")).unwrap(), old, "the old inode was never written");
    assert_ne!(snapshot(&dest).0, snapshot(&tmp.path().join("old")).0);
    assert_eq!(report(&tmp.path().join("r.jsonl"))["a"]["status"], "downloaded");

    // The validators came with the new file: the next run asks with them.
    let out = run(fetch(tmp.path()).args(["--refresh", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/a")[2].header("if-none-match"), Some(etag2.as_str()));
    assert_eq!(server.traffic("/a"), Traffic { requests: 3, not_modified: 1, bytes: 601_000 });
    assert_eq!(std::fs::read(&dest).unwrap(), new);
}

#[test]
fn a_failed_refresh_keeps_the_old_file_and_the_next_run_resumes_the_new_one() {
    let server = Server::start();
    let (old, new) = (content(4, 1000), content(5, 600_000));
    server.route("/a", dated(old.clone()));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    assert_eq!(run(fetch(tmp.path()).arg("m.txt")).code, Some(0));
    let dest = tmp.path().join("a");
    let before = snapshot(&dest);

    // A server error, then a body cut short: the old file stays as it was.
    let broken = Route { statuses: [(500, None)].into(), ..dated(new.clone()) };
    server.route("/a", broken);
    let out = run(fetch(tmp.path()).args(["--refresh", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(snapshot(&dest), before);
    server.route("/a", Route { cuts: [300_000].into(), ..dated(new.clone()) });
    let out = run(fetch(tmp.path()).args(["--refresh", "--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(snapshot(&dest), before);

    // The part file is of the new version: the next run asks about the old
    // file and, the condition failing, resumes the new one where it stopped.
    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let last = server.requests_to("/a").pop().unwrap();
    assert!(last.header("if-none-match").is_some() && last.range().is_some_and(|(from, _)| from > 0));
    assert_eq!(std::fs::read(&dest).unwrap(), new);
    assert!(report(&tmp.path().join("r.jsonl"))["a"]["resumed_from"].as_u64() > Some(0));
    assert_eq!(files(tmp.path()), ["a", "m.txt", "r.jsonl"]);
}

#[test]
fn without_an_etag_the_stored_last_modified_is_asked_not_the_mtime() {
    let server = Server::start();
    let body = content(6, 1000);
    server.route("/a", Route { etag: None, ..dated(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    // Its mtime is the time of download, not DATE.
    assert_eq!(run(fetch(tmp.path()).args(["--no-remote-time", "m.txt"])).code, Some(0));
    let before = snapshot(&tmp.path().join("a"));
    let out = run(fetch(tmp.path()).args(["--refresh", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let asked = &server.requests_to("/a")[1];
    assert_eq!((asked.header("if-modified-since"), asked.header("if-none-match")), (Some(DATE), None));
    assert_eq!(asked.status, 304);
    assert_eq!(snapshot(&tmp.path().join("a")), before);
}

#[test]
fn files_from_before_refresh_are_asked_about_by_their_mtime() {
    let server = Server::start();
    let (same, newer) = (content(7, 1000), content(8, 1000));
    server.route("/same", Route { etag: None, ..dated(same.clone()) });
    server.route("/newer", dated(newer.clone()));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n{}\n", server.url("/same"), server.url("/newer")));
    // Written by hand, with no validators: one as old as the server's, one older.
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    for (name, bytes, mtime) in [("same", &same, at(DATE_SECS)), ("newer", &same, at(DATE_SECS - 86_400))] {
        std::fs::write(tmp.path().join(name), bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(tmp.path().join(name))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    let before = snapshot(&tmp.path().join("same"));
    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/same")[0].header("if-modified-since"), Some(DATE));
    assert_eq!(
        server.requests_to("/newer")[0].header("if-modified-since"),
        Some("Tue, 20 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(snapshot(&tmp.path().join("same")), before);
    assert_eq!(std::fs::read(tmp.path().join("newer")).unwrap(), newer);
    let records = report(&tmp.path().join("r.jsonl"));
    assert_eq!(
        (&records["same"]["status"], &records["newer"]["status"]),
        (&"unchanged".into(), &"downloaded".into())
    );
}

#[test]
fn a_server_that_ignores_the_condition_but_names_the_stored_etag_costs_no_download() {
    let server = Server::start();
    let body = content(9, 600_000);
    // Not conditional: a 200 every time, with the same strong ETag.
    server.route("/a", Route::new(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    assert_eq!(run(fetch(tmp.path()).arg("m.txt")).code, Some(0));
    let before = snapshot(&tmp.path().join("a"));
    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(server.requests_to("/a")[1].status, 200);
    let record = &report(&tmp.path().join("r.jsonl"))["a"];
    assert_eq!((record["status"].as_str(), record["http_status"].as_u64()), (Some("unchanged"), Some(200)));
    assert_eq!(snapshot(&tmp.path().join("a")), before);
}

#[test]
fn a_304_to_a_request_that_was_not_conditional_fails() {
    let server = Server::start();
    server.route("/a", Route { statuses: [(304, None)].into(), ..Route::new(content(10, 100)) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    let out = run(fetch(tmp.path()).args(["--refresh", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("304 Not Modified to a request that was not conditional"), "{}", out.stderr);
    assert!(!tmp.path().join("a").exists());
}

#[test]
fn without_user_xattrs_a_refresh_asks_by_mtime() {
    // ramfs has no user extended attributes (ENOTSUP); mounting needs root.
    let server = Server::start();
    let body = content(11, 1000);
    let route = dated(body.clone());
    let etag = route.etag.clone().unwrap();
    server.route("/a", route);
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&out_dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a ramfs here");
        return;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
        assert_eq!(run(fetch(tmp.path()).args(["--dir", "out", "m.txt"])).code, Some(0));
        let before = snapshot(&out_dir.join("a"));
        let out = run(fetch(tmp.path()).args(["--dir", "out", "--refresh", "m.txt"]));
        assert_eq!(out.code, Some(0), "{out:?}");
        let asked = &server.requests_to("/a")[1];
        assert_eq!((asked.header("if-none-match"), asked.header("if-modified-since")), (None, Some(DATE)));
        assert_eq!(snapshot(&out_dir.join("a")), before);
        // A new version is placed there all the same, and asked about by its mtime.
        let new = content(12, 1000);
        server.route(
            "/a",
            Route { last_modified: Some("Thu, 22 Oct 2015 07:28:00 GMT".into()), ..Route::new(new.clone()) }
                .conditional(),
        );
        assert_eq!(run(fetch(tmp.path()).args(["--dir", "out", "--refresh", "m.txt"])).code, Some(0));
        assert_eq!(std::fs::read(out_dir.join("a")).unwrap(), new);
        assert_ne!(server.requests_to("/a")[2].header("if-none-match"), Some(etag.as_str()));
    }));
    std::process::Command::new("umount").arg(&out_dir).status().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_condition_follows_a_redirect_to_another_host() {
    // The validator is the final server's, wherever the manifest URL points.
    let (front, back) = (Server::start(), Server::start_on("127.0.0.2".parse().unwrap()));
    let route = dated(content(13, 1000));
    let etag = route.etag.clone().unwrap();
    back.route("/a", route);
    front.route("/a", Route { redirect: Some(back.url("/a")), ..Route::default() });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{}\n", front.url("/a")));
    assert_eq!(run(fetch(tmp.path()).arg("m.txt")).code, Some(0));
    let out = run(fetch(tmp.path()).args(["--refresh", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(back.requests_to("/a")[1].header("if-none-match"), Some(etag.as_str()));
    assert_eq!(report(&tmp.path().join("r.jsonl"))["a"]["status"], "unchanged");
}
