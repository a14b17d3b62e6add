//! One worker of a split download: it claims a piece, fetches it a
//! window at a time over its own connection, writes what arrives at its
//! offset, and retries on its own through [`crate::net::Net::retry`] with a budget of
//! its own; then it claims the next piece, or steals half of one.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Response;

use super::{MAX_WINDOW, MIN_PIECE, Shared, WINDOW_TIME};
use crate::body::Body;
use crate::error::AttemptError;
use crate::fsx::{DIRECT_WRITE, WRITE_BUFFER, WRITEBACK_EVERY};
use crate::net::{Failure, Stop};
use crate::pool::Slot;
use crate::retry::{self, Budget};
use crate::transfer;

/// Fetch pieces until none is left to share. `slot` and `first` (a piece
/// already claimed, and the response to fill it from) are the first
/// worker's; the others wait for a slot of their own.
pub(super) async fn worker(
    shared: Arc<Shared>,
    slot: Option<Slot>,
    first: Option<(usize, Response)>,
) -> Result<(), AttemptError> {
    let mut slot = slot;
    let mut buffer = Vec::with_capacity(WRITE_BUFFER);
    let mut window = MIN_PIECE;
    if let Some((i, response)) = first {
        fetch_piece(&shared, i, &mut slot, Some(response), &mut buffer, &mut window).await?;
        shared.table().pieces[i].claimed = false;
    }
    shared.net.slot(&shared.resource.host, &mut slot).await?;
    loop {
        let Some(i) = shared.table().claim() else { return Ok(()) };
        fetch_piece(&shared, i, &mut slot, None, &mut buffer, &mut window).await?;
        shared.table().pieces[i].claimed = false;
    }
}

/// Fetch piece `i` to its (possibly lowered) end, a window at a time,
/// retrying on its own through [`crate::net::Net::retry`]. `window` is the worker's,
/// carried from piece to piece: its connection's pace.
async fn fetch_piece(
    shared: &Shared,
    i: usize,
    slot: &mut Option<Slot>,
    mut first: Option<Response>,
    buffer: &mut Vec<u8>,
    window: &mut u64,
) -> Result<(), AttemptError> {
    let mut budget = Budget::new(shared.net.retry, shared.table().pieces[i].next);
    loop {
        let asked_at = Instant::now();
        let (range, response) = match first.take() {
            Some(response) => {
                let start = shared.table().pieces[i].next;
                (start..shared.resource.total, Ok(response))
            }
            None => {
                let Some(range) = shared.table().ask(i, *window) else { return Ok(()) };
                let response = request(shared, slot, range.start, range.end - 1).await;
                (range, response)
            }
        };
        let start = range.start;
        let result = match response {
            Ok(response) => stream(shared, i, response, range, buffer).await,
            Err(e) => Err(e),
        };
        flush(shared, i, buffer).map_err(AttemptError::Disk)?;
        let error = match result {
            Ok(()) => {
                let got = shared.table().pieces[i].next - start;
                *window = next_window(got, asked_at.elapsed());
                continue;
            }
            // The file restarts as one stream: nothing to retry here.
            Err(error @ (AttemptError::Cancelled | AttemptError::BadRange(_))) => return Err(error),
            Err(error) => error,
        };
        let failure = Failure {
            error: &error,
            class: retry::classify_attempt(&error),
            trouble: retry::trouble(&error),
            retry_after: error.retry_after(),
            position: shared.table().pieces[i].next,
            host: &shared.resource.host,
            dest: &shared.resource.dest,
            attempt: shared.requests.load(Ordering::Relaxed),
            // A split file's ranges stay on the URL that served its first response.
            fallback: false,
        };
        match shared.net.retry(&mut budget, failure, slot).await {
            Ok(()) => {}
            Err(Stop::GaveUp) => return Err(error),
            Err(Stop::Cancelled) => return Err(AttemptError::Cancelled),
        }
    }
}

async fn request(
    shared: &Shared,
    slot: &mut Option<Slot>,
    start: u64,
    end: u64,
) -> Result<Response, AttemptError> {
    shared.net.slot(&shared.resource.host, slot).await?;
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let resource = &shared.resource;
    let target = shared.target();
    let etag = resource.meta.etag.as_deref();
    let fetch = transfer::fetch_range(&target, start, end, &resource.if_range, etag, resource.total);
    tokio::select! {
        r = fetch => r,
        () = shared.net.shutdown.cancelled() => Err(AttemptError::Cancelled),
    }
}

