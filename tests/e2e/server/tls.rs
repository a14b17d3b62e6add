//! HTTPS servers whose certificate the test CA signed (`tls/server-cert.pem`,
//! for `--cacert`), optionally asking for a client certificate that the
//! test CA signed (mTLS), or offering HTTP/2. A handshake that fails leaves
//! no request in the log.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Server, Shared};

/// The path of a file of `tests/e2e/tls/`.
pub fn tls_file(name: &str) -> String {
    format!("{}/tests/e2e/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl Server {
    /// An HTTPS server on `ip` with the CA-signed certificate; with
    /// `client_auth`, only clients with a certificate from the test CA get
    /// through the handshake.
    pub fn start_tls_ca(ip: IpAddr, client_auth: bool) -> Server {
        Server::start_with_config(ip, config(client_auth))
    }

    /// The same on 127.0.0.1, without client certificates, offering
    /// HTTP/2 by ALPN (and HTTP/1.1 to a client that asks for it only).
    pub fn start_tls_h2() -> Server {
        let mut config = config(false);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Server::start_with_config("127.0.0.1".parse().unwrap(), config)
    }

    fn start_with_config(ip: IpAddr, config: rustls::ServerConfig) -> Server {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut server = Server::start_with(ip, Some(acceptor), None);
        server.scheme = "https";
        server
    }
}

fn config(client_auth: bool) -> rustls::ServerConfig {
    let certs = vec![CertificateDer::from_pem_file(tls_file("server-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(tls_file("server-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(tls_file("ca-cert.pem")).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(certs, key).unwrap()
}

/// Serve one HTTP/2 connection, each request as [`super::serve`] does.
pub(super) async fn serve_h2<S>(state: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = super::recorded(state);
    let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
}
