//! Hostile servers and networks (issue 15): bodies that never end or run
//! past what was promised, unresolvable hosts, credentials across
//! redirects, `--no-resume` within a run, and certificate errors in words.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Route, Server, content, fetch, files, run, write};

const FAST: [&str; 4] = ["--retry-delay", "10ms", "--retry-max-delay", "50ms"];
const MIB: u64 = 1 << 20;
/// A raw route stops an endless body here: far more than any socket
/// buffers hold, so a client that does not stop reading is caught.
const ENDLESS: u64 = 64 * MIB;
/// Bytes a client that stops reading may still have let the server write:
/// the loopback socket buffers and the client's read buffer.
const IN_FLIGHT: u64 = 16 * MIB;

/// A raw HTTP/1.1 server for what hyper's server will not send (bodies
/// delimited by the connection's close, bodies longer than announced).
/// One request per connection; `respond` gets the request's number and
/// head, and writes the response.
struct RawServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// A connection's write half that counts the bytes written.
struct Counted<'a> {
    stream: &'a mut TcpStream,
    written: &'a AtomicU64,
}

impl Counted<'_> {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    /// Write `unit` again and again until the client hangs up or
    /// [`ENDLESS`] bytes are out, as chunks when `chunked`.
    fn endless(&mut self, unit: &[u8], chunked: bool) {
        let mut sent = 0;
        while sent < ENDLESS {
            let result = if chunked {
                self.send(format!("{:x}\r\n", unit.len()).as_bytes())
                    .and_then(|()| self.send(unit))
                    .and_then(|()| self.send(b"\r\n"))
            } else {
                self.send(unit)
            };
            if result.is_err() {
                return;
            }
            sent += unit.len() as u64;
        }
        if chunked {
            let _ = self.send(b"0\r\n\r\n");
        }
    }
}

impl RawServer {
    fn start(respond: impl Fn(usize, &str, &mut Counted<'_>) + Send + Sync + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let respond = Arc::new(respond);
        let (h, w, s) = (heads.clone(), written.clone(), stop.clone());
        let count = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let (heads, written, respond, count) = (h.clone(), w.clone(), respond.clone(), count.clone());
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    heads.lock().unwrap().push(head.clone());
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    respond(n, &head, &mut Counted { stream: &mut stream, written: &written });
                    let _ = stream.flush();
                });
            }
        });
        RawServer { addr, heads, written, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The one record of a `--report` file.
fn record(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("r.jsonl")).unwrap();
    let mut lines = text.lines();
    let record = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(lines.next(), None, "{text}");
    record
}

/// Every file under `dir` but the manifest and the report, with its size.
fn left_on_disk(dir: &std::path::Path) -> Vec<(String, u64)> {
    files(dir)
        .into_iter()
        .filter(|f| f != "m.txt" && f != "r.jsonl")
        .map(|f| {
            let len = std::fs::metadata(dir.join(&f)).unwrap().len();
            (f, len)
        })
        .collect()
}

