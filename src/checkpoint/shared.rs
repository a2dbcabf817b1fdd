//! What coordinating instances must all be able to read (issue 18, item 4):
//! quarantined messages, the cutover journal and the offset each queue of a
//! route started from. Each instance's store stays the write-ahead record;
//! every write of those three is also handed to a [`Replica`] (the estate
//! state topic on 5.x, `crate::estate`), and readers (`verify`,
//! `check --decommission`, `quarantine`, `status`, a route's start) see the
//! union of the local store and a [`SharedView`] folded from that topic.
//!
//! Owns: the records' keys and encoding, the fold rule, and the merge of
//! local and shared. Must not touch: I/O (the store and `crate::estate` do).
//!
//! Fold rule: the fold does not depend on where a record was stored. A
//! key's records are sent with the key as ordering group, but the proxy
//! hashes the group over the topic's writable queues, and that list
//! shrinks while a 5.x broker restarts: a key moves queue, and queues are
//! read one after another (issue 30, item 3). So every rule is
//! order-free: a quarantine entry's version is its `quarantined_at_ms`, a
//! removal's is [`removal_version`] (above the entry it removed); of a
//! key, the higher version wins, a removal on a tie (records from before
//! versions, 0, fall back to the topic's order). An entry comes back only
//! when quarantined again, never by a retention refresh (which carries the
//! entry's own version); a removal is refreshed while a copy it shadows is
//! in the topic, and instances forget locally what the topic removed. A
//! journal entry, once written, is never changed; a queue's start is the
//! lowest one written (a later instance that found no position anywhere
//! writes a later start, which must not narrow what `verify` covers); the
//! schedule side's records only grow (schedule.rs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{CheckpointStore, JournalEntry, QuarantineEntry, SourceQueue, StoreError};

pub mod schedule;
pub use schedule::{ForwardedShare, ScheduleShare, SharedForward};

/// One record of the state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SharedRecord {
    Quarantined {
        entry: QuarantineEntry,
        /// Written again by the retention refresh, not by a quarantine: it
        /// never brings back an entry the topic removed (a removal racing
        /// the refresh that read the entry as live).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refresh: bool,
    },
    QuarantineRemoved {
        key: String,
        /// The removal's version: the remover's clock, and above the
        /// `quarantined_at_ms` of the entry it removed (0: written before
        /// removals had versions). See the module's fold rule.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: i64,
    },
    Journal {
        entry: JournalEntry,
    },
    Start {
        route: String,
        queue: SourceQueue,
        offset: i64,
    },
    /// A pending scheduled message of `route` (ledger key `key`) that 5.x
    /// accepted from the schedule side, or whose copy the topic path took.
    Forwarded {
        route: String,
        key: String,
        deadline_ms: i64,
        state: SharedForward,
    },
    /// The schedule side's position in one schedule queue (`route` is the
    /// route's name, not `<route>#scheduled`).
    SchedulePosition {
        route: String,
        queue: SourceQueue,
        offset: i64,
    },
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The version of a removal of `entry` written at `now_ms`: later than the
/// entry it removes even where the remover's clock is behind the clock of
/// the instance that quarantined it.
pub fn removal_version(entry: &QuarantineEntry, now_ms: i64) -> i64 {
    now_ms.max(entry.quarantined_at_ms.saturating_add(1))
}

/// Where records go besides the local store. `enqueue` must not block: it
/// is called on the store's write path, after the local write succeeded.
pub trait Replica: Send + Sync {
    fn enqueue(&self, record: SharedRecord);
}

/// A quarantine entry's key: (route, queue, offset, message), like the
/// store's own key, so the same message quarantined again is one entry.
pub fn quarantine_key(e: &QuarantineEntry) -> String {
    let message = if e.message_id.is_empty() {
        format!("crc{:08x}", crc32fast::hash(e.message_json.as_bytes()))
    } else {
        e.message_id.clone()
    };
    format!(
        "q/{}/{}/{}/{}/{message}",
        e.route, e.queue.broker_name, e.queue.queue_id, e.offset
    )
}

/// A journal entry's key: the same entry written twice (an instance
/// publishing what it had journaled before a crash) is one entry.
pub fn journal_key(e: &JournalEntry) -> String {
    let json = serde_json::to_vec(e).unwrap_or_default();
    format!(
        "j/{}/{}/{:08x}",
        e.route,
        e.changed_at_ms,
        crc32fast::hash(&json)
    )
}

