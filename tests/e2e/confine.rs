//! Hostile filesystems: symlinks, hard links and FIFOs planted under the
//! names `fetch` uses, directories swapped for symlinks while a download
//! runs, destinations that name the run's own files, unusable `--dir`s.
//! Whatever is planted, nothing outside `--dir` is written, and every
//! destination ends up a regular file holding its download.

use std::collections::VecDeque;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::time::Duration;

use super::{Route, Server, fetch, files, run, wait_until, write};

/// A file outside `--dir` that a hostile link points at.
const VICTIM: &[u8] = b"victim: must never change";

/// `fetch ARGS` in `dir`, running, its output piped for [`super::finish`].
fn spawn(dir: &Path, args: &[&str]) -> std::process::Child {
    let mut cmd = super::fetch_std(dir);
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

/// What can stand under a part or meta file's name.
#[derive(Debug, Clone, Copy)]
enum Plant {
    Symlink,
    Dangling,
    HardLink,
    Fifo,
    Socket,
}

fn plant(kind: Plant, at: &Path, victim: &Path) {
    match kind {
        Plant::Symlink => symlink(victim, at).unwrap(),
        Plant::Dangling => symlink(victim.with_file_name("no-such-file"), at).unwrap(),
        Plant::HardLink => std::fs::hard_link(victim, at).unwrap(),
        Plant::Fifo => {
            let ok = std::process::Command::new("mkfifo").arg(at).status().unwrap().success();
            assert!(ok, "mkfifo {}", at.display());
        }
        // Left bound, with nobody listening: its name stays.
        Plant::Socket => std::mem::forget(std::os::unix::net::UnixListener::bind(at).unwrap()),
    }
}

/// Every kind of plant, under each name fetch uses beside a destination,
/// for a file that stays in memory (4 KiB) and one that gets a part file
/// (300 KiB), with and without `--overwrite` and `-P`: the victim keeps
/// its bytes and the destination is a regular file with the download.
#[test]
fn nothing_planted_beside_a_destination_is_written_through() {
    let server = Server::start();
    let small = server.file("/small", 1, 4096);
    let large = server.file("/large", 2, 300 * 1024);
    let kinds = [Plant::Symlink, Plant::Dangling, Plant::HardLink, Plant::Fifo, Plant::Socket];
    let suffixes = [".fetch-part", ".fetch-part.meta", ".fetch-part.meta.tmp"];
    for flags in [&[][..], &["--overwrite"], &["-P"]] {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, VICTIM).unwrap();
        let out_dir = tmp.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let mut manifest = String::new();
        let mut expected = Vec::new();
        for (k, kind) in kinds.iter().enumerate() {
            for (s, suffix) in suffixes.iter().enumerate() {
                for (path, body) in [("/small", &small), ("/large", &large)] {
                    let name = format!("f{k}{s}{}", &path[1..]);
                    plant(*kind, &out_dir.join(format!("{name}{suffix}")), &victim);
                    manifest += &format!("{} {name}\n", server.url(path));
                    expected.push((name, body));
                }
            }
        }
        write(tmp.path(), "m.txt", &manifest);
        let out = run(fetch(tmp.path()).args(["--dir", "out", "m.txt"]).args(flags));
        assert_eq!(std::fs::read(&victim).unwrap(), VICTIM, "{flags:?}: written through a link: {out:?}");
        assert_eq!(out.code, Some(0), "{flags:?}: {out:?}");
        for (name, body) in expected {
            let path = out_dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_file() && meta.nlink() == 1, "{flags:?}: {name} is {meta:?}");
            assert!(std::fs::read(&path).unwrap() == *body, "{flags:?}: {name} has other bytes");
        }
    }
}

/// A dangling symlink where a large file's part file goes: the run
/// finishes at once instead of spinning on it (the old loop retried the
/// create-or-open for minutes, and ignored SIGTERM meanwhile).
#[test]
fn a_dangling_part_symlink_neither_spins_nor_is_followed() {
    let server = Server::start();
    let body = server.file("/f", 3, 1024 * 1024);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("outside-target");
    symlink(&target, tmp.path().join("f.fetch-part")).unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let out = run(fetch(tmp.path()).arg("m.txt").timeout(Duration::from_secs(30)));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("f")).unwrap() == body);
    assert!(!target.exists(), "the link's target was created");
}

