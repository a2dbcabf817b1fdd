//! The durable ledger of pending scheduled messages a route forwards early
//! from the 4.x schedule topic (issues 11 and 16), so that the route skips
//! the copy the 4.x broker later moves into the real topic, but only the
//! copy of a message 5.x confirmed.
//!
//! Column family `scheduled`, two keys per entry, written in one batch:
//! - `i <route> 0 <key>` -> [`ForwardEntry`]: the membership test;
//! - `d <route> 0 <deadline, order-preserving> <key>` -> empty: the same
//!   entries in deadline order, so pruning reads only what is due.
//!
//! An entry's value is its deadline (ms, big-endian), then (since issue 16)
//! a state byte and the positions of the schedule-topic record and of the
//! broker's copy. A value of 8 bytes was written by an older bridge before
//! its send, confirmed or not: it reads as [`ForwardState::Claimed`].
//!
//! Owns: membership, the entry encoding. Must not touch: deciding what to
//! forward (`translate::scheduled`), state changes and pruning rules
//! (`pipeline::schedule_ledger`).

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::shared::{SharedForward, SharedRecord};
use super::{CheckpointStore, SourceQueue, StoreError, CF_SCHEDULED};

/// Where a forwarded pending message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardState {
    /// The schedule side took it and is sending it; 5.x has not confirmed.
    Claimed,
    /// 5.x accepted the schedule side's send: the broker's copy is skipped.
    Confirmed,
    /// The topic path met the broker's copy before a confirmation and
    /// forwards it; the schedule side sends no more.
    Released,
}

/// One forwarded pending message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardEntry {
    pub deadline_ms: i64,
    pub state: ForwardState,
    /// Where the schedule side read it (none for entries of older bridges).
    pub record: Option<(SourceQueue, i64)>,
    /// Where the topic path met the broker's copy.
    pub copy: Option<(SourceQueue, i64)>,
}

impl ForwardEntry {
    pub fn claimed(deadline_ms: i64, record: (SourceQueue, i64)) -> Self {
        ForwardEntry {
            deadline_ms,
            state: ForwardState::Claimed,
            record: Some(record),
            copy: None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.deadline_ms.to_be_bytes());
        v.push(match self.state {
            ForwardState::Claimed => 1,
            ForwardState::Confirmed => 2,
            ForwardState::Released => 3,
        });
        for pos in [&self.record, &self.copy] {
            match pos {
                None => v.push(0),
                Some((q, offset)) => {
                    v.push(1);
                    let name = q.broker_name.as_bytes();
                    v.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
                    v.extend_from_slice(&name[..name.len().min(u16::MAX as usize)]);
                    v.extend_from_slice(&q.queue_id.to_be_bytes());
                    v.extend_from_slice(&offset.to_be_bytes());
                }
            }
        }
        v
    }

    /// None for a value that is not an entry (a damaged store).
    fn decode(v: &[u8]) -> Option<Self> {
        let (deadline, rest) = v.split_first_chunk::<8>()?;
        let deadline_ms = i64::from_be_bytes(*deadline);
        if rest.is_empty() {
            // An older bridge's entry: remembered before its send.
            return Some(ForwardEntry {
                deadline_ms,
                state: ForwardState::Claimed,
                record: None,
                copy: None,
            });
        }
        let (state, mut rest) = rest.split_first()?;
        let state = match state {
            1 => ForwardState::Claimed,
            2 => ForwardState::Confirmed,
            3 => ForwardState::Released,
            _ => return None,
        };
        let mut pos = || -> Option<Option<(SourceQueue, i64)>> {
            let (present, r) = rest.split_first()?;
            rest = r;
            if *present == 0 {
                return Some(None);
            }
            let (len, r) = rest.split_first_chunk::<2>()?;
            let len = u16::from_be_bytes(*len) as usize;
            let name = r.get(..len)?;
            let r = &r[len..];
            let (qid, r) = r.split_first_chunk::<4>()?;
            let (offset, r) = r.split_first_chunk::<8>()?;
            rest = r;
            Some(Some((
                SourceQueue {
                    broker_name: String::from_utf8_lossy(name).into_owned(),
                    queue_id: i32::from_be_bytes(*qid),
                },
                i64::from_be_bytes(*offset),
            )))
        };
        let record = pos()?;
        let copy = pos()?;
        Some(ForwardEntry {
            deadline_ms,
            state,
            record,
            copy,
        })
    }
}