pub fn start_key(route: &str, queue: &SourceQueue) -> String {
    format!("s/{route}/{}/{}", queue.broker_name, queue.queue_id)
}

impl SharedRecord {
    pub fn key(&self) -> String {
        match self {
            SharedRecord::Quarantined { entry, .. } => quarantine_key(entry),
            SharedRecord::QuarantineRemoved { key, .. } => key.clone(),
            SharedRecord::Journal { entry } => journal_key(entry),
            SharedRecord::Start { route, queue, .. } => start_key(route, queue),
            SharedRecord::Forwarded { route, key, .. } => schedule::forwarded_key(route, key),
            SharedRecord::SchedulePosition { route, queue, .. } => {
                schedule::position_key(route, queue)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data (strings and integers): serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a state record: {e}"))
    }
}

/// The state topic folded (see the module's fold rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedView {
    quarantine: BTreeMap<String, QuarantineEntry>,
    /// Removed keys: store time (unix ms) of the newest removal.
    removed: BTreeMap<String, i64>,
    /// Removed keys: the newest removal's version (0: unversioned).
    removed_at: BTreeMap<String, i64>,
    /// Removed keys with a refresh copy stored after their removal: the
    /// removal must outlive that copy in the topic, so it is refreshed too.
    shadowed: BTreeSet<String>,
    journal: BTreeMap<String, JournalEntry>,
    starts: BTreeMap<(String, SourceQueue), i64>,
    /// The schedule side's records (forwarded ids, positions).
    schedule: ScheduleShare,
    /// Per live key: store time (unix ms) of its newest copy in the topic.
    written_ms: BTreeMap<String, i64>,
}

impl SharedView {
    /// Applies one record read from the topic (in its queue's order).
    pub fn apply(&mut self, record: SharedRecord, stored_ms: i64) {
        let key = record.key();
        match record {
            SharedRecord::Quarantined { entry, refresh } => {
                if let Some(removal) = self.removed_at.get(&key) {
                    let superseded = match *removal {
                        // Unversioned: the topic's order decides, and a
                        // refresh never brings an entry back.
                        0 => refresh,
                        removal => removal >= entry.quarantined_at_ms,
                    };
                    if superseded {
                        // A copy that may outlive the removal in the topic.
                        if refresh || self.removed.get(&key).is_some_and(|t| stored_ms > *t) {
                            self.shadowed.insert(key);
                        }
                        return;
                    }
                }
                self.removed.remove(&key);
                self.removed_at.remove(&key);
                self.shadowed.remove(&key);
                match self.quarantine.get(&key) {
                    // An older incarnation read after a newer one.
                    Some(live) if live.quarantined_at_ms > entry.quarantined_at_ms => {}
                    _ => {
                        self.quarantine.insert(key.clone(), entry);
                    }
                }
            }
            SharedRecord::QuarantineRemoved { at_ms, .. } => {
                if let Some(live) = self.quarantine.get(&key) {
                    if at_ms > 0 && live.quarantined_at_ms > at_ms {
                        // Quarantined again after this removal (read later
                        // only because it was stored on another queue).
                        return;
                    }
                }
                self.quarantine.remove(&key);
                // A copy stored after the removal may outlive it.
                if self.written_ms.remove(&key).is_some_and(|t| t > stored_ms) {
                    self.shadowed.insert(key.clone());
                }
                let at = self.removed.entry(key.clone()).or_insert(stored_ms);
                *at = (*at).max(stored_ms);
                let v = self.removed_at.entry(key).or_insert(at_ms);
                *v = (*v).max(at_ms);
                return;
            }
            SharedRecord::Journal { entry } => {
                self.journal.entry(key.clone()).or_insert(entry);
            }
            SharedRecord::Start {
                route,
                queue,
                offset,
            } => {
                // The lowest: the first written (a later instance that
                // found no position anywhere writes a later start), in
                // whatever order the queues are read.
                let start = self.starts.entry((route, queue)).or_insert(offset);
                *start = (*start).min(offset);
            }
            SharedRecord::Forwarded {
                route,
                key: id,
                deadline_ms,
                state,
            } => {
                self.schedule.forwarded(&route, &id, deadline_ms, state);
            }
            SharedRecord::SchedulePosition {
                route,
                queue,
                offset,
            } => {
                self.schedule.position(&route, &queue, offset);
            }
        }
        let at = self.written_ms.entry(key).or_insert(stored_ms);
        *at = (*at).max(stored_ms);
    }

