//! The durable set of pending scheduled messages a route forwarded early
//! from the 4.x schedule topic (issue 11), so that the route skips the copy
//! the 4.x broker later moves into the real topic.
//!
//! Column family `scheduled`, two keys per entry, written in one batch:
//! - `i <route> 0 <key>` -> deadline (ms, big-endian): the membership test;
//! - `d <route> 0 <deadline, order-preserving> <key>` -> empty: the same
//!   entries in deadline order, so pruning reads only what it removes.
//!
//! Owns: membership and pruning. Must not touch: deciding what to forward
//! (`translate::scheduled`), when to prune (`pipeline::scheduled`).

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{CheckpointStore, StoreError, CF_SCHEDULED};

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
    /// Remembers that `route` forwarded the pending message `key`, due at
    /// `deadline_ms` (durable when the store is opened with `sync`).
    pub fn scheduled_remember(
        &self,
        route: &str,
        key: &str,
        deadline_ms: i64,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_SCHEDULED)?;
        let mut batch = WriteBatch::default();
        if let Some(old) = self.scheduled_forwarded(route, key)? {
            if old == deadline_ms {
                return Ok(());
            }
            batch.delete_cf(cf, due_key(route, old, key));
        }
        batch.put_cf(cf, id_key(route, key), deadline_ms.to_be_bytes());
        batch.put_cf(cf, due_key(route, deadline_ms, key), []);
        db.write_opt(batch, &self.write_opts()).map_err(|e| {
            self.write_err(
                format!("forwarded scheduled message {key} of route {route}"),
                e,
            )
        })
    }

    /// The deadline of `key` if `route` forwarded it and it is not pruned.
    pub fn scheduled_forwarded(&self, route: &str, key: &str) -> Result<Option<i64>, StoreError> {
        let db = self.db()?;
        // A store opened read-only from an older bridge has no such family.
        let Some(cf) = db.cf_handle(CF_SCHEDULED) else {
            return Ok(None);
        };
        let value = db
            .get_pinned_cf(cf, id_key(route, key))
            .map_err(|e| self.read_err(e))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// Forgets every entry of `route` due before `before_ms`; returns how many.
    pub fn scheduled_prune(&self, route: &str, before_ms: i64) -> Result<usize, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_SCHEDULED)?;
        let prefix = due_prefix(route);
        let mut batch = WriteBatch::default();
        let mut pruned = 0;
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
            batch.delete_cf(cf, &k);
            batch.delete_cf(cf, id_key(route, &String::from_utf8_lossy(key)));
            pruned += 1;
        }
        if pruned > 0 {
            db.write_opt(batch, &self.write_opts()).map_err(|e| {
                self.write_err(
                    format!("pruning forwarded scheduled messages of route {route}"),
                    e,
                )
            })?;
        }
        Ok(pruned)
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

    #[test]
    fn remembers_until_pruned_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = store(dir.path());
            s.scheduled_remember("orders", "u:A", 2_000).expect("A");
            s.scheduled_remember("orders", "u:B", 1_000).expect("B");
            s.scheduled_remember("orders", "u:C", 3_000).expect("C");
            // Same key on another route is another entry.
            s.scheduled_remember("payments", "u:A", 500).expect("A'");
            assert_eq!(
                s.scheduled_forwarded("orders", "u:A").expect("get"),
                Some(2_000)
            );
            assert_eq!(s.scheduled_forwarded("orders", "u:Z").expect("get"), None);
        }
        // Reopened (as after a crash or restart): all still there.
        let s = store(dir.path());
        assert_eq!(
            s.scheduled_forwarded("orders", "u:B").expect("get"),
            Some(1_000)
        );
        assert_eq!(
            s.scheduled_summary("orders").expect("sum"),
            (3, Some(3_000))
        );

        // Prune strictly before 2_000: only B goes.
        assert_eq!(s.scheduled_prune("orders", 2_000).expect("prune"), 1);
        assert_eq!(s.scheduled_forwarded("orders", "u:B").expect("get"), None);
        assert_eq!(
            s.scheduled_forwarded("orders", "u:A").expect("get"),
            Some(2_000)
        );
        assert_eq!(s.scheduled_prune("orders", 2_001).expect("prune"), 1);
        assert_eq!(
            s.scheduled_summary("orders").expect("sum"),
            (1, Some(3_000))
        );
        // The other route is untouched by the pruning of this one.
        assert_eq!(
            s.scheduled_forwarded("payments", "u:A").expect("get"),
            Some(500)
        );
        drop(s);
        let s = store(dir.path());
        assert_eq!(s.scheduled_forwarded("orders", "u:A").expect("get"), None);
        assert_eq!(
            s.scheduled_forwarded("orders", "u:C").expect("get"),
            Some(3_000)
        );
    }

    #[test]
    fn a_new_deadline_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.scheduled_remember("r", "u:A", 5_000).expect("first");
        s.scheduled_remember("r", "u:A", 9_000).expect("second");
        assert_eq!(s.scheduled_summary("r").expect("sum"), (1, Some(9_000)));
        assert_eq!(s.scheduled_prune("r", 6_000).expect("prune"), 0);
        assert_eq!(s.scheduled_forwarded("r", "u:A").expect("get"), Some(9_000));
    }

    #[test]
    fn route_names_that_prefix_others_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.scheduled_remember("a", "u:1", 1_000).expect("a");
        s.scheduled_remember("ab", "u:1", 1_000).expect("ab");
        assert_eq!(s.scheduled_prune("a", i64::MAX).expect("prune"), 1);
        assert_eq!(
            s.scheduled_forwarded("ab", "u:1").expect("get"),
            Some(1_000)
        );
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
        assert_eq!(s.scheduled_forwarded("r", "u:1").expect("get"), None);
        assert_eq!(s.scheduled_summary("r").expect("sum"), (0, None));
    }
}