/// What a worker asks for next, having received `bytes` in `took` on its
/// last request: about [`WINDOW_TIME`] at that rate, in whole pages.
fn next_window(bytes: u64, took: Duration) -> u64 {
    let rate = bytes as f64 / took.as_secs_f64().max(1e-3);
    ((rate * WINDOW_TIME.as_secs_f64()) as u64).clamp(MIN_PIECE, MAX_WINDOW) & !4095
}

/// Stream a response for `range` of the file into piece `i` until the
/// range or the piece ends (its end may be lowered by a stealer meanwhile,
/// never below what was asked for, but for the first response) or the body
/// does.
async fn stream(
    shared: &Shared,
    i: usize,
    response: Response,
    range: Range<u64>,
    buffer: &mut Vec<u8>,
) -> Result<(), AttemptError> {
    // A 206 carries no byte past its Content-Range: bytes beyond it are
    // not the ones asked for.
    let span = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| transfer::parse_content_range(v.to_str().ok()?))
        .map(|(start, end, _)| end + 1 - start);
    let mut reader = Body::new(response, &shared.net.body, &shared.net.shutdown, range.start);
    let mut body = 0u64;
    loop {
        let Some(chunk) = reader.chunk().await? else { break };
        shared.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        body += chunk.len() as u64;
        if let Some(expected) = span.filter(|&span| body > span) {
            return Err(AttemptError::Overlong { got: body, expected });
        }
        let (take, complete) = shared.table().take(i, chunk.len() as u64, range.end);
        let bytes = &chunk[..take as usize];
        if bytes.len() >= DIRECT_WRITE {
            // Large chunks (a fast link's) go to the file as they are: a
            // copy into the buffer cost 0.1 s of CPU per GiB.
            flush(shared, i, buffer).map_err(AttemptError::Disk)?;
            write_at(shared, i, bytes).map_err(AttemptError::Disk)?;
        } else {
            buffer.extend_from_slice(bytes);
        }
        shared.progress.advance(take);
        if complete {
            return Ok(());
        }
        if buffer.len() >= WRITE_BUFFER {
            flush(shared, i, buffer).map_err(AttemptError::Disk)?;
        }
    }
    let table = shared.table();
    let piece = &table.pieces[i];
    let expected = range.end.min(piece.end) - range.start;
    Err(AttemptError::Truncated { got: piece.next - range.start, expected })
}

/// Write the buffered bytes of piece `i` at their offset.
fn flush(shared: &Shared, i: usize, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    if buffer.is_empty() {
        return Ok(());
    }
    let result = write_at(shared, i, buffer);
    buffer.clear();
    result
}

/// Write the next bytes of piece `i` (those after its written ones) at
/// their offset, through the page cache, starting writeback every
/// [`WRITEBACK_EVERY`] so that the disk works while the network does.
///
/// Direct I/O (`O_DIRECT`) was measured instead and was slower: the
/// writeback started here already keeps the disk busy (commit be9884a).
fn write_at(shared: &Shared, i: usize, bytes: &[u8]) -> std::io::Result<()> {
    let at = shared.table().pieces[i].written;
    let result = shared.file.write_all_at(bytes, at);
    let writeback = {
        let mut table = shared.table();
        let piece = &mut table.pieces[i];
        match result {
            Ok(()) => piece.written += bytes.len() as u64,
            // The bytes are lost: fetch them again.
            Err(_) => piece.next = piece.written,
        }
        let dirty = piece.synced..piece.written;
        if dirty.end - dirty.start >= WRITEBACK_EVERY {
            piece.synced = dirty.end;
        }
        dirty
    };
    if writeback.end - writeback.start >= WRITEBACK_EVERY {
        crate::sys::start_writeback(&shared.file, writeback.start, writeback.end - writeback.start);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_PIECE;

    #[test]
    fn a_window_is_about_a_second_of_the_last_request() {
        let cases = [
            (4 * M, Duration::from_secs(1), 4 * M),
            (4 * M, Duration::from_secs(2), 2 * M),
            (M, Duration::from_secs(10), MIN_PIECE),
            (1 << 40, Duration::from_secs(1), MAX_WINDOW),
            (M, Duration::ZERO, MAX_WINDOW),
            (3 * M + 1, Duration::from_secs(1), 3 * M),
        ];
        for (bytes, took, want) in cases {
            assert_eq!(next_window(bytes, took), want, "{bytes} in {took:?}");
        }
    }
}
