//! `-H` values: a header line or `@FILE`, parsed without ever quoting what
//! may be a secret, and the raw `-H` values of a command line for redacting
//! an error that the argument parser renders.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

/// One `-H` argument: a header line, or `@FILE` naming a file of header lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderArg {
    Line(HeaderLine),
    File(PathBuf),
}

impl HeaderArg {
    /// Parse one raw `-H` value. The error never quotes the value: a
    /// header line is a secret until it is known to be well formed.
    pub fn parse(raw: &OsStr) -> Result<HeaderArg, String> {
        match raw.as_bytes().strip_prefix(b"@") {
            Some(b"") => Err("-H @FILE needs a file name after '@'".to_owned()),
            Some(path) => Ok(HeaderArg::File(PathBuf::from(OsStr::from_bytes(path)))),
            None => match raw.to_str() {
                Some(line) => line.parse().map(HeaderArg::Line),
                None => Err("header is not valid UTF-8".to_owned()),
            },
        }
    }
}

/// A header as `Name: Value`. The value is kept private to Debug output:
/// header values are treated as secrets everywhere (docs/contract.md, "Secrets and terminals").
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderLine {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for HeaderLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

impl FromStr for HeaderLine {
    type Err = String;

    /// Errors name the header only once its name is a valid one: whatever
    /// precedes a `:` may be a pasted token (`Bearer abc:def`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, value)) = s.split_once(':') else {
            return Err("header has no ':'; write it as 'Name: Value'".to_owned());
        };
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() {
            return Err("header has an empty name; write it as 'Name: Value'".to_owned());
        }
        reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            "header name has characters not allowed in HTTP (or a space); write it as 'Name: Value'"
                .to_owned()
        })?;
        reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("header {name:?} has a value with characters not allowed in HTTP"))?;
        Ok(HeaderLine { name: name.to_owned(), value: value.to_owned() })
    }
}

/// The `-H` values on a raw command line, for taking out of an error that
/// the argument parser renders: `-H V`, `-HV`, `--header V`,
/// `--header=V`, `-qH V` or `-qHV` in a cluster of short flags, and the
/// header of `--header-for HOST V` (or `--header-for=HOST V`).
pub fn header_values(args: &[OsString]) -> Vec<String> {
    let mut values = Vec::new();
    let mut args = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let inline = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some(("header", value)) => Some(value.to_owned()),
                _ if long == "header" => None,
                // HOST HEADER: the header is the second value.
                Some(("header-for", _)) => None,
                _ if long == "header-for" => {
                    args.next();
                    None
                }
                _ => continue,
            }
        } else if let Some(cluster) = arg.strip_prefix('-')
            && let Some((_, value)) = cluster.split_once('H')
        {
            Some(value.to_owned()).filter(|v| !v.is_empty())
        } else {
            continue;
        };
        match inline {
            Some(value) => values.push(value),
            None => values.extend(args.next().map(|v| v.into_owned())),
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines() {
        let h: HeaderLine = "Authorization: Bearer abc:def".parse().unwrap();
        assert_eq!((h.name.as_str(), h.value.as_str()), ("Authorization", "Bearer abc:def"));
        let h: HeaderLine = "X-Empty:".parse().unwrap();
        assert_eq!(h.value, "");
        for bad in ["NoColon", ": value", "Bad Name: v", "X: a\u{7f}b"] {
            assert!(bad.parse::<HeaderLine>().is_err(), "{bad:?} should not parse");
        }
        assert_eq!(HeaderArg::parse("@h.txt".as_ref()), Ok(HeaderArg::File("h.txt".into())));
        assert!(HeaderArg::parse("@".as_ref()).is_err());
    }

    #[test]
    fn malformed_header_does_not_echo_secret() {
        for bad in ["Token supersecret", "supersecret", "Bearer supersecret:x", "X: supersecret\u{1}"] {
            let err = bad.parse::<HeaderLine>().unwrap_err();
            assert!(!err.contains("supersecret"), "{err}");
        }
        let not_utf8 = OsStr::from_bytes(b"X: supersecret\xff");
        assert!(!HeaderArg::parse(not_utf8).unwrap_err().contains("supersecret"));
        assert!(format!("{:?}", "A: secret".parse::<HeaderLine>().unwrap()).contains("<redacted>"));
    }

    #[test]
    fn header_values_on_a_command_line() {
        let cases: [(&[&str], &[&str]); 9] = [
            (&["fetch", "--header-for", "h", "A: 1", "-H", "B: 2"], &["A: 1", "B: 2"]),
            (&["fetch", "--header-for=h", "A: 1", "m.txt"], &["A: 1"]),
            (&["fetch", "-H", "A: 1", "m.txt"], &["A: 1"]),
            (&["fetch", "-HA: 1"], &["A: 1"]),
            (&["fetch", "--header", "A: 1", "--header=B: 2"], &["A: 1", "B: 2"]),
            (&["fetch", "-qH", "A: 1", "-vHB: 2"], &["A: 1", "B: 2"]),
            (&["fetch", "--headers", "x", "--dir", "H"], &[]),
            (&["fetch", "-H"], &[]),
            (&["fetch", "--", "-H", "A: 1"], &[]),
        ];
        for (args, want) in cases {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            assert_eq!(header_values(&args), want, "{args:?}");
        }
    }
}
