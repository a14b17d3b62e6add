//! The manual page, generated from clap's definition of [`Cli`] so that it
//! lists every option there is, plus the sections a manual page has and
//! `--help` does not: exit status, files and environment.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::report::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Write the page in roff, for `man`: `fetch manpage > ~/.local/share/man/man1/fetch.1`.
pub fn render(out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // The after-help text (manifest lines, examples), under a title of our own.
    let mut notes = Vec::new();
    man.render_extra_section(&mut notes)?;
    let notes = String::from_utf8_lossy(&notes);
    out.write_all(notes.replacen(".SH EXTRA", ".SH NOTES", 1).as_bytes())?;
    write!(
        out,
        "\
.SH \"EXIT STATUS\"
.TP
{EXIT_OK}
every entry was downloaded or skipped
.TP
{EXIT_FAILED}
at least one entry failed (invalid manifest lines included)
.TP
{EXIT_USAGE}
usage error: bad option, bad config file or FETCH_ variable, unreadable manifest, unusable \\-\\-dir
.TP
130, 143
interrupted by SIGINT, SIGTERM; partial files are kept and resumed by the next run
"
    )?;
    out.write_all(FILES_AND_ENVIRONMENT.as_bytes())?;
    man.render_version_section(out)
}

const FILES_AND_ENVIRONMENT: &str = r#".SH FILES
.TP
\fI$XDG_CONFIG_HOME/fetch/config\fR, else \fI~/.config/fetch/config\fR
Option defaults, read unless \-\-no\-config is given; \-\-config FILE or
FETCH_CONFIG names another file (which must then exist). One long option per
line, without dashes: \fBjobs = 8\fR, or a flag's name alone (\fBinsecure\fR);
the value is the rest of the line, trimmed, with no quoting. Blank lines and
lines starting with # are ignored. Manifests, config, no\-config, help and
version cannot be given there.
.SH ENVIRONMENT
.TP
FETCH_\fIOPTION\fR
An option default, named as FETCH_ and the long option in upper snake case:
FETCH_JOBS=8, FETCH_HEADER='Accept: text/plain'. A flag is 1 (on) or 0 (off,
hiding the flag in the config file). An empty variable is ignored, and so is a
FETCH_ name that is no option. The command line wins over the environment,
which wins over the config file; an option hides the options it conflicts
with below it, and headers (\-H) add up from all three.
.TP
FETCH_CONFIG
The config file to read instead of the default one.
.TP
HTTP_PROXY, HTTPS_PROXY, NO_PROXY
Proxies, as usual.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        let mut out = Vec::new();
        render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Each long option is described in the options sections (the synopsis
    /// names them all too, so it does not count).
    #[test]
    fn every_option_is_on_the_page() {
        let page = page();
        let start = page.find(".SH OPTIONS").unwrap();
        let options = &page[start..page.find(".SH NOTES").unwrap()];
        for arg in Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                let roff = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                assert!(options.contains(&roff), "--{long} is missing");
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let first = help.split_whitespace().take(2).collect::<Vec<_>>().join(" ").replace('-', "\\-");
                assert!(options.contains(&first), "the help of --{long} is missing");
            }
        }
        for sub in Cli::command().get_subcommands() {
            assert!(page.contains(sub.get_name()), "{} is missing", sub.get_name());
        }
    }

    #[test]
    fn the_page_has_exit_status_files_and_environment() {
        let page = page();
        assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{}", &page[..40]);
        for want in [
            ".SH \"EXIT STATUS\"\n.TP\n0\n",
            "\n.TP\n1\n",
            "\n.TP\n2\n",
            "130, 143",
            ".SH FILES",
            "$XDG_CONFIG_HOME/fetch/config",
            "~/.config/fetch/config",
            ".SH ENVIRONMENT",
            "FETCH_CONFIG",
            ".SH NOTES",
        ] {
            assert!(page.contains(want), "{want:?} is missing");
        }
        assert!(!page.contains("EXTRA"));
    }
}
