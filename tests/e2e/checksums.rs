//! Checksums other than sha256, verified while streaming: right, wrong,
//! several at once, over a resumed file; and checksum files (`--checksums`).

use std::path::Path;

use crate::{Route, Server, content, fetch, files, run, write};

/// The digest of `bytes` by a coreutils tool (`md5sum`, `sha1sum`,
/// `sha256sum`, `sha512sum`), so the tests do not share the code they test.
pub fn sum_hex(tool: &str, bytes: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

pub const ALGORITHMS: [(&str, &str); 4] =
    [("md5", "md5sum"), ("sha1", "sha1sum"), ("sha256", "sha256sum"), ("sha512", "sha512sum")];

/// A wrong digest of the same length as `hex`: its first digit changed.
pub fn wrong(hex: &str) -> String {
    let first = if hex.starts_with('0') { '1' } else { '0' };
    format!("{first}{}", &hex[1..])
}

fn json(url: &str, path: &str, keys: &[(&str, String)]) -> String {
    let keys: String = keys.iter().map(|(key, hex)| format!(", \"{key}\": \"{hex}\"")).collect();
    format!("{{\"url\": \"{url}\", \"path\": \"{path}\"{keys}}}\n")
}

#[test]
fn each_algorithm_is_verified_and_a_wrong_one_leaves_no_destination() {
    let server = Server::start();
    let body = server.file("/f", 3, 70_000);
    let url = server.url("/f");
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for (key, tool) in ALGORITHMS {
        let hex = sum_hex(tool, &body);
        manifest += &json(&url, &format!("right-{key}"), &[(key, hex.clone())]);
        manifest += &json(&url, &format!("wrong-{key}"), &[(key, wrong(&hex))]);
    }
    let all: Vec<_> = ALGORITHMS.iter().map(|(key, tool)| (*key, sum_hex(tool, &body))).collect();
    manifest += &json(&url, "right-all", &all);
    // Three right and one wrong: every one given must match.
    let mut one_wrong = all.clone();
    one_wrong[1].1 = wrong(&one_wrong[1].1);
    manifest += &json(&url, "wrong-sha1-of-all", &one_wrong);
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["--dir", "out", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let mut want: Vec<String> = ALGORITHMS.iter().map(|(key, _)| format!("right-{key}")).collect();
    want.push("right-all".into());
    want.sort();
    assert_eq!(files(&tmp.path().join("out")), want, "{}", out.stderr);
    for name in &want {
        assert_eq!(std::fs::read(tmp.path().join("out").join(name)).unwrap(), body);
    }
    for (key, tool) in ALGORITHMS {
        let line = format!(
            "wrong-{key}: {key} mismatch: the manifest says {}, the file has {}",
            wrong(&sum_hex(tool, &body)),
            sum_hex(tool, &body)
        );
        assert!(out.stderr.contains(&line), "{line}\n{}", out.stderr);
    }
    assert!(out.stderr.contains("wrong-sha1-of-all: sha1 mismatch"), "{}", out.stderr);
    assert!(out.stderr.contains("5 downloaded, 0 skipped, 5 failed"), "{}", out.stderr);
}

#[test]
fn a_digest_of_the_wrong_length_for_its_key_is_an_invalid_line_naming_the_key() {
    let server = Server::start();
    server.file("/f", 3, 100);
    let tmp = tempfile::tempdir().unwrap();
    let md5_length = "0".repeat(32);
    write(tmp.path(), "m.txt", &json(&server.url("/f"), "f", &[("sha512", md5_length.clone())]));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    let want = format!("m.txt:1: invalid sha512 \"{md5_length}\": expected 128 hex digits");
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(server.log().is_empty(), "an invalid line makes no request");
}

/// A first run cut after 300 kB (kept, since it may be resumed), then a
/// second that resumes it: `partial` changes the kept bytes in between.
fn resume_with_sha512(partial: impl FnOnce(&Path)) -> (Server, tempfile::TempDir, Vec<u8>, crate::Run) {
    let server = Server::start();
    let body = content(11, 600_000);
    server.route("/big", Route { cuts: [300_000].into(), ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    let line = json(&server.url("/big"), "big", &[("sha512", sum_hex("sha512sum", &body))]);
    write(tmp.path(), "m.txt", &line);
    let first = run(fetch(tmp.path()).args(["--retries", "0", "m.txt"]));
    assert_eq!(first.code, Some(1), "{first:?}");
    let part = tmp.path().join("big.fetch-part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 300_000, "{first:?}");
    partial(&part);
    let second = run(fetch(tmp.path()).arg("m.txt"));
    (server, tmp, body, second)
}

#[test]
fn a_resumed_file_is_verified_by_sha512_over_the_bytes_of_both_runs() {
    let (server, tmp, body, out) = resume_with_sha512(|_| {});
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("big")).unwrap(), body);
    let requests = server.requests_to("/big");
    assert_eq!(requests.len(), 2, "one cut, one resume");
    assert_eq!(requests[1].range(), Some((300_000, None)));
}

#[test]
fn a_kept_part_file_changed_on_disk_fails_sha512_and_is_fetched_again_whole() {
    // The kept bytes are hashed from disk before the resume: a byte changed
    // there fails the digest, and one stream from zero decides.
    let (server, tmp, body, out) = resume_with_sha512(|part| {
        let mut bytes = std::fs::read(part).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(part, bytes).unwrap();
    });
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("big")).unwrap(), body);
    let requests = server.requests_to("/big");
    assert_eq!(requests.len(), 3, "cut, resume (wrong digest), whole again");
    assert_eq!(requests[1].range(), Some((300_000, None)));
    assert_eq!(requests[2].range(), None);
}

/// Write each body under its name in `dir/src` and run `tool ARGS NAMES`
/// there: a checksum file as the tool writes it.
fn sums_by_tool(dir: &Path, tool: &str, args: &[&str], files: &[(&str, &[u8])]) -> String {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, body) in files {
        std::fs::write(src.join(name), body).unwrap();
    }
    let out = std::process::Command::new(tool)
        .args(args)
        .args(files.iter().map(|(name, _)| name))
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn checksum_files_of_each_format_apply_to_the_entries_they_name() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    // (tool and its options, the file names it is given)
    let formats: [(&str, &[&str], &str); 4] = [
        ("sha256sum", &[], "gnu"),
        ("sha512sum", &["-b"], "binary"),
        ("md5sum", &["--tag"], "bsd"),
        ("sha1sum", &[], "back\\slash"),
    ];
    let mut manifest = String::new();
    let mut args = vec!["--dir".to_owned(), "out".to_owned()];
    for (i, (tool, options, name)) in formats.iter().enumerate() {
        let good = server.file(&format!("/{i}/good"), i as u64, 5000);
        let bad = content(100 + i as u64, 5000);
        server.route(&format!("/{i}/bad"), Route::new(bad));
        let good_name = format!("{name}-good");
        // Listed as `./NAME`, and not what the server sends.
        let bad_name = format!("./{name}-bad");
        let text = sums_by_tool(tmp.path(), tool, options, &[(&good_name, &good), (&bad_name, &good)]);
        if *tool == "sha1sum" {
            assert!(text.lines().all(|line| line.starts_with('\\')), "the escaped form: {text}");
        }
        write(tmp.path(), &format!("SUMS{i}"), &text);
        args.extend(["--checksums".to_owned(), format!("SUMS{i}")]);
        manifest += &format!("{}  {name}-good\n", server.url(&format!("/{i}/good")));
        manifest += &format!("{}  {name}-bad\n", server.url(&format!("/{i}/bad")));
    }
    // An entry no file lists is downloaded unverified.
    server.file("/u", 9, 10);
    manifest += &format!("{}  unlisted\n", server.url("/u"));
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(&args).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    let mut want: Vec<String> = formats.iter().map(|(_, _, name)| format!("{name}-good")).collect();
    want.push("unlisted".into());
    want.sort();
    assert_eq!(files(&tmp.path().join("out")), want, "{}", out.stderr);
    for (i, (tool, _, name)) in formats.iter().enumerate() {
        let algorithm = tool.trim_end_matches("sum");
        let line = format!("{name}-bad: {algorithm} mismatch: SUMS{i}:2 says ");
        assert!(out.stderr.contains(&line), "{line}\n{}", out.stderr);
    }
    assert!(out.stderr.contains("5 downloaded, 0 skipped, 4 failed"), "{}", out.stderr);
}

