//! Checksums: the algorithms an entry may name (md5, sha1, sha256,
//! sha512), an expected digest parsed from hex, and the running digests of
//! one file, fed each byte once as it streams.
//!
//! A leaf: nothing here knows of manifests or files. Where an expected
//! digest came from (the manifest line, or `FILE:LINE` of a checksum file)
//! is an [`Origin`], carried for the error message only.
//!
//! An entry expects at most one digest per algorithm, and every one it
//! expects must match; a file is read once whatever their number, each
//! chunk given to every running digest in turn.

use std::fmt;
use std::sync::Arc;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm. The order is the order of a report's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

/// The longest digest, in bytes (sha512).
const MAX_LEN: usize = 64;

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    /// The name users write: the manifest's JSON key, the report's word.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The digest's length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// The algorithm whose digest has `digits` hex digits: how a
    /// `sha256sum`-style line, which does not name its algorithm, is read.
    pub fn from_hex_digits(digits: usize) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.bytes() * 2 == digits)
    }

    /// The algorithm of a BSD tag (`SHA256 (NAME) = HEX`), as `sha256sum
    /// --tag`, `md5 -t` and OpenSSL's `dgst` write it.
    pub fn from_tag(tag: &str) -> Option<Algorithm> {
        match tag {
            "MD5" => Some(Algorithm::Md5),
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" | "SHA2-256" => Some(Algorithm::Sha256),
            "SHA512" | "SHA2-512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One digest of a known algorithm. 65 bytes, without a heap allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    algorithm: Algorithm,
    /// The digest in its first `algorithm.bytes()` bytes, zeros after.
    bytes: [u8; MAX_LEN],
}

/// A hex digest that is not one of its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {algorithm} {text:?}: expected {} hex digits", algorithm.bytes() * 2)]
pub struct HexError {
    pub algorithm: Algorithm,
    /// What was given, cut to 140 characters.
    pub text: String,
}

/// How much of a bad digest an error quotes: a manifest line may be 64 KiB.
const SHOWN: usize = 140;

impl Checksum {
    /// Exactly `2 * algorithm.bytes()` hex digits, either case; nothing else
    /// (no sign, no `0x`, no spaces).
    pub fn parse(algorithm: Algorithm, hex: &str) -> Result<Checksum, HexError> {
        let bad = || HexError { algorithm, text: hex.chars().take(SHOWN).collect() };
        // Digits only: `from_str_radix` would also take a sign ("+0").
        let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
        if hex.len() != algorithm.bytes() * 2 {
            return Err(bad());
        }
        let mut bytes = [0u8; MAX_LEN];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = digit(pair[0]).ok_or_else(bad)? << 4 | digit(pair[1]).ok_or_else(bad)?;
        }
        Ok(Checksum { algorithm, bytes })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.bytes()]
    }

    /// The digest `bytes` holds, if it is of `algorithm`'s length.
    pub fn from_bytes(algorithm: Algorithm, digest: &[u8]) -> Option<Checksum> {
        let mut bytes = [0u8; MAX_LEN];
        bytes.get_mut(..digest.len()).filter(|_| digest.len() == algorithm.bytes())?.copy_from_slice(digest);
        Some(Checksum { algorithm, bytes })
    }
}

/// Lowercase hex, as the `*sum` tools print it.
impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{self}", self.algorithm)
    }
}

/// Where an expected digest was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The manifest line's own key.
    Manifest,
    /// A line of a checksum file (`--checksums`).
    Listed { file: Arc<str>, line: u64 },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Manifest => f.write_str("the manifest"),
            Origin::Listed { file, line } => write!(f, "{file}:{line}"),
        }
    }
}

/// A digest an entry's file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub checksum: Checksum,
    pub origin: Origin,
}

/// A file whose digest is not the expected one.
#[derive(Debug, thiserror::Error)]
#[error("{} mismatch: {} says {}, the file has {actual}", .expected.checksum.algorithm, .expected.origin, .expected.checksum)]
pub struct Mismatch {
    pub expected: Expected,
    pub actual: Checksum,
}

/// One running digest.
#[derive(Clone)]
enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::default()),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Md5(_) => Algorithm::Md5,
            Hasher::Sha1(_) => Algorithm::Sha1,
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Checksum {
        let algorithm = self.algorithm();
        let checksum = match self {
            Hasher::Md5(h) => Checksum::from_bytes(algorithm, &h.finalize()),
            Hasher::Sha1(h) => Checksum::from_bytes(algorithm, &h.finalize()),
            Hasher::Sha256(h) => Checksum::from_bytes(algorithm, &h.finalize()),
            Hasher::Sha512(h) => Checksum::from_bytes(algorithm, &h.finalize()),
        };
        checksum.expect("a digest has its algorithm's length")
    }
}

/// The running digests of one file: one per algorithm its entry expects,
/// none (and no cost) when it expects none.
#[derive(Clone, Default)]
pub struct Digests(Vec<Hasher>);

