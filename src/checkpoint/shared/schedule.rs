//! The schedule side's share of the estate state topic (issue 18, item 4):
//! what coordinating instances must know of a route's pending scheduled
//! messages when another instance lost its disk.
//!
//! - [`ForwardedShare`]: a message 5.x accepted from the schedule side
//!   (`Confirmed`: the topic path skips the broker's copy, wherever the
//!   copy's queue is owned now), or whose copy the topic path met first
//!   (`Released`: the schedule side, wherever it runs, sends no more);
//! - a schedule queue's position: every record of it below the offset was
//!   decided by an owner whose ledger records were on 5.x before the
//!   position was (the outbox keeps that order).
//!
//! Owns: the fold of those two records. Must not touch: I/O, the ledger's
//! rules (`pipeline::schedule_ledger`).
//!
//! Fold: flags only ever get set (a message confirmed and released in a
//! race stays both: one send was confirmed, the copy was forwarded too);
//! a position is the highest written (a former owner's record published
//! late never moves it back); entries whose deadline is older than the
//! horizon the caller passes to [`ScheduleShare::forget_before`] leave the
//! view (a copy met after that is forwarded again: a duplicate with the
//! same id, never a loss).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::SourceQueue;

/// What one instance shares of a forwarded pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedForward {
    Confirmed,
    Released,
}

/// A message's shared state, folded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardedShare {
    pub deadline_ms: i64,
    pub confirmed: bool,
    pub released: bool,
}

pub fn forwarded_key(route: &str, key: &str) -> String {
    format!("f/{route}/{key}")
}

pub fn position_key(route: &str, queue: &SourceQueue) -> String {
    format!("p/{route}/{}/{}", queue.broker_name, queue.queue_id)
}

/// The schedule side's records of the state topic, folded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleShare {
    forwarded: BTreeMap<(String, String), ForwardedShare>,
    positions: BTreeMap<(String, SourceQueue), i64>,
}

impl ScheduleShare {
    pub fn forwarded(&mut self, route: &str, key: &str, deadline_ms: i64, state: SharedForward) {
        let e = self
            .forwarded
            .entry((route.to_string(), key.to_string()))
            .or_default();
        e.deadline_ms = e.deadline_ms.max(deadline_ms);
        match state {
            SharedForward::Confirmed => e.confirmed = true,
            SharedForward::Released => e.released = true,
        }
    }

    pub fn position(&mut self, route: &str, queue: &SourceQueue, offset: i64) {
        let p = self
            .positions
            .entry((route.to_string(), queue.clone()))
            .or_insert(offset);
        *p = (*p).max(offset);
    }

    pub fn get_forwarded(&self, route: &str, key: &str) -> Option<ForwardedShare> {
        self.forwarded
            .get(&(route.to_string(), key.to_string()))
            .copied()
    }

    pub fn get_position(&self, route: &str, queue: &SourceQueue) -> Option<i64> {
        self.positions
            .get(&(route.to_string(), queue.clone()))
            .copied()
    }

    /// Forgets messages whose deadline is before `before_ms`.
    pub fn forget_before(&mut self, before_ms: i64) -> usize {
        let n = self.forwarded.len();
        self.forwarded.retain(|_, e| e.deadline_ms >= before_ms);
        n - self.forwarded.len()
    }

    pub fn len(&self) -> usize {
        self.forwarded.len() + self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every message as (route, key, share), for the retention refresh.
    pub fn forwarded_entries(&self) -> impl Iterator<Item = (&str, &str, &ForwardedShare)> {
        self.forwarded
            .iter()
            .map(|((r, k), e)| (r.as_str(), k.as_str(), e))
    }

    pub fn positions(&self) -> impl Iterator<Item = (&str, &SourceQueue, i64)> {
        self.positions.iter().map(|((r, q), o)| (r.as_str(), q, *o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "b".into(),
            queue_id: id,
        }
    }

    #[test]
    fn flags_only_get_set_and_positions_never_go_back() {
        let mut s = ScheduleShare::default();
        s.forwarded("r", "k", 100, SharedForward::Confirmed);
        s.forwarded("r", "k", 100, SharedForward::Released);
        let e = s.get_forwarded("r", "k").expect("known");
        assert!(e.confirmed && e.released);
        assert_eq!(s.get_forwarded("other", "k"), None);

        s.position("r", &q(3), 40);
        // A former owner's record published after the new owner's.
        s.position("r", &q(3), 25);
        assert_eq!(s.get_position("r", &q(3)), Some(40));
        assert_eq!(s.get_position("r", &q(4)), None);
    }

    #[test]
    fn messages_past_the_horizon_are_forgotten() {
        let mut s = ScheduleShare::default();
        s.forwarded("r", "old", 100, SharedForward::Confirmed);
        s.forwarded("r", "new", 900, SharedForward::Confirmed);
        assert_eq!(s.forget_before(500), 1);
        assert_eq!(s.get_forwarded("r", "old"), None);
        assert!(s.get_forwarded("r", "new").is_some());
    }
}
