//! Manifests as hostile or careless producers write them: FIFOs and process
//! substitutions read once, overlong lines, loose checksums, byte-order
//! marks, a URL given as the manifest, URLs with spaces, and destinations
//! given twice.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::core::sha256_hex;
use crate::{Server, fetch, fetch_std, files, finish, run, wait_until, write};

/// A server with `n` small files `/f{i}`, and the manifest lines for them.
fn small_files(server: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            server.file(&format!("/f{i}"), i as u64, 100);
            format!("{} out/f{i}", server.url(&format!("/f{i}")))
        })
        .collect()
}

fn assert_all_downloaded_once(server: &Server, dir: &std::path::Path, n: usize) {
    let got = if dir.join("out").exists() { files(&dir.join("out")) } else { Vec::new() };
    assert_eq!(got.len(), n, "{} of {n} downloaded: {got:?}", got.len());
    for i in 0..n {
        assert_eq!(server.requests_to(&format!("/f{i}")).len(), 1, "/f{i}");
    }
}

#[test]
fn a_fifo_manifest_with_progress_bars_loses_no_line() {
    // The bars count a manifest ahead; a FIFO opened a second time for that
    // hands lines to the counter that the downloader then never sees.
    const N: usize = 200;
    for round in 0..4 {
        let server = Server::start();
        let lines = small_files(&server, N);
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("m.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let feeder = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                // Non-blocking, so that a fetch that never opens the FIFO
                // cannot hang the test: the open fails until it does.
                let mut pipe = None;
                wait_until(Duration::from_secs(60), || {
                    let open =
                        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
                    pipe = open.ok();
                    pipe.is_some()
                });
                let mut pipe = pipe.expect("fetch opened the FIFO");
                // One write per line, so a second reader would be woken for
                // some of them. All of them fit in the pipe's buffer.
                for line in lines {
                    pipe.write_all(format!("{line}\n").as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let out = run(fetch(tmp.path()).args(["--progress", "bar", "-j", "8", "m.fifo"]));
        feeder.join().unwrap();
        assert_eq!(out.code, Some(0), "round {round}: {}", out.stderr);
        assert_all_downloaded_once(&server, tmp.path(), N);
    }
}

#[test]
fn a_process_substitution_manifest_with_progress_bars_loses_no_line() {
    // `fetch <(generate)`: the manifest is /dev/fd/63, a pipe with a path.
    const N: usize = 100;
    for round in 0..3 {
        let server = Server::start();
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "m.txt", &(small_files(&server, N).join("\n") + "\n"));
        let script = r#"exec "$0" --no-config --progress bar -j 8 <(while IFS= read -r l; do printf '%s\n' "$l"; done < m.txt)"#;
        let mut bash = std::process::Command::new("bash");
        bash.args(["-c", script]).arg(assert_cmd::cargo::cargo_bin("fetch")).current_dir(tmp.path());
        let out = assert_cmd::Command::from_std(bash).timeout(Duration::from_secs(60)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "round {round}: {stderr}");
        assert_all_downloaded_once(&server, tmp.path(), N);
    }
}

#[test]
fn a_regular_file_on_stdin_with_progress_bars_loses_no_line() {
    // A regular file is counted ahead, here through standard input.
    const N: usize = 50;
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write(tmp.path(), "m.txt", &(small_files(&server, N).join("\n") + "\n"));
    let out = run(fetch(tmp.path()).args(["--progress", "bar"]).pipe_stdin(manifest).unwrap());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_all_downloaded_once(&server, tmp.path(), N);
}

/// Peak resident memory of a running process, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn an_overlong_line_is_skipped_in_bounded_memory_and_the_next_line_downloads() {
    const LONG: usize = 64 << 20;
    let server = Server::start();
    let body = server.file("/good", 1, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let mut child = fetch_std(tmp.path())
        .args(["--report", "r.jsonl"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let good = server.url("/good");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        stdin.write_all(b"http://h/")?;
        for _ in 0..LONG / chunk.len() {
            stdin.write_all(&chunk)?;
        }
        stdin.write_all(format!("\n{good}\n").as_bytes())?;
        stdin.flush()?;
        // Held open: the process is still there to be measured.
        std::io::Result::Ok(stdin)
    });
    let landed = wait_until(Duration::from_secs(60), || tmp.path().join("good").exists());
    let peak = peak_rss_kib(pid);
    if !landed {
        // Unblocks the feeder's writes.
        let _ = child.kill();
    }
    drop(feeder.join().unwrap());
    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(landed, "{stderr}");
    let peak = peak.expect("fetch was running");
    assert_eq!(std::fs::read(tmp.path().join("good")).unwrap(), body);
    assert!(stderr.contains("<stdin>:1: line is longer than"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(peak < 40 << 10, "peak RSS {peak} KiB for a {LONG}-byte line");
}

#[test]
fn a_sha256_with_signs_is_an_invalid_line_and_makes_no_request() {
    let server = Server::start();
    let body = server.file("/a", 1, 64);
    server.file("/b", 2, 64);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = [
        format!(r#"{{"url": "{}", "path": "a", "sha256": "{}"}}"#, server.url("/a"), "+0".repeat(32)),
        format!(r#"{{"url": "{}", "path": "b", "size": +64}}"#, server.url("/b")),
        format!(
            r#"{{"url": "{}", "path": "a2", "sha256": "{}"}}"#,
            server.url("/a"),
            sha256_hex(&body).to_uppercase()
        ),
    ];
    write(tmp.path(), "m.txt", &manifest.join("\n"));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("m.txt:1: invalid sha256"), "{}", out.stderr);
    assert!(out.stderr.contains("m.txt:2: invalid JSON"), "{}", out.stderr);
    assert_eq!(server.requests_to("/a").len(), 1, "only line 3 requests /a");
    assert!(server.requests_to("/b").is_empty());
    assert_eq!(files(tmp.path()), ["a2", "m.txt"]);
}

#[test]
fn a_leading_byte_order_mark_is_ignored_in_files_and_stdin() {
    let server = Server::start();
    server.file("/a", 1, 10);
    server.file("/b", 2, 10);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("\u{feff}{} a\n", server.url("/a")));
    let out =
        run(fetch(tmp.path()).args(["m.txt", "-"]).write_stdin(format!("\u{feff}{} b\n", server.url("/b"))));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(files(tmp.path()), ["a", "b", "m.txt"]);
}

#[test]
fn a_url_given_as_the_manifest_says_how_to_download_it() {
    let tmp = tempfile::tempdir().unwrap();
    for url in ["https://example.invalid/file.iso", "HTTP://user:hunter2@example.invalid/x", "ftp://h/f"] {
        let out = run(fetch(tmp.path()).arg(url));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains("is a URL, not a manifest"), "{}", out.stderr);
        assert!(out.stderr.contains("| fetch"), "{}", out.stderr);
        assert!(!out.stderr.contains("No such file"), "{}", out.stderr);
        assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    }
    // A file whose name looks like a URL is still a manifest.
    let server = Server::start();
    server.file("/a", 1, 10);
    std::fs::create_dir_all(tmp.path().join("http:/h")).unwrap();
    write(tmp.path(), "http:/h/list", &server.url("/a"));
    let out = run(fetch(tmp.path()).arg("http://h/list"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(tmp.path().join("a").exists());
}

#[test]
fn a_url_with_a_literal_space_is_refused_where_the_split_is_ambiguous() {
    let server = Server::start();
    server.file("/with", 1, 10);
    let body = server.file("/with%20space.txt", 2, 10);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = [
        format!("{}  sp1.txt", server.url("/with space.txt")),
        format!("{}\tsp2.txt", server.url("/with space.txt")),
        format!("{}  sp3.txt", server.url("/with%20space.txt")),
        format!("{}    docs/my file.txt", server.url("/with%20space.txt")),
        format!(r#"{{"url": "{}", "path": "json  name.txt"}}"#, server.url("/with%20space.txt")),
    ];
    write(tmp.path(), "m.txt", &manifest.join("\n"));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    for line in [1, 2] {
        let at = format!("m.txt:{line}: ");
        let message =
            out.stderr.lines().find(|l| l.contains(&at)).unwrap_or_else(|| panic!("{}", out.stderr));
        assert!(message.contains("%20") && message.contains("JSON"), "{message}");
    }
    assert!(server.requests_to("/with").is_empty(), "the wrong URL was requested");
    assert_eq!(files(tmp.path()), ["docs/my file.txt", "json  name.txt", "m.txt", "sp3.txt"]);
    assert_eq!(std::fs::read(tmp.path().join("sp3.txt")).unwrap(), body);
}

#[test]
fn a_destination_given_again_with_another_url_fails_that_line() {
    let server = Server::start();
    let a = server.file("/a", 1, 10);
    server.file("/b", 2, 10);
    server.file("/c", 3, 10);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m1.txt", &format!("{} same\n{} same\n", server.url("/a"), server.url("/a")));
    write(tmp.path(), "m2.txt", &format!("# other\n{} same\n{} ./c\n", server.url("/b"), server.url("/c")));
    let out = run(fetch(tmp.path()).args(["--report", "r.jsonl", "m1.txt", "m2.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("m2.txt:2: destination same is also given by m1.txt:1 with another URL"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(tmp.path().join("same")).unwrap(), a);
    assert!(server.requests_to("/b").is_empty());
    let report = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    assert_eq!(report.lines().filter(|l| l.contains(r#""status":"failed""#)).count(), 1, "{report}");

    // The same URL twice for one destination stays harmless.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} x\n{} ./x\n", server.url("/c"), server.url("/c")));
    let out = run(fetch(tmp.path()).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");

    // A dry run says so too.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} x\n{} x\n", server.url("/a"), server.url("/b")));
    let out = run(fetch(tmp.path()).args(["--dry-run", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("m.txt:2: destination x is also given by m.txt:1"), "{}", out.stderr);
}
