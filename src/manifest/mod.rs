//! The manifest: lines in, [`Entry`]s or located errors out, streamed.
//!
//! A reader thread parses each source in order and sends items through a
//! bounded channel, so downloading starts with the first line and memory is
//! bounded by the channel and the dispatcher, never by the manifest's length.
//! Every item carries its [`Location`] (`MANIFEST:LINE`, lines counted from 1
//! including comments and blank lines) so errors can name it.
//!
//! - `line`: one line, plain (`URL PATH`) or JSON, to a [`Spec`] or a
//!   [`LineError`]; pure, with table tests.
//! - `source`: the manifests, opened before the run, and the second
//!   reader of a regular file that counts it ahead.
//! - `reader`: the sources, in order, to batches of [`Item`]s.
//! - `seen`: the fixed table that finds a destination given again with
//!   another URL.

mod line;
mod reader;
mod seen;
mod source;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::Url;
use reqwest::header::HeaderMap;

pub use line::{LineError, MAX_URLS, Spec, parse_line};
pub use reader::Reader;
pub use source::{Recount, Source};

/// Where a manifest line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub source: Arc<str>,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// One download the manifest asks for.
#[derive(Debug)]
pub struct Entry {
    /// The URL, or the first of a JSON line's `urls`: the one the
    /// destination is named after and the entry is known by.
    pub url: Url,
    /// The other URLs of `urls`, tried in order when the ones before fail
    /// (`crate::download`'s `mirror`); empty for most entries.
    pub mirrors: Vec<Url>,
    /// The destination as the manifest gives it or as derived from the URL,
    /// before joining `--dir`: the key for `--shard`.
    pub path: String,
    /// The resolved destination.
    pub dest: PathBuf,
    pub size: Option<u64>,
    /// Digests the file must have, at most one per algorithm: the line's
    /// own and those of `--checksums` files.
    pub checksums: Vec<crate::digest::Expected>,
    pub headers: HeaderMap,
    pub location: Location,
}

impl Entry {
    /// Every URL of the entry, in the order they are tried.
    pub fn urls(&self) -> impl Iterator<Item = &Url> {
        std::iter::once(&self.url).chain(&self.mirrors)
    }
}

/// What the reader sends: an entry, or a line that could not be one.
#[derive(Debug)]
pub enum Item {
    Entry(Box<Entry>),
    Invalid {
        location: Location,
        error: LineError,
    },
    /// A source that failed while being read; the run ends with exit 2.
    ReadFailed {
        source: Arc<str>,
        error: io::Error,
    },
}
