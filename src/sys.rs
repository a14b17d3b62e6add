//! What the kernel is asked directly, beyond what std offers: the one place
//! with `unsafe` (a system call that has no safe wrapper), and the probes
//! that decide how files are made durable. Linux only, as `fetch` is: its
//! confinement needs `openat2` and unnamed files (`O_TMPFILE`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

#[cfg(not(target_os = "linux"))]
compile_error!("fetch runs on Linux: it needs openat2, O_TMPFILE, renameat2 and syncfs");

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to
/// disk, without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a
/// hint: errors surface at the fsync that follows, which is what makes the
/// data durable. rustix has no wrapper for it.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: the call takes plain integers; the descriptor stays open for
    // the borrow of `file`, and the kernel checks the range itself.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Raise the soft limit on open files to the hard one, as Go's runtime
/// does: a run holds a socket and a file per download in flight, and the
/// committer a file per entry of its batch (up to
/// [`crate::commit::MAX_BATCH`]), more than the usual soft limit of 1,024
/// allows at a high `--jobs`. Returns the limit the run has (`u64::MAX`
/// for none).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, ..limit };
    let limit = if limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        raised
    } else {
        limit
    };
    Some(limit.current.unwrap_or(u64::MAX))
}

/// Whether `syncfs` reports write errors: Linux 5.8 and later.
pub fn syncfs_reports_errors() -> bool {
    let name = rustix::system::uname();
    let release = name.release().to_str().unwrap_or("");
    release_at_least(release, (5, 8))
}

/// Whether a kernel release string (`6.18.44-fc`) is at least `want`.
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut numbers = release.split(['.', '-']).map(|n| n.parse::<u32>().ok());
    matches!((numbers.next().flatten(), numbers.next().flatten()), (Some(major), Some(minor)) if (major, minor) >= want)
}

/// Whether `file` is on a local disk filesystem, whose `syncfs` writes and
/// flushes everything; on network and FUSE filesystems a file's own
/// `fsync` is the one reliable promise.
pub fn local_filesystem(file: &impl AsFd) -> bool {
    const LOCAL: [i64; 6] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0xCA45_1A4E, // bcachefs
    ];
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    rustix::fs::fstatfs(file).is_ok_and(|stat| LOCAL.contains(&(stat.f_type as i64)))
}

/// Write out every dirty inode of `file`'s filesystem and flush the disk's
/// cache; reports write errors since `file` was opened (Linux 5.8+).
pub fn syncfs(file: &File) -> io::Result<()> {
    Ok(rustix::fs::syncfs(file)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_releases() {
        for (release, want) in
            [("5.8.0", true), ("6.18.44-fc-v857", true), ("5.7.19", false), ("4.19-rc1", false), ("x", false)]
        {
            assert_eq!(super::release_at_least(release, (5, 8)), want, "{release}");
        }
    }
}
