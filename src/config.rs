//! The validated run configuration, built once from the [`Cli`]. Everything
//! that can make the command line unusable (an unreadable manifest or header
//! file, an unusable `--dir`, a terminal on stdin) is found here, before any
//! request, and becomes exit status 2. Nothing downstream sees clap types.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::cli::{Cli, HeaderArg, HeaderLine, ProgressMode};
use crate::credentials::{self, Credentials, HostPattern, NetrcError};
use crate::dest::{DestTree, create_dirs};
use crate::manifest::Source;
use crate::retry::RetryPolicy;
use crate::shard::Shard;
use crate::sums::{Sums, SumsError};
use crate::tls::{Tls, TlsError, TlsFiles};

#[derive(Debug)]
pub struct Config {
    pub sources: Vec<Source>,
    pub tree: DestTree,
    pub overwrite: bool,
    /// `--refresh`: existing destinations get a conditional request.
    pub refresh: bool,
    pub jobs: usize,
    pub per_host: Option<usize>,
    /// None when `--max-connections-per-file 1` turns splitting off.
    pub split: Option<SplitPolicy>,
    pub retry: RetryPolicy,
    /// `--host-timeout`, `--max-rate`.
    pub host_timeout: Duration,
    pub max_rate: Option<f64>,
    /// `--limit-rate`, bytes per second for the whole run.
    pub limit_rate: Option<u64>,
    /// `--speed-limit` and `--speed-time`.
    pub speed_floor: Option<SpeedFloor>,
    /// `--max-filesize`, bytes.
    pub max_filesize: Option<u64>,
    pub resume: bool,
    /// Files get the server's Last-Modified as their mtime.
    pub remote_time: bool,
    /// `--check`: compare destinations with the manifest, no request.
    pub check: bool,
    /// `--checksums` files, read.
    pub sums: Arc<Sums>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `-H` headers, every value marked sensitive.
    pub headers: HeaderMap,
    pub user_agent: String,
    pub insecure: bool,
    /// `--cacert`, `--cert`, `--key`: read and checked.
    pub tls: Tls,
    /// `-4`/`-6`: the unspecified address of that family, to bind to.
    pub local_address: Option<std::net::IpAddr>,
    /// `--netrc`, `--header-for`.
    pub credentials: Credentials,
    pub verbosity: Verbosity,
    pub display: Display,
    pub report: Option<PathBuf>,
    pub dry_run: bool,
    pub shard: Option<Shard>,
}

/// When and how widely to split (`--split-size`,
/// `--max-connections-per-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPolicy {
    pub min_size: u64,
    pub connections: usize,
}

/// `--speed-limit RATE --speed-time TIME`: an attempt whose body brings
/// less than `rate` bytes per second for `time` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeedFloor {
    /// Bytes per second, at least 1.
    pub rate: u64,
    pub time: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Failures and the summary only.
    Quiet,
    /// One line per finished entry.
    Normal,
    /// Also each attempt and retry.
    Verbose,
}

impl Verbosity {
    pub fn from_flags(quiet: bool, verbose: bool) -> Verbosity {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, true) => Verbosity::Verbose,
            (false, false) => Verbosity::Normal,
        }
    }
}

/// How progress is shown, after `auto` has been decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Log,
    /// Bars; `forced` draws them even when stderr is not a terminal.
    Bar {
        forced: bool,
    },
    None,
}

