//! The piece table of a split download: which ranges of the file are on
//! disk, in a worker's buffer, asked for, or free to take. Pure: the
//! workers in [`super`] lock it, ask it what to fetch next, and tell it
//! what arrived.
//!
//! Invariants: pieces never overlap and together cover the file; a piece's
//! `start <= written <= next <= asked <= end`, but for the first response,
//! which keeps `asked` at `next`; a stealer lowers a piece's `end`, never
//! below its `asked`, so no byte is asked for twice.

use std::ops::Range;

use super::MIN_PIECE;

/// One range of the file: `start..end`, of which `start..written` is on
/// disk, `written..next` is in its worker's buffer and `next..asked` is
/// asked for by its worker's request in flight. A stealer lowers `end`,
/// never below `asked`.
///
/// The first response asked for the whole file, but keeps `asked` at
/// `next`: it is the one request that stops short of what it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) start: u64,
    pub(super) written: u64,
    /// `start..synced` has been handed to writeback.
    pub(super) synced: u64,
    pub(super) next: u64,
    pub(super) asked: u64,
    pub(super) end: u64,
    pub(super) claimed: bool,
}

impl Piece {
    pub(super) fn fresh(start: u64, end: u64) -> Piece {
        Piece { start, written: start, synced: start, next: start, asked: start, end, claimed: false }
    }

    pub(super) fn left(&self) -> u64 {
        self.end - self.next
    }

    /// The bytes nobody has asked for: what a stealer may take.
    pub(super) fn unasked(&self) -> u64 {
        self.end - self.asked
    }
}

/// The pieces of one file and who works on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub(super) pieces: Vec<Piece>,
}

impl Table {
    /// The parts of `0..total` not in `done`, cut into at least
    /// `connections` pieces where they are large enough.
    pub fn new(total: u64, done: &[[u64; 2]], connections: usize) -> Table {
        let done = merge(done.iter().map(|&[s, e]| [s.min(total), e.min(total)]).collect());
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = 0;
        for &[start, end] in &done {
            if start > at {
                pieces.push(Piece::fresh(at, start));
            }
            pieces.push(Piece {
                start,
                written: end,
                synced: end,
                next: end,
                asked: end,
                end,
                claimed: false,
            });
            at = end;
        }
        if at < total {
            pieces.push(Piece::fresh(at, total));
        }
        // Halve the largest missing piece until there is one per connection.
        while pieces.iter().filter(|p| p.left() > 0).count() < connections {
            let Some(i) = (0..pieces.len()).max_by_key(|&i| pieces[i].left()) else { break };
            let piece = pieces[i];
            if piece.left() < 2 * MIN_PIECE {
                break;
            }
            let mid = piece.next + piece.left() / 2;
            pieces[i].end = mid;
            pieces.insert(i + 1, Piece::fresh(mid, piece.end));
        }
        Table { pieces }
    }

    /// A piece for a worker: the first one nobody has, else the second half
    /// of the largest part of a piece in flight that its worker has not
    /// asked for yet. `None` when nothing is left to share.
    pub(super) fn claim(&mut self) -> Option<usize> {
        if let Some(i) = self.pieces.iter().position(|p| !p.claimed && p.left() > 0) {
            self.pieces[i].claimed = true;
            return Some(i);
        }
        let i = (0..self.pieces.len()).max_by_key(|&i| self.pieces[i].unasked())?;
        let victim = self.pieces[i];
        if victim.unasked() < 2 * MIN_PIECE {
            return None;
        }
        // Page-aligned, so both halves write whole pages.
        let mid = (victim.asked + victim.unasked() / 2) & !4095;
        self.pieces[i].end = mid;
        self.pieces.push(Piece { claimed: true, ..Piece::fresh(mid, victim.end) });
        Some(self.pieces.len() - 1)
    }

    /// The next request of piece `i`'s worker: up to `window` bytes from
    /// where the piece stands, which no stealer may take from then on.
    /// `None` when the piece is complete.
    pub(super) fn ask(&mut self, i: usize, window: u64) -> Option<Range<u64>> {
        let piece = &mut self.pieces[i];
        if piece.left() == 0 {
            return None;
        }
        piece.asked = piece.end.min(piece.next + window);
        Some(piece.next..piece.asked)
    }

    /// Take up to `len` more bytes for piece `i` from a response that
    /// stops at `stop`; says how many, and whether that response is then
    /// done with (at `stop` or at the piece's end, whichever comes first).
    pub(super) fn take(&mut self, i: usize, len: u64, stop: u64) -> (u64, bool) {
        let piece = &mut self.pieces[i];
        let stop = stop.min(piece.end);
        let take = len.min(stop - piece.next);
        piece.next += take;
        piece.asked = piece.asked.max(piece.next);
        (take, piece.next == stop)
    }

    /// The `[start, end)` ranges on disk, merged.
    pub fn done(&self) -> Vec<[u64; 2]> {
        merge(self.pieces.iter().filter(|p| p.written > p.start).map(|p| [p.start, p.written]).collect())
    }

