//! Secrets that belong to one host: `.netrc` entries (`--netrc`,
//! `--netrc-file`) and `--header-for HOST HEADER`. [`Credentials::add`] says
//! what a request to one URL carries, and is asked again at every hop of a
//! redirect chain ([`crate::transfer`]), so a host's secrets reach that host
//! only, whichever host the chain started at.
//!
//! Precedence for `Authorization`, first wins: an explicit header (a
//! `--header-for` of the hop's host, `-H` or the manifest's `headers` on the
//! manifest URL's origin), the URL's `user:pass@`, the `.netrc` entry of the
//! hop's host. A URL with a user name and no password takes the `.netrc`
//! password when the entry's login is that user, as curl does.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use reqwest::header::{self, HeaderMap};

use crate::netrc::Netrc;

/// A `.netrc` may be this large: `--netrc-file /dev/zero` must not read
/// forever.
const MAX_NETRC: u64 = 1024 * 1024;

/// The run's per-host secrets.
#[derive(Debug, Default)]
pub struct Credentials {
    netrc: Option<Netrc>,
    /// `--header-for`, in command-line order; values marked sensitive.
    headers: Vec<(HostPattern, HeaderMap)>,
}

/// What one request gets from [`Credentials`] beyond the user's own
/// headers.
#[derive(Debug, Default)]
struct Hop {
    /// The `--header-for` headers of its host; they replace headers of the
    /// same name given with `-H` or in the manifest.
    pub headers: HeaderMap,
    /// Basic credentials, unless an explicit `Authorization` header wins.
    pub basic: Option<(String, Option<String>)>,
}