/// A directory under `--dir` is swapped for a symlink to the outside while
/// its file downloads (stalled after its first bytes): the file is still
/// placed in the directory the entry opened, now renamed, inside `--dir`,
/// for a file kept in memory and for one written to a part file. A later
/// entry for the swapped path is refused, not followed.
#[test]
fn a_directory_swapped_for_a_symlink_mid_download_keeps_the_file_inside() {
    for size in [4096, 600 * 1024] {
        let server = Server::start();
        let body = super::content(4, size);
        let stall_at = size - 1024;
        let stalls = VecDeque::from([(stall_at, Duration::from_secs(4))]);
        server.route("/slow", Route { stalls, ..Route::new(body.clone()) });
        server.file("/later", 5, 10);
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("out/sub")).unwrap();
        write(tmp.path(), "m.txt", &format!("{} sub/f\n", server.url("/slow")));
        let child = spawn(tmp.path(), &["--dir", "out", "m.txt"]);
        let stalled = wait_until(Duration::from_secs(30), || server.body_bytes() >= stall_at);
        assert!(stalled, "the download never reached its stall");
        std::fs::rename(tmp.path().join("out/sub"), tmp.path().join("out/sub.old")).unwrap();
        symlink(outside.path(), tmp.path().join("out/sub")).unwrap();
        let output = super::finish(child);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(files(outside.path()), Vec::<String>::new(), "{size}: written outside --dir: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{size}: {stderr}");
        assert!(std::fs::read(tmp.path().join("out/sub.old/f")).unwrap() == body, "{size}");

        // The swapped path itself now leads outside: refused.
        write(tmp.path(), "later.txt", &format!("{} sub/g\n", server.url("/later")));
        let out = run(fetch(tmp.path()).args(["--dir", "out", "later.txt"]));
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("outside --dir"), "{}", out.stderr);
        assert_eq!(files(outside.path()), Vec::<String>::new());
    }
}

/// Destinations naming the report or a manifest, in any spelling, are
/// invalid lines, even with `--overwrite`: the report keeps every record
/// and the manifest its text.
#[test]
fn a_destination_that_is_the_report_or_a_manifest_is_refused() {
    let server = Server::start();
    server.file("/f", 6, 10);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let url = server.url("/f");
    let manifest = format!("{url} r.jsonl\n{url} sub/../r.jsonl\n{url} ../m.txt\n{url} ok.bin\n");
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args([
        "--dir",
        "out",
        "-P",
        "--overwrite",
        "--report",
        "out/r.jsonl",
        "m.txt",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    for line in 1..=3 {
        assert!(out.stderr.contains(&format!("m.txt:{line}: ")), "line {line}: {}", out.stderr);
    }
    assert!(out.stderr.contains("refusing to write over it"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(tmp.path().join("m.txt")).unwrap(), manifest);
    let report = std::fs::read_to_string(tmp.path().join("out/r.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 4, "{report}");
    assert!(report.lines().all(|l| l.starts_with('{')), "{report}");
    assert!(tmp.path().join("out/ok.bin").exists());
}

#[test]
fn a_dir_that_is_a_file_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "file", "x");
    write(tmp.path(), "m.txt", "http://127.0.0.1:9/f f\n");
    for dir in ["file", "file/sub"] {
        let out = run(fetch(tmp.path()).args(["--dir", dir, "m.txt"]));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(&format!("--dir {dir}: not a directory")), "{}", out.stderr);
    }
}

/// A directory no file can be created in, even by root: `chmod` for
/// others, `chattr +i` for root. Made writable again when dropped.
struct Unwritable<'a>(&'a Path);

impl<'a> Unwritable<'a> {
    fn new(dir: &'a Path) -> Self {
        let writable =
            || std::fs::write(dir.join("probe"), "").map(|()| std::fs::remove_file(dir.join("probe")));
        let _ = std::process::Command::new("chmod").arg("555").arg(dir).status();
        if writable().is_ok() {
            let _ = std::process::Command::new("chattr").arg("+i").arg(dir).status();
        }
        assert!(writable().is_err(), "cannot make {} unwritable here", dir.display());
        Unwritable(dir)
    }
}

impl Drop for Unwritable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(self.0).status();
        let _ = std::process::Command::new("chmod").arg("755").arg(self.0).status();
    }
}

