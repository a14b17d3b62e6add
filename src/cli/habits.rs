//! Options that curl, wget and aria2c users reach for, and what `fetch` does
//! instead: a one-line hint added to the argument parser's "unexpected
//! argument" error. Only option names are ever quoted back, never values
//! (a value may be a header, which is a secret).

use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::Cli;

/// The hint for an option `fetch` does not have, by its name as typed
/// (`-c`, `--continue`; any `=VALUE` is ignored), or `None` when it is
/// not a known habit.
pub fn habit(arg: &str) -> Option<&'static str> {
    let name = arg.split_once('=').map_or(arg, |(name, _)| name);
    let hint = match name {
        "-c" | "--continue" => "fetch always resumes partial files; --no-resume turns that off",
        "-i" | "--input-file" => "manifests are positional arguments: fetch FILE (or - for standard input)",
        "--retry" | "--tries" | "-t" | "--max-tries" => "the number of retries is --retries N",
        "-N" | "--timestamping" | "--conditional-get" | "-z" | "--time-cond" => {
            "a destination that exists is skipped; --refresh asks the server whether it changed"
        }
        "-O" | "-o" | "--output" | "--output-document" | "--out" | "--remote-name" => {
            "destinations come from the manifest: a line is URL PATH (or JSON with \"path\")"
        }
        "-s" => "curl's -s is -q/--quiet; aria2c's -s is --max-connections-per-file N",
        "-x" | "--max-connection-per-server" | "--split" => {
            "connections for one large file are --max-connections-per-file N (see --split-size)"
        }
        "--checksum" => {
            "checksums go in the manifest (\"sha256\", \"sha512\", \"sha1\", \"md5\") or in --checksums SHA256SUMS"
        }
        "-Z" | "--parallel" | "--parallel-max" | "--max-concurrent-downloads" => {
            "downloads run in parallel by default; -j N sets how many"
        }
        "--max-overall-download-limit" | "--max-download-limit" => "the bandwidth limit is --limit-rate RATE",
        "-k" => "curl's -k is --insecure; aria2c's -k is --split-size",
        "-R" | "--remote-time" => {
            "fetch sets the server's Last-Modified by default; --no-remote-time turns it off"
        }
        "-n" | "--netrc-optional" => {
            "fetch reads credentials from a netrc file with --netrc or --netrc-file FILE"
        }
        "-u" | "--user" | "--http-user" | "--http-password" | "--http-passwd" | "--password"
        | "--oauth2-bearer" => {
            "credentials go in a netrc file (--netrc-file FILE), the URL (https://user:password@host/) \
             or --header-for HOST 'Authorization: ...'"
        }
        "--directory-prefix" => "the destination directory is -d/--dir DIR",
        "-Y" | "-y" | "--lowest-speed-limit" => {
            "the low-speed limit is --speed-limit RATE --speed-time DURATION"
        }
        "-m" | "--max-time" | "--timeout" | "-T" => {
            "fetch has no total timeout: --connect-timeout and --read-timeout bound each attempt"
        }
        "-L" | "--location" => "redirects are always followed",
        "--silent" | "--no-verbose" => "-q/--quiet prints only failures and the summary",
        "-A" => "curl's -A is --user-agent STRING",
        "-b" | "--background" | "-D" | "--daemon" => {
            "run fetch in the background with your shell or a service manager"
        }
        _ => return None,
    };
    Some(hint)
}

/// `err`, or when it is an unknown argument that [`habit`] knows, an
/// error that says the fetch equivalent instead (clap's own would suggest
/// a similar-looking option, which is rarely the one meant).
pub fn with_habit_hint(err: clap::Error) -> clap::Error {
    if err.kind() != ErrorKind::UnknownArgument {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    match habit(arg) {
        Some(hint) => {
            Cli::command().error(ErrorKind::UnknownArgument, format!("unexpected argument '{arg}': {hint}"))
        }
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn habits_and_their_hints() {
        let cases = [
            ("-c", "always resumes"),
            ("--continue", "--no-resume"),
            ("-i", "positional"),
            ("--input-file=urls.txt", "positional"),
            ("--retry", "--retries"),
            ("--tries=3", "--retries"),
            ("-t", "--retries"),
            ("-N", "--refresh"),
            ("--conditional-get", "--refresh"),
            ("-O", "URL PATH"),
            ("--output", "URL PATH"),
            ("-x", "--max-connections-per-file"),
            ("--split", "--max-connections-per-file"),
            ("-s", "--quiet"),
            ("--checksum", "sha256"),
            ("-Z", "-j N"),
            ("--max-overall-download-limit", "--limit-rate"),
            ("-k", "--insecure"),
            ("--remote-time", "--no-remote-time"),
            ("--netrc-optional", "--netrc"),
            ("-u", "--netrc-file"),
            ("--user=alice:pw", "user:password@"),
            ("--http-password", "--header-for"),
        ];
        for (arg, want) in cases {
            let hint = habit(arg).unwrap_or_else(|| panic!("{arg}: no hint"));
            assert!(hint.contains(want), "{arg}: {hint}");
        }
        for unknown in ["--jobs", "-j", "--frobnicate", "", "-", "--", "--retry-delay"] {
            assert_eq!(habit(unknown), None, "{unknown}");
        }
    }

    /// A hint for an option that exists would never show, and would
    /// mislead if it did (wget's -P is not fetch's -P).
    #[test]
    fn no_habit_is_an_option_of_fetch() {
        for arg in Cli::command().get_arguments() {
            let longs = arg.get_long().map(|l| format!("--{l}"));
            let shorts = arg.get_short().map(|s| format!("-{s}"));
            for name in longs.into_iter().chain(shorts) {
                assert_eq!(habit(&name), None, "{name} is an option of fetch");
            }
        }
    }

    #[test]
    fn the_hint_joins_the_parser_error() {
        let err = Cli::try_parse_from(["fetch", "--continue", "m.txt"]).unwrap_err();
        let text = with_habit_hint(err).to_string();
        assert!(
            text.contains("'--continue': fetch always resumes") && text.contains("--no-resume"),
            "{text}"
        );
        assert!(!text.contains("--config"), "no look-alike suggestion: {text}");
        let err = Cli::try_parse_from(["fetch", "-qc", "m.txt"]).unwrap_err();
        assert!(with_habit_hint(err).to_string().contains("always resumes"));
        let err = Cli::try_parse_from(["fetch", "--frobnicate"]).unwrap_err();
        let text = with_habit_hint(err).to_string();
        assert!(text.contains("unexpected argument '--frobnicate' found"), "{text}");
    }
}