/// A command line that cannot run: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no manifest given and standard input is a terminal\n\nUsage: fetch [OPTIONS] [MANIFEST]...\n       generate-manifest | fetch [OPTIONS]\n\nFor more information, try '--help'."
    )]
    StdinIsTerminal,
    #[error("cannot read manifest {}: {source}", crate::redact::path(path))]
    Manifest { path: PathBuf, source: io::Error },
    #[error("-H #{number}: {reason}")]
    Header { number: usize, reason: String },
    #[error("more than {MAX_HEADERS} headers given with -H")]
    TooManyHeaders,
    #[error("the -H headers add up to more than {} KiB", MAX_HEADER_BYTES / 1024)]
    HeadersTooLarge,
    #[error(
        "{0} is a URL, not a manifest file; to download one URL, give it as a manifest line: echo URL | fetch"
    )]
    UrlAsManifest(String),
    #[error("cannot read header file {}: {source}", path.display())]
    HeaderFile { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {reason}", path.display())]
    HeaderFileLine { path: PathBuf, line: usize, reason: String },
    #[error("--dir {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("--retry-delay ({0:?}) is longer than --retry-max-delay ({1:?})")]
    RetryDelays(Duration, Duration),
    #[error("standard input ('-') is given as a manifest more than once")]
    StdinTwice,
    #[error("--limit-rate 0: nothing could ever be downloaded")]
    ZeroRate,
    #[error(
        "--speed-limit ({0} bytes/s) is not below --limit-rate ({1} bytes/s): every transfer would be failed as too slow"
    )]
    FloorOverRate(u64, u64),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Netrc(#[from] NetrcError),
    #[error("--header-for #{number}: {reason}")]
    HostHeader { number: usize, reason: String },
    #[error(transparent)]
    Sums(#[from] SumsError),
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let sources = open_sources(&cli.manifests)?;
        let headers = read_headers(&cli.headers)?;
        let credentials = read_credentials(&cli)?;
        let tls = crate::tls::load(&TlsFiles::of(&cli))?;
        let sums = Arc::new(Sums::read(&cli.checksums)?);
        // --check reads and changes nothing: --dir is not made or tested.
        let read_only = cli.dry_run || cli.check;
        if cli.retry_delay.0 > cli.retry_max_delay.0 {
            return Err(ConfigError::RetryDelays(cli.retry_delay.0, cli.retry_max_delay.0));
        }
        let tree = dest_tree(&cli, read_only)?;
        let verbosity = Verbosity::from_flags(cli.quiet, cli.verbose);
        let (limit_rate, speed_floor) = body_rates(&cli)?;
        Ok(Config {
            sources,
            tree,
            overwrite: cli.overwrite,
            refresh: cli.refresh,
            jobs: cli.jobs as usize,
            per_host: cli.per_host.map(|n| n as usize),
            split: (cli.max_connections_per_file > 1).then(|| SplitPolicy {
                min_size: cli.split_size.0.max(1),
                connections: cli.max_connections_per_file as usize,
            }),
            retry: RetryPolicy {
                retries: cli.retries,
                delay: cli.retry_delay.0,
                max_delay: cli.retry_max_delay.0,
            },
            host_timeout: cli.host_timeout.0,
            max_rate: cli.max_rate,
            limit_rate,
            speed_floor,
            max_filesize: cli.max_filesize.map(|size| size.0),
            resume: !cli.no_resume,
            remote_time: !cli.no_remote_time,
            check: cli.check,
            sums,
            connect_timeout: cli.connect_timeout.0,
            read_timeout: cli.read_timeout.0,
            headers,
            user_agent: cli.user_agent,
            insecure: cli.insecure,
            tls,
            local_address: local_address(cli.ipv4, cli.ipv6),
            credentials,
            verbosity,
            display: display(cli.progress, verbosity),
            report: cli.report,
            dry_run: cli.dry_run,
            shard: cli.shard,
        })
    }
}

/// The run's destination tree: `--dir` made if missing (unless the run
/// only reads), checked writable once, and the run's own files protected.
fn dest_tree(cli: &Cli, read_only: bool) -> Result<DestTree, ConfigError> {
    let dir_error = |source| ConfigError::Dir { path: cli.dir.clone(), source };
    if read_only && !cli.dir.exists() {
        // A dry run changes nothing, not even by creating --dir.
        DestTree::planned(cli.dir.clone(), cli.absolute_paths).map_err(dir_error)
    } else {
        // Like wget -P and curl --create-dirs: a missing --dir is created.
        let not_a_directory = || dir_error(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        let made = match create_dirs(&cli.dir) {
            // A file where --dir or a directory above it should be.
            Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory) => {
                return Err(not_a_directory());
            }
            made => made.map_err(dir_error)?,
        };
        if !cli.dir.is_dir() {
            return Err(not_a_directory());
        }
        // No destination may overwrite the run's own files.
        let report = cli.report.iter().map(|path| (path.clone(), "--report file"));
        let manifests =
            cli.manifests.iter().filter(|p| p.as_os_str() != "-").map(|p| (p.clone(), "manifest"));
        let protected: Vec<_> = report.chain(manifests).collect();
        let tree = DestTree::new(cli.dir.clone(), cli.absolute_paths, made).map_err(dir_error)?;
        // One message now, not one failure per entry. With -P the
        // manifest may not write to --dir at all.
        if !read_only && !cli.absolute_paths {
            tree.check_writable().map_err(dir_error)?;
        }
        Ok(tree.protecting(&protected))
    }
}

