//! One manifest line: `URL [PATH]` or a JSON object, to a [`Spec`] (the
//! entry before it has a location) or a [`LineError`]. Pure: no I/O, the
//! destination resolved lexically by [`Rules`]; table tests below.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Entry, Location};
use crate::dest::{self, DestError, Rules};
use crate::digest::{Algorithm, Checksum, Expected, HexError, Origin};

/// A manifest line longer than this is refused rather than buffered.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Why a manifest line is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported URL scheme {0:?}: only http and https are accepted")]
    Scheme(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A `sha256`, `sha512`, `sha1` or `md5` that is not its hex digits.
    #[error(transparent)]
    Checksum(#[from] HexError),
    #[error("the line's {algorithm} contradicts {listed}, which gives another for {path:?}")]
    ChecksumConflict { algorithm: Algorithm, listed: Origin, path: String },
    #[error("invalid \"urls\": {0}")]
    Urls(&'static str),
    #[error("invalid \"urls\": more than {MAX_URLS} URLs")]
    TooManyUrls,
    #[error("invalid header {name:?}: {reason}")]
    Header { name: String, reason: &'static str },
    /// Not quoted: what is not a header name may be a secret.
    #[error("invalid header name: a token without spaces or ':'")]
    HeaderName,
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error(
        "ambiguous line: the URL ends at the first space ({url}), so the path would be {path:?}, \
         which holds a wider gap: if the URL has a space, write it as %20, or use the JSON form"
    )]
    AmbiguousSplit { url: String, path: String },
    #[error(
        "destination {} is also given by {} with another URL",
        dest.display(),
        earlier.as_ref().map_or_else(|| "an earlier line".to_owned(), Location::to_string)
    )]
    SameDestination { dest: PathBuf, earlier: Option<Location> },
}

