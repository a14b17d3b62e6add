//! The command line as clap sees it: raw values and the small value types
//! they parse into (durations, header lines). No I/O happens here; reading
//! `-H @FILE` and checking `--dir` belong to [`crate::config`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::shard::Shard;

const AFTER_HELP: &str = "\
Manifest lines:
  URL PATH                       download URL to PATH (PATH may contain spaces)
  URL                            name the file after the URL's last path segment
  {\"url\": \"...\", \"path\": \"...\", \"size\": 123, \"sha256\": \"...\", \"headers\": {\"K\": \"V\"}}
  # comment                      blank lines and comments are ignored

Exit status: 0 all downloaded or skipped, 1 some entry failed, 2 usage error,
130/143 interrupted (partial files are kept and resumed by the next run).

Examples:
  fetch urls.txt                              download into the current directory
  fetch -j 32 --dir /data urls.txt            32 at once, into /data
  generate-manifest | fetch -q -H @auth.txt   from a pipe, quiet, headers from a file
  fetch --dry-run urls.txt                    check a manifest without downloading
  fetch --shard 2/8 urls.txt                  this machine's eighth of the work
  fetch -q --report run.jsonl urls.txt        for cron: failures, summary, JSON report";

/// A bulk downloader: reads URL/path pairs and downloads them concurrently,
/// with retries, resume, verification and atomic renames.
#[derive(Debug, Parser)]
#[command(name = "fetch", version, about, after_help = AFTER_HELP, max_term_width = 100)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Manifest files to read, in order; `-` is standard input (the default).
    #[arg(value_name = "MANIFEST")]
    pub manifests: Vec<PathBuf>,

    /// Directory that relative destination paths are resolved against.
    #[arg(short = 'd', long, value_name = "DIR", default_value = ".", help_heading = "Destinations")]
    pub dir: PathBuf,

    /// Allow absolute destination paths and `..` that leave --dir.
    #[arg(short = 'P', long, help_heading = "Destinations")]
    pub absolute_paths: bool,

    /// Download entries whose destination exists and replace the file once the new one is complete.
    #[arg(long, help_heading = "Destinations")]
    pub overwrite: bool,

    /// Downloads in flight at once.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Concurrency")]
    pub jobs: u32,

    /// Downloads in flight to one host (default: only --jobs applies).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096),
          help_heading = "Concurrency")]
    pub per_host: Option<u32>,

    /// Split files of at least this size into ranges fetched over several connections
    /// (needs a server that supports ranges): 64M, 1G, 500K, or bytes.
    #[arg(long, value_name = "SIZE", default_value = "64M", help_heading = "Concurrency")]
    pub split_size: ByteSize,

    /// Connections for one split file; 1 turns splitting off. Each counts against --jobs and --per-host.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Concurrency")]
    pub max_connections_per_file: u32,

    /// Retries after the first attempt of each download.
    #[arg(long, value_name = "N", default_value_t = 5, help_heading = "Retries")]
    pub retries: u32,

    /// First wait between retries; waits double from here, with jitter.
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Retries")]
    pub retry_delay: HumanDuration,

    /// Longest wait between retries, also the cap on a server's Retry-After.
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = "Retries")]
    pub retry_max_delay: HumanDuration,

    /// Leave a downloaded file's modification time at the time of download. By
    /// default it is the server's Last-Modified, as wget sets it (curl -R), so that
    /// make and rsync see when the file changed, not when it was fetched.
    #[arg(long, help_heading = "Destinations")]
    pub no_remote_time: bool,

    /// Fail the entries of a host that has not answered (or only asked for less: 429,
    /// 503) for this long. Until then they wait for it instead of spending their
    /// retries; long enough for a VPN to reconnect or a server to reboot.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = timeout,
          help_heading = "Retries")]
    pub host_timeout: HumanDuration,

    /// Start no more than N requests per second to one host (for a server that
    /// publishes a rate limit); decimals allowed, e.g. 0.5.
    #[arg(long, value_name = "N", value_parser = rate, help_heading = "Concurrency")]
    pub max_rate: Option<f64>,

    /// Start every download from zero: discard partial files instead of resuming them,
    /// and retry from zero too. No request carries Range, except the ranges of a split
    /// download (see --split-size), which stay within one attempt.
    #[arg(long, help_heading = "Retries")]
    pub no_resume: bool,

    /// Time allowed to establish a connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timeout,
          help_heading = "Network")]
    pub connect_timeout: HumanDuration,

    /// A response that sends nothing for this long fails the attempt.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = timeout,
          help_heading = "Network")]
    pub read_timeout: HumanDuration,

    /// Add a header to every request: 'Name: Value', or @FILE for one header per line.
    // Raw, and validated by [`HeaderArg::parse`] in config: clap quotes a
    // value its parser rejects, and a header value is a secret. Hyphen
    // values are taken too, so that clap never reads a header as a flag.
    #[arg(short = 'H', long = "header", value_name = "HEADER", action = ArgAction::Append,
          value_parser = clap::value_parser!(OsString), allow_hyphen_values = true,
          help_heading = "Network")]
    pub headers: Vec<OsString>,

    /// User-Agent header sent with every request.
    #[arg(long, value_name = "STRING", default_value = concat!("fetch/", env!("CARGO_PKG_VERSION")),
          value_parser = user_agent, help_heading = "Network")]
    pub user_agent: String,

    /// Do not verify TLS certificates.
    #[arg(long, help_heading = "Network")]
    pub insecure: bool,

    /// Print only failures and the summary.
    #[arg(short = 'q', long, conflicts_with = "verbose", help_heading = "Output")]
    pub quiet: bool,

    /// Also print each attempt and retry.
    #[arg(short = 'v', long, help_heading = "Output")]
    pub verbose: bool,

    /// Append one JSON object per entry to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub report: Option<PathBuf>,

    /// Progress display: auto (bars on a terminal, else log), bar, log (a line per entry), none.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ProgressMode::Auto, help_heading = "Output")]
    pub progress: ProgressMode,

    /// Validate the manifest and print what would be downloaded or skipped; make no request.
    #[arg(long, help_heading = "Run")]
    pub dry_run: bool,

    /// Process only the entries whose destination path hashes to shard K of N (0 <= K < N).
    #[arg(long, value_name = "K/N", help_heading = "Run")]
    pub shard: Option<Shard>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--progress`: what each mode does is in the option's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

/// A duration written as a number and a unit: `500ms`, `2s`, `1.5m`, `1h`.
/// A bare number means seconds, as curl's `--connect-timeout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number and a unit, like 500ms, 2s, 1m or 1h")
        })?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!("invalid duration unit {other:?} in {s:?}: use ms, s, m or h"));
            }
        };
        Duration::try_from_secs_f64(value * scale)
            .map(HumanDuration)
            .map_err(|_| format!("duration {s:?} is out of range"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A size in bytes with an optional binary unit, as aria2's `-k` and
/// curl's `--limit-rate` take it: `512K`, `64M`, `1G`, `1.5G` (`KiB`,
/// `MB` and lower case are accepted; every unit is a power of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number and a unit, like 64M"))?;
        let unit = unit.trim().to_ascii_uppercase();
        let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("invalid size unit in {s:?}: use K, M, G or T")),
        };
        let bytes = value * (1u64 << shift) as f64;
        if !(bytes.is_finite() && bytes < u64::MAX as f64) {
            return Err(format!("size {s:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `--connect-timeout` and `--read-timeout`: a duration of at least 1 ms.
/// Zero would fail every request before it could start.
fn timeout(s: &str) -> Result<HumanDuration, String> {
    let duration: HumanDuration = s.parse()?;
    if duration.0 < Duration::from_millis(1) {
        return Err("a timeout must be at least 1ms; zero would fail every request".to_owned());
    }
    Ok(duration)
}

/// `--max-rate`: a positive number of requests per second.
fn rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && (0.001..=1e6).contains(&n) => Ok(n),
        _ => Err("expected requests per second, from 0.001 to 1000000 (e.g. 10 or 0.5)".to_owned()),
    }
}

/// `--user-agent`: a valid header value, or the HTTP client cannot be
/// built ("builder error").
fn user_agent(s: &str) -> Result<String, String> {
    reqwest::header::HeaderValue::from_str(s)
        .map(|_| s.to_owned())
        .map_err(|_| "a User-Agent may not hold control characters such as a newline".to_owned())
}

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
/// `--header=V`, and `-qH V` or `-qHV` in a cluster of short flags.
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
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("2", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            (" 10ms ", Duration::from_millis(10)),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<HumanDuration>(), Ok(HumanDuration(want)), "{input}");
        }
        for bad in ["", "s", "1d", "-1s", "1..2s", "ms", "1e3s", "99999999999999999999h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("1000", 1000),
            ("512K", 512 << 10),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64mb", 64 << 20),
            ("1.5G", 3 << 29),
            ("2T", 2 << 40),
            (" 8 M ", 8 << 20),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(want)), "{input}");
        }
        for bad in ["", "M", "1X", "-1M", "1..2M", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should not parse");
        }
    }

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
        let cases: [(&[&str], &[&str]); 7] = [
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

    #[test]
    fn user_agents_are_header_values() {
        assert_eq!(user_agent("curl/8.0 (x)"), Ok("curl/8.0 (x)".to_owned()));
        assert!(user_agent("a\nb").is_err());
    }

    #[test]
    fn rates_are_positive_and_finite() {
        assert_eq!(rate("10"), Ok(10.0));
        assert_eq!(rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "x", "", "1e9"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_are_not_zero() {
        assert_eq!(timeout("10s"), Ok(HumanDuration(Duration::from_secs(10))));
        for zero in ["0", "0s", "0ms", "0.0001s"] {
            assert!(timeout(zero).is_err(), "{zero}");
        }
    }
}