/// The longest `--speed-time` window.
const MAX_SPEED_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// `--limit-rate`, and the floor of `--speed-limit`/`--speed-time`: as
/// curl's `-Y`/`-y`, a speed time alone means a floor of 1 byte/s, 30 s by
/// default, and a speed limit of 0 is none. A floor at or over the rate
/// limit would fail every transfer that waits for the throttle, and is
/// refused (the floor also leaves out time spent waiting for it).
fn body_rates(cli: &Cli) -> Result<(Option<u64>, Option<SpeedFloor>), ConfigError> {
    let limit_rate = cli.limit_rate.map(|rate| rate.0);
    if limit_rate == Some(0) {
        return Err(ConfigError::ZeroRate);
    }
    let rate = match (cli.speed_limit, cli.speed_time) {
        (Some(limit), _) => limit.0,
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    // A window longer than a year never ends in practice; capped, it
    // cannot overflow the clock either.
    let time = cli.speed_time.map_or(Duration::from_secs(30), |t| t.0).min(MAX_SPEED_TIME);
    let floor = (rate > 0).then_some(SpeedFloor { rate, time });
    if let (Some(floor), Some(limit)) = (floor, limit_rate)
        && floor.rate >= limit
    {
        return Err(ConfigError::FloorOverRate(floor.rate, limit));
    }
    Ok((limit_rate, floor))
}

/// Decide `--progress auto`: bars for a person at a terminal, plain lines
/// for logs and cron mail. `-q` asks for failures only, so no bars. (Colors
/// follow the terminal and NO_COLOR through the `console` crate.)
fn display(mode: ProgressMode, verbosity: Verbosity) -> Display {
    let terminal = io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
    match mode {
        ProgressMode::Auto if terminal && verbosity != Verbosity::Quiet => Display::Bar { forced: false },
        ProgressMode::Auto | ProgressMode::Log => Display::Log,
        ProgressMode::Bar => Display::Bar { forced: !terminal },
        ProgressMode::None => Display::None,
    }
}

fn open_sources(paths: &[PathBuf]) -> Result<Vec<Source>, ConfigError> {
    if paths.is_empty() {
        if io::stdin().is_terminal() {
            return Err(ConfigError::StdinIsTerminal);
        }
        return Ok(vec![Source::stdin()]);
    }
    let mut saw_stdin = false;
    paths
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                if std::mem::replace(&mut saw_stdin, true) {
                    return Err(ConfigError::StdinTwice);
                }
                return Ok(Source::stdin());
            }
            Source::open(path).map_err(|source| {
                // `fetch https://host/file`: no such file, and a scheme (RFC 3986 3.1).
                let text = path.to_string_lossy();
                let scheme = text.split_once("://").map_or("", |(scheme, _)| scheme);
                if source.kind() == io::ErrorKind::NotFound
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                {
                    return ConfigError::UrlAsManifest(crate::redact::url_str(&text));
                }
                ConfigError::Manifest { path: path.clone(), source }
            })
        })
        .collect()
}

/// `-4`/`-6`: the unspecified address of that family. Bound to it, hyper
/// connects only to that family's addresses of a host.
fn local_address(ipv4: bool, ipv6: bool) -> Option<std::net::IpAddr> {
    match (ipv4, ipv6) {
        (true, _) => Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
        (_, true) => Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
        _ => None,
    }
}

/// `--netrc`/`--netrc-file` and `--header-for`. A `--header-for` header
/// is read as a `-H` one (`@FILE` too); its errors are numbered by the
/// `--header-for` they are in.
fn read_credentials(cli: &Cli) -> Result<Credentials, ConfigError> {
    let netrc = match (&cli.netrc_file, cli.netrc) {
        (Some(path), _) => Some(credentials::read_netrc(path)?),
        (None, true) => Some(credentials::read_netrc(&credentials::default_netrc()?)?),
        (None, false) => None,
    };
    let mut headers = Vec::new();
    for (i, pair) in cli.host_headers.chunks(2).enumerate() {
        let number = i + 1;
        let [host, header] = pair else { unreachable!("clap takes two values") };
        let host = host.to_str().ok_or_else(|| "HOST is not valid UTF-8".to_owned());
        let host =
            host.and_then(HostPattern::parse).map_err(|reason| ConfigError::HostHeader { number, reason })?;
        let map = read_headers(std::slice::from_ref(header)).map_err(|e| match e {
            ConfigError::Header { reason, .. } => ConfigError::HostHeader { number, reason },
            other => other,
        })?;
        headers.push((host, map));
    }
    Ok(Credentials::new(netrc, headers))
}

