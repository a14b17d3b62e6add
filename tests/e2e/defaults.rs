//! Issue 19, items 5 to 7: option defaults from a config file and FETCH_*
//! variables (the command line wins), hints for other downloaders' habits,
//! and the manual page.

use std::path::Path;

use crate::{Server, fetch, files, run, write};

/// A config directory under `dir` holding `text` as fetch/config, for
/// XDG_CONFIG_HOME.
fn config_home(dir: &Path, text: &str) -> std::path::PathBuf {
    let home = dir.join("xdg");
    std::fs::create_dir_all(home.join("fetch")).unwrap();
    std::fs::write(home.join("fetch/config"), text).unwrap();
    home
}

/// The User-Agent of each request the server saw, in order.
fn agents(server: &Server) -> Vec<String> {
    server.log().iter().map(|r| r.header("user-agent").unwrap_or("").to_owned()).collect()
}

#[test]
fn a_value_comes_from_the_file_then_the_environment_then_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    server.file("/a", 1, 100);
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    let home = config_home(tmp.path(), "# defaults\nuser-agent = from-file\noverwrite\n");
    let fetch = || {
        let mut cmd = fetch(tmp.path());
        cmd.env("XDG_CONFIG_HOME", &home).args(["--dir", "out", "m.txt"]);
        cmd
    };
    assert_eq!(run(&mut fetch()).code, Some(0));
    assert_eq!(run(fetch().env("FETCH_USER_AGENT", "from-env")).code, Some(0));
    assert_eq!(
        run(fetch().env("FETCH_USER_AGENT", "from-env").args(["--user-agent", "from-cli"])).code,
        Some(0)
    );
    // `overwrite` from the file made the second and third runs download again.
    assert_eq!(agents(&server), ["from-file", "from-env", "from-cli"]);
    // --no-config: neither the file nor the variable.
    let out = run(fetch().env("FETCH_USER_AGENT", "from-env").arg("--no-config"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(agents(&server).len(), 3, "without `overwrite` the file is skipped");
    assert_eq!(files(&tmp.path().join("out")), ["a"]);
}

#[test]
fn a_flag_comes_from_the_file_and_yields_to_the_environment_and_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    server.file("/a", 1, 100);
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    let home = config_home(tmp.path(), "dry-run\nquiet\n");
    let fetch = || {
        let mut cmd = fetch(tmp.path());
        cmd.env("XDG_CONFIG_HOME", &home).args(["--progress", "log", "m.txt"]);
        cmd
    };
    let out = run(&mut fetch());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(server.log().is_empty(), "dry-run from the file makes no request");
    assert!(files(tmp.path()).iter().all(|f| f != "a"));
    // FETCH_DRY_RUN=0 turns the file's flag off; --verbose on the command
    // line hides the file's conflicting --quiet instead of a usage error.
    let out = run(fetch().env("FETCH_DRY_RUN", "0").arg("--verbose"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(server.log().len(), 1);
    assert!(out.stderr.contains("attempt"), "verbose, not quiet: {}", out.stderr);
    assert_eq!(std::fs::read(tmp.path().join("a")).unwrap().len(), 100);
}

#[test]
fn a_bad_line_is_named_by_file_and_line_and_nothing_is_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    server.file("/a", 1, 100);
    write(tmp.path(), "m.txt", &format!("{}\n", server.url("/a")));
    let conf = write(tmp.path(), "fetch.conf", "jobs = 4\n\n# retries\nretries = many\n");
    let out = run(fetch(tmp.path()).arg("--config").arg(&conf).arg("m.txt"));
    assert_eq!(out.code, Some(2));
    let want = format!("fetch: {}:4: invalid value for retries", conf.display());
    assert!(out.stderr.starts_with(&want), "{}", out.stderr);
    assert!(!out.stderr.contains("many"), "{}", out.stderr);
    assert!(server.log().is_empty());
    // The same through FETCH_CONFIG, and a variable names itself.
    let out = run(fetch(tmp.path()).env("FETCH_CONFIG", &conf).arg("m.txt"));
    assert!(out.stderr.starts_with(&want), "{}", out.stderr);
    let out = run(fetch(tmp.path()).env("FETCH_JOBS", "lots").arg("m.txt"));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.starts_with("fetch: FETCH_JOBS: invalid value for jobs"), "{}", out.stderr);
}

#[test]
fn a_secret_in_the_file_or_the_environment_is_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "m.txt", "http://127.0.0.1:9/a\n");
    let bad = [
        "header = Authorization SECRET-TOKEN\n",
        "header = Authorization: Bearer SECRET-TOKEN\u{1}\n",
        "header = X: 1\nAuthorization: Bearer SECRET-TOKEN\n",
        "SECRET-TOKEN\n",
        "header: Bearer SECRET-TOKEN\n",
        "header = Authorization: Bearer SECRET-TOKEN\njobs = x\n",
        "header = SECRET-TOKEN\n",
    ];
    for text in bad {
        let conf = write(tmp.path(), "fetch.conf", text);
        let out = run(fetch(tmp.path()).arg("--config").arg(&conf).arg("m.txt"));
        assert_eq!(out.code, Some(2), "{text:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("SECRET-TOKEN") && !out.stdout.contains("SECRET-TOKEN"),
            "{text:?}: {}",
            out.stderr
        );
    }
    for value in ["Authorization SECRET-TOKEN", "Authorization: SECRET-TOKEN\u{7f}"] {
        let out = run(fetch(tmp.path()).env("FETCH_HEADER", value).arg("m.txt"));
        assert_eq!(out.code, Some(2), "{value:?}: {}", out.stderr);
        assert!(!out.stderr.contains("SECRET-TOKEN"), "{value:?}: {}", out.stderr);
    }
}

#[test]
fn habits_from_other_downloaders_get_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--continue", "m.txt"], "'--continue': fetch always resumes partial files"),
        (&["-i", "m.txt"], "'-i': manifests are positional arguments"),
        (&["--tries=3", "m.txt"], "'--tries': the number of retries is --retries N"),
        (&["-H", "Authorization: Bearer SECRET-TOKEN", "-c", "m.txt"], "'-c': fetch always resumes"),
    ];
    for (args, want) in cases {
        let out = run(fetch(tmp.path()).args(args));
        assert_eq!(out.code, Some(2), "{args:?}");
        assert!(
            out.stderr.starts_with(&format!("error: unexpected argument {want}")),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("SECRET-TOKEN"), "{}", out.stderr);
    }
}

#[test]
fn the_manual_page_lists_the_options_exit_status_and_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    // A broken config file does not stand in the way of the manual.
    let home = config_home(tmp.path(), "nonsense\n");
    let out = run(fetch(tmp.path()).env("XDG_CONFIG_HOME", &home).arg("manpage"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let options = [r"\fB\-\-no\-config\fR", r"\fB\-\-jobs\fR \fI<N>\fR", r"\fB\-\-header\fR \fI<HEADER>\fR"];
    for want in [".TH fetch 1", ".SH \"EXIT STATUS\"", "fetch/config"].iter().chain(&options) {
        assert!(out.stdout.contains(want), "{want}");
    }
    let help = run(fetch(tmp.path()).env("XDG_CONFIG_HOME", &home).arg("--help"));
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.contains("$XDG_CONFIG_HOME/fetch/config"), "{}", help.stdout);
}
