//! The command line as clap sees it: raw values and the small value types
//! they parse into (durations, header lines). No I/O happens here; reading
//! `-H @FILE` and checking `--dir` belong to [`crate::config`].

mod habits;
mod headers;
mod values;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::shard::Shard;

pub use habits::{habit, with_habit_hint};
pub use headers::{HeaderArg, HeaderLine, header_values};
pub use values::{ByteSize, HumanDuration};

const AFTER_HELP: &str = "\
Manifest lines:
  URL PATH                       download URL to PATH (PATH may contain spaces)
  URL                            name the file after the URL's last path segment
  {\"url\": \"...\", \"path\": \"...\", \"size\": 123, \"sha256\": \"...\", \"headers\": {\"K\": \"V\"}}
                                 checksums: md5, sha1, sha256, sha512 (each given is verified)
  {\"urls\": [\"...\", \"...\"], ...}  mirrors, tried in order when one fails
  # comment                      blank lines and comments are ignored

Exit status: 0 all downloaded, unchanged or skipped, 1 some entry failed, 2 usage error,
130/143 interrupted (partial files are kept and resumed by the next run).
--check: 0 every entry ok, 1 some entry missing, mismatch or failed.

Defaults: options are read first from a config file, one long option per line
(`jobs = 8`, or `insecure` for a flag, `#` comments): --config FILE, else
$FETCH_CONFIG, else $XDG_CONFIG_HOME/fetch/config, else ~/.config/fetch/config.
Then from FETCH_* variables (FETCH_JOBS=8, FETCH_INSECURE=1). The command line
wins over both, and --no-config ignores both.

Examples:
  fetch urls.txt                              download into the current directory
  fetch -j 32 --dir /data urls.txt            32 at once, into /data
  generate-manifest | fetch -q -H @auth.txt   from a pipe, quiet, headers from a file
  fetch --dry-run urls.txt                    check a manifest without downloading
  fetch --check --checksums SHA256SUMS urls.txt  verify the files on disk, no download
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

    /// Ask the server whether an existing destination changed (a conditional GET with the
    /// ETag or Last-Modified stored with the file, else its mtime): unchanged (304) is
    /// left as it is, a new version replaces it once complete.
    #[arg(long, conflicts_with = "overwrite", help_heading = "Destinations")]
    pub refresh: bool,

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

    /// Read bodies at most this fast, in bytes per second for the whole run, shared fairly by
    /// all transfers: 500K, 10M. Headers are not counted.
    #[arg(long, value_name = "RATE", help_heading = "Limits")]
    pub limit_rate: Option<ByteSize>,

    /// Fail (and retry, resuming) an attempt whose body arrives slower than this many bytes per
    /// second for --speed-time: 1K, 100K. 0 turns it off.
    #[arg(long, value_name = "RATE", help_heading = "Limits")]
    pub speed_limit: Option<ByteSize>,

    /// How long an attempt may stay below --speed-limit [default: 30s; alone, it means
    /// --speed-limit 1].
    #[arg(long, value_name = "DURATION", value_parser = timeout, help_heading = "Limits")]
    pub speed_time: Option<HumanDuration>,

    /// Refuse files larger than SIZE: before writing when the server or manifest gives the
    /// length, else as soon as the body passes it. Such an entry fails, without retries.
    #[arg(long, value_name = "SIZE", help_heading = "Limits")]
    pub max_filesize: Option<ByteSize>,

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

    /// Verify the destinations instead of downloading: compare each with the manifest's size
    /// and checksums, making no request. Each entry is ok, missing or mismatch; exit 1 unless
    /// all are ok. Hashes on as many threads as there are CPUs (at most --jobs).
    #[arg(long, conflicts_with_all = ["dry_run", "overwrite", "refresh"], help_heading = "Verification")]
    pub check: bool,

    /// A checksum file: sha256sum, sha512sum, sha1sum or md5sum output (`HEX  NAME`) or BSD
    /// tags (`SHA256 (NAME) = HEX`). Each NAME's digest applies to the entry whose path is
    /// NAME (a leading ./ aside); names no entry has are passed over. Repeatable.
    #[arg(long = "checksums", value_name = "FILE", action = ArgAction::Append,
          help_heading = "Verification")]
    pub checksums: Vec<PathBuf>,

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

    /// Trust only the certificate authorities in FILE (a PEM bundle), not the system's, as
    /// curl's --cacert does.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub cacert: Option<PathBuf>,

    /// Trust the certificate authorities in FILE (a PEM bundle) as well as the system's.
    #[arg(long, value_name = "FILE", conflicts_with = "cacert", help_heading = "TLS")]
    pub cacert_add: Option<PathBuf>,

    /// Client certificate (PEM) for servers that ask for one (mTLS); its key may follow it in
    /// the same file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (PEM, not encrypted).
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TLS")]
    pub key: Option<PathBuf>,

    /// Connect over IPv4 only.
    #[arg(short = '4', long, conflicts_with = "ipv6", help_heading = "Network")]
    pub ipv4: bool,

    /// Connect over IPv6 only.
    #[arg(short = '6', long, help_heading = "Network")]
    pub ipv6: bool,

    /// Send each host the login and password that ~/.netrc ($NETRC if set) gives for it.
    #[arg(long, help_heading = "Credentials")]
    pub netrc: bool,

    /// Send each host the login and password that FILE, a netrc file, gives for it.
    #[arg(long, value_name = "FILE", conflicts_with = "netrc", help_heading = "Credentials")]
    pub netrc_file: Option<PathBuf>,

    /// Add a header to the requests to HOST (a host name, or host:port), and to no other host,
    /// redirects included: 'Name: Value', or @FILE for one header per line.
    // Raw, as -H: validated in config, never quoted by clap.
    #[arg(long = "header-for", num_args = 2, value_names = ["HOST", "HEADER"],
          action = ArgAction::Append, value_parser = clap::value_parser!(OsString),
          allow_hyphen_values = true, help_heading = "Credentials")]
    pub host_headers: Vec<OsString>,

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

    /// Read option defaults from FILE instead of $FETCH_CONFIG or
    /// $XDG_CONFIG_HOME/fetch/config (~/.config/fetch/config); FILE must exist.
    #[arg(long, value_name = "FILE", help_heading = "Defaults")]
    pub config: Option<PathBuf>,

    /// Ignore the config file and every FETCH_* variable: only the command line counts.
    #[arg(long, conflicts_with = "config", help_heading = "Defaults")]
    pub no_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): fetch manpage > ~/.local/share/man/man1/fetch.1
    Manpage,
}

/// `--progress`: what each mode does is in the option's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
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

#[cfg(test)]
mod tests {
    use super::*;

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
