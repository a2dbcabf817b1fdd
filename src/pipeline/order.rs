//! FIFO order: never two sends of one (target topic, message group) in
//! flight, across every queue, route and publisher of the bridge.
//!
//! Owns the order invariant, in two pieces:
//! - [`OrderLocks`]: one lock per (target topic, message group) for the whole
//!   bridge. A send of a FIFO message holds its group's [`GroupTurn`] from
//!   before the request until it is acknowledged (or given up), so a group
//!   seen in two source queues (queue count changed, broker failover, two
//!   routes into one topic) or a route restarted by a reload while its old
//!   sends still run can never have two sends in flight.
//! - [`GroupChains`]: inside one queue worker, successors of a group wait in
//!   4.x offset order until the previous send of their group finished, so
//!   they take the lock in order and hold no send permit while waiting.
//!
//! Must not touch: the network, budgets, checkpoints.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Key = (String, String);

/// The bridge-wide group locks. Cheap to share via `Arc`.
#[derive(Debug, Default)]
pub struct OrderLocks {
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to have one send of a group in flight; released on drop.
#[derive(Debug)]
pub struct GroupTurn {
    guard: Option<OwnedMutexGuard<()>>,
    key: Key,
    locks: Arc<OrderLocks>,
}

impl OrderLocks {
    pub fn new() -> Arc<Self> {
        Arc::new(OrderLocks::default())
    }

    /// Waits until no other send of `group` to `topic` is in flight.
    pub async fn turn(self: &Arc<Self>, topic: &str, group: &str) -> GroupTurn {
        let key = (topic.to_string(), group.to_string());
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let guard = lock.lock_owned().await;
        GroupTurn {
            guard: Some(guard),
            key,
            locks: Arc::clone(self),
        }
    }

    /// The group's turn if nobody holds it now.
    pub fn try_turn(self: &Arc<Self>, topic: &str, group: &str) -> Option<GroupTurn> {
        let key = (topic.to_string(), group.to_string());
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let guard = lock.try_lock_owned().ok();
        // Built even when busy, so Drop forgets an entry only we created.
        let turn = GroupTurn {
            guard,
            key,
            locks: Arc::clone(self),
        };
        turn.guard.is_some().then_some(turn)
    }

    /// Groups with a lock entry (held or waited for); for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.locks.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for GroupTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits, forget the group.
        if map
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// One queue worker's FIFO successors, per group, in offset order.
#[derive(Debug)]
pub struct GroupChains<T> {
    groups: HashMap<String, VecDeque<T>>,
}

impl<T> Default for GroupChains<T> {
    fn default() -> Self {
        GroupChains {
            groups: HashMap::new(),
        }
    }
}

impl<T> GroupChains<T> {
    /// Returns `item` when its group has nothing of this queue in flight
    /// (the group is now busy: start it); otherwise it waits its turn.
    pub fn start_or_wait(&mut self, group: &str, item: T) -> Option<T> {
        match self.groups.get_mut(group) {
            Some(waiting) => {
                waiting.push_back(item);
                None
            }
            None => {
                self.groups.insert(group.to_string(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The send of `group` finished: its next waiting item to start, or
    /// None (the group is idle again).
    pub fn finished(&mut self, group: &str) -> Option<T> {
        let waiting = self.groups.get_mut(group)?;
        match waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                self.groups.remove(group);
                None
            }
        }
    }

    /// Forgets every waiting item (stopping); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.groups.values().map(VecDeque::len).sum();
        self.groups.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn chains_release_successors_in_order() {
        let mut c = GroupChains::default();
        assert_eq!(c.start_or_wait("A", 1), Some(1));
        assert_eq!(c.start_or_wait("A", 2), None);
        assert_eq!(c.start_or_wait("A", 3), None);
        assert_eq!(c.start_or_wait("B", 10), Some(10));
        assert_eq!(c.finished("A"), Some(2));
        assert_eq!(c.finished("A"), Some(3));
        assert_eq!(c.finished("A"), None);
        assert_eq!(c.start_or_wait("A", 4), Some(4), "idle again");
        assert_eq!(c.clear(), 0);
    }

    /// Two "queues" (tasks) send the same group at once through the locks:
    /// never two in flight. Deleting the lock makes `peak` reach 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_send_per_group_across_tasks() {
        let locks = OrderLocks::new();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let locks = Arc::clone(&locks);
            let in_flight = Arc::clone(&in_flight);
            let peak = Arc::clone(&peak);
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let _turn = locks.turn("t", "A").await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(locks.tracked(), 0, "idle groups are forgotten");
    }

    #[tokio::test]
    async fn different_topics_or_groups_do_not_wait() {
        let locks = OrderLocks::new();
        let _a = locks.turn("t", "A").await;
        let b = tokio::time::timeout(Duration::from_secs(1), locks.turn("t", "B")).await;
        assert!(b.is_ok());
        let other_topic = tokio::time::timeout(Duration::from_secs(1), locks.turn("u", "A")).await;
        assert!(other_topic.is_ok());
        let same = tokio::time::timeout(Duration::from_millis(50), locks.turn("t", "A")).await;
        assert!(same.is_err(), "the same group waits");
    }
}
