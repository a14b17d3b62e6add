//! Conditional refresh (`--refresh`, issue 18): the validators a download
//! stores with its file, the conditional request they make on the next
//! run, and what the answer means.
//!
//! Validators are extended attributes of the file itself
//! (`user.fetch.etag`, else `user.fetch.last-modified`), set through the
//! descriptor of the finished file before it is linked or renamed into
//! place ([`crate::fsx`]). They belong to the inode, so they are replaced
//! in the same atomic step as the bytes: a destination never carries the
//! validators of another version, whatever crashed when. Where the
//! filesystem has no user attributes (`ENOTSUP`; `EPERM`), or refuses
//! them for any other reason, the file is placed without them, and a
//! refresh asks with its mtime instead, which is the server's
//! `Last-Modified` unless `--no-remote-time`.
//!
//! A refresh sends one condition (RFC 9110 §13.1): `If-None-Match` with
//! the stored `ETag`, else `If-Modified-Since` with the stored
//! `Last-Modified`, else with the file's mtime. A `304` leaves the file as
//! it is. A `200` is a new version, except when it names the stored strong
//! `ETag` and the file's length: a strong validator promises the same
//! bytes (§8.8.1), so a server that ignores conditions but keeps its
//! `ETag`s costs a request, not a download.
//!
//! Everything read is bounded: an attribute larger than [`MAX_VALIDATOR`]
//! (another program may have set anything) is ignored, and so is a
//! server's validator of that size, which is not stored.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{self, HeaderName, HeaderValue};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

/// The extended attribute that holds a file's `ETag`.
pub const ETAG_ATTR: &str = "user.fetch.etag";
/// The extended attribute that holds a file's `Last-Modified`.
pub const LAST_MODIFIED_ATTR: &str = "user.fetch.last-modified";
/// The longest validator stored or read: ETags are short hashes and dates
/// 29 bytes, and ext4 keeps small attributes in the inode itself.
pub const MAX_VALIDATOR: usize = 1024;

/// What the server said identifies one version of a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// The validators of a response worth storing: each a header value of
    /// at most [`MAX_VALIDATOR`] bytes.
    pub fn new(etag: Option<&str>, last_modified: Option<&str>) -> Validators {
        Validators { etag: etag.and_then(usable), last_modified: last_modified.and_then(usable) }
    }
}

/// `value` if it can be sent back as a header value, within the bound.
fn usable(value: &str) -> Option<String> {
    let fits = !value.is_empty() && value.len() <= MAX_VALIDATOR;
    (fits && HeaderValue::from_str(value).is_ok()).then(|| value.to_owned())
}

/// Store `validators` on `file`, a new file: its ETag, else its
/// `Last-Modified`, the one a refresh will send (one system call per file:
/// on `many` every download pays it). Best effort: a filesystem without
/// user attributes, a full attribute block or any other refusal leaves the
/// file without them, which only makes the next refresh ask by mtime.
pub fn store(file: &impl AsFd, validators: &Validators) {
    let stored = match validators {
        Validators { etag: Some(etag), .. } => Some((ETAG_ATTR, etag)),
        Validators { last_modified: Some(date), .. } => Some((LAST_MODIFIED_ATTR, date)),
        Validators { etag: None, last_modified: None } => None,
    };
    if let Some((name, value)) = stored {
        let _ = rustix::fs::fsetxattr(file, name, value.as_bytes(), XattrFlags::empty());
    }
}

/// A stored attribute, if it is one we could have written.
fn read_attr(file: &impl AsFd, name: &str) -> Option<String> {
    let mut buf = [0u8; MAX_VALIDATOR];
    // ERANGE (larger than the buffer), ENODATA, ENOTSUP: none.
    let len = rustix::fs::fgetxattr(file, name, &mut buf[..]).ok()?;
    usable(std::str::from_utf8(&buf[..len]).ok()?)
}

/// What is at a destination that a refresh looks at.
#[derive(Debug)]
pub enum OnDisk {
    /// Nothing (any more): an ordinary download.
    Absent,
    /// A directory, a symlink, a device...: not a file fetch placed, kept.
    NotAFile,
    File(Stored),
}

/// What a refresh knows of the file at a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub validators: Validators,
    pub modified: SystemTime,
    pub size: u64,
}