/// At most this many `-H` headers in all, files included. Beyond it,
/// `HeaderMap` panics (at 24,576), and servers refuse far fewer (Apache
/// takes 100 fields by default).
pub const MAX_HEADERS: usize = 1000;
/// At most this many bytes of `-H` names and values in all: nginx and
/// Apache refuse a request whose header lines pass 8 KiB to 32 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A header file may be this large, comments included: `-H @/dev/zero`
/// must not read forever.
const MAX_HEADER_FILE: u64 = 1024 * 1024;

/// The `-H` headers, every value marked sensitive. No error quotes a
/// header: it names the `-H` by its position, or the file and line.
fn read_headers(args: &[OsString]) -> Result<HeaderMap, ConfigError> {
    let mut lines = Vec::new();
    for (i, raw) in args.iter().enumerate() {
        let arg = HeaderArg::parse(raw).map_err(|reason| ConfigError::Header { number: i + 1, reason })?;
        match arg {
            HeaderArg::Line(line) => lines.push(line),
            HeaderArg::File(path) => {
                let file_error = |source| ConfigError::HeaderFile { path: path.clone(), source };
                let mut text = String::new();
                std::fs::File::open(&path)
                    .and_then(|file| file.take(MAX_HEADER_FILE + 1).read_to_string(&mut text))
                    .map_err(file_error)?;
                if text.len() as u64 > MAX_HEADER_FILE {
                    return Err(file_error(io::Error::other(format!(
                        "larger than {} KiB",
                        MAX_HEADER_FILE / 1024
                    ))));
                }
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let parsed = line.parse::<HeaderLine>().map_err(|reason| {
                        ConfigError::HeaderFileLine { path: path.clone(), line: i + 1, reason }
                    })?;
                    lines.push(parsed);
                }
            }
        }
        if lines.len() > MAX_HEADERS {
            return Err(ConfigError::TooManyHeaders);
        }
    }
    if lines.iter().map(|l| l.name.len() + l.value.len()).sum::<usize>() > MAX_HEADER_BYTES {
        return Err(ConfigError::HeadersTooLarge);
    }
    let mut map = HeaderMap::new();
    for line in lines {
        // Validated by HeaderLine's parser.
        let name = HeaderName::from_bytes(line.name.as_bytes()).expect("validated header name");
        let mut value = HeaderValue::from_str(&line.value).expect("validated header value");
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn body_rates_follow_curl_and_refuse_a_floor_over_the_limit() {
        let secs = Duration::from_secs;
        let floor = |rate, time| Some(SpeedFloor { rate, time });
        type Rates = Option<(Option<u64>, Option<SpeedFloor>)>;
        let cases: [(&[&str], Rates); 8] = [
            (&[], Some((None, None))),
            (&["--limit-rate", "1M"], Some((Some(1 << 20), None))),
            (&["--speed-limit", "1K"], Some((None, floor(1024, secs(30))))),
            (&["--speed-limit", "1K", "--speed-time", "2s"], Some((None, floor(1024, secs(2))))),
            // curl -y alone: 1 byte per second.
            (&["--speed-time", "5s"], Some((None, floor(1, secs(5))))),
            (&["--speed-limit", "0", "--speed-time", "5s"], Some((None, None))),
            (&["--speed-limit", "1M", "--limit-rate", "1M"], None),
            (&["--limit-rate", "0"], None),
        ];
        for (args, want) in cases {
            let cli = Cli::try_parse_from(["fetch"].iter().chain(args)).unwrap();
            assert_eq!(body_rates(&cli).ok(), want, "{args:?}");
        }
        let cli = Cli::try_parse_from(["fetch", "--speed-time", "2560000000000000h"]).unwrap();
        assert_eq!(body_rates(&cli).unwrap().1.unwrap().time, MAX_SPEED_TIME);
    }
}
