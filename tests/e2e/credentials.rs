//! Per-host credentials (issue 19): `--netrc-file` entries and
//! `--header-for` headers reach their own host only, at every hop of a
//! redirect chain, and are never printed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{Route, Server, fetch, report, run, write};

const ALICE: &str = "Basic YWxpY2U6YWxpY2Utc2VjcmV0"; // alice:alice-secret
const BOB: &str = "Basic Ym9iOmJvYi1zZWNyZXQ="; // bob:bob-secret
const ANON: &str = "Basic YW5vbjphbm9uLXNlY3JldA=="; // anon:anon-secret

/// Two hosts: `a` on 127.0.0.1, `b` on 127.0.0.2; `a`'s `/r` redirects to
/// `b`'s `/f`, and each serves a file of its own at `/own`.
fn two_hosts() -> (Server, Server) {
    let a = Server::start();
    let b = Server::start_on("127.0.0.2".parse().unwrap());
    b.file("/f", 1, 1000);
    a.file("/own", 2, 1000);
    b.file("/own", 3, 1000);
    a.route("/r", Route { redirect: Some(b.url("/f")), ..Route::default() });
    (a, b)
}

fn manifest(dir: &Path, a: &Server, b: &Server) {
    let lines = format!("{} via-a\n{} a-own\n{} b-own\n", a.url("/r"), a.url("/own"), b.url("/own"));
    write(dir, "m.txt", &lines);
}