/// Look at `name` in `dir` for a refresh: its type, size and mtime
/// without opening it (a device is never opened), then its validators.
/// A file we may not open still has its mtime.
pub fn look(dir: &OwnedFd, name: &OsStr) -> std::io::Result<OnDisk> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(OnDisk::Absent),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(OnDisk::NotAFile);
    }
    let since_epoch = Duration::new(stat.st_mtime.max(0) as u64, stat.st_mtime_nsec as u32);
    let modified = UNIX_EPOCH + since_epoch;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let validators = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(file) => {
            let etag = read_attr(&file, ETAG_ATTR);
            // Only asked for when there is no ETag: it would not be used.
            let last_modified = if etag.is_none() { read_attr(&file, LAST_MODIFIED_ATTR) } else { None };
            Validators { etag, last_modified }
        }
        Err(_) => Validators::default(),
    };
    Ok(OnDisk::File(Stored { validators, modified, size: stat.st_size as u64 }))
}

/// What a refresh does with a destination.
#[derive(Debug)]
pub enum Plan {
    /// Nothing there: an ordinary download.
    Download,
    /// Not a regular file: kept, as without `--refresh`.
    Keep,
    /// Ask the server whether it changed.
    Ask(Condition),
    /// Download and replace it whatever the server has: its size is not
    /// the manifest's, or its mtime cannot be said as a date.
    Replace,
}

/// Decide what a refresh does with `name` in `dir`, which the manifest
/// says is `size` bytes long.
pub fn plan(dir: &OwnedFd, name: &OsStr, size: Option<u64>) -> std::io::Result<Plan> {
    Ok(match look(dir, name)? {
        OnDisk::Absent => Plan::Download,
        OnDisk::NotAFile => Plan::Keep,
        OnDisk::File(stored) if size.is_some_and(|size| size != stored.size) => Plan::Replace,
        OnDisk::File(stored) => stored.condition().map_or(Plan::Replace, Plan::Ask),
    })
}

/// The condition of a refresh's request, and what proves a `200` to be
/// the file already on disk.
#[derive(Debug, Clone)]
pub struct Condition {
    name: HeaderName,
    value: HeaderValue,
    /// The stored strong ETag.
    etag: Option<String>,
    size: u64,
}

impl Stored {
    /// The condition to send: `If-None-Match` with the stored ETag, else
    /// `If-Modified-Since` with the stored `Last-Modified`, else with the
    /// mtime. `None` only for an mtime no HTTP date can say (before 1970).
    pub fn condition(&self) -> Option<Condition> {
        let Validators { etag, last_modified } = &self.validators;
        let date = last_modified.as_deref().filter(|v| httpdate::parse_http_date(v).is_ok());
        let (name, value) = match (etag, date) {
            (Some(etag), _) => (header::IF_NONE_MATCH, etag.clone()),
            (None, Some(date)) => (header::IF_MODIFIED_SINCE, date.to_owned()),
            (None, None) => (header::IF_MODIFIED_SINCE, http_date(self.modified)?),
        };
        let strong = etag.clone().filter(|tag| !tag.starts_with("W/"));
        Some(Condition { name, value: HeaderValue::from_str(&value).ok()?, etag: strong, size: self.size })
    }
}

/// `time` as an HTTP date, when it is one: from 1970 to 9999 (httpdate
/// panics outside).
fn http_date(time: SystemTime) -> Option<String> {
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < 253_402_300_800).then(|| httpdate::fmt_http_date(time))
}

impl Condition {
    /// The request header that makes the request conditional.
    pub fn header(&self) -> (&HeaderName, &HeaderValue) {
        (&self.name, &self.value)
    }