    pub fn done_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.written - p.start).sum()
    }

    pub fn complete(&self) -> bool {
        self.pieces.iter().all(|p| p.written == p.end)
    }

    pub(super) fn open(&self) -> usize {
        self.pieces.iter().filter(|p| p.left() > 0).count()
    }
}

fn merge(mut ranges: Vec<[u64; 2]>) -> Vec<[u64; 2]> {
    ranges.retain(|r| r[1] > r[0]);
    ranges.sort_unstable();
    let mut out: Vec<[u64; 2]> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_PIECE;

    #[test]
    fn a_fresh_file_is_cut_into_one_piece_per_connection() {
        let t = Table::new(64 * M, &[], 8);
        let ranges: Vec<_> = t.pieces.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(ranges.len(), 8);
        assert!(ranges.iter().all(|&(s, e)| e - s == 8 * M), "{ranges:?}");
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges[7].1, 64 * M);
        // Too small to split further than pieces of MIN_PIECE.
        assert_eq!(Table::new(3 * M, &[], 8).pieces.len(), 2);
        assert_eq!(Table::new(100, &[], 8).pieces.len(), 1);
    }

    #[test]
    fn only_missing_ranges_become_pieces() {
        let done = [[0, 10 * M], [30 * M, 40 * M], [35 * M, 50 * M]];
        let t = Table::new(64 * M, &done, 2);
        assert_eq!(t.done(), vec![[0, 10 * M], [30 * M, 50 * M]]);
        assert_eq!(t.done_bytes(), 30 * M);
        let missing: Vec<_> = t.pieces.iter().filter(|p| p.left() > 0).map(|p| [p.next, p.end]).collect();
        assert_eq!(missing, vec![[10 * M, 30 * M], [50 * M, 64 * M]]);
        assert!(!t.complete());
        assert!(Table::new(64 * M, &[[0, 64 * M]], 8).complete());
    }

    #[test]
    fn an_idle_worker_steals_half_of_the_largest_range_nobody_asked_for() {
        let mut t = Table::new(16 * M, &[], 2);
        let a = t.claim().unwrap();
        let b = t.claim().unwrap();
        assert_eq!(t.ask(a, 8 * M), Some(0..8 * M));
        assert_eq!(t.take(a, 8 * M, 8 * M), (8 * M, true));
        t.pieces[a].written = 8 * M;
        t.pieces[a].claimed = false;
        assert_eq!(t.ask(a, M), None, "a complete piece asks for nothing");
        // b asked for 8..10 and has 2 MiB of it: the thief takes half of
        // 10..16, b keeps 8..13.
        assert_eq!(t.ask(b, 2 * M), Some(8 * M..10 * M));
        t.take(b, M, 10 * M);
        let c = t.claim().unwrap();
        assert_eq!((t.pieces[c].start, t.pieces[c].end), (13 * M, 16 * M));
        assert_eq!(t.pieces[b].end, 13 * M);
        assert_eq!(t.take(b, 10 * M, 10 * M), (M, true), "a request stops where it asked to");
        assert_eq!(t.ask(b, 8 * M), Some(10 * M..13 * M), "and the next stops at the new end");
        // b asked for all it has left, c for 13..15: only 15..16 is free,
        // under two pieces' worth.
        t.ask(c, 2 * M);
        assert_eq!(t.claim(), None);
    }

    #[test]
    fn no_byte_is_asked_for_twice() {
        // Workers that ask in windows of every size and steal whenever they
        // can: the requests never overlap, and together cover the file.
        for window in [M, 3 * M + 4096, 7 * M, 64 * M] {
            let mut t = Table::new(64 * M, &[[5 * M, 9 * M]], 4);
            let mut asked: Vec<Range<u64>> = Vec::new();
            let mut workers: Vec<usize> = (0..4).filter_map(|_| t.claim()).collect();
            while !workers.is_empty() {
                for w in std::mem::take(&mut workers) {
                    let next = match t.ask(w, window) {
                        Some(range) => {
                            // Half a window arrives, then a thief comes by.
                            let half = (range.end - range.start).div_ceil(2);
                            t.take(w, half, range.end);
                            let thief = t.claim();
                            t.take(w, range.end - range.start, range.end);
                            asked.push(range);
                            Some(w).into_iter().chain(thief).collect()
                        }
                        None => {
                            t.pieces[w].claimed = false;
                            t.claim().into_iter().collect::<Vec<_>>()
                        }
                    };
                    workers.extend(next);
                }
                for p in &mut t.pieces {
                    p.written = p.next;
                }
            }
            asked.sort_by_key(|r| r.start);
            assert!(asked.windows(2).all(|w| w[0].end <= w[1].start), "{window}: {asked:?}");
            let bytes: u64 = asked.iter().map(|r| r.end - r.start).sum();
            assert_eq!(bytes, 60 * M, "{window}");
            assert!(t.complete(), "{window}");
        }
    }
}
