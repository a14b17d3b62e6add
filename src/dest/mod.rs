//! Destinations: where each entry's file goes, and the rule that nothing
//! is written outside `--dir` unless `--absolute-paths` allows it.
//!
//! Two halves. [`Rules`] (`path`) is pure: the name derived from a URL and
//! resolution against `--dir`, lexical (no filesystem access) so that
//! manifest lines can be judged as they stream in. [`DestTree`] (`tree`)
//! is the run's view of the destination tree on disk: the open `--dir`,
//! the parent directories prepared, the destinations placed, the
//! directories made.
//!
//! Symlinks are the one escape lexical checks cannot see, so a
//! destination's directory is never reached by its path:
//! [`DestTree::prepare_parent`] opens it from a handle on `--dir` held for
//! the whole run, with `openat2(RESOLVE_BENEATH)` (or, before Linux 5.6,
//! one component at a time without following symlinks), creating what is
//! missing with `mkdirat` on the handle of the directory above (`dirs`).
//! The kernel refuses any step that would leave `--dir`, at the moment it
//! is taken, and every file of the entry is then created, renamed and
//! removed through that handle ([`crate::fsx`]): a component swapped for a
//! symlink later cannot redirect a write. Another process can only move a
//! directory we hold to a place it may write to itself, and our file goes
//! with it. With `-P` the user's paths are followed as given.

mod dirs;
mod path;
mod placed;
mod tree;

pub use dirs::{MadeDir, MadeDirs, create_dirs, open_dir, open_dir_beneath};
pub use path::{DestError, Rules, name_from_url};
pub use tree::{DestTree, Parent, PrepareError};

/// What is at a destination before an entry starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// Kept: the entry is skipped as existing.
    Keep,
    /// A regular file whose size is not the manifest's `size`: not the
    /// file the manifest describes, so it is downloaded again and replaced
    /// in one rename, as with `--overwrite`.
    WrongSize,
}

/// Look at `path` (without following a symlink there): the one system
/// call the existence check costs anyway, its size compared with the
/// manifest's `size` when it gives one.
pub fn look(path: &std::path::Path, size: Option<u64>) -> Found {
    match std::fs::symlink_metadata(path) {
        Err(_) => Found::Nothing,
        Ok(meta) if meta.is_file() && size.is_some_and(|size| size != meta.len()) => Found::WrongSize,
        Ok(_) => Found::Keep,
    }
}