#[test]
fn a_line_whose_own_digest_contradicts_the_checksum_file_is_invalid_and_makes_no_request() {
    let server = Server::start();
    let body = server.file("/f", 1, 100);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sum_hex("sha256sum", &body);
    write(tmp.path(), "SHA256SUMS", &format!("{sha}  f\n{sha}  g\n"));
    let manifest = json(&server.url("/f"), "f", &[("sha256", wrong(&sha))])
        + &json(&server.url("/f"), "g", &[("sha256", sha.clone()), ("md5", sum_hex("md5sum", &body))]);
    write(tmp.path(), "m.txt", &manifest);
    let out = run(fetch(tmp.path()).args(["--checksums", "SHA256SUMS", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let want = "m.txt:1: the line's sha256 contradicts SHA256SUMS:1, which gives another for \"f\"";
    assert!(out.stderr.contains(want), "{}", out.stderr);
    assert_eq!(files(tmp.path()), ["SHA256SUMS", "g", "m.txt"]);
    assert_eq!(server.log().len(), 1, "only g is requested");
}

#[test]
fn a_malformed_checksum_file_is_a_usage_error_naming_its_line() {
    let server = Server::start();
    let body = server.file("/f", 1, 100);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sum_hex("sha256sum", &body);
    let sha384 = "0".repeat(96);
    for (text, want) in [
        (format!("{sha}  f\n{sha384}  g\n"), "SUMS:2: a digest of 96 hex digits is none of"),
        (format!("{sha}  f\n\nSHA3-256 (g) = {sha}\n"), "SUMS:3: unsupported algorithm \"SHA3-256\""),
        (format!("{sha}  f\n{sha}  f\n{}  ./f\n", wrong(&sha)), "SUMS:3: \"f\" has another sha256 at SUMS:1"),
    ] {
        write(tmp.path(), "SUMS", &text);
        write(tmp.path(), "m.txt", &format!("{}\n", server.url("/f")));
        let out = run(fetch(tmp.path()).args(["--checksums", "SUMS", "m.txt"]));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
    let out = run(fetch(tmp.path()).args(["--checksums", "/dev/zero", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("/dev/zero:1: line is longer than 64 KiB"), "{}", out.stderr);
    let out = run(fetch(tmp.path()).args(["--checksums", "missing", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("cannot read checksum file missing"), "{}", out.stderr);
    assert!(server.log().is_empty());
    assert_eq!(files(tmp.path()), ["SUMS", "m.txt"]);
}
