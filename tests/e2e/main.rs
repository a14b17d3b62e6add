//! End-to-end tests: the built `fetch` binary against HTTP servers started
//! inside this process (see `server.rs`). Every wait is bounded.

mod check;
mod checksums;
mod concurrency;
mod confine;
mod core;
mod credentials;
mod defaults;
mod host_output;
mod hostile_output;
mod hosts;
mod limits;
mod manifest;
mod mirrors;
mod network;
mod output;
mod refresh;
mod resilience;
mod server;
mod split;
mod tls;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

pub use server::host::refusing_addr;
pub use server::{Route, Server, content};

const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// A `fetch` command run in `dir`, with no proxy from the environment.
pub fn fetch(dir: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("fetch").unwrap();
    cmd.current_dir(dir).timeout(Duration::from_secs(60));
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let (config_home, fetch_vars) = no_defaults();
    cmd.env("XDG_CONFIG_HOME", config_home);
    for var in fetch_vars {
        cmd.env_remove(var);
    }
    cmd
}

/// An empty XDG_CONFIG_HOME and the FETCH_* variables to remove, so that
/// no test reads the developer's own defaults.
fn no_defaults() -> (PathBuf, Vec<std::ffi::OsString>) {
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-config-home");
    std::fs::create_dir_all(&empty).unwrap();
    let vars = std::env::vars_os().map(|(k, _)| k);
    (empty, vars.filter(|k| k.to_string_lossy().starts_with("FETCH_")).collect())
}

/// The same for a child whose stdin the test feeds by hand.
pub fn fetch_std(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("fetch"));
    cmd.current_dir(dir);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let (config_home, fetch_vars) = no_defaults();
    cmd.env("XDG_CONFIG_HOME", config_home);
    for var in fetch_vars {
        cmd.env_remove(var);
    }
    cmd
}

/// Output of a finished run, as text.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut assert_cmd::Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file below `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The records of a `--report` file, by destination path.
pub fn report(path: &Path) -> std::collections::HashMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (record["path"].as_str().unwrap().to_owned(), record)
        })
        .collect()
}

/// Poll `cond` every 10 ms for at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Wait at most a minute for `child` to exit (killing it after that), and
/// collect what it printed. Its pipes are read meanwhile, so a child that
/// prints more than a pipe holds does not block until it is killed.
pub fn finish(mut child: std::process::Child) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    if !wait_until(Duration::from_secs(60), || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}
