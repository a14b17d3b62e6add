//! Option defaults from a config file and `FETCH_*` environment variables,
//! turned into arguments placed in front of the command line's own, so that
//! clap parses and validates one command line as usual.
//!
//! Precedence: command line > environment > config file. An option given at
//! a higher level hides the same option at the levels below, and so does an
//! option it conflicts with (`verbose` on the command line hides `quiet` in
//! the file); `-H` headers are the exception, and add up from every level.
//! The names come from clap's definition of [`Cli`], so that every long
//! option works in the file (`jobs = 8`) and as a variable (`FETCH_JOBS=8`)
//! with no list to keep up to date.
//!
//! Nothing here quotes a value from the file or the environment: it may be a
//! header, which is a secret. Errors name the file and line, or the variable,
//! and the option.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory};

use crate::cli::{Cli, habit};

/// Options that are not defaults: `config` and `no-config` choose where
/// defaults come from (a file that names another would be an include, and
/// one that turns itself off is no file), and `help` and `version` are
/// actions rather than settings.
const COMMAND_LINE_ONLY: [&str; 4] = ["config", "no-config", "help", "version"];

/// A config file holds options, one per line; anything larger is a mistake
/// (a manifest given as --config), read no further.
const MAX_FILE: u64 = 1 << 20;

/// Why the defaults could not be read (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {} is larger than 1 MiB; it holds options, one per line", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}:{line}: {reason}", path.display())]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("{var}: {reason}")]
    Var { var: String, reason: String },
}

/// One option from one line or variable, as arguments for clap. No
/// arguments stands for a flag turned off (`FETCH_INSECURE=0`): it hides
/// the flag below it and adds nothing.
#[derive(Debug)]
struct Setting {
    id: String,
    args: Vec<OsString>,
    /// Where it came from: a line number, or a variable's name.
    origin: String,
}

/// `args` (a whole command line, program name first) with the defaults
/// from the config file and the environment in front of the command
/// line's own arguments. Unchanged when the command line does not parse
/// on its own (clap's error tells why), has a subcommand, or says
/// `--no-config`.
pub fn with_defaults(args: &[OsString]) -> Result<Vec<OsString>, DefaultsError> {
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    expand(args, &env, read_file)
}

/// [`with_defaults`] with the environment and the file system passed in.
fn expand(
    args: &[OsString],
    env: &[(OsString, OsString)],
    read: impl FnOnce(&Path, bool) -> Result<Option<Vec<u8>>, DefaultsError>,
) -> Result<Vec<OsString>, DefaultsError> {
    let cmd = Cli::command();
    let Some(matches) = command_line(&cmd, args) else { return Ok(args.to_vec()) };
    if matches.subcommand().is_some() || matches.get_flag("no_config") {
        return Ok(args.to_vec());
    }
    let file = config_file(&cmd, &matches, env, read)?;
    let vars = env_settings(&cmd, env).map_err(|(var, reason)| DefaultsError::Var { var, reason })?;
    // The command line's own options, to hide what they replace: their
    // arguments stay where they are, and non-empty `args` stands for "on".
    let given: Vec<Setting> = cmd
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| Setting {
            id: arg.get_id().to_string(),
            args: vec![OsString::new()],
            origin: String::new(),
        })
        .collect();

    let mut out: Vec<OsString> = args.first().cloned().into_iter().collect();
    let above_file: Vec<&Setting> = vars.iter().chain(&given).collect();
    let above_vars: Vec<&Setting> = given.iter().collect();
    for (settings, above) in [(&file, above_file), (&vars, above_vars)] {
        for setting in settings.iter().filter(|s| !above.iter().any(|a| hides(&cmd, a, s))) {
            out.extend(setting.args.iter().cloned());
        }
    }
    out.extend(args.iter().skip(1).cloned());
    Ok(out)
}

