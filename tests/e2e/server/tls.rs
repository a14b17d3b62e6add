//! HTTPS servers whose certificate the test CA signed (`tls/server-cert.pem`,
//! for `--cacert`), optionally asking for a client certificate that the
//! test CA signed (mTLS). A handshake that fails leaves no request in the
//! log.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Server;

/// The path of a file of `tests/e2e/tls/`.
pub fn tls_file(name: &str) -> String {
    format!("{}/tests/e2e/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl Server {
    /// An HTTPS server on `ip` with the CA-signed certificate; with
    /// `client_auth`, only clients with a certificate from the test CA get
    /// through the handshake.
    pub fn start_tls_ca(ip: IpAddr, client_auth: bool) -> Server {
        let certs = vec![CertificateDer::from_pem_file(tls_file("server-cert.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(tls_file("server-key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_file(tls_file("ca-cert.pem")).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut server = Server::start_with(ip, Some(acceptor), None);
        server.scheme = "https";
        server
    }
}
