//! A hash of destination paths that is the same on every machine, run and
//! release (FNV-1a, 64 bit): Rust's `DefaultHasher` is randomized per process
//! and may change between releases, so it cannot split work across machines.

use std::fmt;
use std::str::FromStr;

/// `--shard K/N`: this process takes the entries whose destination path
/// hashes to K modulo N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Whether `path` (the destination as the manifest gives it or as
    /// derived from the URL, before `--dir`) belongs to this shard.
    pub fn contains(&self, path: &str) -> bool {
        stable_hash(path.as_bytes()) % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid shard {s:?}: expected K/N with 0 <= K < N, like 0/4");
        // Digits only: `u64::from_str` also takes a sign ("+1").
        let number = |text: &str| {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            text.parse::<u64>().map_err(|_| bad())
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (number(k)?, number(n)?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a over `bytes`. Changing this changes which machine gets which file.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Published FNV-1a 64 test vectors: the hash must never drift.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_parsing() {
        assert_eq!("0/4".parse::<Shard>(), Ok(Shard { index: 0, count: 4 }));
        assert_eq!("3/4".parse::<Shard>(), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(" 1 / 4 ".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in
            ["4/4", "1/0", "-1/4", "a/b", "1", "", "1/2/3", "+1/4", "1/+4", "-0/4", "1/", "/4", "0x1/4"]
        {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shards_partition_paths() {
        let shards: Vec<Shard> = (0..5).map(|i| Shard { index: i, count: 5 }).collect();
        for i in 0..1000 {
            let path = format!("dir/file{i}.bin");
            assert_eq!(shards.iter().filter(|s| s.contains(&path)).count(), 1);
        }
        let mine = (0..1000).filter(|i| shards[0].contains(&format!("f{i}"))).count();
        assert!((150..250).contains(&mine), "uneven: {mine} of 1000 in 1/5");
    }
}