/// An endless body for an entry with a manifest `size`: the run stops
/// reading just past the size and fails the entry as a size mismatch, at
/// once, leaving nothing on disk.
fn endless_body_is_cut_at_the_manifest_size(head: &'static str, chunked: bool) {
    let server = RawServer::start(move |_, _, out| {
        if out.send(head.as_bytes()).is_ok() {
            out.endless(&[b'x'; 16 * 1024], chunked);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let line = format!("{{\"url\": \"{}\", \"path\": \"f\", \"size\": 1000}}\n", server.url("/f"));
    write(tmp.path(), "m.txt", &line);
    let out = run(fetch(tmp.path()).args(FAST).args(["--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let record = record(tmp.path());
    assert_eq!(record["status"], "failed", "{record}");
    assert!(record["error"].as_str().unwrap().contains("size mismatch"), "{record}");
    assert_eq!(record["attempts"], 1, "a size mismatch is not retried: {record}");
    assert_eq!(server.requests(), 1);
    assert!(out.stderr.contains("size mismatch"), "{}", out.stderr);
    let written = server.written();
    assert!(written < IN_FLIGHT, "the server wrote {written} bytes for a 1000-byte file");
    assert_eq!(left_on_disk(tmp.path()), [], "nothing may be left of a mismatched file");
}

#[test]
fn an_endless_chunked_body_stops_at_the_manifest_size() {
    endless_body_is_cut_at_the_manifest_size(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        true,
    );
}

#[test]
fn an_endless_close_delimited_body_stops_at_the_manifest_size() {
    endless_body_is_cut_at_the_manifest_size("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false);
}

#[test]
fn bytes_past_the_content_length_are_never_read() {
    // hyper ends a body at its Content-Length, whatever follows it.
    let body = content(3, 1000);
    let first = body.clone();
    let server = RawServer::start(move |_, _, out| {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n";
        if out.send(head.as_bytes()).and_then(|()| out.send(&first)).is_ok() {
            out.endless(&[b'x'; 16 * 1024], false);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let out = run(fetch(tmp.path()).args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let written = server.written();
    assert!(written < IN_FLIGHT, "the server wrote {written} bytes for a 1000-byte file");
}

/// The value of a `Range: bytes=N-` request header.
fn range_start(head: &str) -> Option<u64> {
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("range:"))?;
    line.split_once('=')?.1.trim().trim_end_matches('-').parse().ok()
}

#[test]
fn a_resumed_body_that_runs_past_its_content_range_is_not_trusted() {
    // The first response is cut at 1000 bytes; the resume's 206 announces
    // bytes 1000-1999 and then sends 2000 bytes of junk to the file's end;
    // the next one is honest.
    let body = content(4, 4000);
    let served = body.clone();
    let server = RawServer::start(move |n, head, out| {
        let etag = "ETag: \"v1\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n";
        let _ = match (n, range_start(head)) {
            (0, None) => out
                .send(format!("HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n{etag}\r\n").as_bytes())
                .and_then(|()| out.send(&served[..1000])),
            (1, Some(1000)) => {
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-1999/4000\r\n\
                     Transfer-Encoding: chunked\r\n{etag}\r\n"
                );
                let mut chunk = served[1000..2000].to_vec();
                chunk.extend_from_slice(&[b'x'; 2000]);
                out.send(head.as_bytes())
                    .and_then(|()| out.send(format!("{:x}\r\n", chunk.len()).as_bytes()))
                    .and_then(|()| out.send(&chunk))
                    .and_then(|()| out.send(b"\r\n0\r\n\r\n"))
            }
            (_, Some(start)) if start < 4000 => {
                let start = start as usize;
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-3999/4000\r\n\
                     Content-Length: {}\r\n{etag}\r\n",
                    4000 - start
                );
                out.send(head.as_bytes()).and_then(|()| out.send(&served[start..]))
            }
            _ => out.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        };
    });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let out = run(fetch(tmp.path()).args(FAST).args(["-v", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("f")).unwrap() == body, "bytes past the Content-Range were kept");
    assert_eq!(server.requests(), 3, "{}", out.stderr);
}

#[test]
fn no_request_carries_range_with_no_resume() {
    let server = Server::start();
    let body = content(5, 300_000);
    server.route("/f", Route { cuts: [100_000, 200_000].into(), ..Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &server.url("/f"));
    let out = run(fetch(tmp.path()).args(FAST).args(["--no-resume", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), body);
    let log = server.requests_to("/f");
    for l in &log {
        assert_eq!(l.header("range"), None, "--no-resume sent a Range");
        assert_eq!(l.header("if-range"), None);
    }
    assert_eq!(log.len(), 3, "two cut attempts and a whole one");
}

/// The `Authorization` headers of each request the server saw, in order.
fn authorizations(server: &Server) -> Vec<Vec<String>> {
    server
        .log()
        .iter()
        .map(|l| l.headers.get_all("authorization").iter().map(|v| v.to_str().unwrap().to_owned()).collect())
        .collect()
}

#[test]
fn one_authorization_header_per_request_and_the_explicit_one_wins() {
    let server = Server::start();
    let body = server.file("/f", 6, 1000);
    server.route("/r", Route { redirect: Some("/f".into()), ..Route::default() });
    let with_credentials = server.url("/r").replace("http://", "http://user:p%40ss@");
    let tmp = tempfile::tempdir().unwrap();
    let basic = "Basic dXNlcjpwQHNz".to_owned();
    let bearer = "Bearer from-the-command-line".to_owned();
    let manifest_bearer = "Bearer from-the-manifest".to_owned();
    let cases = [
        // URL credentials alone: Basic on both requests, once.
        (format!("{with_credentials} a\n"), vec![], &basic),
        // -H Authorization beats URL credentials, on the first request too.
        (
            format!("{with_credentials} b\n"),
            vec!["-H", "Authorization: Bearer from-the-command-line"],
            &bearer,
        ),
        // A manifest line's header beats both.
        (
            format!(
                "{{\"url\": \"{with_credentials}\", \"path\": \"c\", \
                 \"headers\": {{\"Authorization\": \"{manifest_bearer}\"}}}}\n"
            ),
            vec!["-H", "Authorization: Bearer from-the-command-line"],
            &manifest_bearer,
        ),
    ];
    for (line, args, want) in cases {
        let seen = server.log().len();
        write(tmp.path(), "m.txt", &line);
        let out = run(fetch(tmp.path()).args(args).arg("m.txt"));
        assert_eq!(out.code, Some(0), "{out:?}");
        let got = &authorizations(&server)[seen..];
        assert_eq!(got, [vec![want.clone()], vec![want.clone()]], "for {line}");
        assert!(!out.stderr.contains("p%40ss") && !out.stderr.contains("from-the"), "{}", out.stderr);
    }
    for name in ["a", "b", "c"] {
        assert_eq!(std::fs::read(tmp.path().join(name)).unwrap(), body);
    }
}

#[test]
fn a_host_that_does_not_exist_is_named_and_an_unanswered_lookup_is_retried() {
    // `.invalid` never resolves (RFC 6761 §6.4). A resolver that answers
    // says so at once (NXDOMAIN); one that cannot be reached (no network)
    // fails the lookup as temporary, which is retried.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "http://nonexistent.invalid/f f\n");
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "2", "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let record = record(tmp.path());
    let error = record["error"].as_str().unwrap();
    if error.contains("Temporary failure") || error.contains("at this time") {
        assert_eq!(record["attempts"], 3, "an unanswered lookup is retried: {record}");
    } else {
        assert_eq!(error, "host nonexistent.invalid not found (DNS)", "{record}");
        assert_eq!(record["attempts"], 1, "{record}");
        assert!(out.stderr.contains("f: host nonexistent.invalid not found (DNS)"), "{}", out.stderr);
    }
}

/// The error line of an https download that fails verification.
fn tls_failure(server: &Server, ssl_cert_file: Option<&str>) -> String {
    server.file("/f", 7, 100);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let mut cmd = fetch(tmp.path());
    if let Some(name) = ssl_cert_file {
        cmd.env("SSL_CERT_FILE", format!("{}/tests/e2e/tls/{name}", env!("CARGO_MANIFEST_DIR")));
    }
    let out = run(cmd.args(FAST).arg("m.txt"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(server.log().is_empty());
    assert!(!out.stderr.contains("Other(") && !out.stderr.contains("Error("), "{}", out.stderr);
    out.stderr
}

#[test]
fn a_certificate_from_an_unknown_authority_is_explained_in_words() {
    let stderr = tls_failure(&Server::start_tls(), None);
    assert!(
        stderr.contains(
            "f: cannot connect: the server's certificate is not signed by a trusted authority \
             (unknown issuer); use --insecure to skip verification, or --cacert FILE to trust its CA"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("UnknownIssuer"), "{stderr}");
}

#[test]
fn a_ca_certificate_used_as_the_servers_own_is_explained_in_words() {
    // Trusted (SSL_CERT_FILE names it), but a CA may not serve as a server's certificate.
    let stderr = tls_failure(&Server::start_tls_with("ca-cert.pem", "ca-key.pem"), Some("ca-cert.pem"));
    assert!(
        stderr.contains(
            "f: cannot connect: the server presented a CA certificate as its own (CA used as end entity)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("CaUsedAsEndEntity"), "{stderr}");
}

/// `Range: bytes=A-B` of a request head.
fn range_of(head: &str) -> Option<(usize, usize)> {
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("range:"))?;
    let (a, b) = line.split_once('=')?.1.trim().split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn a_split_range_that_runs_past_its_content_range_is_not_trusted() {
    // A slow first response makes the file split; the first range's 206
    // announces 64 KiB and sends 64 KiB of junk after them; the other
    // ranges are honest.
    const LEN: usize = 4 << 20;
    let body = content(8, LEN);
    let served = body.clone();
    let lied = Arc::new(AtomicBool::new(false));
    let lie = lied.clone();
    let server = RawServer::start(move |_, head, out| {
        let common = "ETag: \"v1\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n";
        let Some((start, end)) = range_of(head) else {
            // About 640 KiB/s: over 2 s for the rest of the file.
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n{common}\r\n");
            let _ = out.send(head.as_bytes());
            for piece in served.chunks(32 * 1024) {
                if out.send(piece).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        };
        let end = end.min(LEN - 1);
        if !lie.swap(true, Ordering::SeqCst) {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{LEN}\r\n\
                 Transfer-Encoding: chunked\r\n{common}\r\n",
                start + 65535
            );
            let mut chunk = served[start..start + 65536].to_vec();
            chunk.extend_from_slice(&[b'x'; 65536]);
            let _ = out
                .send(head.as_bytes())
                .and_then(|()| out.send(format!("{:x}\r\n", chunk.len()).as_bytes()))
                .and_then(|()| out.send(&chunk))
                .and_then(|()| out.send(b"\r\n0\r\n\r\n"));
            return;
        }
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{LEN}\r\n\
             Content-Length: {}\r\n{common}\r\n",
            end + 1 - start
        );
        let _ = out.send(head.as_bytes()).and_then(|()| out.send(&served[start..=end]));
    });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    let out = run(fetch(tmp.path()).args(FAST).args(["-v", "--split-size", "1M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("split       f:"), "{}", out.stderr);
    assert!(lied.load(Ordering::SeqCst), "no range was asked for");
    assert!(std::fs::read(tmp.path().join("f")).unwrap() == body, "bytes past a Content-Range were kept");
}

#[test]
fn https_to_a_plain_http_port_is_explained_in_words() {
    let server = Server::start();
    server.file("/f", 9, 100);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f").replace("http://", "https://")));
    let out = run(fetch(tmp.path()).args(FAST).args(["--retries", "0", "m.txt"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("f: cannot connect: the server did not answer in TLS (is this an http:// port?)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("InvalidContentType"), "{}", out.stderr);
}