    /// Whether the topic says anything of `key` (live or removed).
    pub fn knows(&self, key: &str) -> bool {
        self.written_ms.contains_key(key) || self.removed.contains_key(key)
    }

    pub fn is_removed(&self, key: &str) -> bool {
        self.removed.contains_key(key)
    }

    /// Whether the topic removed `entry` (this incarnation of its key: a
    /// removal older than the entry does not).
    pub fn removes(&self, entry: &QuarantineEntry) -> bool {
        match self.removed_at.get(&quarantine_key(entry)) {
            None => false,
            Some(0) => true,
            Some(at) => *at >= entry.quarantined_at_ms,
        }
    }

    /// Every removed quarantine key.
    pub fn removed_keys(&self) -> impl Iterator<Item = &str> {
        self.removed.keys().map(String::as_str)
    }

    /// Live records whose newest copy was stored before `before_ms`: what
    /// is written again so that the topic's retention never drops it.
    pub fn stale(&self, before_ms: i64) -> Vec<SharedRecord> {
        let old = |key: &String| self.written_ms.get(key).is_some_and(|t| *t < before_ms);
        let mut out: Vec<SharedRecord> = self
            .quarantine
            .iter()
            .filter(|(k, _)| old(k))
            .map(|(_, e)| SharedRecord::Quarantined {
                entry: e.clone(),
                refresh: true,
            })
            .collect();
        out.extend(
            self.removed
                .iter()
                .filter(|(k, at)| **at < before_ms && self.shadowed.contains(*k))
                .map(|(k, _)| SharedRecord::QuarantineRemoved {
                    key: k.clone(),
                    at_ms: self.removed_at.get(k).copied().unwrap_or(0),
                }),
        );
        out.extend(
            self.journal
                .iter()
                .filter(|(k, _)| old(k))
                .map(|(_, e)| SharedRecord::Journal { entry: e.clone() }),
        );
        out.extend(
            self.starts
                .iter()
                .filter(|((r, q), _)| old(&start_key(r, q)))
                .map(|((route, queue), offset)| SharedRecord::Start {
                    route: route.clone(),
                    queue: queue.clone(),
                    offset: *offset,
                }),
        );
        out.extend(
            self.schedule
                .positions()
                .filter(|(r, q, _)| old(&schedule::position_key(r, q)))
                .map(|(route, queue, offset)| SharedRecord::SchedulePosition {
                    route: route.to_string(),
                    queue: queue.clone(),
                    offset,
                }),
        );
        // A forwarded message is needed until its copy comes (about its
        // deadline): kept while the deadline is not older than the copy.
        for (route, key, e) in self.schedule.forwarded_entries() {
            if !old(&schedule::forwarded_key(route, key)) || e.deadline_ms < before_ms {
                continue;
            }
            for (set, state) in [
                (e.confirmed, SharedForward::Confirmed),
                (e.released, SharedForward::Released),
            ] {
                if set {
                    out.push(SharedRecord::Forwarded {
                        route: route.to_string(),
                        key: key.to_string(),
                        deadline_ms: e.deadline_ms,
                        state,
                    });
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.quarantine.len() + self.journal.len() + self.starts.len() + self.schedule.len()
    }

    /// The schedule side's records.
    pub fn schedule(&self) -> &ScheduleShare {
        &self.schedule
    }

    /// Forgets forwarded scheduled messages whose deadline is before
    /// `before_ms` (see `schedule`'s fold rule); how many.
    pub fn forget_forwarded_before(&mut self, before_ms: i64) -> usize {
        let gone: Vec<String> = self
            .schedule
            .forwarded_entries()
            .filter(|(_, _, e)| e.deadline_ms < before_ms)
            .map(|(r, k, _)| schedule::forwarded_key(r, k))
            .collect();
        for k in &gone {
            self.written_ms.remove(k);
        }
        self.schedule.forget_before(before_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Local quarantine entries the topic removed (another instance replayed
/// or dropped them): the store lets them go, so that it never publishes
/// them again once the removal has left the topic's retention.
pub fn removed_elsewhere(
    view: &SharedView,
    store: &CheckpointStore,
) -> Result<Vec<QuarantineEntry>, StoreError> {
    Ok(store
        .quarantine_list(None)?
        .into_iter()
        .filter(|e| view.removes(e))
        .collect())
}

/// What the local store holds that the topic does not know: the records an
/// instance publishes when it starts (it may have stopped between a local
/// write and its publication).
pub fn missing_from(
    view: &SharedView,
    store: &CheckpointStore,
) -> Result<Vec<SharedRecord>, StoreError> {
    let mut out = Vec::new();
    for entry in store.quarantine_list(None)? {
        if !view.knows(&quarantine_key(&entry)) {
            out.push(SharedRecord::Quarantined {
                entry,
                refresh: false,
            });
        }
    }
    for route in store.journal_routes()? {
        for entry in store.journal(&route)? {
            if !view.knows(&journal_key(&entry)) {
                out.push(SharedRecord::Journal { entry });
            }
        }
    }
    for (route, queue, offset) in store.route_starts()? {
        if !view.starts.contains_key(&(route.clone(), queue.clone())) {
            out.push(SharedRecord::Start {
                route,
                queue,
                offset,
            });
        }
    }
    Ok(out)
}

/// The records every reader sees: this instance's store, and (instances
/// sharing an estate) what the state topic holds.
pub struct Records<'a> {
    store: &'a CheckpointStore,
    shared: Option<&'a SharedView>,
}

impl<'a> Records<'a> {
    pub fn new(store: &'a CheckpointStore, shared: Option<&'a SharedView>) -> Self {
        Records { store, shared }
    }

    /// The route's journal: the local entries in their order, then the
    /// shared ones the store lacks, ordered by when they were written
    /// (stable: local order is kept among entries of one millisecond).
    pub fn journal(&self, route: &str) -> Result<Vec<JournalEntry>, StoreError> {
        let mut entries = self.store.journal(route)?;
        if let Some(view) = self.shared {
            let local: BTreeSet<String> = entries.iter().map(journal_key).collect();
            entries.extend(
                view.journal
                    .iter()
                    .filter(|(k, e)| e.route == route && !local.contains(*k))
                    .map(|(_, e)| e.clone()),
            );
            entries.sort_by_key(|e| e.changed_at_ms);
        }
        Ok(entries)
    }

    /// Quarantined messages of one route (or all): the topic's live ones
    /// and the store's, less those the topic says were removed.
    pub fn quarantine_list(&self, route: Option<&str>) -> Result<Vec<QuarantineEntry>, StoreError> {
        let local = self.store.quarantine_list(route)?;
        let Some(view) = self.shared else {
            return Ok(local);
        };
        let mut all: BTreeMap<String, QuarantineEntry> = view
            .quarantine
            .iter()
            .filter(|(_, e)| route.map_or(true, |r| e.route == r))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for e in local {
            let key = quarantine_key(&e);
            if !view.removes(&e) {
                all.entry(key).or_insert(e);
            }
        }
        let mut out: Vec<QuarantineEntry> = all.into_values().collect();
        out.sort_by(|a, b| {
            (&a.route, &a.queue, a.offset, &a.message_id).cmp(&(
                &b.route,
                &b.queue,
                b.offset,
                &b.message_id,
            ))
        });
        Ok(out)
    }

    /// Where the route started `queue`: the earliest recorded anywhere.
    pub fn route_start(&self, route: &str, queue: &SourceQueue) -> Result<Option<i64>, StoreError> {
        let local = self.store.route_start(route, queue)?;
        let shared = self
            .shared
            .and_then(|v| v.starts.get(&(route.to_string(), queue.clone())).copied());
        Ok(match (local, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    pub fn store(&self) -> &CheckpointStore {
        self.store
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

    fn quarantined(offset: i64) -> QuarantineEntry {
        QuarantineEntry {
            route: "r".into(),
            queue: q(0),
            offset,
            message_id: format!("M{offset}"),
            reason: "refused".into(),
            quarantined_at_ms: 5,
            message_json: "{}".into(),
        }
    }

    fn journaled(at: i64, to: u8) -> JournalEntry {
        JournalEntry {
            route: "r".into(),
            generation: 1,
            from_percent: 0,
            to_percent: to,
            changed_at_ms: at,
            queue: Some(q(0)),
            offset: Some(at),
            note: "took effect".into(),
            rule: None,
        }
    }

    #[test]
    fn records_round_trip_and_one_message_has_one_key() {
        let e = quarantined(7);
        let r = SharedRecord::Quarantined {
            entry: e.clone(),
            refresh: false,
        };
        assert_eq!(SharedRecord::decode(&r.encode()).unwrap(), r);
        let mut again = e.clone();
        again.reason = "refused again".into();
        assert_eq!(quarantine_key(&e), quarantine_key(&again));
        assert_ne!(quarantine_key(&e), quarantine_key(&quarantined(8)));
        assert!(SharedRecord::decode(b"not json").is_err());
    }

    #[test]
    fn a_removal_ends_an_entry_until_it_is_quarantined_again() {
        let e = quarantined(7);
        let key = quarantine_key(&e);
        let mut v = SharedView::default();
        v.apply(
            SharedRecord::Quarantined {
                entry: e.clone(),
                refresh: false,
            },
            1,
        );
        assert_eq!(v.quarantine.len(), 1);
        v.apply(
            SharedRecord::QuarantineRemoved {
                key: key.clone(),
                at_ms: 0,
            },
            2,
        );
        assert!(v.quarantine.is_empty() && v.is_removed(&key) && v.knows(&key));
        // Re-read from 4.x after a restart and refused again: live again.
        v.apply(
            SharedRecord::Quarantined {
                entry: e,
                refresh: false,
            },
            3,
        );
        assert_eq!(v.quarantine.len(), 1);
        assert!(!v.is_removed(&key));
    }

    #[test]
    fn a_refresh_racing_a_removal_neither_revives_the_entry_nor_outlives_the_removal() {
        let e = quarantined(7);
        let key = quarantine_key(&e);
        let mut v = SharedView::default();
        let quarantine = |entry: &QuarantineEntry, refresh| SharedRecord::Quarantined {
            entry: entry.clone(),
            refresh,
        };
        v.apply(quarantine(&e, false), 100);
        // One instance's refresh read it live; another's removal landed
        // first; the refresh copy lands after it.
        v.apply(
            SharedRecord::QuarantineRemoved {
                key: key.clone(),
                at_ms: 0,
            },
            200,
        );
        v.apply(quarantine(&e, true), 300);
        assert!(v.quarantine.is_empty() && v.is_removed(&key));
        assert_eq!(v.removed_keys().collect::<Vec<_>>(), vec![key.as_str()]);
        // The removal is written again while that copy may outlive it...
        assert_eq!(
            v.stale(250),
            vec![SharedRecord::QuarantineRemoved {
                key: key.clone(),
                at_ms: 0
            }]
        );
        // ...and not once the copy is gone from the topic (a fresh read).
        let mut later = SharedView::default();
        later.apply(
            SharedRecord::QuarantineRemoved {
                key: key.clone(),
                at_ms: 0,
            },
            200,
        );
        assert!(later.stale(250).is_empty());
        // Quarantined again for real (not a refresh): live again.
        v.apply(quarantine(&e, false), 400);
        assert_eq!(v.quarantine.len(), 1);
        assert!(!v.is_removed(&key) && v.stale(250).is_empty());
    }

    /// Issue 30, item 3: a key's records may sit on different queues (a
    /// 5.x broker restarted between them, the key hashed onto another
    /// queue) and queues are read one after another. Every order of the
    /// same records folds to the same view.
    #[test]
    fn the_fold_does_not_depend_on_where_a_record_was_stored() {
        let first = quarantined(7); // quarantined at 5
        let key = quarantine_key(&first);
        let mut again = first.clone();
        again.quarantined_at_ms = 50;
        let q = |e: &QuarantineEntry, refresh| SharedRecord::Quarantined {
            entry: e.clone(),
            refresh,
        };
        let removal = |entry: &QuarantineEntry, now| SharedRecord::QuarantineRemoved {
            key: key.clone(),
            at_ms: removal_version(entry, now),
        };
        let fold = |records: &[(SharedRecord, i64)]| {
            let mut v = SharedView::default();
            for (r, at) in records {
                v.apply(r.clone(), *at);
            }
            v
        };
        let orders = |records: Vec<(SharedRecord, i64)>| {
            let mut all = vec![records.clone()];
            let mut rev = records.clone();
            rev.reverse();
            all.push(rev);
            for i in 0..records.len() {
                let mut r = records.clone();
                let x = r.remove(i);
                r.push(x);
                all.push(r);
            }
            all
        };
        // Quarantined, then removed (replay): removed in every order, so a
        // second replay does not send a duplicate.
        let h1 = vec![(q(&first, false), 100), (removal(&first, 20), 200)];
        for o in orders(h1) {
            let v = fold(&o);
            assert!(v.quarantine.is_empty(), "{o:?}");
            assert!(v.removes(&first), "{o:?}");
        }
        // Removed, then quarantined again (refused on a re-read): live in
        // every order, the removal does not take the new entry.
        let h2 = vec![
            (q(&first, false), 100),
            (removal(&first, 20), 200),
            (q(&again, false), 300),
        ];
        for o in orders(h2) {
            let v = fold(&o);
            assert_eq!(v.quarantine.get(&key), Some(&again), "{o:?}");
            assert!(!v.removes(&again), "{o:?}");
        }
        // A remover whose clock is behind the quarantining instance's.
        let behind = vec![(q(&again, false), 100), (removal(&again, 1), 200)];
        for o in orders(behind) {
            assert!(fold(&o).quarantine.is_empty(), "{o:?}");
        }
        // A refresh copy of the removed entry stored after the removal
        // never revives it, and keeps the removal refreshed.
        let h3 = vec![
            (q(&first, false), 100),
            (removal(&first, 20), 200),
            (q(&first, true), 300),
        ];
        for o in orders(h3) {
            let v = fold(&o);
            assert!(v.quarantine.is_empty(), "{o:?}");
            assert_eq!(v.stale(250).len(), 1, "{o:?}");
        }
        // Starts: the lowest, whatever the order.
        let start = |offset| SharedRecord::Start {
            route: "r".into(),
            queue: super::tests::q(0),
            offset,
        };
        for o in orders(vec![(start(500), 2), (start(10), 1)]) {
            assert_eq!(
                fold(&o).starts.get(&("r".to_string(), super::tests::q(0))),
                Some(&10)
            );
        }
    }

    #[test]
    fn the_store_forgets_what_the_topic_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let dropped_elsewhere = quarantined(1);
        let kept = quarantined(2);
        store.quarantine_put(&dropped_elsewhere).unwrap();
        store.quarantine_put(&kept).unwrap();
        let mut v = SharedView::default();
        v.apply(
            SharedRecord::QuarantineRemoved {
                key: quarantine_key(&dropped_elsewhere),
                at_ms: 0,
            },
            1,
        );
        assert_eq!(
            removed_elsewhere(&v, &store).unwrap(),
            vec![dropped_elsewhere]
        );
    }

    #[test]
    fn the_first_start_of_a_queue_wins_and_journal_entries_never_change() {
        let mut v = SharedView::default();
        let start = |offset| SharedRecord::Start {
            route: "r".into(),
            queue: q(0),
            offset,
        };
        v.apply(start(10), 1);
        v.apply(start(500), 2);
        assert_eq!(v.starts.get(&("r".to_string(), q(0))), Some(&10));
        v.apply(
            SharedRecord::Journal {
                entry: journaled(4, 50),
            },
            1,
        );
        v.apply(
            SharedRecord::Journal {
                entry: journaled(4, 50),
            },
            9,
        );
        assert_eq!(v.journal.len(), 1);
    }

    #[test]
    fn stale_names_live_records_whose_newest_copy_is_old() {
        let mut v = SharedView::default();
        let old = quarantined(1);
        let new = quarantined(2);
        let gone = quarantined(3);
        v.apply(
            SharedRecord::Quarantined {
                entry: old.clone(),
                refresh: false,
            },
            100,
        );
        v.apply(
            SharedRecord::Quarantined {
                entry: new,
                refresh: false,
            },
            900,
        );
        v.apply(
            SharedRecord::Quarantined {
                entry: gone.clone(),
                refresh: false,
            },
            100,
        );
        v.apply(
            SharedRecord::QuarantineRemoved {
                key: quarantine_key(&gone),
                at_ms: 0,
            },
            200,
        );
        v.apply(
            SharedRecord::Journal {
                entry: journaled(4, 50),
            },
            100,
        );
        v.apply(
            SharedRecord::Start {
                route: "r".into(),
                queue: q(0),
                offset: 0,
            },
            950,
        );
        let stale = v.stale(500);
        assert_eq!(
            stale,
            vec![
                SharedRecord::Quarantined {
                    entry: old.clone(),
                    refresh: true,
                },
                SharedRecord::Journal {
                    entry: journaled(4, 50)
                },
            ]
        );
        // Written again: its newest copy is recent, so no longer stale.
        v.apply(
            SharedRecord::Quarantined {
                entry: old,
                refresh: false,
            },
            1000,
        );
        assert_eq!(v.stale(500).len(), 1);
    }

    #[test]
    fn the_schedule_sides_records_fold_and_are_refreshed_while_needed() {
        let forwarded = |key: &str, deadline_ms, state| SharedRecord::Forwarded {
            route: "r".into(),
            key: key.into(),
            deadline_ms,
            state,
        };
        let position = |offset| SharedRecord::SchedulePosition {
            route: "r".into(),
            queue: q(4),
            offset,
        };
        let r = forwarded("due-later", 2_000, SharedForward::Confirmed);
        assert_eq!(SharedRecord::decode(&r.encode()).unwrap(), r);
        assert_ne!(r.key(), position(1).key());
        assert_ne!(position(1).key(), start_key("r", &q(4)));

        let mut v = SharedView::default();
        v.apply(r.clone(), 100);
        v.apply(forwarded("due-long-ago", 50, SharedForward::Confirmed), 100);
        v.apply(position(8), 100);
        v.apply(position(3), 200);
        assert_eq!(v.schedule().get_position("r", &q(4)), Some(8));
        assert!(
            v.schedule()
                .get_forwarded("r", "due-later")
                .unwrap()
                .confirmed
        );
        assert_eq!(v.len(), 3);
        // The refresh writes the position and the message whose copy may
        // still come (its deadline is not older than the copies checked).
        let stale = v.stale(500);
        assert_eq!(stale.len(), 2, "{stale:?}");
        assert!(stale.contains(&r) && stale.contains(&position(8)));
        // The live view forgets what is past its horizon.
        assert_eq!(v.forget_forwarded_before(1_000), 1);
        assert_eq!(v.len(), 2);
        assert!(v.schedule().get_forwarded("r", "due-long-ago").is_none());
    }

    #[test]
    fn readers_see_the_store_and_the_topic_less_what_the_topic_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let mine = quarantined(1);
        let replayed_elsewhere = quarantined(2);
        store.quarantine_put(&mine).unwrap();
        store.quarantine_put(&replayed_elsewhere).unwrap();
        store.journal_append(&journaled(20, 50)).unwrap();
        store.record_route_start("r", &q(0), 40).unwrap();

        let mut v = SharedView::default();
        let theirs = quarantined(3);
        v.apply(
            SharedRecord::Quarantined {
                entry: theirs.clone(),
                refresh: false,
            },
            1,
        );
        v.apply(
            SharedRecord::QuarantineRemoved {
                key: quarantine_key(&replayed_elsewhere),
                at_ms: 0,
            },
            2,
        );
        v.apply(
            SharedRecord::Journal {
                entry: journaled(10, 30),
            },
            1,
        );
        v.apply(
            SharedRecord::Journal {
                entry: journaled(20, 50),
            },
            1,
        );
        v.apply(
            SharedRecord::Start {
                route: "r".into(),
                queue: q(0),
                offset: 12,
            },
            1,
        );

        let alone = Records::new(&store, None);
        assert_eq!(alone.quarantine_list(Some("r")).unwrap().len(), 2);
        assert_eq!(alone.journal("r").unwrap().len(), 1);
        assert_eq!(alone.route_start("r", &q(0)).unwrap(), Some(40));

        let shared = Records::new(&store, Some(&v));
        assert_eq!(
            shared.quarantine_list(Some("r")).unwrap(),
            vec![mine, theirs]
        );
        assert!(shared.quarantine_list(Some("other")).unwrap().is_empty());
        let journal = shared.journal("r").unwrap();
        assert_eq!(
            journal.iter().map(|e| e.changed_at_ms).collect::<Vec<_>>(),
            vec![10, 20]
        );
        assert_eq!(shared.route_start("r", &q(0)).unwrap(), Some(12));

        // What an instance publishes when it starts: what the topic lacks.
        let missing = missing_from(&v, &store).unwrap();
        assert!(
            matches!(missing.as_slice(), [SharedRecord::Quarantined { entry, .. }] if entry.offset == 1),
            "{missing:?}"
        );
    }
}
