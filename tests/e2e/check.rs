//! `--check`: destinations compared with the manifest's sizes and
//! checksums, with no request made and nothing written.

use crate::checksums::{ALGORITHMS, sum_hex, wrong};
use crate::{Server, fetch, files, report, run, write};

fn json(url: &str, path: &str, keys: &str) -> String {
    format!("{{\"url\": \"{url}\", \"path\": \"{path}\"{keys}}}\n")
}

fn keys(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(key, value)| format!(", \"{key}\": {value}")).collect()
}

fn quoted(hex: String) -> String {
    format!("\"{hex}\"")
}

#[test]
fn each_entry_is_ok_missing_or_mismatch_and_no_request_is_made() {
    let server = Server::start();
    let url = server.url("/never");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let body = b"the file on disk".repeat(1000);
    let mut manifest = String::new();
    for (key, tool) in ALGORITHMS {
        std::fs::write(dir.join(format!("right-{key}")), &body).unwrap();
        std::fs::write(dir.join(format!("wrong-{key}")), &body).unwrap();
        let hex = sum_hex(tool, &body);
        manifest += &json(&url, &format!("right-{key}"), &keys(&[(key, quoted(hex.clone()))]));
        manifest += &json(&url, &format!("wrong-{key}"), &keys(&[(key, quoted(wrong(&hex)))]));
    }
    std::fs::write(dir.join("sized"), &body).unwrap();
    std::fs::write(dir.join("short"), &body[..100]).unwrap();
    std::fs::write(dir.join("bare"), b"").unwrap();
    std::fs::write(dir.join("listed"), &body).unwrap();
    let len = body.len().to_string();
    manifest += &json(&url, "sized", &keys(&[("size", len.clone())]));
    manifest +=
        &json(&url, "short", &keys(&[("size", len.clone()), ("md5", quoted(sum_hex("md5sum", &body)))]));
    manifest += &format!("{url} bare\n");
    manifest += &format!("{url} absent\n");
    manifest += &format!("{url} listed\n");
    write(tmp.path(), "SHA512SUMS", &format!("{}  listed\n", wrong(&sum_hex("sha512sum", &body))));
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args([
        "--check",
        "-d",
        "d",
        "--checksums",
        "SHA512SUMS",
        "--report",
        "r.jsonl",
        "m.txt",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(server.log().is_empty(), "no request");
    let records = report(&tmp.path().join("r.jsonl"));
    let status = |path: &str| records[&format!("d/{path}")]["status"].as_str().unwrap().to_owned();
    for (key, _) in ALGORITHMS {
        assert_eq!(status(&format!("right-{key}")), "ok");
        assert_eq!(status(&format!("wrong-{key}")), "mismatch");
        let line = format!("mismatch    d/wrong-{key}: {key} mismatch: the manifest says ");
        assert!(out.stderr.contains(&line), "{line}\n{}", out.stderr);
        assert_eq!(records[&format!("d/right-{key}")]["verified"], serde_json::json!([key]));
    }
    assert_eq!(status("sized"), "ok");
    assert_eq!(status("short"), "mismatch");
    assert!(
        out.stderr.contains(&format!(
            "mismatch    d/short: size mismatch: the manifest says {len} bytes, the file has 100"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(status("bare"), "ok");
    assert!(
        out.stderr.contains("ok          d/bare  (exists; the manifest gives no size or checksum)"),
        "{}",
        out.stderr
    );
    assert_eq!(status("absent"), "missing");
    assert!(out.stderr.contains("missing     d/absent\n"), "{}", out.stderr);
    assert_eq!(status("listed"), "mismatch", "the checksum file's sha512");
    assert!(out.stderr.contains("d/listed: sha512 mismatch: SHA512SUMS:1 says"), "{}", out.stderr);
    assert!(
        out.stderr.contains("fetch: check: 6 ok (1 by existence only), 1 missing, 6 mismatch, 0 failed"),
        "{}",
        out.stderr
    );
    // Quiet: only what is not ok, and the summary.
    let quiet = run(fetch(tmp.path()).args(["--check", "-q", "-d", "d", "m.txt"]));
    assert!(!quiet.stderr.contains("ok          "), "{}", quiet.stderr);
    assert!(quiet.stderr.contains("missing     d/absent"), "{}", quiet.stderr);
}

#[test]
fn a_check_where_all_is_well_exits_0_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a"), b"abc").unwrap();
    let md5 = sum_hex("md5sum", b"abc");
    write(
        tmp.path(),
        "m.txt",
        &json("http://127.0.0.1:9/a", "a", &keys(&[("size", "3".into()), ("md5", quoted(md5))])),
    );
    let before = files(tmp.path());
    let out = run(fetch(tmp.path()).args(["--check", "-d", "d", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("ok          d/a  (size, md5)"), "{}", out.stderr);
    assert_eq!(files(tmp.path()), before);
    // A --dir that does not exist is not made: every entry is missing.
    let out = run(fetch(tmp.path()).args(["--check", "-d", "nowhere", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("missing     nowhere/a"), "{}", out.stderr);
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn fifos_devices_directories_and_symlinks_are_mismatches_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("f"), b"abc").unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
    std::fs::create_dir(dir.join("adir")).unwrap();
    let md5 = quoted(sum_hex("md5sum", b"abc"));
    let mut manifest = String::new();
    for name in ["fifo", "zero", "out/f", "adir"] {
        manifest += &json("http://127.0.0.1:9/x", name, &keys(&[("md5", md5.clone())]));
    }
    manifest += "http://127.0.0.1:9/x zero-unhashed\n";
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero-unhashed")).unwrap();
    write(tmp.path(), "m.txt", &manifest);
    // The command's own timeout (60 s) bounds a hang.
    let out = run(fetch(tmp.path()).args(["--check", "-d", "d", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    for line in [
        "mismatch    d/fifo: not a regular file: a FIFO",
        "mismatch    d/zero: not a regular file: a symlink",
        "mismatch    d/out/f: a symlink or .. on the way leads outside --dir",
        "mismatch    d/adir: not a regular file: a directory",
        "mismatch    d/zero-unhashed: not a regular file: a symlink",
    ] {
        assert!(out.stderr.contains(line), "{line}\n{}", out.stderr);
    }
    // With -P the user's paths are followed as given, up to the file.
    let out = run(fetch(tmp.path()).args(["--check", "-P", "-d", "d", "m.txt"]));
    assert!(out.stderr.contains("ok          d/out/f  (md5)"), "{}", out.stderr);
    assert!(out.stderr.contains("mismatch    d/zero: not a regular file: a symlink"), "{}", out.stderr);
}

#[test]
fn a_check_takes_its_shard_only() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest: String = (0..40).map(|i| format!("http://127.0.0.1:9/{i} f{i}\n")).collect();
    write(tmp.path(), "m.txt", &manifest);
    let mut seen = 0;
    for shard in ["0/2", "1/2"] {
        let out = run(fetch(tmp.path()).args(["--check", "--shard", shard, "m.txt"]));
        assert_eq!(out.code, Some(1), "{out:?}");
        let missing = out.stderr.lines().filter(|l| l.starts_with("missing")).count();
        assert!(missing > 0 && missing < 40, "{shard}: {missing}");
        seen += missing;
    }
    assert_eq!(seen, 40);
}

/// A file that reads longer than its length (here a procfs file: length 0,
/// text when read; as a file written to while it is hashed) is read no
/// further than one byte past the length it had when it was looked at.
#[test]
fn a_file_that_grows_while_it_is_hashed_is_read_one_byte_past_its_length() {
    let tmp = tempfile::tempdir().unwrap();
    let md5 = quoted(sum_hex("md5sum", b""));
    write(tmp.path(), "m.txt", &json("http://127.0.0.1:9/x", "status", &keys(&[("md5", md5)])));
    let out = run(fetch(tmp.path()).args(["--check", "-d", "/proc/self", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = "mismatch    /proc/self/status: the file grew past its 0 bytes while it was read";
    assert!(out.stderr.contains(line), "{}", out.stderr);
    assert!(out.stderr.contains("; 1 B hashed"), "{}", out.stderr);
}
