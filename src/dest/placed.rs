//! The destinations this run placed, remembered in fixed memory: a Bloom
//! filter that never forgets a path inserted and rarely claims one that
//! was not.

use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The files this run placed, as a Bloom filter of their paths. It has a
/// fixed size so that memory stays flat: it answers "maybe" for every path
/// inserted and, at 200,000 paths, for 0.2% of the others (15% at
/// 2,000,000), which then cost a look at the disk.
#[derive(Debug)]
pub(super) struct PlacedFilter {
    bits: Box<[AtomicU64]>,
}

/// 2^23 bits: 1 MiB.
const PLACED_BITS: u32 = 23;

impl Default for PlacedFilter {
    fn default() -> Self {
        PlacedFilter { bits: (0..1 << (PLACED_BITS - 6)).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl PlacedFilter {
    /// Two bit positions from one 64-bit hash.
    fn bits(path: &Path) -> [u32; 2] {
        let mut hasher = DefaultHasher::new();
        hasher.write(path.as_os_str().as_encoded_bytes());
        let hash = hasher.finish();
        let mask = (1 << PLACED_BITS) - 1;
        [hash as u32 & mask, (hash >> 32) as u32 & mask]
    }

    pub(super) fn insert(&self, path: &Path) {
        for bit in Self::bits(path) {
            self.bits[bit as usize / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    pub(super) fn may_contain(&self, path: &Path) -> bool {
        Self::bits(path)
            .iter()
            .all(|&bit| self.bits[bit as usize / 64].load(Ordering::Relaxed) & 1 << (bit % 64) != 0)
    }
}
