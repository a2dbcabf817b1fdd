//! Which instance forwards which queue (issue 18), the two pure rules the
//! coordination through 4.x consumer groups rests on:
//! - [`allocate`]: the queues of one member, the way Java's
//!   `AllocateMessageQueueAveragely` assigns them (queues and client ids
//!   sorted; contiguous blocks; the first `queues % members` members get one
//!   more), so every member computes the same split from the same lists;
//! - [`Lease`]: whether a member may still send for a queue it locked on
//!   the broker. Brokers keep a lock 60 s and fence nothing themselves; a
//!   holder counts its lock as expired [`LOCAL_LOCK_TTL`] after it *sent*
//!   the lock request (the broker's timer starts later), so it stops before
//!   any other member can take the queue;
//! - [`Fence`]: the same rule where the sends happen.
//!
//! Must not touch: the requests (remoting::cmd::lock, consumer), the
//! pipeline's queue workers.

use std::time::{Duration, Instant};

/// A lock counts as held this long after the request that took or renewed
/// it was sent (Java's `REBALANCE_LOCK_MAX_LIVE_TIME`; brokers keep it 60 s).
pub const LOCAL_LOCK_TTL: Duration = Duration::from_secs(30);

/// Locks are renewed this often (Java's `REBALANCE_LOCK_INTERVAL`).
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// The queues of member `me` among `members`: `queues` and `members` are
/// sorted here, so callers may pass them in any order. Empty when `me` is
/// not a member (it must own nothing until it sees itself in the list).
pub fn allocate<Q: Ord + Clone>(queues: &[Q], members: &[String], me: &str) -> Vec<Q> {
    let mut queues = queues.to_vec();
    queues.sort();
    queues.dedup();
    let mut members = members.to_vec();
    members.sort();
    members.dedup();
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (n, m) = (queues.len(), members.len());
    if n == 0 {
        return Vec::new();
    }
    let extra = n % m;
    let size = if n <= m {
        1
    } else if index < extra {
        n / m + 1
    } else {
        n / m
    };
    let start = if index < extra {
        index * size
    } else {
        index * size + extra
    };
    let take = size.min(n.saturating_sub(start));
    (0..take).map(|i| queues[(start + i) % n].clone()).collect()
}

/// One queue's lock as its holder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When the last request that the broker answered with this queue
    /// locked was sent.
    sent_at: Instant,
}

impl Lease {
    /// The broker answered the lock request sent at `sent_at` with this
    /// queue held.
    pub fn granted(sent_at: Instant) -> Self {
        Lease { sent_at }
    }

    /// A later renewal answered with the queue held.
    pub fn renewed(&mut self, sent_at: Instant) {
        self.sent_at = self.sent_at.max(sent_at);
    }

    /// Whether the holder may still send for the queue at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.sent_at) < LOCAL_LOCK_TTL
    }

    /// When sending must have stopped.
    pub fn expires_at(&self) -> Instant {
        self.sent_at + LOCAL_LOCK_TTL
    }
}

/// The send side of one owned queue's [`Lease`]: the send layer asks it
/// before each attempt (`send.rs`), so a queue whose lease ended sends
/// nothing more, whatever its tasks were doing (a process resumed after
/// SIGSTOP checks the monotonic clock, not a timer that has yet to fire).
#[derive(Debug)]
pub struct Fence {
    until: std::sync::Mutex<Option<Instant>>,
}

impl Fence {
    /// Open until `lease` ends.
    pub fn new(lease: &Lease) -> Self {
        Fence {
            until: std::sync::Mutex::new(Some(lease.expires_at())),
        }
    }

    /// Follows a renewed lease.
    pub fn extend(&self, lease: &Lease) {
        if let Ok(mut until) = self.until.lock() {
            if until.is_some() {
                *until = Some(lease.expires_at());
            }
        }
    }

    /// Closed for good: the queue is being released or was lost.
    pub fn close(&self) {
        if let Ok(mut until) = self.until.lock() {
            *until = None;
        }
    }

    /// Whether a send (or an offset commit) for the queue may start now.
    pub fn open_at(&self, now: Instant) -> bool {
        match self.until.lock() {
            Ok(until) => until.is_some_and(|u| now < u),
            Err(_) => false,
        }
    }

