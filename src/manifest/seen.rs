//! The destinations the manifest gave so far, in a table of fixed size,
//! to refuse a line that gives one again with another URL.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::{Location, Spec};

/// Destinations given earlier in the run and their URLs, to refuse a line
/// that gives a destination again with another URL: one of the two
/// downloads would be silently lost.
///
/// A fixed table (2^16 slots, 1.5 MiB at most, pages touched as used), so
/// memory does not grow with the manifest: each slot holds the 64-bit hashes
/// of a destination and of its URL, and the line that gave them. A new
/// destination takes its slot over, so the table remembers about the last
/// 65,536 distinct destinations; a repeat further back goes unreported (and
/// the download stage still keeps the two from writing the file together).
/// A report needs the full 64-bit destination hashes to match under a key
/// drawn at random for each run (SipHash): the chance that a line is wrongly
/// refused is about 2^-64, and no manifest can be crafted to cause it.
/// The same URL twice for one destination is harmless (the second is skipped
/// as already downloaded) and is not reported. A line with several `urls`
/// is known by its first, the URL it prefers: two lines that list the same
/// mirrors in another order are two downloads of one destination.
pub(super) struct Seen {
    hasher: RandomState,
    dests: Box<[u64]>,
    urls: Box<[u64]>,
    /// Index into `sources` (high 16 bits) and line number (low 48 bits);
    /// 0 when they do not fit.
    places: Box<[u64]>,
    sources: Vec<Arc<str>>,
}

pub(super) const SEEN_SLOTS: usize = 1 << 16;

impl Seen {
    pub(super) fn new() -> Self {
        // Zeroed allocations: the kernel maps pages as they are first used.
        Seen {
            hasher: RandomState::new(),
            dests: vec![0; SEEN_SLOTS].into_boxed_slice(),
            urls: vec![0; SEEN_SLOTS].into_boxed_slice(),
            places: vec![0; SEEN_SLOTS].into_boxed_slice(),
            sources: Vec::new(),
        }
    }

    /// Record `spec`'s destination; if an earlier line gave it with another
    /// URL, return where (`None` inside when that is not known).
    pub(super) fn insert(&mut self, spec: &Spec, location: Location) -> Option<Option<Location>> {
        // 0 marks an empty slot.
        let dest = self.hasher.hash_one(spec.dest.as_os_str().as_encoded_bytes()).max(1);
        // The fragment is never sent: `#a` and `#b` request the same bytes.
        let url = self.hasher.hash_one(spec.url.as_str().split('#').next());
        let slot = (dest >> 48) as usize % SEEN_SLOTS;
        if self.dests[slot] == dest {
            return (self.urls[slot] != url).then(|| self.place(self.places[slot]));
        }
        self.dests[slot] = dest;
        self.urls[slot] = url;
        self.places[slot] = self.pack(location);
        None
    }

    fn pack(&mut self, location: Location) -> u64 {
        let index = match self.sources.iter().position(|s| Arc::ptr_eq(s, &location.source)) {
            Some(index) => index,
            None => {
                self.sources.push(location.source);
                self.sources.len() - 1
            }
        };
        if index >= 1 << 16 || location.line >= 1 << 48 {
            return 0;
        }
        (index as u64) << 48 | location.line
    }

    fn place(&self, packed: u64) -> Option<Location> {
        let line = packed & ((1 << 48) - 1);
        let source = self.sources.get((packed >> 48) as usize)?;
        (line > 0).then(|| Location { source: source.clone(), line })
    }
}