/// `--header-for`'s HOST: a host name or address, with a port or for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// `example.com`, `example.com:8443`, `10.0.0.1`, `[::1]:8080`; the
    /// reason otherwise, which does not quote `text`: with the two values
    /// swapped, it is the header.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let bad =
            || "HOST is not a host name, or host:port (the host comes first: HOST 'Name: Value')".to_owned();
        if text.is_empty() || text.contains(['/', '@', '?', '#', '\\']) || text.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let url = Url::parse(&format!("http://{text}/")).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?.to_owned();
        // `port()` hides a default one: `host:80` names port 80 all the same.
        let after_host = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
        let port = after_host.contains(':').then(|| url.port_or_known_default()).flatten();
        Ok(HostPattern { host, port })
    }

    fn matches(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && self.port.is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

impl Credentials {
    pub fn new(netrc: Option<Netrc>, headers: Vec<(HostPattern, HeaderMap)>) -> Credentials {
        Credentials { netrc, headers }
    }

    /// Add the `--header-for` headers of `url`'s host to `headers` (the
    /// user's headers for it: none on another origin than the manifest
    /// URL's), replacing those of the same name; and say which Basic
    /// credentials it gets, given `userinfo`, those of its URL (or of the
    /// manifest URL on its origin).
    pub fn add(
        &self,
        url: &Url,
        headers: &mut HeaderMap,
        userinfo: Option<(String, Option<String>)>,
    ) -> Option<(String, Option<String>)> {
        let own = self.hop(url, headers, userinfo);
        for name in own.headers.keys() {
            headers.remove(name);
        }
        headers.extend(own.headers);
        own.basic
    }

    /// What a request to `url` carries besides `explicit`, the user's
    /// headers sent to it.
    fn hop(&self, url: &Url, explicit: &HeaderMap, userinfo: Option<(String, Option<String>)>) -> Hop {
        let mut headers = HeaderMap::new();
        for (_, map) in self.headers.iter().filter(|(pattern, _)| pattern.matches(url)) {
            for name in map.keys() {
                // A later --header-for of the same host and name adds to it.
                headers.remove(name);
            }
            for (name, value) in map {
                headers.append(name, value.clone());
            }
        }
        if headers.contains_key(header::AUTHORIZATION) || explicit.contains_key(header::AUTHORIZATION) {
            return Hop { headers, basic: None };
        }
        let entry = self.netrc.as_ref().zip(url.host_str()).and_then(|(netrc, host)| netrc.lookup(host));
        let basic = match (userinfo, entry) {
            (Some((user, None)), Some(entry)) if entry.login.as_deref() == Some(user.as_str()) => {
                Some((user, entry.password.clone()))
            }
            (Some(userinfo), _) => Some(userinfo),
            (None, Some(entry)) => entry.login.clone().map(|login| (login, entry.password.clone())),
            (None, None) => None,
        };
        Hop { headers, basic }
    }
}

/// A `.netrc` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetrcError {
    #[error("cannot read netrc file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {reason}", path.display())]
    Parse { path: PathBuf, line: usize, reason: &'static str },
    #[error(
        "netrc file {} holds passwords and others can read it; run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf },
    #[error("--netrc: neither NETRC nor HOME is set, so there is no default netrc file")]
    NoHome,
}

/// `--netrc`'s file: `$NETRC` if set (as inetutils ftp and Python's netrc
/// read it), else `~/.netrc`.
pub fn default_netrc() -> Result<PathBuf, NetrcError> {
    let set = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = set("NETRC") {
        return Ok(PathBuf::from(path));
    }
    set("HOME").map(|home| Path::new(&home).join(".netrc")).ok_or(NetrcError::NoHome)
}

/// Read and parse a `.netrc`. One that holds a password and that the group
/// or others may read is refused, as ftp(1) refuses it: the password is
/// not a secret any more, and the fix is one `chmod`.
pub fn read_netrc(path: &Path) -> Result<Netrc, NetrcError> {
    let read_error = |source| NetrcError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_NETRC + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_NETRC {
        return Err(read_error(io::Error::other(format!("larger than {} KiB", MAX_NETRC / 1024))));
    }
    let text = String::from_utf8(bytes).map_err(|_| read_error(io::Error::other("not UTF-8 text")))?;
    let netrc = Netrc::parse(&text).map_err(|e| NetrcError::Parse {
        path: path.to_owned(),
        line: e.line,
        reason: e.reason,
    })?;
    // A pipe (`--netrc-file <(vault read ...)`) has no such bits to check.
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 && netrc.has_password() {
        return Err(NetrcError::Exposed { path: path.to_owned() });
    }
    Ok(netrc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn host_patterns() {
        let cases = [
            ("a.example", "https://A.example:8443/x", true),
            ("a.example:8443", "https://a.example:8443/x", true),
            ("a.example:8443", "https://a.example/x", false),
            ("a.example:80", "http://a.example/x", true),
            ("a.example", "https://b.example/x", false),
            ("127.0.0.1", "http://127.0.0.1:9/", true),
            ("[::1]:9", "http://[::1]:9/", true),
            ("[::1]", "http://[::1]:9/", true),
        ];
        for (pattern, u, want) in cases {
            assert_eq!(HostPattern::parse(pattern).unwrap().matches(&url(u)), want, "{pattern} {u}");
        }
        for bad in ["", "a b", "a/b", "u@h", "h:x", "[::1"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn precedence() {
        let netrc = Netrc::parse("machine a login na password np\nmachine b login nb").unwrap();
        let mut for_b = HeaderMap::new();
        for_b.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        let credentials =
            Credentials::new(Some(netrc), vec![(HostPattern::parse("b").unwrap(), for_b.clone())]);
        let none = HeaderMap::new();
        let pair = |u: &str, p: Option<&str>| Some((u.to_owned(), p.map(str::to_owned)));
        // netrc for its host only; --header-for's Authorization beats it.
        assert_eq!(credentials.hop(&url("http://a/"), &none, None).basic, pair("na", Some("np")));
        let b = credentials.hop(&url("http://b/"), &none, None);
        assert_eq!((b.basic, b.headers), (None, for_b.clone()));
        assert_eq!(credentials.hop(&url("http://c/"), &none, None).basic, None);
        // The URL's credentials beat netrc; a bare user name takes its password.
        assert_eq!(
            credentials.hop(&url("http://a/"), &none, pair("u", Some("p"))).basic,
            pair("u", Some("p"))
        );
        assert_eq!(credentials.hop(&url("http://a/"), &none, pair("na", None)).basic, pair("na", Some("np")));
        assert_eq!(credentials.hop(&url("http://a/"), &none, pair("x", None)).basic, pair("x", None));
        // An explicit Authorization beats both.
        assert_eq!(credentials.hop(&url("http://a/"), &for_b, pair("u", Some("p"))).basic, None);
    }
}