/// The settings of the config file: the one --config or FETCH_CONFIG
/// names (which must exist), else the default one, if it exists.
fn config_file(
    cmd: &clap::Command,
    matches: &ArgMatches,
    env: &[(OsString, OsString)],
    read: impl FnOnce(&Path, bool) -> Result<Option<Vec<u8>>, DefaultsError>,
) -> Result<Vec<Setting>, DefaultsError> {
    let explicit = matches.get_one::<PathBuf>("config").cloned();
    let explicit = explicit.or_else(|| var(env, "FETCH_CONFIG").map(PathBuf::from));
    let required = explicit.is_some();
    let Some(path) = explicit.or_else(|| default_path(var(env, "XDG_CONFIG_HOME"), var(env, "HOME"))) else {
        return Ok(Vec::new());
    };
    let Some(text) = read(&path, required)? else { return Ok(Vec::new()) };
    file_settings(cmd, &text).map_err(|(line, reason)| DefaultsError::Line { path, line, reason })
}

/// The command line parsed on its own, or `None` when it has an error of
/// its own (help and version included). A missing required option may be
/// in the defaults, so that error alone does not count.
fn command_line(cmd: &clap::Command, args: &[OsString]) -> Option<ArgMatches> {
    match cmd.clone().try_get_matches_from(args) {
        Ok(matches) => Some(matches),
        Err(err) if err.kind() == ErrorKind::MissingRequiredArgument => {
            cmd.clone().ignore_errors(true).try_get_matches_from(args).ok()
        }
        Err(_) => None,
    }
}

/// Whether `above`, given at a higher level, hides `below`: the same
/// option (headers add up instead), or one that conflicts with it.
fn hides(cmd: &clap::Command, above: &Setting, below: &Setting) -> bool {
    let appends = matches!(arg(cmd, &below.id).map(Arg::get_action), Some(ArgAction::Append));
    if above.id == below.id {
        return !appends || above.args.is_empty();
    }
    !above.args.is_empty() && conflict(cmd, &above.id, &below.id)
}

fn conflict(cmd: &clap::Command, a: &str, b: &str) -> bool {
    let one_way = |x: &str, y: &str| {
        arg(cmd, x).is_some_and(|x| cmd.get_arg_conflicts_with(x).iter().any(|c| c.get_id() == y))
    };
    one_way(a, b) || one_way(b, a)
}

fn arg<'c>(cmd: &'c clap::Command, id: &str) -> Option<&'c Arg> {
    cmd.get_arguments().find(|a| a.get_id() == id)
}

/// The option a config line or variable may name: a long option that is
/// not [`COMMAND_LINE_ONLY`].
fn option(cmd: &clap::Command, name_matches: impl Fn(&str) -> bool) -> Option<&Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long().is_some_and(|long| !COMMAND_LINE_ONLY.contains(&long) && name_matches(long)))
}

fn var<'e>(env: &'e [(OsString, OsString)], name: &str) -> Option<&'e OsStr> {
    env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_os_str()).filter(|v| !v.is_empty())
}

/// `$XDG_CONFIG_HOME/fetch/config`, else `$HOME/.config/fetch/config`. A
/// relative XDG_CONFIG_HOME is ignored, as the XDG base directory
/// specification says.
fn default_path(xdg: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    match xdg.map(Path::new) {
        Some(dir) if dir.is_absolute() => Some(dir.join("fetch/config")),
        _ => home.map(|home| Path::new(home).join(".config/fetch/config")),
    }
}

/// The file's bytes; `None` when it does not exist and was not named
/// explicitly (by --config or FETCH_CONFIG).
fn read_file(path: &Path, required: bool) -> Result<Option<Vec<u8>>, DefaultsError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => return Err(DefaultsError::Read { path: path.to_owned(), source }),
    };
    let mut text = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|source| DefaultsError::Read { path: path.to_owned(), source })?;
    if text.len() as u64 > MAX_FILE {
        return Err(DefaultsError::TooLarge { path: path.to_owned() });
    }
    Ok(Some(text))
}

/// The settings of a config file: `name = value` or a flag's `name` alone
/// per line, `#` comments and blank lines; an error is a line number and
/// a reason.
fn file_settings(cmd: &clap::Command, text: &[u8]) -> Result<Vec<Setting>, (usize, String)> {
    let mut settings: Vec<Setting> = Vec::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let Some(setting) = file_line(cmd, line.trim_ascii(), number).map_err(|e| (number, e))? else {
            continue;
        };
        same_level(cmd, &settings, &setting, |s| format!("line {}", s.origin)).map_err(|e| (number, e))?;
        settings.push(setting);
    }
    Ok(settings)
}

