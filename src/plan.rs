//! `--dry-run`: read and validate the whole manifest and say, on standard
//! output, what a real run would download or skip. No request is made and
//! nothing is created, not even `--dir`.
//!
//! One line per entry: `download  PATH  URL`, `refresh   PATH  URL` (an
//! existing file `--refresh` asks about) or `skip      PATH  (exists)`;
//! invalid lines and destinations refused by the symlink check go to
//! standard error as in a real run, including a destination given again
//! with another URL (the manifest reader's bounded check).

use std::io::{self, Write};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::dest::{self, Found};
use crate::manifest::{Entry, Item, Reader};
use crate::progress::Reporter;
use crate::redact;
use crate::report::Summary;

pub fn run(config: Config, reporter: &Reporter) -> Summary {
    let mut reader = Reader::new(config.tree.rules().clone(), config.shard);
    reader.sums = config.sums;
    let (tx, mut rx) = mpsc::channel(8);
    let sources = config.sources;
    std::thread::spawn(move || reader.read_all(sources, &tx));

    let mut summary = Summary::default();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut planned = 0u64;
    // --refresh: destinations to be asked about with a condition.
    let mut refreshed = 0u64;
    for item in std::iter::from_fn(|| rx.blocking_recv()).flatten() {
        let written = match item {
            Item::Entry(entry) => {
                let dest = entry.dest.display().to_string();
                let dest = crate::progress::escape(&dest);
                let found =
                    if config.overwrite { Found::Nothing } else { dest::look(&entry.dest, entry.size) };
                if found == Found::Keep && config.refresh {
                    refreshed += 1;
                    writeln!(out, "refresh   {dest}  {}", urls(&entry))
                } else if found == Found::Keep {
                    summary.skipped += 1;
                    writeln!(out, "skip      {dest}  (exists)")
                } else if let Err(e) = config.tree.check_parent(&entry.dest) {
                    summary.failed += 1;
                    reporter.error(&format_args!("{}: {dest}: {e}", entry.location));
                    Ok(())
                } else {
                    planned += 1;
                    writeln!(out, "download  {dest}  {}", urls(&entry))
                }
            }
            Item::Invalid { location, error } => {
                summary.failed += 1;
                reporter.error(&format_args!("{location}: {error}"));
                Ok(())
            }
            Item::ReadFailed { source, error } => {
                summary.manifest_error = true;
                reporter.error(&format_args!("cannot read manifest {source}: {error}"));
                Ok(())
            }
        };
        if written.is_err() {
            // A closed stdout (`fetch --dry-run m | head`) ends the listing.
            break;
        }
    }
    let _ = out.flush();
    let refresh = if config.refresh { format!(", {refreshed} to refresh") } else { String::new() };
    reporter.error(&format_args!(
        "dry run: {planned} to download{refresh}, {} to skip, {} invalid; nothing was downloaded",
        summary.skipped, summary.failed
    ));
    summary
}

/// An entry's URLs as the plan lists them: the first, then its other
/// `urls` in the order they would be tried, passwords redacted.
fn urls(entry: &Entry) -> String {
    let urls = std::iter::once(&entry.url).chain(&entry.mirrors);
    urls.map(redact::url).collect::<Vec<_>>().join(" ")
}