    /// Whether a `200` with this `ETag` and `Content-Length` is the file
    /// on disk (the server ignored the condition): the stored strong ETag,
    /// and the same length when the server gives one.
    pub fn same_file(&self, etag: Option<&str>, length: Option<u64>) -> bool {
        self.etag.as_deref().is_some_and(|stored| etag == Some(stored))
            && length.is_none_or(|length| length == self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn stored(etag: Option<&str>, last_modified: Option<&str>, mtime: u64) -> Stored {
        Stored {
            validators: Validators {
                etag: etag.map(Into::into),
                last_modified: last_modified.map(Into::into),
            },
            modified: UNIX_EPOCH + Duration::from_secs(mtime),
            size: 5,
        }
    }

    #[test]
    fn the_condition_is_the_etag_else_the_date_else_the_mtime() {
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let cases = [
            (Some("\"a\""), Some(date), 0, Some(("if-none-match", "\"a\""))),
            (Some("W/\"a\""), None, 0, Some(("if-none-match", "W/\"a\""))),
            (None, Some(date), 0, Some(("if-modified-since", date))),
            // Not a date: the mtime says it instead.
            (None, Some("yesterday"), 1_445_412_480, Some(("if-modified-since", date))),
            (None, None, 1_445_412_480, Some(("if-modified-since", date))),
        ];
        for (etag, last_modified, mtime, want) in cases {
            let condition = stored(etag, last_modified, mtime).condition();
            let got = condition.as_ref().map(|c| (c.header().0.as_str(), c.header().1.to_str().unwrap()));
            assert_eq!(got, want, "{etag:?} {last_modified:?}");
        }
        let before_1970 = Stored { modified: UNIX_EPOCH - Duration::from_secs(1), ..stored(None, None, 0) };
        assert!(before_1970.condition().is_none());
    }

    #[test]
    fn a_200_is_the_same_file_only_by_its_strong_etag_and_length() {
        let strong = stored(Some("\"a\""), None, 0).condition().unwrap();
        assert!(strong.same_file(Some("\"a\""), Some(5)));
        assert!(strong.same_file(Some("\"a\""), None));
        assert!(!strong.same_file(Some("\"a\""), Some(6)), "a length that differs");
        assert!(!strong.same_file(Some("\"b\""), Some(5)));
        assert!(!strong.same_file(None, Some(5)));
        let weak = stored(Some("W/\"a\""), None, 0).condition().unwrap();
        assert!(!weak.same_file(Some("W/\"a\""), Some(5)), "weak: equivalent, not the same bytes");
        let dated = stored(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), 0).condition().unwrap();
        assert!(!dated.same_file(None, Some(5)));
    }

    #[test]
    fn validators_too_large_or_not_header_values_are_not_kept() {
        let long = "x".repeat(MAX_VALIDATOR + 1);
        let v = Validators::new(Some(&long), Some("a\r\nb"));
        assert_eq!(v, Validators::default());
        let v = Validators::new(Some("\"e\""), Some(""));
        assert_eq!(v, Validators { etag: Some("\"e\"".into()), last_modified: None });
    }

    /// Whether `dir` takes user attributes (tmpfs before Linux 6.6 does not).
    fn has_user_xattrs(file: &File) -> bool {
        rustix::fs::fsetxattr(file, "user.fetch.probe", b"1", XattrFlags::empty()).is_ok()
    }

    #[test]
    fn stored_validators_are_read_back_replaced_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = OwnedFd::from(File::open(tmp.path()).unwrap());
        let mut file = File::create(tmp.path().join("f")).unwrap();
        file.write_all(b"hello").unwrap();
        if !has_user_xattrs(&file) {
            eprintln!("skipped: no user xattrs on {}", tmp.path().display());
            return;
        }
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let v = Validators::new(Some("\"e\""), Some(date));
        store(&file, &v);
        let OnDisk::File(found) = look(&dir, "f".as_ref()).unwrap() else { panic!("not a file") };
        assert_eq!(found.validators, Validators { etag: v.etag.clone(), last_modified: None });
        assert_eq!(found.size, 5);
        // Without an ETag, the date is what a refresh sends.
        let other = File::create(tmp.path().join("g")).unwrap();
        store(&other, &Validators::new(None, Some(date)));
        let OnDisk::File(found) = look(&dir, "g".as_ref()).unwrap() else { panic!("not a file") };
        assert_eq!(found.validators, Validators { etag: None, last_modified: Some(date.into()) });
        // Another program's oversized or binary attribute is ignored.
        let large = vec![b'x'; MAX_VALIDATOR + 1];
        rustix::fs::fsetxattr(&file, ETAG_ATTR, &large, XattrFlags::empty()).unwrap();
        rustix::fs::fsetxattr(&file, LAST_MODIFIED_ATTR, b"\n\xff", XattrFlags::empty()).unwrap();
        let OnDisk::File(found) = look(&dir, "f".as_ref()).unwrap() else { panic!("not a file") };
        assert_eq!(found.validators, Validators::default());
        assert!(matches!(look(&dir, "none".as_ref()).unwrap(), OnDisk::Absent));
        std::os::unix::fs::symlink("f", tmp.path().join("link")).unwrap();
        assert!(matches!(look(&dir, "link".as_ref()).unwrap(), OnDisk::NotAFile));
    }

    #[test]
    fn without_user_xattrs_nothing_is_stored_and_nothing_fails() {
        // A FIFO opened for reading takes no user attributes (EPERM), as a
        // filesystem without them refuses them (ENOTSUP).
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("p");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from(0o600), 0).unwrap();
        let flags = OFlags::RDONLY | OFlags::NONBLOCK;
        let file = rustix::fs::open(&fifo, flags, Mode::empty()).unwrap();
        store(&file, &Validators::new(Some("\"e\""), Some("Wed, 21 Oct 2015 07:28:00 GMT")));
        assert_eq!(read_attr(&file, ETAG_ATTR), None);
    }
}