/// An existing `--dir` no file can be created in is an unusable command
/// line: exit 2 with one message, not one failure per entry.
#[test]
fn an_unwritable_dir_is_one_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest: String = (0..50).map(|i| format!("http://127.0.0.1:9/f{i} f{i}\n")).collect();
    write(tmp.path(), "m.txt", &manifest);
    std::fs::create_dir(tmp.path().join("ro")).unwrap();
    let ro = tmp.path().join("ro");
    let _guard = Unwritable::new(&ro);
    let out = run(fetch(tmp.path()).args(["--dir", "ro", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("fetch: --dir ro: cannot create files in it"), "{}", out.stderr);
}

/// Directories made for entries that all failed are removed at the end;
/// one that holds a kept partial file, or a file, stays.
#[test]
fn a_run_whose_entries_failed_leaves_no_empty_directories() {
    let server = Server::start();
    server.file("/ok", 7, 10);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{} a/b/c/x.bin\n{} a/b/y.bin\n{} d/z.bin\n{} keep/ok.bin\n",
        server.url("/gone"),
        server.url("/gone"),
        server.url("/gone"),
        server.url("/ok")
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["--dir", "out", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(files(&tmp.path().join("out")), ["keep/ok.bin"]);
    let mut left: Vec<_> =
        std::fs::read_dir(tmp.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["keep"], "empty directories left behind");
}

/// The cleanup of empty directories goes through handles too: `a` swapped
/// for a symlink to a tree with an empty `b` while the run's only entry,
/// in `a/b`, stalls and then fails: the outside `b` stays.
#[test]
fn the_cleanup_of_a_swapped_directory_removes_nothing_outside() {
    let server = Server::start();
    let stalls = VecDeque::from([(5, Duration::from_secs(3))]);
    server.route("/short", Route { stalls, chunked: true, ..Route::new(&b"0123456789"[..]) });
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("b")).unwrap();
    let line = format!("{{\"url\": \"{}\", \"path\": \"a/b/x.bin\", \"size\": 999}}\n", server.url("/short"));
    write(tmp.path(), "m.txt", &line);
    let child = spawn(tmp.path(), &["--dir", "out", "m.txt"]);
    assert!(wait_until(Duration::from_secs(30), || server.body_bytes() >= 5), "never stalled");
    std::fs::rename(tmp.path().join("out/a"), tmp.path().join("out/a.old")).unwrap();
    symlink(outside.path(), tmp.path().join("out/a")).unwrap();
    let output = super::finish(child);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(outside.path().join("b").is_dir(), "removed a directory outside --dir");
}

/// The run's own files named other ways: the report's real file behind
/// the symlink the command line gives, a manifest that is an entry's meta
/// file, a report that is an entry's part file. Each entry is refused and
/// the files keep their text.
#[test]
fn the_report_and_manifests_are_protected_whatever_names_them() {
    let server = Server::start();
    server.file("/f", 6, 300 * 1024);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let url = server.url("/f");
    symlink("real-r.jsonl", tmp.path().join("link.jsonl")).unwrap();
    let meta_manifest = format!("{url} m2-entry\n");
    write(tmp.path(), "m2.fetch-part.meta", &meta_manifest);
    let manifest = format!("{url} ../real-r.jsonl\n{url} ../m2\n{url} ok.bin\n");
    write(tmp.path(), "m.txt", &manifest);
    let args = ["--dir", "out", "-P", "--overwrite", "--report", "link.jsonl", "m.txt", "m2.fetch-part.meta"];
    let out = run(fetch(tmp.path()).args(args));
    assert_eq!(out.code, Some(1), "{out:?}");
    for line in ["m.txt:1: ", "m.txt:2: "] {
        assert!(out.stderr.contains(line), "{line}: {}", out.stderr);
    }
    assert_eq!(std::fs::read_to_string(tmp.path().join("m.txt")).unwrap(), manifest);
    assert_eq!(std::fs::read_to_string(tmp.path().join("m2.fetch-part.meta")).unwrap(), meta_manifest);
    let report = std::fs::read_to_string(tmp.path().join("real-r.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 4, "{report}");

    // The report as an entry's part file.
    let out = run(fetch(tmp.path())
        .args(["--report", "rp.fetch-part", "--overwrite"])
        .arg("-")
        .write_stdin(format!("{url} rp\n")));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("<stdin>:1: "), "{}", out.stderr);
    assert!(std::fs::read_to_string(tmp.path().join("rp.fetch-part")).unwrap().starts_with('{'));
    assert!(!tmp.path().join("rp").exists());
}

/// A destination named like a partial file is an invalid line: one entry
/// could otherwise write, or remove, another's part or meta file. So is a
/// name longer than any filesystem takes, before anything is downloaded.
#[test]
fn destinations_named_like_partial_files_or_too_long_are_invalid() {
    let server = Server::start();
    server.file("/f", 8, 10);
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/f");
    let long = "n".repeat(256);
    let manifest = format!(
        "{url} a.fetch-part\n{url} b.fetch-part.meta\n{url} c.fetch-part.meta.tmp\n{url} {long}\n{url} a\n"
    );
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    for line in 1..=4 {
        assert!(out.stderr.contains(&format!("m.txt:{line}: ")), "line {line}: {}", out.stderr);
    }
    assert_eq!(server.log().len(), 1, "only the valid line made a request");
    assert_eq!(files(tmp.path()), ["a", "m.txt"]);
}

/// Looking whether a destination is the report creates nothing: a failed
/// entry in a new directory, named like the report, leaves no directory.
#[test]
fn the_protection_check_creates_no_directory() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} newdir/deep/rep.json\n", server.url("/missing")));
    let out = run(fetch(tmp.path()).args(["--dir", "out", "--report", "rep.json", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!tmp.path().join("out/newdir").exists());
}

/// Another process replaces the part file (by rename) while its download
/// stalls near the end: the other file is never placed as this download,
/// and the entry fails saying why (without --overwrite the file is linked
/// from its descriptor, and a file with no name left cannot be; with it,
/// the move is by name and the swap is caught after it).
#[test]
fn a_part_file_swapped_before_the_commit_is_never_placed() {
    for overwrite in [false, true] {
        // The swap must land inside the stall; on a loaded machine the
        // test thread can miss a short one, so it is tried again longer.
        let caught =
            [3, 15].into_iter().any(|stall| swap_during_stall(overwrite, Duration::from_secs(stall)));
        assert!(caught, "{overwrite}: the swap never landed inside the stall");
    }
}

/// One run of the swap test; false when the run was over before the swap
/// could be made (the stall was missed), so nothing was shown either way.
fn swap_during_stall(overwrite: bool, stall: Duration) -> bool {
    let server = Server::start();
    let size = 600 * 1024;
    let body = super::content(9, size);
    let stalls = VecDeque::from([(size - 1024, stall)]);
    server.route("/slow", Route { stalls, ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/slow")));
    let child = spawn(tmp.path(), if overwrite { &["m.txt", "--overwrite"][..] } else { &["m.txt"] });
    let part = tmp.path().join("f.fetch-part");
    assert!(wait_until(Duration::from_secs(30), || server.body_bytes() >= size - 1024 && part.exists()));
    write(tmp.path(), "evil", "EVIL");
    let swapped = std::fs::rename(tmp.path().join("evil"), &part).is_ok();
    let output = super::finish(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let placed = std::fs::read(tmp.path().join("f")).unwrap_or_default();
    assert!(placed != b"EVIL", "{overwrite}: the swapped file was placed as verified");
    if !swapped || (output.status.code() == Some(0) && placed == body) {
        return false;
    }
    assert_eq!(output.status.code(), Some(1), "{overwrite}: {stderr}");
    assert!(stderr.contains("replaced the part file"), "{overwrite}: {stderr}");
    true
}

/// A part file and meta that another user planted (here: owned by
/// nobody) are not adopted, resumed or written: the download starts over
/// in a file of this user's own.
#[test]
fn a_part_file_of_another_user_is_not_adopted() {
    if !rustix_is_root() {
        eprintln!("skipped: planting another user's file needs root");
        return;
    }
    let server = Server::start();
    let body = server.file("/f", 10, 300 * 1024);
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("f.fetch-part");
    std::fs::write(&part, vec![b'J'; 1000]).unwrap();
    let meta =
        format!("{{\"url\":\"{}\",\"etag\":{:?}}}\n", server.url("/f"), server.requests_to("/f").len());
    let _ = meta;
    let route_etag = super::server::Route::new(body.clone()).etag.unwrap();
    let meta = format!("{{\"url\":\"{}\",\"etag\":{}}}\n", server.url("/f"), serde_json_string(&route_etag));
    std::fs::write(tmp.path().join("f.fetch-part.meta"), meta).unwrap();
    for name in ["f.fetch-part", "f.fetch-part.meta"] {
        std::os::unix::fs::chown(tmp.path().join(name), Some(65534), Some(65534)).unwrap();
    }
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("f")).unwrap() == body, "resumed another user's bytes");
    assert_eq!(std::fs::metadata(tmp.path().join("f")).unwrap().uid(), 0);
    assert!(server.requests_to("/f").iter().all(|r| r.range().is_none()), "asked to resume");
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn serde_json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The parent of a directory the run made is swapped for a symlink to a
/// FIFO while the entry downloads: syncing the new directory into its
/// parent must not open the FIFO (and hang the run for good).
#[test]
fn a_fifo_swapped_in_above_a_made_directory_does_not_hang_the_run() {
    let server = Server::start();
    let stalls = VecDeque::from([(2048, Duration::from_secs(3))]);
    server.route("/slow", Route { stalls, ..Route::new(super::content(11, 4096)) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} a/b/f\n", server.url("/slow")));
    let child = spawn(tmp.path(), &["--dir", "out", "m.txt"]);
    assert!(wait_until(Duration::from_secs(30), || server.body_bytes() >= 2048), "never stalled");
    std::fs::rename(tmp.path().join("out/a"), tmp.path().join("out/a.moved")).unwrap();
    assert!(
        std::process::Command::new("mkfifo").arg(tmp.path().join("out/fifo")).status().unwrap().success()
    );
    symlink("fifo", tmp.path().join("out/a")).unwrap();
    let output = super::finish(child);
    assert!(output.status.code().is_some(), "hung on the FIFO and was killed");
}

/// Two runs share a tree: run A made `sub` for an entry that failed, and
/// removes it, empty, when it ends; run B is meanwhile downloading a small
/// file into `sub` (still in memory). B's commit finds the directory gone,
/// makes it again and downloads the file once more, instead of failing.
#[test]
fn a_directory_removed_by_another_runs_cleanup_is_made_again() {
    let server = Server::start();
    let a_stall = VecDeque::from([(5, Duration::from_millis(500))]);
    server.route("/a-slow", Route { stalls: a_stall, ..Route::new(&b"0123456789"[..]) });
    let b_stall = VecDeque::from([(100, Duration::from_secs(6))]);
    let body = super::content(12, 200);
    server.route("/b-slow", Route { stalls: b_stall, ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "a.txt",
        &format!("{} sub/x\n{} other/a\n", server.url("/missing"), server.url("/a-slow")),
    );
    write(tmp.path(), "b.txt", &format!("{} sub/y\n", server.url("/b-slow")));
    let start = |manifest: &str| spawn(tmp.path(), &["--dir", "out", "-j", "1", manifest]);
    let a = start("a.txt");
    assert!(
        wait_until(Duration::from_secs(30), || !server.requests_to("/a-slow").is_empty()),
        "A never started"
    );
    let b = start("b.txt");
    assert!(
        wait_until(Duration::from_secs(30), || !server.requests_to("/b-slow").is_empty()),
        "B never started"
    );
    let a = super::finish(a);
    assert_eq!(a.status.code(), Some(1), "{}", String::from_utf8_lossy(&a.stderr));
    let removed = !tmp.path().join("out/sub").exists();
    let b = super::finish(b);
    let stderr = String::from_utf8_lossy(&b.stderr);
    assert!(removed, "A ended after B's stall: the race was not set up");
    assert_eq!(b.status.code(), Some(0), "{stderr}");
    assert!(std::fs::read(tmp.path().join("out/sub/y")).unwrap() == body);
    assert_eq!(server.requests_to("/b-slow").len(), 2, "downloaded once more");
}
