//! TLS options (issue 19): `--cacert` and `--cacert-add`, a client
//! certificate for mTLS (`--cert`, `--key`), their errors at startup, and
//! `-4`/`-6`.

use std::path::Path;

use crate::server::tls::tls_file;
use crate::{Server, fetch, run, write};

/// Run `fetch` with `args` on a manifest of `server`'s `/f` (1000 bytes);
/// the exit code.
fn get(server: &Server, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    server.file("/f", 9, 1000);
    write(dir, "m.txt", &format!("{} f\n", server.url("/f")));
    let mut cmd = fetch(dir);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = run(cmd.args(["--retries", "0", "--overwrite"]).args(args).arg("m.txt"));
    (out.code, out.stderr)
}

#[test]
fn cacert_trusts_its_ca_and_replaces_the_platform_roots() {
    let server = Server::start_tls_ca("127.0.0.1".parse().unwrap(), false);
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (tls_file("ca-cert.pem"), tls_file("cert.pem"));
    // Not trusted by the platform: fails.
    let (code, stderr) = get(&server, tmp.path(), &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("or --cacert FILE to trust its CA"), "{stderr}");
    let (code, stderr) = get(&server, tmp.path(), &["--cacert", &ca], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap().len(), 1000);
    // --cacert replaces the platform's roots (here SSL_CERT_FILE, which
    // names the CA); --cacert-add adds to them.
    let platform = [("SSL_CERT_FILE", ca.as_str())];
    let (code, stderr) = get(&server, tmp.path(), &["--cacert", &other], &platform);
    assert_eq!(code, Some(1), "{stderr}");
    let (code, stderr) = get(&server, tmp.path(), &["--cacert-add", &other], &platform);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = get(&server, tmp.path(), &["--cacert-add", &ca], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(server.log().len(), 3);
}

#[test]
fn a_server_that_asks_for_a_client_certificate_gets_the_one_given() {
    let server = Server::start_tls_ca("127.0.0.1".parse().unwrap(), true);
    let tmp = tempfile::tempdir().unwrap();
    let ca = tls_file("ca-cert.pem");
    let (code, stderr) = get(&server, tmp.path(), &["--cacert", &ca], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(server.log().is_empty(), "the handshake fails without a certificate");
    let (cert, key) = (tls_file("client-cert.pem"), tls_file("client-key.pem"));
    let (code, stderr) = get(&server, tmp.path(), &["--cacert", &ca, "--cert", &cert, "--key", &key], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(server.log().len(), 1);
    // The key may follow the certificate in one file.
    let both = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    let both = write(tmp.path(), "both.pem", &both).display().to_string();
    let (code, stderr) = get(&server, tmp.path(), &["--cacert", &ca, "--cert", &both], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(server.log().len(), 2);
}

#[test]
fn unusable_tls_files_are_usage_errors_before_any_request() {
    let server = Server::start_tls_ca("127.0.0.1".parse().unwrap(), true);
    let tmp = tempfile::tempdir().unwrap();
    let [key, client_cert, client_key, encrypted] =
        ["key.pem", "client-cert.pem", "client-key.pem", "client-key-encrypted.pem"].map(tls_file);
    let missing = tmp.path().join("missing.pem").display().to_string();
    // Base64 of three zero bytes: PEM, but no certificate's DER.
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let ca = std::fs::read_to_string(tls_file("ca-cert.pem")).unwrap();
    let bad = write(tmp.path(), "bad.pem", &(ca + garbage)).display().to_string();
    let cases = [
        (vec!["--cacert", &missing], format!("--cacert {missing}: No such file or directory (os error 2)")),
        (vec!["--cacert", &key], format!("--cacert {}: no certificate in it", key)),
        (
            vec!["--cacert", &bad],
            format!("--cacert {bad}: certificate 2 in it is not a valid X.509 certificate"),
        ),
        (vec!["--cert", &bad], format!("--cert {bad}: certificate 2 in it is not a valid X.509 certificate")),
        (vec!["--cert", &client_key], format!("--cert {}: no certificate in it", client_key)),
        (
            vec!["--cert", &client_cert],
            format!("--cert {}: no private key in it; give the key with --key FILE", client_cert),
        ),
        (
            vec!["--cert", &client_cert, "--key", &encrypted],
            format!(
                "--key {0}: the key is encrypted, and fetch reads only unencrypted keys; decrypt it to a \
                 file only you can read: (umask 077; openssl pkey -in {0} -out key.pem)",
                encrypted
            ),
        ),
        (
            vec!["--cert", &client_cert, "--key", &key],
            format!("--key {}: the key does not match the certificate of --cert {}", key, client_cert),
        ),
    ];
    for (args, want) in cases {
        let (code, stderr) = get(&server, tmp.path(), &args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("fetch: {want}")), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // curl's --cert FILE:PASSWORD: the password is never shown.
    let curlish = format!("{client_cert}:s3cret-pass");
    let (code, stderr) = get(&server, tmp.path(), &["--cert", &curlish], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("fetch: --cert {client_cert}: no such file; fetch takes no password"))
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    let (code, stderr) = get(&server, tmp.path(), &["--key", &client_key], &[]);
    assert_eq!(code, Some(2), "--key needs --cert: {stderr}");
    assert!(server.log().is_empty());
}

#[test]
fn ipv4_and_ipv6_only() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let v6 = Server::start_on("::1".parse().unwrap());
    let v4 = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let cases = [(&v6, "-6", Some(0)), (&v6, "-4", Some(1)), (&v4, "-4", Some(0)), (&v4, "-6", Some(1))];
    for (server, flag, want) in cases {
        let seen = server.log().len();
        let (code, stderr) = get(server, tmp.path(), &[flag], &[]);
        assert_eq!(code, want, "{flag} to {}: {stderr}", server.url("/f"));
        assert_eq!(server.log().len() - seen, usize::from(want == Some(0)), "{flag}");
    }
    // Both families given: one message.
    let (code, stderr) = get(&v4, tmp.path(), &["-4", "-6"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn the_ranges_of_a_split_file_get_connections_of_their_own_when_the_server_offers_http2() {
    // Over HTTP/2 every range would be a stream of the one connection.
    let server = Server::start_tls_h2();
    let body = crate::content(23, 8 << 20);
    // About 3 MiB/s a connection: slow enough to split.
    let throttle = Some((64 * 1024, std::time::Duration::from_millis(20)));
    server.route("/big", crate::Route { throttle, ..crate::Route::new(body.clone()) });
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", &format!("{} big\n", server.url("/big")));
    let ca = tls_file("ca-cert.pem");
    let out = run(fetch(tmp.path()).args(["-v", "--cacert", &ca, "--split-size", "1M", "m.txt"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(std::fs::read(tmp.path().join("big")).unwrap() == body, "bytes differ");
    let log = server.requests_to("/big");
    assert_eq!(log[0].version, hyper::Version::HTTP_2, "the first request negotiates HTTP/2");
    let ranges: Vec<_> = log[1..].iter().map(|l| l.version).collect();
    assert!(ranges.len() >= 2, "split: {}", out.stderr);
    assert!(ranges.iter().all(|&v| v == hyper::Version::HTTP_11), "{ranges:?}");
    assert!(server.connections() >= 3, "{} connections", server.connections());
}
