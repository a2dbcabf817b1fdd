//! One source queue's window: the offsets handed to the pipeline and not yet
//! finished, and the frontier below which everything was handed over.
//!
//! Owns: "a checkpoint never moves past an unfinished message". `done()` is
//! the only answer to "how far may the checkpoint go", and it is the first
//! unfinished offset (or the frontier when nothing is pending).
//! Must not touch: sending, budgets, RocksDB. Pure and tested alone.
//!
//! Offsets from the broker are checked here: a record at or below an offset
//! already taken (overlapping or repeated records) is refused instead of
//! wedging the window.

use std::collections::VecDeque;

#[derive(Debug)]
struct Slot {
    offset: i64,
    done: bool,
    store_ms: i64,
}

/// Why the window refused an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// At or below what was already taken (the broker served it twice).
    Overlap { offset: i64, expected_at_least: i64 },
}

#[derive(Debug)]
pub struct Window {
    pending: VecDeque<Slot>,
    /// Everything below this was handed over (taken or skipped as a gap).
    frontier: i64,
}

impl Window {
    pub fn new(start: i64) -> Self {
        Window {
            pending: VecDeque::new(),
            frontier: start,
        }
    }

    /// Takes `offset` into the window, already finished or not.
    pub fn take(&mut self, offset: i64, store_ms: i64, done: bool) -> Result<(), Refused> {
        if offset < self.frontier {
            return Err(Refused::Overlap {
                offset,
                expected_at_least: self.frontier,
            });
        }
        self.pending.push_back(Slot {
            offset,
            done,
            store_ms,
        });
        self.frontier = offset.saturating_add(1);
        Ok(())
    }

    /// Everything below `next` was handed over (filtered gaps included).
    pub fn advance(&mut self, next: i64) {
        self.frontier = self.frontier.max(next);
    }

    /// The 4.x queue restarted below our position: continue at `next`.
    /// Only while nothing is pending; false (and no change) otherwise.
    pub fn reset(&mut self, next: i64) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.frontier = next;
        true
    }

    /// Marks `offset` finished (forwarded, skipped or quarantined).
    pub fn mark_done(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |s| s.offset) {
            self.pending[i].done = true;
        }
    }

    /// The offset the checkpoint may move to: the first unfinished one, or
    /// the frontier when nothing is pending.
    pub fn done(&mut self) -> i64 {
        while self.pending.front().is_some_and(|s| s.done) {
            self.pending.pop_front();
        }
        self.pending
            .front()
            .map(|s| s.offset)
            .unwrap_or(self.frontier)
    }

    /// Store time of the oldest unfinished message.
    pub fn oldest_pending_store_ms(&self) -> Option<i64> {
        self.pending.iter().find(|s| !s.done).map(|s| s.store_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn frontier(&self) -> i64 {
        self.frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_stops_at_the_first_unfinished_offset() {
        let mut w = Window::new(0);
        for o in 0..5 {
            w.take(o, o * 10, false).expect("take");
        }
        // 1..5 acknowledged while 0 is pending: the checkpoint stays at 0.
        for o in 1..5 {
            w.mark_done(o);
        }
        assert_eq!(w.done(), 0);
        assert_eq!(w.oldest_pending_store_ms(), Some(0));
        w.mark_done(0);
        assert_eq!(w.done(), 5);
        assert!(w.is_empty());
    }

    #[test]
    fn gaps_and_advances_move_the_frontier() {
        let mut w = Window::new(10);
        w.take(12, 0, true).expect("take");
        w.advance(20);
        assert_eq!(w.done(), 20);
        // An advance never moves backwards.
        w.advance(15);
        assert_eq!(w.done(), 20);
    }

    #[test]
    fn overlapping_offsets_are_refused_not_wedged() {
        let mut w = Window::new(0);
        w.take(0, 0, false).expect("take");
        w.take(1, 0, false).expect("take");
        assert_eq!(
            w.take(1, 0, false),
            Err(Refused::Overlap {
                offset: 1,
                expected_at_least: 2
            })
        );
        assert_eq!(
            w.take(0, 0, false),
            Err(Refused::Overlap {
                offset: 0,
                expected_at_least: 2
            })
        );
        w.mark_done(0);
        w.mark_done(1);
        assert_eq!(w.done(), 2, "a repeated record does not hold the window");
    }

    #[test]
    fn reset_waits_for_pending_and_then_moves_backwards() {
        let mut w = Window::new(100);
        w.take(100, 0, false).expect("take");
        assert!(!w.reset(40), "not while a message is in flight");
        w.mark_done(100);
        assert_eq!(w.done(), 101);
        assert!(w.reset(40));
        assert_eq!(w.done(), 40);
    }

    #[test]
    fn offsets_near_i64_max_do_not_overflow() {
        let mut w = Window::new(i64::MAX - 1);
        w.take(i64::MAX - 1, 0, true).expect("take");
        w.take(i64::MAX, 0, true).expect("take");
        assert_eq!(w.done(), i64::MAX);
    }
}