/// A parsed line before it is given its location.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub url: Url,
    /// The URLs after the first of a JSON line's `urls`, in order.
    pub mirrors: Vec<Url>,
    pub path: String,
    pub dest: PathBuf,
    pub size: Option<u64>,
    /// At most one per algorithm.
    pub checksums: Vec<Expected>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Spec {
    pub(super) fn into_entry(self, location: Location) -> Entry {
        Entry {
            url: self.url,
            mirrors: self.mirrors,
            path: self.path,
            dest: self.dest,
            size: self.size,
            checksums: self.checksums,
            headers: self.headers.into_iter().collect(),
            location,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    url: Option<String>,
    urls: Option<Vec<String>>,
    path: Option<String>,
    size: Option<u64>,
    md5: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    sha512: Option<String>,
    #[serde(default)]
    headers: HeaderFields,
}

/// A line's `headers` in the order given, none dropped: a name given twice
/// (`x-a` and `X-A`, or the same key twice, which a map would keep one of)
/// is refused rather than sent twice or silently lost.
#[derive(Default)]
struct HeaderFields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = HeaderFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names and values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<HeaderFields, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(HeaderFields(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Parse one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str, rules: &Rules) -> Result<Option<Spec>, LineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (urls, path, size, checksums, headers) = if line.starts_with('{') {
        let json: JsonLine = serde_json::from_str(line)
            .map_err(|e| LineError::Json(crate::redact::json_error(&e.to_string())))?;
        let checksums = json_checksums(&json)?;
        let headers: Vec<_> = json
            .headers
            .0
            .into_iter()
            .map(|(name, value)| parse_header(name, &value))
            .collect::<Result<_, _>>()?;
        let mut seen = HashSet::new();
        if let Some((name, _)) = headers.iter().find(|(name, _)| !seen.insert(name)) {
            return Err(LineError::Header { name: name.to_string(), reason: "given more than once" });
        }
        (json_urls(json.url, json.urls)?, json.path, json.size, checksums, headers)
    } else {
        let (url, path) = split_plain(line)?;
        (vec![parse_url(url)?], path.map(str::to_owned), None, Vec::new(), Vec::new())
    };
    let mut urls = urls.into_iter();
    let url = urls.next().expect("a line has a URL");
    let mirrors = urls.collect();
    let path = match path {
        Some(path) => path,
        None => dest::name_from_url(&url)?,
    };
    let dest = rules.resolve(&path)?;
    Ok(Some(Spec { url, mirrors, path, dest, size, checksums, headers }))
}

/// The line's `md5`, `sha1`, `sha256`, `sha512`: any of them, each verified.
fn json_checksums(json: &JsonLine) -> Result<Vec<Expected>, HexError> {
    let keys = [
        (Algorithm::Md5, &json.md5),
        (Algorithm::Sha1, &json.sha1),
        (Algorithm::Sha256, &json.sha256),
        (Algorithm::Sha512, &json.sha512),
    ];
    keys.into_iter()
        .filter_map(|(algorithm, hex)| hex.as_deref().map(|hex| (algorithm, hex)))
        .map(|(algorithm, hex)| {
            Ok(Expected { checksum: Checksum::parse(algorithm, hex)?, origin: Origin::Manifest })
        })
        .collect()
}

/// The most URLs one line may give: each may cost its own retries, and a
/// longer list is more likely a mistake than a mirror list.
pub const MAX_URLS: usize = 16;

/// A JSON line's URLs: `url`, or the non-empty list `urls`, never both.
fn json_urls(url: Option<String>, urls: Option<Vec<String>>) -> Result<Vec<Url>, LineError> {
    let urls = match (url, urls) {
        (Some(url), None) => return Ok(vec![parse_url(&url)?]),
        (None, Some(urls)) => urls,
        (Some(_), Some(_)) => return Err(LineError::Urls("give \"url\" or \"urls\", not both")),
        (None, None) => return Err(LineError::Json("missing field `url` (or `urls`)".into())),
    };
    if urls.is_empty() {
        return Err(LineError::Urls("the list is empty"));
    }
    if urls.len() > MAX_URLS {
        return Err(LineError::TooManyUrls);
    }
    let urls: Vec<Url> = urls.iter().map(|url| parse_url(url)).collect::<Result<_, _>>()?;
    // The fragment is never sent: `#a` and `#b` are the same request.
    let bare = |url: &Url| url.as_str().split('#').next().unwrap_or_default().to_owned();
    let mut seen = HashSet::new();
    if !urls.iter().all(|url| seen.insert(bare(url))) {
        return Err(LineError::Urls("a URL is given twice"));
    }
    Ok(urls)
}

/// Split a trimmed plain line into `URL` and `PATH`: the URL ends at the
/// first whitespace and the path is the rest, so it may hold spaces. A path
/// holding a gap wider than the one before it (more spaces, or a tab where
/// the gap has none) is refused: that is what a URL with a literal space
/// looks like (`http://h/a b.txt  b.txt`), and it would silently request
/// the wrong URL.
fn split_plain(line: &str) -> Result<(&str, Option<&str>), LineError> {
    let Some(end) = line.find(char::is_whitespace) else {
        return Ok((line, None));
    };
    let (url, rest) = line.split_at(end);
    let path = rest.trim_start();
    let gap = gap_width(&rest[..rest.len() - path.len()]);
    let mut gaps = path.split(|c: char| !c.is_whitespace()).filter(|g| !g.is_empty());
    if gaps.any(|inner| gap_width(inner) > gap) {
        return Err(LineError::AmbiguousSplit { url: crate::redact::url_str(url), path: path.to_owned() });
    }
    Ok((url, Some(path)))
}

/// How wide a run of whitespace looks: any tab beats any number of spaces.
fn gap_width(gap: &str) -> (bool, usize) {
    (gap.contains('\t'), gap.chars().count())
}

fn parse_url(text: &str) -> Result<Url, LineError> {
    let url = Url::parse(text)
        .map_err(|e| LineError::BadUrl { url: crate::redact::url_str(text), reason: e.to_string() })?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(LineError::Scheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(LineError::BadUrl { url: crate::redact::url_str(text), reason: "no host".into() });
    }
    Ok(url)
}

fn parse_header(name: String, value: &str) -> Result<(HeaderName, HeaderValue), LineError> {
    let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| LineError::HeaderName)?;
    let mut header_value = HeaderValue::from_str(value)
        .map_err(|_| LineError::Header { name, reason: "value has characters not allowed in HTTP" })?;
    header_value.set_sensitive(true);
    Ok((header_name, header_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(".".into(), false)
    }

    fn parse(line: &str) -> Result<Option<Spec>, LineError> {
        parse_line(line, &rules())
    }

    #[test]
    fn line_forms() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t "), Ok(None));
        assert_eq!(parse("  # comment http://x/y"), Ok(None));

        let s = parse("http://h/a/b.bin  out dir/my file.bin  \n").unwrap().unwrap();
        assert_eq!(s.url.as_str(), "http://h/a/b.bin");
        assert_eq!(s.path, "out dir/my file.bin");

        let s = parse("https://h/a/b%20c.bin").unwrap().unwrap();
        assert_eq!((s.path.as_str(), s.dest.to_str().unwrap()), ("b c.bin", "b c.bin"));

        let s = parse(r#"{"url": "http://h/x", "path": "p/q", "size": 3, "sha256": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", "headers": {"X-A": "1"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.path, "p/q");
        assert_eq!(s.size, Some(3));
        assert_eq!(s.checksums[0].checksum.as_bytes()[..2], [0xba, 0x78]);
        assert_eq!(s.headers[0].0.as_str(), "x-a");

        let s = parse(r#"{"url": "http://h/dir/name.txt"}"#).unwrap().unwrap();
        assert_eq!(s.path, "name.txt");
    }

    #[test]
    fn invalid_lines() {
        type Check = fn(&LineError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("not a url", |e| matches!(e, LineError::BadUrl { .. })),
            ("ftp://h/file", |e| matches!(e, LineError::Scheme(s) if s == "ftp")),
            ("file:///etc/passwd x", |e| matches!(e, LineError::Scheme(_))),
            ("http://h/", |e| matches!(e, LineError::Dest(DestError::NoNameInUrl))),
            ("http://h/a ../../etc/x", |e| matches!(e, LineError::Dest(DestError::Escapes(_)))),
            ("http://h/a /etc/x", |e| matches!(e, LineError::Dest(DestError::Absolute(_)))),
            ("{\"url\": ", |e| matches!(e, LineError::Json(_))),
            (
                r#"{"url": "http://h/a", "bogus": 1}"#,
                |e| matches!(e, LineError::Json(m) if m.contains("bogus")),
            ),
            (r#"{"path": "a"}"#, |e| matches!(e, LineError::Json(m) if m.contains("url"))),
            (r#"{"url": "http://h/a", "sha256": "abc"}"#, |e| {
                matches!(e, LineError::Checksum(HexError { algorithm: Algorithm::Sha256, .. }))
            }),
            (r#"{"url": "http://h/a", "md5": "abc"}"#, |e| e.to_string().starts_with("invalid md5 \"abc\"")),
            (
                r#"{"url": "http://h/a", "sha384": "abc"}"#,
                |e| matches!(e, LineError::Json(m) if m.contains("sha384")),
            ),
            (r#"{"url": "http://h/a", "headers": {"Bad Name": "v"}}"#, |e| {
                matches!(e, LineError::HeaderName)
            }),
            (r#"{"url": "http://h/a", "size": -1}"#, |e| matches!(e, LineError::Json(_))),
        ];
        for (line, check) in cases {
            let err = parse(line).expect_err(line);
            assert!(check(&err), "{line:?} gave {err:?}");
        }
    }

    #[test]
    fn each_checksum_key_is_read_and_checked_for_its_length() {
        let abc = [
            ("md5", "900150983cd24fb0d6963f7d28e17f72"),
            ("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            ("sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("sha512", &"ab".repeat(64)),
        ];
        let keys: Vec<_> = abc.iter().map(|(key, hex)| format!("{key:?}: {hex:?}")).collect();
        let s = parse(&format!(r#"{{"url": "http://h/a", {}}}"#, keys.join(", "))).unwrap().unwrap();
        let got: Vec<_> =
            s.checksums.iter().map(|e| (e.checksum.algorithm().name(), e.checksum.to_string())).collect();
        let want: Vec<_> = abc.iter().map(|&(key, hex)| (key, hex.to_owned())).collect();
        assert_eq!(got, want);
        assert!(s.checksums.iter().all(|e| e.origin == Origin::Manifest));
        // One key's length is not another's.
        for (key, _) in abc {
            let other = if key == "md5" {
                "a9993e364706816aba3e25717850c26c9cd0d89d"
            } else {
                "900150983cd24fb0d6963f7d28e17f72"
            };
            let error = parse(&format!(r#"{{"url": "http://h/a", {key:?}: {other:?}}}"#)).unwrap_err();
            assert!(error.to_string().starts_with(&format!("invalid {key} ")), "{error}");
        }
    }

    #[test]
    fn size_is_a_plain_json_integer() {
        let size = |text: &str| {
            parse(&format!(r#"{{"url": "http://h/a", "size": {text}}}"#)).map(|s| s.unwrap().size)
        };
        assert_eq!(size("5"), Ok(Some(5)));
        assert_eq!(size(" 5 "), Ok(Some(5)), "JSON allows whitespace around a value");
        assert_eq!(size("0"), Ok(Some(0)));
        assert_eq!(size("18446744073709551615"), Ok(Some(u64::MAX)));
        for bad in ["+5", "-0", "-1", "5.0", "1e3", "\"5\"", "05", "0x5", "18446744073709551616", "null5"] {
            assert!(matches!(size(bad), Err(LineError::Json(_))), "{bad:?} gave {:?}", size(bad));
        }
    }

    #[test]
    fn plain_lines_split_at_the_first_gap_unless_a_wider_one_follows() {
        let split =
            |line: &str| split_plain(line).map(|(url, path)| (url.to_owned(), path.map(str::to_owned)));
        let ok = |url: &str, path: Option<&str>| Ok((url.to_owned(), path.map(str::to_owned)));
        assert_eq!(split("http://h/a"), ok("http://h/a", None));
        assert_eq!(split("http://h/a b"), ok("http://h/a", Some("b")));
        assert_eq!(split("http://h/a my file.txt"), ok("http://h/a", Some("my file.txt")));
        assert_eq!(
            split("http://h/a    rfc/HTTP Semantics.txt"),
            ok("http://h/a", Some("rfc/HTTP Semantics.txt"))
        );
        assert_eq!(split("http://h/a  x  y"), ok("http://h/a", Some("x  y")));
        assert_eq!(split("http://h/a\tx  y z"), ok("http://h/a", Some("x  y z")));
        assert_eq!(split("http://h/a\tx\ty"), ok("http://h/a", Some("x\ty")));
        for ambiguous in [
            "http://h/with space.txt  sp1.txt",
            "http://h/with space.txt\tsp1.txt",
            "http://h/a b c   d",
            "http://h/a  b \t c",
        ] {
            assert!(matches!(split(ambiguous), Err(LineError::AmbiguousSplit { .. })), "{ambiguous:?}");
        }
        let err = parse("http://u:hunter2@h/with space.txt  sp1.txt").unwrap_err();
        assert!(err.to_string().contains("%20") && !err.to_string().contains("hunter2"), "{err}");
        // The JSON form takes any path.
        let s = parse(r#"{"url": "http://h/with%20space.txt", "path": "a  b\tc"}"#).unwrap().unwrap();
        assert_eq!(s.path, "a  b\tc");
    }

    #[test]
    fn urls_give_the_first_url_and_its_mirrors() {
        let s = parse(r#"{"urls": ["http://a/d/x.bin", "https://b/y/z.bin"]}"#).unwrap().unwrap();
        assert_eq!(s.url.as_str(), "http://a/d/x.bin");
        assert_eq!(s.mirrors.iter().map(Url::as_str).collect::<Vec<_>>(), ["https://b/y/z.bin"]);
        assert_eq!(s.path, "x.bin", "named after the first URL");
        let s = parse(r#"{"urls": ["http://a/x"], "path": "p"}"#).unwrap().unwrap();
        assert!(s.mirrors.is_empty());
        assert!(parse("http://a/x").unwrap().unwrap().mirrors.is_empty());

        let many = |n: usize| {
            let urls: Vec<String> = (0..n).map(|i| format!("\"http://h{i}/x\"")).collect();
            format!(r#"{{"urls": [{}]}}"#, urls.join(","))
        };
        assert_eq!(parse(&many(MAX_URLS)).unwrap().unwrap().mirrors.len(), MAX_URLS - 1);
        type Check = fn(&LineError) -> bool;
        let cases: &[(&str, Check)] = &[
            (&many(MAX_URLS + 1), |e| *e == LineError::TooManyUrls),
            (r#"{"urls": []}"#, |e| matches!(e, LineError::Urls(m) if m.contains("empty"))),
            (
                r#"{"url": "http://a/x", "urls": ["http://b/x"]}"#,
                |e| matches!(e, LineError::Urls(m) if m.contains("not both")),
            ),
            (r#"{"urls": ["http://a/x", "ftp://b/x"]}"#, |e| matches!(e, LineError::Scheme(_))),
            (
                r#"{"urls": ["http://a/x", "http://u:hunter2@[b/x"]}"#,
                |e| matches!(e, LineError::BadUrl { url, .. } if !url.contains("hunter2")),
            ),
            (
                r#"{"urls": ["http://a/x", "http://a/x#f"]}"#,
                |e| matches!(e, LineError::Urls(m) if m.contains("twice")),
            ),
            (r#"{"urls": "http://a/x"}"#, |e| matches!(e, LineError::Json(_))),
            (r#"{"urls": ["http://a/"]}"#, |e| matches!(e, LineError::Dest(DestError::NoNameInUrl))),
        ];
        for (line, check) in cases {
            let err = parse(line).expect_err(line);
            assert!(check(&err), "{line:?} gave {err:?}");
        }
    }

    #[test]
    fn bad_url_error_hides_password() {
        let err = parse("http://user:hunter2@[bad/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