fn file_line(cmd: &clap::Command, line: &[u8], number: usize) -> Result<Option<Setting>, String> {
    if line.is_empty() || line.starts_with(b"#") {
        return Ok(None);
    }
    let (name, value) = match line.iter().position(|&b| b == b'=') {
        Some(at) => (line[..at].trim_ascii(), Some(line[at + 1..].trim_ascii())),
        None => (line, None),
    };
    let name = std::str::from_utf8(name).unwrap_or("");
    let Some(arg) = option(cmd, |long| long == name) else {
        return Err(unknown_name(cmd, name, value.is_none()));
    };
    let long = arg.get_long().unwrap_or_default();
    // An option whose value is optional (`num_args(0..=1)`) may stand alone.
    let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    let args = match (arg.get_action().takes_values(), value) {
        (false, Some(_)) => return Err(format!("{long} is a flag and takes no value: write `{long}` alone")),
        (true, Some(value)) => option_args(arg, OsStr::from_bytes(value))?,
        (true, None) if !value_optional => {
            return Err(format!("{long} needs a value: write `{long} = VALUE`"));
        }
        (_, None) => vec![OsString::from(format!("--{long}"))],
    };
    check_value(cmd, long, &args)?;
    Ok(Some(Setting { id: arg.get_id().to_string(), args, origin: number.to_string() }))
}

/// Why a config line names no option, quoting the name only when it is
/// one that [`habit`] knows (anything else may be a pasted secret).
fn unknown_name(cmd: &clap::Command, name: &str, bare: bool) -> String {
    let dashless = name.trim_start_matches('-');
    if dashless != name && option(cmd, |long| long == dashless).is_some() {
        return format!("write the option without dashes, as `{dashless} = VALUE` or `{dashless}`");
    }
    if COMMAND_LINE_ONLY.contains(&name) {
        return format!("{name} works only on the command line");
    }
    if let Some(hint) = habit(&format!("--{dashless}")) {
        return format!("{dashless} is not an option of fetch: {hint}");
    }
    if bare && name.contains(':') {
        return "a header goes on a `header = Name: Value` line".to_owned();
    }
    "not an option of fetch: a line is `name = value` or a flag's `name`, with the long names of fetch --help"
        .to_owned()
}

/// The settings from `FETCH_*` variables, in the order of their names; an
/// error is a variable's name and a reason. Variables for no option are
/// ignored (other programs use FETCH_ names too), and so are empty ones.
fn env_settings(cmd: &clap::Command, env: &[(OsString, OsString)]) -> Result<Vec<Setting>, (String, String)> {
    let mut vars: Vec<(&str, &OsStr)> = env
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(name, value)| Some((name.to_str()?.strip_prefix("FETCH_")?, value.as_os_str())))
        .collect();
    vars.sort();
    let mut settings: Vec<Setting> = Vec::new();
    for (name, value) in vars {
        let var = format!("FETCH_{name}");
        if name == "NO_CONFIG" {
            return Err((var, "--no-config works only on the command line".to_owned()));
        }
        let Some(arg) = option(cmd, |long| env_name(long) == name) else { continue };
        let long = arg.get_long().unwrap_or_default();
        let args = match (arg.get_action().takes_values(), value.as_bytes()) {
            (false, b"1") => vec![OsString::from(format!("--{long}"))],
            (false, b"0") => Vec::new(),
            (false, _) => return Err((var, format!("--{long} is a flag: 1 turns it on, 0 off"))),
            (true, _) => option_args(arg, value).map_err(|e| (var.clone(), e))?,
        };
        check_value(cmd, long, &args).map_err(|e| (var.clone(), e))?;
        let setting = Setting { id: arg.get_id().to_string(), args, origin: var };
        same_level(cmd, &settings, &setting, |s| s.origin.clone())
            .map_err(|e| (setting.origin.clone(), e))?;
        settings.push(setting);
    }
    Ok(settings)
}

/// `FETCH_` + the long name in upper snake case, without the prefix.
fn env_name(long: &str) -> String {
    long.to_ascii_uppercase().replace('-', "_")
}