fn id_key(route: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + key.len() + 2);
    k.push(b'i');
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn due_prefix(route: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + 2);
    k.push(b'd');
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k
}

/// Big-endian with the sign bit flipped: byte order is numeric order.
fn ordered(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

fn due_key(route: &str, deadline_ms: i64, key: &str) -> Vec<u8> {
    let mut k = due_prefix(route);
    k.extend_from_slice(&ordered(deadline_ms));
    k.extend_from_slice(key.as_bytes());
    k
}

impl CheckpointStore {
    /// Writes `entry` for `key` of `route` (durable when the store is
    /// opened with `sync`), replacing an older one.
    pub fn scheduled_put(
        &self,
        route: &str,
        key: &str,
        entry: &ForwardEntry,
    ) -> Result<(), StoreError> {
        self.scheduled_write(route, key, entry, &self.write_opts())
    }

    /// Like [`Self::scheduled_put`] but never waits for the disk: for the
    /// topic path's notes (a copy met), which are made durable by the
    /// synced checkpoint write that follows them in the same log, and whose
    /// loss costs at most a duplicate.
    pub fn scheduled_note(
        &self,
        route: &str,
        key: &str,
        entry: &ForwardEntry,
    ) -> Result<(), StoreError> {
        let mut unsynced = rocksdb::WriteOptions::default();
        unsynced.set_sync(false);
        self.scheduled_write(route, key, entry, &unsynced)
    }

    fn scheduled_write(
        &self,
        route: &str,
        key: &str,
        entry: &ForwardEntry,
        opts: &rocksdb::WriteOptions,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_SCHEDULED)?;
        let mut batch = WriteBatch::default();
        let old = self.scheduled_entry(route, key)?;
        if let Some(old) = &old {
            if old.deadline_ms != entry.deadline_ms {
                batch.delete_cf(cf, due_key(route, old.deadline_ms, key));
            }
        }
        batch.put_cf(cf, id_key(route, key), entry.encode());
        batch.put_cf(cf, due_key(route, entry.deadline_ms, key), []);
        db.write_opt(batch, opts).map_err(|e| {
            self.write_err(
                format!("forwarded scheduled message {key} of route {route}"),
                e,
            )
        })?;
        // Instances sharing an estate: a confirmation or a release is what
        // another owner of the copy's queue (or of the schedule queue) must
        // know; a claim is this instance's business.
        let shared = match entry.state {
            ForwardState::Claimed => None,
            ForwardState::Confirmed => Some(SharedForward::Confirmed),
            ForwardState::Released => Some(SharedForward::Released),
        };
        if let Some(state) = shared.filter(|_| old.map(|o| o.state) != Some(entry.state)) {
            self.replicate(|| SharedRecord::Forwarded {
                route: route.to_string(),
                key: key.to_string(),
                deadline_ms: entry.deadline_ms,
                state,
            });
        }
        Ok(())
    }

    /// The entry of `key` if `route` forwarded it and it is not pruned.
    pub fn scheduled_entry(
        &self,
        route: &str,
        key: &str,
    ) -> Result<Option<ForwardEntry>, StoreError> {
        let db = self.db()?;
        // A store opened read-only from an older bridge has no such family.
        let Some(cf) = db.cf_handle(CF_SCHEDULED) else {
            return Ok(None);
        };
        let value = db
            .get_pinned_cf(cf, id_key(route, key))
            .map_err(|e| self.read_err(e))?;
        match value {
            None => Ok(None),
            Some(v) => ForwardEntry::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!("forwarded scheduled message {key} of route {route}"),
                }),
        }
    }

    /// Visits the entries of `route` due before `before_ms`, in deadline
    /// order; removes those `remove` says; returns how many it removed.
    pub fn scheduled_sweep(
        &self,
        route: &str,
        before_ms: i64,
        mut remove: impl FnMut(&str, &ForwardEntry) -> bool,
    ) -> Result<usize, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_SCHEDULED)?;
        let prefix = due_prefix(route);
        let mut batch = WriteBatch::default();
        let mut removed = 0;
        let iter = db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (k, _) = item.map_err(|e| self.read_err(e))?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let Some((deadline, key)) = rest.split_first_chunk::<8>() else {
                break;
            };
            if from_ordered(*deadline) >= before_ms {
                break;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            let entry = self.scheduled_entry(route, &key)?;
            // An index key without its entry (never written so) goes too.
            if entry.as_ref().map_or(true, |e| remove(&key, e)) {
                batch.delete_cf(cf, &k);
                batch.delete_cf(cf, id_key(route, &key));
                removed += 1;
            }
        }
        if removed > 0 {
            db.write_opt(batch, &self.write_opts()).map_err(|e| {
                self.write_err(
                    format!("pruning forwarded scheduled messages of route {route}"),
                    e,
                )
            })?;
        }
        Ok(removed)
    }

    /// Test support: writes raw bytes as the entry of `key` (a damaged
    /// store for the readers' error paths).
    #[cfg(test)]
    pub(crate) fn scheduled_put_raw(&self, route: &str, key: &str, value: &[u8]) {
        let db = self.db().expect("db");
        let cf = Self::cf(&db, CF_SCHEDULED).expect("cf");
        db.put_cf(cf, id_key(route, key), value).expect("raw put");
    }

    /// How many forwarded pending messages `route` still remembers, and
    /// the latest deadline among them.
    pub fn scheduled_summary(&self, route: &str) -> Result<(usize, Option<i64>), StoreError> {
        let db = self.db()?;
        let Some(cf) = db.cf_handle(CF_SCHEDULED) else {
            return Ok((0, None));
        };
        let prefix = due_prefix(route);
        let mut count = 0;
        let mut latest = None;
        let iter = db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (k, _) = item.map_err(|e| self.read_err(e))?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if let Some((deadline, _)) = rest.split_first_chunk::<8>() {
                count += 1;
                latest = Some(from_ordered(*deadline));
            }
        }
        Ok((count, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> CheckpointStore {
        CheckpointStore::open(dir, true).expect("open store")
    }

    fn q(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "broker-a".into(),
            queue_id: id,
        }
    }

    fn put(s: &CheckpointStore, route: &str, key: &str, deadline: i64) {
        s.scheduled_put(route, key, &ForwardEntry::claimed(deadline, (q(1), 7)))
            .expect("put");
    }

    fn deadline(s: &CheckpointStore, route: &str, key: &str) -> Option<i64> {
        s.scheduled_entry(route, key)
            .expect("get")
            .map(|e| e.deadline_ms)
    }

    #[test]
    fn entries_round_trip_with_state_and_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let mut e = ForwardEntry::claimed(5_000, (q(2), 41));
        s.scheduled_put("r", "u:A", &e).expect("claimed");
        assert_eq!(s.scheduled_entry("r", "u:A").expect("get"), Some(e.clone()));
        e.state = ForwardState::Confirmed;
        e.copy = Some((q(0), 9_000_000_001));
        s.scheduled_put("r", "u:A", &e).expect("confirmed");
        drop(s);
        let s = store(dir.path());
        assert_eq!(s.scheduled_entry("r", "u:A").expect("get"), Some(e));
        assert_eq!(s.scheduled_summary("r").expect("sum"), (1, Some(5_000)));
    }

    #[test]
    fn an_older_bridges_entry_reads_as_claimed_not_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        {
            let db = s.db().expect("db");
            let cf = CheckpointStore::cf(&db, CF_SCHEDULED).expect("cf");
            db.put_cf(cf, id_key("r", "u:old"), 7_000i64.to_be_bytes())
                .expect("old value");
            db.put_cf(cf, due_key("r", 7_000, "u:old"), [])
                .expect("old index");
        }
        let e = s
            .scheduled_entry("r", "u:old")
            .expect("get")
            .expect("entry");
        assert_eq!(e.state, ForwardState::Claimed);
        assert_eq!((e.deadline_ms, e.record, e.copy), (7_000, None, None));
    }

    #[test]
    fn sweep_removes_what_it_is_told_in_deadline_order_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = store(dir.path());
            put(&s, "orders", "u:A", 2_000);
            put(&s, "orders", "u:B", 1_000);
            put(&s, "orders", "u:C", 3_000);
            // Same key on another route is another entry.
            put(&s, "payments", "u:A", 500);
            assert_eq!(deadline(&s, "orders", "u:A"), Some(2_000));
            assert_eq!(deadline(&s, "orders", "u:Z"), None);
        }
        // Reopened (as after a crash or restart): all still there.
        let s = store(dir.path());
        assert_eq!(deadline(&s, "orders", "u:B"), Some(1_000));
        assert_eq!(
            s.scheduled_summary("orders").expect("sum"),
            (3, Some(3_000))
        );

        // Entries due before 3_000 are visited in deadline order; only B goes.
        let mut seen = Vec::new();
        let removed = s
            .scheduled_sweep("orders", 3_000, |key, _| {
                seen.push(key.to_string());
                key == "u:B"
            })
            .expect("sweep");
        assert_eq!(
            (removed, seen),
            (1, vec!["u:B".to_string(), "u:A".to_string()])
        );
        assert_eq!(deadline(&s, "orders", "u:B"), None);
        assert_eq!(deadline(&s, "orders", "u:A"), Some(2_000));
        assert_eq!(
            s.scheduled_sweep("orders", 2_001, |_, _| true)
                .expect("sweep"),
            1
        );
        assert_eq!(
            s.scheduled_summary("orders").expect("sum"),
            (1, Some(3_000))
        );
        // The other route is untouched by the sweep of this one.
        assert_eq!(deadline(&s, "payments", "u:A"), Some(500));
        drop(s);
        let s = store(dir.path());
        assert_eq!(deadline(&s, "orders", "u:A"), None);
        assert_eq!(deadline(&s, "orders", "u:C"), Some(3_000));
    }

    #[test]
    fn a_new_deadline_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        put(&s, "r", "u:A", 5_000);
        put(&s, "r", "u:A", 9_000);
        assert_eq!(s.scheduled_summary("r").expect("sum"), (1, Some(9_000)));
        assert_eq!(
            s.scheduled_sweep("r", 6_000, |_, _| true).expect("sweep"),
            0
        );
        assert_eq!(deadline(&s, "r", "u:A"), Some(9_000));
    }

    #[test]
    fn route_names_that_prefix_others_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        put(&s, "a", "u:1", 1_000);
        put(&s, "ab", "u:1", 1_000);
        assert_eq!(
            s.scheduled_sweep("a", i64::MAX, |_, _| true)
                .expect("sweep"),
            1
        );
        assert_eq!(deadline(&s, "ab", "u:1"), Some(1_000));
        assert_eq!(ordered(-1) < ordered(0), ordered(0) < ordered(1));
        assert_eq!(from_ordered(ordered(-42)), -42);
    }

    #[test]
    fn read_only_open_of_a_store_without_the_family() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let old = ["checkpoints", "journal", "quarantine", "meta"];
            rocksdb::DB::open_cf(&opts, dir.path(), old).expect("old layout");
        }
        let s = CheckpointStore::open_read_only(dir.path()).expect("read-only open");
        assert_eq!(s.scheduled_entry("r", "u:1").expect("get"), None);
        assert_eq!(s.scheduled_summary("r").expect("sum"), (0, None));
    }
}