    pub fn open(&self) -> bool {
        self.open_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {

    /// A send started at the last moment of a holder's lease ends before
    /// the broker's lock (60 s) can pass to another instance.
    #[test]
    fn the_longest_send_ends_inside_the_brokers_lock() {
        const BROKER_LOCK: Duration = Duration::from_secs(60);
        assert!(
            LOCAL_LOCK_TTL + crate::config::MAX_COORDINATED_REQUEST_TIMEOUT * 2 <= BROKER_LOCK,
            "config::MAX_COORDINATED_REQUEST_TIMEOUT leaves no margin"
        );
    }
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}@bridge")).collect()
    }

    #[test]
    fn every_queue_has_exactly_one_owner_and_blocks_are_even() {
        for n in [0usize, 1, 2, 3, 7, 8, 16, 17] {
            for m in 1..=5usize {
                let queues: Vec<u32> = (0..n as u32).rev().collect();
                let all = members(m);
                let mut owners = vec![0; n];
                let mut sizes = Vec::new();
                for me in &all {
                    let mine = allocate(&queues, &all, me);
                    sizes.push(mine.len());
                    for q in mine {
                        owners[q as usize] += 1;
                    }
                }
                if n >= m {
                    assert!(owners.iter().all(|&o| o == 1), "n={n} m={m}: {owners:?}");
                    let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
                    assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{sizes:?}");
                } else {
                    // More members than queues: Java gives each of the
                    // first n members one queue, the rest none.
                    assert!(owners.iter().all(|&o| o == 1), "n={n} m={m}: {owners:?}");
                }
            }
        }
    }

    #[test]
    fn the_split_is_javas_contiguous_blocks_whatever_the_input_order() {
        let queues: Vec<u32> = (0..8).collect();
        let mut all = members(3);
        assert_eq!(allocate(&queues, &all, &all[0]), vec![0, 1, 2]);
        assert_eq!(allocate(&queues, &all, &all[1]), vec![3, 4, 5]);
        assert_eq!(allocate(&queues, &all, &all[2]), vec![6, 7]);
        all.reverse();
        let shuffled = [5u32, 0, 7, 1, 6, 2, 4, 3];
        assert_eq!(allocate(&shuffled, &all, "10.0.0.1@bridge"), vec![3, 4, 5]);
        assert!(allocate(&queues, &all, "not-a-member").is_empty());
    }

    #[test]
    fn a_lease_ends_before_the_broker_can_give_the_queue_away() {
        let t0 = Instant::now();
        let mut lease = Lease::granted(t0);
        assert!(lease.valid_at(t0 + Duration::from_secs(29)));
        assert!(!lease.valid_at(t0 + LOCAL_LOCK_TTL));
        // The broker's 60 s start when it handles the request, after t0.
        assert!(lease.expires_at() < t0 + Duration::from_secs(60));
        lease.renewed(t0 + RENEW_EVERY);
        assert!(lease.valid_at(t0 + Duration::from_secs(45)));
        // An older renewal answered late never moves the end back.
        lease.renewed(t0 + Duration::from_secs(5));
        assert_eq!(lease.expires_at(), t0 + RENEW_EVERY + LOCAL_LOCK_TTL);
    }

    #[test]
    fn a_fence_follows_its_lease_and_never_reopens_once_closed() {
        let t0 = Instant::now();
        let mut lease = Lease::granted(t0);
        let fence = Fence::new(&lease);
        assert!(fence.open_at(t0 + Duration::from_secs(29)));
        assert!(
            !fence.open_at(t0 + LOCAL_LOCK_TTL),
            "closed when the lease ends"
        );
        lease.renewed(t0 + RENEW_EVERY);
        fence.extend(&lease);
        assert!(fence.open_at(t0 + Duration::from_secs(45)));
        fence.close();
        assert!(!fence.open_at(t0));
        lease.renewed(t0 + Duration::from_secs(40));
        fence.extend(&lease);
        assert!(
            !fence.open_at(t0 + Duration::from_secs(41)),
            "a closed fence stays closed"
        );
    }
}