/// The arguments that give `arg` the `value` of a line or variable. An
/// option of two values (`header-for = HOST Name: Value`) takes them
/// split at the first white space, since one `--header-for=...` argument
/// would leave clap short of its second value.
fn option_args(arg: &Arg, value: &OsStr) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    if arg.get_num_args().is_none_or(|n| n.min_values() < 2) {
        return Ok(vec![long_with_value(long, value)]);
    }
    let bytes = value.as_bytes();
    let Some(at) = bytes.iter().position(u8::is_ascii_whitespace) else {
        let names: Vec<&str> = arg.get_value_names().unwrap_or_default().iter().map(|n| n.as_str()).collect();
        return Err(format!("{long} takes {}: write `{long} = {}`", names.len(), names.join(" ")));
    };
    let (first, rest) = (&bytes[..at], bytes[at..].trim_ascii_start());
    let (first, rest) = (OsStr::from_bytes(first).to_owned(), OsStr::from_bytes(rest).to_owned());
    Ok(vec![OsString::from(format!("--{long}")), first, rest])
}

fn long_with_value(long: &str, value: &OsStr) -> OsString {
    let mut arg = OsString::from(format!("--{long}="));
    arg.push(value);
    arg
}

/// Two settings at one level may not set one option twice (headers
/// aside) or set two that conflict: neither would win by position.
fn same_level(
    cmd: &clap::Command,
    earlier: &[Setting],
    new: &Setting,
    origin: impl Fn(&Setting) -> String,
) -> Result<(), String> {
    let long = |id: &str| arg(cmd, id).and_then(Arg::get_long).unwrap_or(id).to_owned();
    for old in earlier {
        if old.id == new.id && !matches!(arg(cmd, &new.id).map(Arg::get_action), Some(ArgAction::Append)) {
            return Err(format!("{} is already set by {}", long(&new.id), origin(old)));
        }
        if old.id != new.id && conflict(cmd, &old.id, &new.id) && !old.args.is_empty() && !new.args.is_empty()
        {
            return Err(format!("{} conflicts with {} set by {}", long(&new.id), long(&old.id), origin(old)));
        }
    }
    Ok(())
}

