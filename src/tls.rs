//! The TLS files of a run, read and checked once at startup: `--cacert`
//! and `--cacert-add` (PEM bundles of trusted roots), `--cert` and `--key`
//! (a client certificate for mTLS). Whatever makes them unusable (missing,
//! no certificate, an encrypted key, a key that is not the certificate's) is
//! an error here, before any request, with the file it is about; the
//! clients of [`crate::net`] are then built from what this module returns.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file may be this large: a full CA bundle is about 200 KiB, and
/// `--cacert /dev/zero` must not read forever.
const MAX_PEM: u64 = 16 * 1024 * 1024;

/// What the `https` client is built with.
#[derive(Debug, Default, Clone)]
pub struct Tls {
    pub roots: Roots,
    pub identity: Option<reqwest::Identity>,
}

/// Which certificate authorities are trusted.
#[derive(Default, Clone)]
pub enum Roots {
    /// The platform's (the system store, `SSL_CERT_FILE`).
    #[default]
    Platform,
    /// These only (`--cacert`, as curl's).
    Only(Vec<reqwest::Certificate>),
    /// The platform's and these (`--cacert-add`).
    Added(Vec<reqwest::Certificate>),
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::Platform => f.write_str("Platform"),
            Roots::Only(certs) => write!(f, "Only({} certificates)", certs.len()),
            Roots::Added(certs) => write!(f, "Added({} certificates)", certs.len()),
        }
    }
}

/// A TLS file that cannot be used: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{option} {}: {source}", path.display())]
    Read { option: &'static str, path: PathBuf, source: io::Error },
    #[error("{option} {}: no certificate in it (a PEM file with '-----BEGIN CERTIFICATE-----')", path.display())]
    NoCertificate { option: &'static str, path: PathBuf },
    #[error(
        "{option} {}: no such file; fetch takes no password after ':' (curl's --cert FILE:PASSWORD): give an unencrypted key with --key FILE",
        path.display()
    )]
    PasswordSuffix { option: &'static str, path: PathBuf },
    #[error("{option} {}: certificate {number} in it is not a valid X.509 certificate", path.display())]
    BadCertificate { option: &'static str, path: PathBuf, number: usize },
    #[error("{option} {}: not a PEM file", path.display())]
    NotPem { option: &'static str, path: PathBuf },
    #[error(
        "{option} {}: no private key in it; give the key with --key FILE (a PEM file with '-----BEGIN PRIVATE KEY-----')",
        path.display()
    )]
    NoKey { option: &'static str, path: PathBuf },
    #[error(
        "{option} {}: the key is encrypted, and fetch reads only unencrypted keys; decrypt it to a file only you can read: (umask 077; openssl pkey -in {} -out key.pem)",
        path.display(),
        path.display()
    )]
    Encrypted { option: &'static str, path: PathBuf },
    #[error("{option} {}: the key is not usable: {reason}", path.display())]
    BadKey { option: &'static str, path: PathBuf, reason: String },
    #[error("{option} {}: the key does not match the certificate of --cert {}", path.display(), cert.display())]
    KeyMismatch { option: &'static str, path: PathBuf, cert: PathBuf },
}

/// The files as given on the command line.
#[derive(Debug, Default)]
pub struct TlsFiles<'a> {
    pub cacert: Option<&'a Path>,
    pub cacert_add: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl TlsFiles<'_> {
    pub fn of(cli: &crate::cli::Cli) -> TlsFiles<'_> {
        TlsFiles {
            cacert: cli.cacert.as_deref(),
            cacert_add: cli.cacert_add.as_deref(),
            cert: cli.cert.as_deref(),
            key: cli.key.as_deref(),
        }
    }
}

/// Read and check every file of `files`.
pub fn load(files: &TlsFiles<'_>) -> Result<Tls, TlsError> {
    let roots = match (files.cacert, files.cacert_add) {
        (Some(path), _) => Roots::Only(roots("--cacert", path)?),
        (None, Some(path)) => Roots::Added(roots("--cacert-add", path)?),
        (None, None) => Roots::Platform,
    };
    let identity = files.cert.map(|cert| identity(cert, files.key)).transpose()?;
    Ok(Tls { roots, identity })
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let error = |source| TlsError::Read { option, path: path.to_owned(), source };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| password_suffix(option, path).unwrap_or(error(e)))?;
    file.take(MAX_PEM + 1).read_to_end(&mut bytes).map_err(error)?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(error(io::Error::other(format!("larger than {} MiB", MAX_PEM >> 20))));
    }
    Ok(bytes)
}

/// A missing `--cert FILE:PASSWORD`, as curl users write it: the error
/// names FILE alone, since the rest is a password.
fn password_suffix(option: &'static str, path: &Path) -> Option<TlsError> {
    let (file, _) = path.to_str()?.rsplit_once(':').filter(|_| option == "--cert")?;
    Some(TlsError::PasswordSuffix { option, path: PathBuf::from(file) })
}

fn certificates(
    option: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NotPem { option, path: path.to_owned() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { option, path: path.to_owned() });
    }
    // PEM decoding takes any base64; the TLS library would leave out a root
    // it cannot parse at the first request, or fail the handshake.
    let mut parsed = rustls::RootCertStore::empty();
    for (i, der) in certs.iter().enumerate() {
        if parsed.add(der.clone()).is_err() {
            return Err(TlsError::BadCertificate { option, path: path.to_owned(), number: i + 1 });
        }
    }
    Ok(certs)
}

fn roots(option: &'static str, path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let pem = read(option, path)?;
    let certs = certificates(option, path, &pem)?;
    certs
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NotPem { option, path: path.to_owned() })
}

/// `--cert`, with its key in `--key` or in the same file.
fn identity(cert_path: &Path, key_path: Option<&Path>) -> Result<reqwest::Identity, TlsError> {
    let cert_pem = read("--cert", cert_path)?;
    let certs = certificates("--cert", cert_path, &cert_pem)?;
    let (option, path, key_pem) = match key_path {
        Some(path) => ("--key", path, read("--key", path)?),
        None => ("--cert", cert_path, cert_pem.clone()),
    };
    let path_buf = path.to_owned();
    // rustls skips the PEM sections it does not know, encrypted keys among
    // them (PKCS #8 `ENCRYPTED PRIVATE KEY`, OpenSSL's `Proc-Type: 4,ENCRYPTED`).
    let text = String::from_utf8_lossy(&key_pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::Encrypted { option, path: path_buf });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { option, path: path_buf.clone() },
        _ => TlsError::NotPem { option, path: path_buf.clone() },
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| TlsError::BadKey {
        option,
        path: path_buf.clone(),
        reason: e.to_string(),
    })?;
    // Unknown (a key type that cannot tell) is left to the handshake.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        rustls::sign::CertifiedKey::new(certs, signer).keys_match()
    {
        return Err(TlsError::KeyMismatch { option, path: path_buf, cert: cert_path.to_owned() });
    }
    let mut both = cert_pem;
    if key_path.is_some() {
        both.push(b'\n');
        both.extend_from_slice(&key_pem);
    }
    reqwest::Identity::from_pem(&both).map_err(|e| TlsError::BadKey {
        option,
        path: path_buf,
        reason: crate::error::ErrorChain(&e).to_string(),
    })
}
