//! The 5.x side of a verification, spilled to disk: every record read from
//! the target topic, keyed by message id, in a throwaway RocksDB under a
//! temporary directory. Memory stays bounded whatever the topic's size; the
//! directory is removed when the index is dropped.
//!
//! Owns: the temporary database and its key layout. Must not touch: the
//! bridge's checkpoint store, the network.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context};
use rocksdb::{IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;

/// Where a record sits in 5.x.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetPosition {
    pub queue: String,
    pub offset: i64,
}

impl std::fmt::Display for TargetPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.queue, self.offset)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCopy {
    pub at: TargetPosition,
    pub fingerprint: Fingerprint,
}

pub struct TargetIndex {
    db: Option<DB>,
    dir: PathBuf,
    records: u64,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn key(message_id: &str, at: &TargetPosition) -> Vec<u8> {
    let mut k = Vec::with_capacity(message_id.len() + at.queue.len() + 10);
    k.extend_from_slice(message_id.as_bytes());
    k.push(0);
    k.extend_from_slice(at.queue.as_bytes());
    k.push(0);
    k.extend_from_slice(&at.offset.to_be_bytes());
    k
}

impl TargetIndex {
    /// A fresh index in a new directory under `parent`. Indexes left behind
    /// by verify processes that no longer run (killed) are removed first.
    pub fn create(parent: &Path) -> anyhow::Result<Self> {
        remove_orphans(parent);
        let dir = parent.join(format!(
            "rmq-bridge-verify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create verify's temporary index {}; pass --work-dir with free space",
                dir.display()
            )
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // A scratch database: small memtables, no WAL fsync, bounded memory.
        opts.set_write_buffer_size(16 * 1024 * 1024);
        opts.set_max_write_buffer_number(2);
        opts.set_max_open_files(256);
        let db = DB::open(&opts, &dir).map_err(|e| {
            anyhow!(
                "cannot open verify's temporary index {}: {e}",
                dir.display()
            )
        })?;
        Ok(TargetIndex {
            db: Some(db),
            dir,
            records: 0,
        })
    }

    fn db(&self) -> &DB {
        // Only `Drop` takes it.
        self.db.as_ref().expect("index open until dropped")
    }

    /// Adds records read from 5.x (one write batch).
    pub fn add(&mut self, copies: &[StoredCopy]) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        for c in copies {
            let value = serde_json::to_vec(c).context("encoding an index entry")?;
            batch.put(key(&c.fingerprint.message_id, &c.at), value);
        }
        let mut w = rocksdb::WriteOptions::default();
        w.disable_wal(true);
        self.db().write_opt(batch, &w).map_err(|e| {
            anyhow!(
                "cannot write verify's temporary index {}: {e}",
                self.dir.display()
            )
        })?;
        self.records += copies.len() as u64;
        Ok(())
    }

    /// Every stored copy of `message_id`, in (5.x queue, offset) order.
    pub fn copies(&self, message_id: &str) -> anyhow::Result<Vec<StoredCopy>> {
        let mut prefix = message_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self
            .db()
            .iterator(IteratorMode::From(&prefix, rocksdb::Direction::Forward))
        {
            let (k, v) = item.map_err(|e| anyhow!("reading verify's temporary index: {e}"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(&v).context("decoding an index entry")?);
        }
        Ok(out)
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Removes `rmq-bridge-verify-<pid>-<n>` directories of dead processes.
fn remove_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rmq-bridge-verify-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TargetIndex {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::fingerprint::StoredType;

    fn copy(id: &str, queue: &str, offset: i64) -> StoredCopy {
        StoredCopy {
            at: TargetPosition {
                queue: queue.into(),
                offset,
            },
            fingerprint: Fingerprint {
                message_id: id.into(),
                body_sha1: String::new(),
                body_len: 0,
                tag: None,
                keys: vec![],
                user_properties: Default::default(),
                kind: StoredType::Normal,
                group: None,
                delivery_ms: None,
            },
        }
    }

    #[test]
    fn indexes_of_dead_processes_are_removed() {
        let parent =
            std::env::temp_dir().join(format!("rmq-verify-orphans-{}", std::process::id()));
        let orphan = parent.join("rmq-bridge-verify-999999999-0");
        let other = parent.join("unrelated");
        std::fs::create_dir_all(&orphan).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let index = TargetIndex::create(&parent).unwrap();
        assert!(!orphan.exists());
        assert!(other.exists());
        assert!(index.dir.exists(), "our own index stays");
        drop(index);
        let _ = std::fs::remove_dir_all(&parent);
    }

    #[test]
    fn copies_are_found_by_exact_id_and_the_directory_goes_away() {
        let parent = std::env::temp_dir();
        let mut index = TargetIndex::create(&parent).unwrap();
        let dir = index.dir.clone();
        index
            .add(&[
                copy("A", "b:0", 1),
                copy("AB", "b:0", 2),
                copy("A", "b:1", 0),
            ])
            .unwrap();
        let a = index.copies("A").unwrap();
        assert_eq!(a.len(), 2, "AB is another id");
        assert_eq!(a[0].at.queue, "b:0");
        assert_eq!(index.copies("AB").unwrap().len(), 1);
        assert!(index.copies("C").unwrap().is_empty());
        drop(index);
        assert!(!dir.exists());
    }
}