/// Let clap check the value alone, and say what is wrong without quoting
/// it. Errors that need the rest of the command line (a required option,
/// a conflict) are left to the parse of the whole.
fn check_value(cmd: &clap::Command, long: &str, args: &[OsString]) -> Result<(), String> {
    let line = std::iter::once(OsString::from("fetch")).chain(args.iter().cloned());
    let Err(err) = cmd.clone().try_get_matches_from(line) else { return Ok(()) };
    let value = args[0].to_string_lossy();
    let value = value.split_once('=').map_or("", |(_, v)| v);
    let mut reason = format!("invalid value for {long}");
    match err.kind() {
        ErrorKind::InvalidValue => {
            if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
                reason += &format!("; expected one of: {}", valid.join(", "));
            }
        }
        ErrorKind::ValueValidation => {
            let why = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
            if !why.is_empty() && !value.is_empty() && !why.contains(value) {
                reason += &format!(": {why}");
            }
        }
        ErrorKind::InvalidUtf8 => reason += ": not valid UTF-8",
        _ => return Ok(()),
    }
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The Cli that `cmdline` parses into with `file` as the config file
    /// (when there is one) and `env` as the environment.
    fn parsed(file: Option<&str>, env: &[(&str, &str)], cmdline: &[&str]) -> Result<Cli, String> {
        let args: Vec<OsString> =
            std::iter::once("fetch").chain(cmdline.iter().copied()).map(OsString::from).collect();
        let env: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let read = |_: &Path, required: bool| match file {
            Some(text) => Ok(Some(text.as_bytes().to_vec())),
            None if required => Err(DefaultsError::TooLarge { path: "required".into() }),
            None => Ok(None),
        };
        let env = [env, vec![("HOME".into(), "/home/u".into())]].concat();
        let args = expand(&args, &env, read).map_err(|e| e.to_string())?;
        Cli::try_parse_from(args).map_err(|e| e.to_string())
    }

    fn ok(file: Option<&str>, env: &[(&str, &str)], cmdline: &[&str]) -> Cli {
        parsed(file, env, cmdline).unwrap_or_else(|e| panic!("{file:?} {env:?} {cmdline:?}: {e}"))
    }

    #[test]
    fn command_line_over_environment_over_file() {
        let file = Some("# defaults\n\njobs = 4\ninsecure\n  report =  /var/log/fetch.jsonl  \n");
        assert_eq!(ok(None, &[], &[]).jobs, 16);
        let cli = ok(file, &[], &[]);
        assert_eq!((cli.jobs, cli.insecure), (4, true));
        assert_eq!(cli.report, Some(PathBuf::from("/var/log/fetch.jsonl")));
        let cli = ok(file, &[("FETCH_JOBS", "8"), ("FETCH_INSECURE", "0")], &[]);
        assert_eq!((cli.jobs, cli.insecure), (8, false));
        assert_eq!(ok(file, &[("FETCH_JOBS", "8")], &["-j", "12"]).jobs, 12);
        assert_eq!(ok(file, &[("FETCH_JOBS", "8")], &["--jobs=12", "m.txt"]).jobs, 12);
        assert!(ok(None, &[("FETCH_INSECURE", "1")], &[]).insecure);
        assert_eq!(ok(None, &[("FETCH_JOBS", "")], &[]).jobs, 16, "an empty variable is unset");
        let cli = ok(file, &[("FETCH_JOBS", "8")], &["--no-config", "m.txt"]);
        assert_eq!((cli.jobs, cli.insecure, cli.manifests.len()), (16, false, 1));
    }

    #[test]
    fn header_for_takes_its_host_and_header_from_one_line_or_variable() {
        let want = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let file = Some("header-for = a.example  Authorization: Bearer s1\n");
        assert_eq!(ok(file, &[], &[]).host_headers, want(&["a.example", "Authorization: Bearer s1"]));
        let env = [("FETCH_HEADER_FOR", "b.example:8443 X-Token: s2")];
        let cli = ok(file, &env, &["--header-for", "c", "X: 3"]);
        let all = ["a.example", "Authorization: Bearer s1", "b.example:8443", "X-Token: s2", "c", "X: 3"];
        assert_eq!(cli.host_headers, want(&all));
        let err = parsed(Some("header-for = s3cret"), &[], &[]).unwrap_err();
        assert!(err.contains(":1: header-for takes 2: write `header-for = HOST HEADER`"), "{err}");
        let err = parsed(None, &[("FETCH_HEADER_FOR", "s3cret")], &[]).unwrap_err();
        assert!(err.starts_with("FETCH_HEADER_FOR: header-for takes 2") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn check_and_refresh_conflict_and_a_check_hides_a_refresh_default() {
        let err = parsed(None, &[], &["--check", "--refresh", "m.txt"]).unwrap_err();
        assert!(err.contains("'--check' cannot be used with '--refresh'"), "{err}");
        let cli = ok(Some("refresh"), &[("FETCH_REFRESH", "1")], &["--check", "m.txt"]);
        assert!(cli.check && !cli.refresh);
    }

    #[test]
    fn a_conflicting_option_above_hides_the_one_below() {
        let cli = ok(Some("quiet"), &[], &["-v"]);
        assert!(cli.verbose && !cli.quiet);
        let cli = ok(Some("verbose"), &[("FETCH_QUIET", "1")], &[]);
        assert!(!cli.verbose && cli.quiet);
        let cli = ok(Some("verbose"), &[("FETCH_QUIET", "0")], &[]);
        assert!(cli.verbose && !cli.quiet, "a flag turned off hides only itself");
        assert!(
            parsed(Some("quiet\nverbose"), &[], &[])
                .unwrap_err()
                .contains(":2: verbose conflicts with quiet set by line 1")
        );
        let err = parsed(None, &[("FETCH_QUIET", "1"), ("FETCH_VERBOSE", "1")], &[]).unwrap_err();
        assert!(err.contains("FETCH_VERBOSE: verbose conflicts with quiet set by FETCH_QUIET"), "{err}");
    }

    #[test]
    fn headers_add_up_from_every_level() {
        let cli = ok(Some("header = A: 1\nheader = B: 2"), &[("FETCH_HEADER", "C: 3")], &["-H", "D: 4"]);
        assert_eq!(cli.headers, ["A: 1", "B: 2", "C: 3", "D: 4"]);
    }

    #[test]
    fn subcommands_help_and_errors_of_the_command_line_get_no_defaults() {
        for cmdline in [&["completions", "bash"][..], &["--help"], &["--version"], &["--frobnicate"]] {
            let args: Vec<OsString> =
                std::iter::once("fetch").chain(cmdline.iter().copied()).map(OsString::from).collect();
            let read = |_: &Path, _| Ok(Some(b"not an option".to_vec()));
            assert_eq!(expand(&args, &[], read).unwrap(), args);
        }
    }

    #[test]
    fn the_config_file_is_found() {
        let (abs, rel, home) = (Some(OsStr::new("/x")), Some(OsStr::new("x")), Some(OsStr::new("/h")));
        assert_eq!(default_path(abs, home), Some(PathBuf::from("/x/fetch/config")));
        assert_eq!(default_path(rel, home), Some(PathBuf::from("/h/.config/fetch/config")));
        assert_eq!(default_path(None, home), Some(PathBuf::from("/h/.config/fetch/config")));
        assert_eq!(default_path(None, None), None);
        // Named by --config or FETCH_CONFIG, the file must exist.
        assert!(parsed(None, &[], &["--config", "/nowhere"]).is_err());
        assert!(parsed(None, &[("FETCH_CONFIG", "/nowhere")], &[]).is_err());
        assert!(parsed(None, &[], &[]).is_ok());
    }

    #[test]
    fn bad_lines_are_named_and_their_values_never_quoted() {
        let cases = [
            ("jobs", ":1: jobs needs a value: write `jobs = VALUE`"),
            ("insecure = yes", ":1: insecure is a flag and takes no value"),
            ("jobs = 8\n\njobs = 9", ":3: jobs is already set by line 1"),
            ("--jobs = 8", ":1: write the option without dashes"),
            ("continue", ":1: continue is not an option of fetch: fetch always resumes"),
            ("config = /etc/x", ":1: config works only on the command line"),
            ("no-config", ":1: no-config works only on the command line"),
            ("help", ":1: help works only on the command line"),
            ("Authorization: Bearer SECRET", ":1: a header goes on a `header = Name: Value` line"),
            ("SECRET", ":1: not an option of fetch"),
            ("jobs = SECRET", ":1: invalid value for jobs"),
            ("jobs = 0", ":1: invalid value for jobs"),
            ("read-timeout = 0SECRET", ":1: invalid value for read-timeout"),
            ("read-timeout = 0", ":1: invalid value for read-timeout: a timeout must be at least 1ms"),
            ("progress = SECRET", ":1: invalid value for progress; expected one of: auto, bar, log, none"),
            ("user-agent = a\u{7f}SECRET", ":1: invalid value for user-agent"),
            ("# SECRET\nmanifests = SECRET", ":2: not an option of fetch"),
        ];
        for (text, want) in cases {
            let err = parsed(Some(text), &[], &[]).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("SECRET"), "{text:?}: {err}");
        }
    }

    /// An option others may add, whose value is optional, stands alone too.
    #[test]
    fn an_optional_value_may_be_left_out() {
        let cmd = clap::Command::new("fetch").arg(Arg::new("netrc").long("netrc").num_args(0..=1));
        let args = |text: &str| -> Vec<Vec<OsString>> {
            file_settings(&cmd, text.as_bytes()).unwrap().into_iter().map(|s| s.args).collect()
        };
        assert_eq!(args("netrc"), [["--netrc"]]);
        assert_eq!(args("netrc = ~/.netrc"), [["--netrc=~/.netrc"]]);
    }

    #[test]
    fn bad_variables_are_named_and_others_ignored() {
        let cases = [
            (("FETCH_INSECURE", "yes"), "FETCH_INSECURE: --insecure is a flag: 1 turns it on, 0 off"),
            (("FETCH_NO_CONFIG", "1"), "FETCH_NO_CONFIG: --no-config works only on the command line"),
            (("FETCH_PROGRESS", "SECRET"), "FETCH_PROGRESS: invalid value for progress"),
        ];
        for (var, want) in cases {
            let err = parsed(None, &[var], &[]).unwrap_err();
            assert!(err.contains(want) && !err.contains("SECRET"), "{var:?}: {err}");
        }
        for var in ["FETCH_DEPTH", "FETCH_VERSION", "FETCH_HELP", "fetch_jobs", "FETCHJOBS"] {
            assert_eq!(ok(None, &[(var, "3")], &[]).jobs, 16, "{var}");
        }
    }
}