impl fmt::Debug for Digests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(Hasher::algorithm)).finish()
    }
}

impl Digests {
    /// Fresh digests for what `expected` names, each algorithm once.
    pub fn new(expected: &[Expected]) -> Digests {
        let mut algorithms: Vec<_> = expected.iter().map(|e| e.checksum.algorithm).collect();
        algorithms.sort_unstable();
        algorithms.dedup();
        Digests(algorithms.into_iter().map(Hasher::new).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for hasher in &mut self.0 {
            hasher.update(bytes);
        }
    }

    /// Start again from no bytes, with the same algorithms.
    pub fn reset(&mut self) {
        for hasher in &mut self.0 {
            *hasher = Hasher::new(hasher.algorithm());
        }
    }

    /// The digests of the bytes given so far.
    pub fn finish(self) -> Vec<Checksum> {
        self.0.into_iter().map(Hasher::finish).collect()
    }

    /// Compare each of `expected` with the digests of the bytes given so
    /// far: the first that differs, if any. An expected algorithm these
    /// digests were not made for is a bug, not a mismatch: it panics in
    /// tests and passes in release.
    pub fn verify(self, expected: &[Expected]) -> Result<(), Box<Mismatch>> {
        let actual = self.finish();
        for want in expected {
            let got = actual.iter().find(|c| c.algorithm == want.checksum.algorithm);
            debug_assert!(got.is_some(), "no running digest for {}", want.checksum.algorithm);
            if let Some(got) = got.filter(|got| **got != want.checksum) {
                return Err(Box::new(Mismatch { expected: want.clone(), actual: *got }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: [(Algorithm, &str); 4] = [
        (Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
        (Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (Algorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            Algorithm::Sha512,
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
    ];

    fn expected(algorithm: Algorithm, hex: &str) -> Expected {
        Expected { checksum: Checksum::parse(algorithm, hex).unwrap(), origin: Origin::Manifest }
    }

    #[test]
    fn each_algorithm_digests_abc_in_pieces() {
        let all: Vec<_> = ABC.iter().map(|&(a, hex)| expected(a, hex)).collect();
        let mut digests = Digests::new(&all);
        for piece in [&b"a"[..], b"", b"bc"] {
            digests.update(piece);
        }
        let finished: Vec<String> = digests.clone().finish().iter().map(ToString::to_string).collect();
        assert_eq!(finished, ABC.map(|(_, hex)| hex.to_owned()));
        digests.verify(&all).unwrap();
    }

    #[test]
    fn a_wrong_digest_is_a_mismatch_naming_its_origin() {
        for (algorithm, hex) in ABC {
            let mut wrong = expected(algorithm, hex);
            wrong.checksum.bytes[0] ^= 1;
            wrong.origin = Origin::Listed { file: "SUMS".into(), line: 7 };
            let mut digests = Digests::new(std::slice::from_ref(&wrong));
            digests.update(b"abc");
            let error = digests.verify(&[wrong]).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{algorithm} mismatch: SUMS:7 says ")), "{error}");
            assert!(error.ends_with(&format!("the file has {hex}")), "{error}");
        }
    }

    #[test]
    fn reset_forgets_the_bytes_given() {
        let want = [expected(Algorithm::Sha1, ABC[1].1)];
        let mut digests = Digests::new(&want);
        digests.update(b"junk");
        digests.reset();
        digests.update(b"abc");
        digests.verify(&want).unwrap();
        assert!(Digests::new(&[]).is_empty());
    }

    #[test]
    fn a_digest_is_exactly_its_algorithms_hex_digits() {
        let upper = ABC[2].1.to_uppercase();
        assert_eq!(Checksum::parse(Algorithm::Sha256, &upper).unwrap().to_string(), ABC[2].1);
        for algorithm in Algorithm::ALL {
            let n = algorithm.bytes() * 2;
            assert_eq!(Algorithm::from_hex_digits(n), Some(algorithm));
            assert!(Checksum::parse(algorithm, &"0".repeat(n)).is_ok());
            let bad = [
                "+0".repeat(n / 2),
                "-0".repeat(n / 2),
                " 0".repeat(n / 2),
                format!("0x{}", "0".repeat(n - 2)),
                "0".repeat(n - 1),
                "0".repeat(n + 1),
                format!("{}g", "0".repeat(n - 1)),
                format!("{}é", "0".repeat(n - 2)),
                String::new(),
            ];
            for hex in bad {
                let error = Checksum::parse(algorithm, &hex).unwrap_err();
                assert_eq!(error, HexError { algorithm, text: hex.clone() });
                assert!(error.to_string().contains(&format!("expected {n} hex digits")), "{error}");
            }
        }
        let long = "f".repeat(10_000);
        let error = Checksum::parse(Algorithm::Md5, &long).unwrap_err();
        assert!(error.to_string().len() < 300, "a long value is cut in the message");
        assert_eq!(Algorithm::from_hex_digits(96), None, "sha384 is not one");
    }
}