/// A private netrc file.
fn netrc(dir: &Path, text: &str) -> String {
    let path = write(dir, "netrc", text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Every `name` header each request to `server` carried.
fn seen(server: &Server, name: &str) -> Vec<String> {
    let log = server.log();
    log.iter().flat_map(|l| l.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned())).collect()
}

fn assert_quiet(stderr: &str, dir: &Path, secrets: &[&str]) {
    let report = std::fs::read_to_string(dir.join("r.jsonl")).unwrap_or_default();
    for secret in secrets {
        assert!(!stderr.contains(secret), "{secret} in {stderr}");
        assert!(!report.contains(secret), "{secret} in {report}");
    }
}

#[test]
fn netrc_credentials_go_to_their_own_host_after_a_redirect_too() {
    let (a, b) = two_hosts();
    let tmp = tempfile::tempdir().unwrap();
    manifest(tmp.path(), &a, &b);
    let netrc = netrc(
        tmp.path(),
        "machine 127.0.0.1 login alice password alice-secret\n\
         machine 127.0.0.2\n  login bob\n  password \"bob-secret\"\n",
    );
    let out = run(fetch(tmp.path()).args(["-v", "--netrc-file", &netrc, "--report", "r.jsonl", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(report(&tmp.path().join("r.jsonl")).len(), 3);
    // a: /r and /own; b: /f (reached from a) and /own.
    assert_eq!(seen(&a, "authorization"), [ALICE, ALICE]);
    assert_eq!(seen(&b, "authorization"), [BOB, BOB]);
    assert_quiet(&out.stderr, tmp.path(), &["alice-secret", "bob-secret", "YWxp", "Ym9i"]);
}

#[test]
fn the_netrc_default_entry_serves_hosts_it_does_not_name() {
    let (a, b) = two_hosts();
    let tmp = tempfile::tempdir().unwrap();
    manifest(tmp.path(), &a, &b);
    let netrc = netrc(
        tmp.path(),
        "machine 127.0.0.1 login alice password alice-secret\ndefault login anon password anon-secret\n",
    );
    let out = run(fetch(tmp.path()).args(["--netrc-file", &netrc, "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(seen(&a, "authorization"), [ALICE, ALICE]);
    assert_eq!(seen(&b, "authorization"), [ANON, ANON]);
    // --netrc reads $NETRC.
    let out = run(fetch(tmp.path()).env("NETRC", &netrc).args(["--netrc", "--overwrite", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(seen(&b, "authorization"), [ANON, ANON, ANON, ANON]);
}

#[test]
fn without_netrc_options_no_netrc_is_read() {
    let (a, b) = two_hosts();
    let tmp = tempfile::tempdir().unwrap();
    manifest(tmp.path(), &a, &b);
    netrc(tmp.path(), "default login anon password anon-secret\n");
    // A ~/.netrc and $NETRC that --netrc would read.
    write(tmp.path(), ".netrc", "default login anon password anon-secret\n");
    let out =
        run(fetch(tmp.path()).env("HOME", tmp.path()).env("NETRC", tmp.path().join("netrc")).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(seen(&a, "authorization").is_empty() && seen(&b, "authorization").is_empty());
}

#[test]
fn an_unusable_netrc_is_a_usage_error_that_never_shows_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    write(tmp.path(), "m.txt", &format!("{} f\n", server.url("/f")));
    // An unquoted password with a space: "words" is not a keyword.
    let bad = netrc(tmp.path(), "machine h\n  login u\n  password secret words here\n");
    let out = run(fetch(tmp.path()).args(["--netrc-file", &bad, "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains(&format!("fetch: {bad}:3: a word that is not a keyword")), "{}", out.stderr);
    assert!(!out.stderr.contains("secret") && !out.stderr.contains("words"), "{}", out.stderr);
    // Others may read it: refused, with the fix.
    let open = netrc(tmp.path(), "machine h login u password hunter2\n");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(fetch(tmp.path()).args(["--netrc-file", &open, "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains(&format!("chmod 600 {open}")), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    // --netrc with no such file.
    let out = run(fetch(tmp.path())
        .env("HOME", tmp.path().join("nowhere"))
        .env_remove("NETRC")
        .args(["--netrc", "m.txt"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("nowhere/.netrc"), "{}", out.stderr);
    assert!(server.log().is_empty());
}

#[test]
fn header_for_reaches_its_host_only() {
    let (a, b) = two_hosts();
    let tmp = tempfile::tempdir().unwrap();
    manifest(tmp.path(), &a, &b);
    write(tmp.path(), "a-headers", "# a's\nX-Token: token-for-a\n");
    let out = run(fetch(tmp.path()).args([
        "--header-for",
        "127.0.0.1",
        "@a-headers",
        "--header-for",
        b.url("").trim_start_matches("http://"),
        "X-Token: token-for-b",
        "-H",
        "X-Common: everyone-on-the-origin",
        "-H",
        "X-Token: replaced-by-header-for",
        "--report",
        "r.jsonl",
        "m.txt",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(seen(&a, "x-token"), ["token-for-a", "token-for-a"]);
    assert_eq!(seen(&b, "x-token"), ["token-for-b", "token-for-b"]);
    // -H goes to each manifest URL's origin, not across the redirect.
    assert_eq!(seen(&a, "x-common").len(), 2);
    assert_eq!(seen(&b, "x-common").len(), 1, "b's own entry only");
    assert_quiet(&out.stderr, tmp.path(), &["token-for", "everyone"]);
}

#[test]
fn header_for_errors_never_quote_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "");
    let cases: [&[&str]; 5] = [
        // Not a header: no colon.
        &["--header-for", "h", "Bearer sesame-token", "m.txt"],
        &["--header-for", "h/x", "X: sesame-token", "m.txt"],
        // The two values swapped: the header is taken for the host.
        &["--header-for", "Authorization: Bearer sesame-token", "h", "m.txt"],
        // clap's own errors.
        &["--header-for", "h", "X: sesame-token", "--no-such-option"],
        &["--header-for=h", "X: sesame-token", "--no-such-option"],
    ];
    for args in cases {
        let out = run(fetch(tmp.path()).args(args));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("sesame"), "{args:?}: {}", out.stderr);
    }
    let out = run(fetch(tmp.path()).args(cases[0]));
    assert!(out.stderr.contains("--header-for #1: header has no ':'"), "{}", out.stderr);
    let out = run(fetch(tmp.path()).args(cases[2]));
    assert!(out.stderr.contains("--header-for #1: HOST is not a host name"), "{}", out.stderr);
}

#[test]
fn a_redirect_from_https_to_http_carries_no_netrc_or_header_for_secret() {
    let secure = Server::start_tls();
    let plain = Server::start();
    plain.file("/f", 4, 1000);
    secure.route("/r", Route { redirect: Some(plain.url("/f")), ..Route::default() });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} f\n", secure.url("/r")));
    let netrc = netrc(tmp.path(), "machine 127.0.0.1 login alice password alice-secret\n");
    let args = ["--insecure", "--netrc-file", &netrc, "--header-for", "127.0.0.1", "X-Token: tok-secret"];
    let out = run(fetch(tmp.path()).args(args).arg("m.txt"));
    assert_eq!(out.code, Some(0), "{out:?}");
    // Same host name, other scheme and port: the secrets stay on HTTPS.
    assert_eq!(seen(&secure, "authorization"), [ALICE]);
    assert_eq!(seen(&secure, "x-token"), ["tok-secret"]);
    assert_eq!(seen(&plain, "authorization"), Vec::<String>::new());
    assert_eq!(seen(&plain, "x-token"), Vec::<String>::new());
}
