//! The durable record of where the bridge is: one RocksDB database holding
//! - `checkpoints`: next 4.x offset to forward, per (route, source queue);
//! - `journal`: every cutover-percent change with the per-queue offsets at
//!   which it took effect;
//! - `quarantine`: messages 5.x permanently rejected, with the reason;
//! - `meta`: small named values, among them the 4.x topic each route's
//!   checkpoints belong to (`route_topic/<route>`, see `bind_route_topics`);
//! - `scheduled`: ids of pending scheduled messages forwarded early, until
//!   their deadline has passed (`scheduled.rs`).
//!
//! This module never talks to a cluster; the pipeline calls it. Writes are
//! batched (one `WriteBatch` per flush) and, when configured, fsynced, so a
//! power loss cannot move a checkpoint backwards past what 5.x acknowledged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

const CF_CHECKPOINTS: &str = "checkpoints";
const CF_JOURNAL: &str = "journal";
const CF_QUARANTINE: &str = "quarantine";
const CF_META: &str = "meta";
/// Pending scheduled messages forwarded early, see [`scheduled`].
const CF_SCHEDULED: &str = "scheduled";
const ALL_CFS: [&str; 5] = [
    CF_CHECKPOINTS,
    CF_JOURNAL,
    CF_QUARANTINE,
    CF_META,
    CF_SCHEDULED,
];

mod scheduled;
pub mod shared;
pub use scheduled::{ForwardEntry, ForwardState};
use shared::{Replica, SharedRecord};

/// A 4.x source queue: positions are per (broker name, queue id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceQueue {
    pub broker_name: String,
    pub queue_id: i32,
}

impl fmt::Display for SourceQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.broker_name, self.queue_id)
    }
}

#[derive(Debug)]
pub enum StoreError {
    Open {
        dir: PathBuf,
        reason: String,
    },
    /// `what` names the thing that could not be written ("checkpoints of 3
    /// queue(s) of route orders", "quarantined message ...").
    Write {
        dir: PathBuf,
        what: String,
        reason: String,
    },
    Read {
        dir: PathBuf,
        reason: String,
    },
    Corrupt {
        what: String,
    },
    /// The route's checkpoints belong to another 4.x topic than the one
    /// configured: resuming would start the new topic at the old topic's
    /// offsets and skip everything below them.
    TopicMismatch {
        route: String,
        bound: String,
        configured: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { dir, reason } if reason.contains("lock") => write!(
                f,
                "checkpoint store {} is locked: another rmq-bridge process is using it ({reason}); stop that process first (or point checkpoint.dir elsewhere)",
                dir.display()
            ),
            StoreError::Open { dir, reason } => write!(
                f,
                "cannot open checkpoint store {}: {reason}; check the directory exists and is writable by the bridge",
                dir.display()
            ),
            StoreError::Write { dir, what, reason } => write!(
                f,
                "cannot write {what} to checkpoint store {}: {reason}; free space if the disk is full, or make the directory writable by the bridge (what is already stored stays valid)",
                dir.display()
            ),
            StoreError::Read { dir, reason } => {
                write!(f, "cannot read checkpoint store {}: {reason}", dir.display())
            }
            StoreError::Corrupt { what } => write!(f, "checkpoint store holds a corrupt entry: {what}"),
            StoreError::TopicMismatch { route, bound, configured } => write!(
                f,
                "route `{route}` has checkpoints for 4.x topic `{bound}`, but its source_topic is now `{configured}`; \
                 resuming would start `{configured}` at the offsets of `{bound}` and skip the messages below them. \
                 Either give the route a new name (it starts at its `start` position; the old name's checkpoints stay), \
                 or stop the bridge and run `rmq-bridge reset-route -c FILE --route {route}` to drop the route's checkpoints \
                 (its cutover journal and quarantined messages are kept); or set source_topic back to `{bound}`"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// One queue's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Next offset to forward.
    pub offset: i64,
    /// When it was written (unix ms).
    pub updated_ms: i64,
}

/// A cutover change as it took effect on one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub route: String,
    pub generation: u64,
    pub from_percent: u8,
    pub to_percent: u8,
    pub changed_at_ms: i64,
    /// Queue and offset of the first message decided under the new percent;
    /// `None` for the entry written when the change was accepted.
    pub queue: Option<SourceQueue>,
    pub offset: Option<i64>,
    pub note: String,
    /// The rule in force from this entry on. Absent in entries written by
    /// bridges before it existed (`verify` then reads the environments
    /// from the accepted entry's `note`, as those bridges wrote them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<JournalRule>,
}

impl JournalEntry {
    /// The environment list that the note of an "accepted" entry written by
    /// older bridges carries (`accepted; environments ["gray"]; queues at
    /// ...`); entries with a `rule` say it there.
    pub fn note_environments(&self) -> Option<Vec<String>> {
        note_environments(&self.note)
    }
}

/// The environment list in a note `... environments ["gray"]; ...`.
pub fn note_environments(note: &str) -> Option<Vec<String>> {
    let rest = note.split_once("environments ")?.1;
    let end = rest.find(']')?;
    serde_json::from_str(&rest[..=end]).ok()
}

/// A cutover rule as journaled: what decided which messages went to 5.x.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRule {
    pub percent: u8,
    /// The route's `environments` (empty: every environment).
    pub environments: Vec<String>,
    /// The route's tag filter (`*`: every tag).
    pub filter: String,
}

/// The generation the next rule of a route gets: above every generation in
/// its journal, so that generations stay unique and ordered across daemon
/// runs (each run's route task used to count from 1 again).
pub fn next_generation(journal: &[JournalEntry]) -> u64 {
    journal.iter().map(|e| e.generation).max().unwrap_or(0) + 1
}

/// A message 5.x permanently rejected (or translation refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub route: String,
    pub queue: SourceQueue,
    pub offset: i64,
    pub message_id: String,
    pub reason: String,
    pub quarantined_at_ms: i64,
    /// The translated message as JSON (body base64), ready to replay; empty
    /// when translation itself failed (replay then re-reads the source).
    pub message_json: String,
}

/// How `bind_route_topics` found a route's topic binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicBinding {
    /// Already bound to the configured topic.
    Matches,
    /// No binding and no checkpoints: bound now.
    New,
    /// Checkpoints without a binding (a store written by a release before
    /// bindings existed): bound now to the configured topic. The store does
    /// not know which topic they were written for; the configured one is the
    /// only candidate (that release refused source_topic changes on a
    /// running route, but not across a restart, so the daemon logs the
    /// adoption for the operator to confirm).
    Adopted { queues: usize },
}

/// What `reset_route` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteReset {
    pub checkpoints: Vec<(SourceQueue, Checkpoint)>,
    /// The topic the route was bound to, if any.
    pub topic: Option<String>,
}

/// The checkpoint store. Cheap to clone.
#[derive(Clone)]
pub struct CheckpointStore {
    /// Shared by every clone; replaced by [`Self::reopen`].
    db: Arc<RwLock<Option<Arc<DB>>>>,
    read_only: bool,
    dir: PathBuf,
    sync: bool,
    /// Serialises read-sequence-then-put in `journal_append` across clones
    /// (queue workers append concurrently).
    journal_seq: Arc<Mutex<()>>,
    /// Where quarantine, journal and start writes also go (instances
    /// sharing an estate, `shared.rs`); set once, shared by every clone.
    replica: Arc<std::sync::OnceLock<Arc<dyn Replica>>>,
}

impl fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn queue_key(route: &str, queue: &SourceQueue) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + queue.broker_name.len() + 6);
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k.extend_from_slice(queue.broker_name.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue.queue_id.to_be_bytes());
    k
}

fn route_topic_key(route: &str) -> String {
    format!("route_topic/{route}")
}

fn route_start_key(route: &str, queue: &SourceQueue) -> String {
    format!("route_start\0{route}\0{queue}")
}

fn route_prefix(route: &str) -> Vec<u8> {
    let mut k = route.as_bytes().to_vec();
    k.push(0);
    k
}

fn parse_queue_key(key: &[u8]) -> Option<(String, SourceQueue)> {
    let first = key.iter().position(|b| *b == 0)?;
    let rest = &key[first + 1..];
    let second = rest.iter().position(|b| *b == 0)?;
    let id_bytes: [u8; 4] = rest.get(second + 1..second + 5)?.try_into().ok()?;
    Some((
        String::from_utf8(key[..first].to_vec()).ok()?,
        SourceQueue {
            broker_name: String::from_utf8(rest[..second].to_vec()).ok()?,
            queue_id: i32::from_be_bytes(id_bytes),
        },
    ))
}

fn encode_checkpoint(c: &Checkpoint) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&c.offset.to_be_bytes());
    v[8..].copy_from_slice(&c.updated_ms.to_be_bytes());
    v
}

fn decode_checkpoint(v: &[u8]) -> Option<Checkpoint> {
    let offset = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let updated_ms = i64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some(Checkpoint { offset, updated_ms })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Opens (creating if missing) the read-write database in `dir`.
fn open_db(dir: &Path) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Small footprint: the store holds a few thousand keys.
    opts.set_max_background_jobs(1);
    opts.set_keep_log_file_num(3);
    opts.set_max_total_wal_size(64 << 20);
    // Checkpoints overwrite the same few keys every flush: RocksDB's
    // default 64 MiB memtable would fill with dead versions and sit in
    // RSS for hours, so flush small memtables and keep a small cache.
    let cache = Cache::new_lru_cache(1 << 20);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf = Options::default();
        cf.set_write_buffer_size(1 << 20);
        cf.set_max_write_buffer_number(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        cf.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| StoreError::Open {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(db)
}

impl CheckpointStore {
    /// Opens (creating if needed) the store for the running daemon.
    pub fn open(dir: &Path, sync: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let db = open_db(dir)?;
        Ok(CheckpointStore {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            read_only: false,
            dir: dir.to_path_buf(),
            sync,
            journal_seq: Arc::new(Mutex::new(())),
            replica: Default::default(),
        })
    }

    /// Opens the store read-only; works while the daemon holds it open.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("CURRENT").exists() {
            return Err(StoreError::Open {
                dir: dir.to_path_buf(),
                reason:
                    "no checkpoint store here yet (the bridge has not run with this checkpoint.dir)"
                        .into(),
            });
        }
        let opts = Options::default();
        // A store written by an older bridge lacks the newer column
        // families: open those it has (reads of the others find nothing).
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let cfs = ALL_CFS
            .iter()
            .filter(|cf| existing.is_empty() || existing.iter().any(|e| e == *cf));
        let db =
            DB::open_cf_for_read_only(&opts, dir, cfs, false).map_err(|e| StoreError::Open {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(CheckpointStore {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            read_only: true,
            dir: dir.to_path_buf(),
            sync: false,
            journal_seq: Arc::new(Mutex::new(())),
            replica: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// From now on, every quarantine, journal and route-start write that
    /// succeeds locally is also handed to `replica`. Set once: false if a
    /// replica was already set.
    pub fn set_replica(&self, replica: Arc<dyn Replica>) -> bool {
        self.replica.set(replica).is_ok()
    }

    fn replicate(&self, record: impl FnOnce() -> SharedRecord) {
        if let Some(r) = self.replica.get() {
            r.enqueue(record());
        }
    }

    fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
        db.cf_handle(name).ok_or_else(|| StoreError::Corrupt {
            what: format!("column family `{name}` missing"),
        })
    }

    /// The open database; an error while a reopen after a failed write
    /// has not succeeded yet (see [`Self::reopen`]).
    fn db(&self) -> Result<Arc<DB>, StoreError> {
        match self.db.read() {
            Ok(slot) => slot.clone().ok_or_else(|| StoreError::Write {
                dir: self.dir.clone(),
                what: "checkpoint store".into(),
                reason: "the store is closed after a failed write and could not be reopened yet; free space if the disk is full".into(),
            }),
            Err(_) => Err(StoreError::Corrupt {
                what: "checkpoint store handle poisoned".into(),
            }),
        }
    }

    /// Closes and reopens the database. RocksDB refuses every write after
    /// one failed with a background error (a full disk, say) until it is
    /// reopened; the flusher calls this while writes keep failing, so the
    /// bridge resumes by itself once space is free. Waits for calls in
    /// flight to finish with the old handle.
    pub fn reopen(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let mut slot = self.db.write().map_err(|_| StoreError::Corrupt {
            what: "checkpoint store handle poisoned".into(),
        })?;
        if let Some(old) = slot.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            drop(old);
        }
        *slot = Some(Arc::new(open_db(&self.dir)?));
        Ok(())
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.sync);
        w
    }

    fn write_err(&self, what: impl Into<String>, e: rocksdb::Error) -> StoreError {
        StoreError::Write {
            dir: self.dir.clone(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    fn read_err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Read {
            dir: self.dir.clone(),
            reason: e.to_string(),
        }
    }

    pub fn get(&self, route: &str, queue: &SourceQueue) -> Result<Option<Checkpoint>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_CHECKPOINTS)?;
        let v = db
            .get_cf(cf, queue_key(route, queue))
            .map_err(|e| self.read_err(e))?;
        match v {
            None => Ok(None),
            Some(v) => decode_checkpoint(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!("checkpoint of route {route} queue {queue}"),
                }),
        }
    }

    /// Every checkpoint of one route, ordered by queue.
    pub fn route_checkpoints(
        &self,
        route: &str,
    ) -> Result<Vec<(SourceQueue, Checkpoint)>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_CHECKPOINTS)?;
        let prefix = route_prefix(route);
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, queue) = parse_queue_key(&k).ok_or_else(|| StoreError::Corrupt {
                what: format!("checkpoint key {}", hex::encode(&k)),
            })?;
            let cp = decode_checkpoint(&v).ok_or_else(|| StoreError::Corrupt {
                what: format!("checkpoint of {route} {queue}"),
            })?;
            out.push((queue, cp));
        }
        Ok(out)
    }

    /// Routes that have at least one checkpoint.
    pub fn routes(&self) -> Result<Vec<String>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_CHECKPOINTS)?;
        let mut out: Vec<String> = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.read_err(e))?;
            if let Some((route, _)) = parse_queue_key(&k) {
                if out.last() != Some(&route) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Writes several checkpoints atomically (one batch, one fsync).
    pub fn advance(&self, updates: &[(String, SourceQueue, i64)]) -> Result<(), StoreError> {
        let db = self.db()?;
        if updates.is_empty() {
            return Ok(());
        }
        let cf = Self::cf(&db, CF_CHECKPOINTS)?;
        let now = now_ms();
        let mut batch = WriteBatch::default();
        for (route, queue, offset) in updates {
            let value = encode_checkpoint(&Checkpoint {
                offset: *offset,
                updated_ms: now,
            });
            batch.put_cf(cf, queue_key(route, queue), value);
        }
        db.write_opt(batch, &self.write_opts()).map_err(|e| {
            let mut routes: Vec<&str> = updates.iter().map(|(r, _, _)| r.as_str()).collect();
            routes.dedup();
            self.write_err(
                format!(
                    "checkpoints of {} queue(s) of route(s) {}",
                    updates.len(),
                    routes.join(", ")
                ),
                e,
            )
        })
    }

    /// Removes every checkpoint of a route and its topic binding, in one
    /// batch, so the next start begins at the route's `start` position and
    /// may name any source topic. The cutover journal and quarantined
    /// messages are kept. Only for the tooling (`rmq-bridge reset-route`),
    /// with the daemon stopped.
    pub fn reset_route(&self, route: &str) -> Result<RouteReset, StoreError> {
        let db = self.db()?;
        let checkpoints = self.route_checkpoints(route)?;
        let topic = self.route_topic(route)?;
        let cf = Self::cf(&db, CF_CHECKPOINTS)?;
        let meta = Self::cf(&db, CF_META)?;
        let mut batch = WriteBatch::default();
        for (q, _) in &checkpoints {
            batch.delete_cf(cf, queue_key(route, q));
        }
        batch.delete_cf(meta, route_topic_key(route).as_bytes());
        db.write_opt(batch, &self.write_opts())
            .map_err(|e| self.write_err(format!("reset of route {route}"), e))?;
        Ok(RouteReset { checkpoints, topic })
    }

    /// The 4.x topic the route's checkpoints belong to, if bound.
    pub fn route_topic(&self, route: &str) -> Result<Option<String>, StoreError> {
        self.meta_get(&route_topic_key(route))
    }

    /// Ties each route's checkpoints to its configured source topic; call
    /// before any route starts (startup, and reload for every configured
    /// route). All or nothing: on the first route whose checkpoints belong
    /// to another topic, returns `TopicMismatch` and binds none.
    ///
    /// A route with checkpoints but no binding comes from a store written
    /// before bindings existed; it is bound to the configured topic
    /// (`TopicBinding::Adopted`). Removing a route from the config keeps its
    /// binding, so re-adding it with the same topic resumes and with another
    /// topic is refused.
    pub fn bind_route_topics(
        &self,
        routes: &[(String, String)],
    ) -> Result<Vec<TopicBinding>, StoreError> {
        let db = self.db()?;
        let mut found = Vec::with_capacity(routes.len());
        for (route, topic) in routes {
            let binding = match self.route_topic(route)? {
                Some(bound) if bound == *topic => TopicBinding::Matches,
                Some(bound) => {
                    return Err(StoreError::TopicMismatch {
                        route: route.clone(),
                        bound,
                        configured: topic.clone(),
                    })
                }
                None => match self.route_checkpoints(route)?.len() {
                    0 => TopicBinding::New,
                    queues => TopicBinding::Adopted { queues },
                },
            };
            found.push(binding);
        }
        let meta = Self::cf(&db, CF_META)?;
        let mut batch = WriteBatch::default();
        for ((route, topic), binding) in routes.iter().zip(&found) {
            if *binding != TopicBinding::Matches {
                batch.put_cf(meta, route_topic_key(route).as_bytes(), topic.as_bytes());
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, &self.write_opts())
                .map_err(|e| self.write_err("source-topic bindings of routes", e))?;
        }
        Ok(found)
    }

    /// `bind_route_topics` for one route.
    pub fn bind_route_topic(&self, route: &str, topic: &str) -> Result<TopicBinding, StoreError> {
        let mut found = self.bind_route_topics(&[(route.to_string(), topic.to_string())])?;
        Ok(found.pop().unwrap_or(TopicBinding::Matches))
    }

    /// `bind_route_topics` off the async runtime's threads.
    pub async fn bind_route_topics_blocking(
        &self,
        routes: Vec<(String, String)>,
    ) -> Result<Vec<TopicBinding>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.bind_route_topics(&routes))
            .await
            .map_err(|e| self.task_err("source-topic bindings of routes", e))?
    }

    fn task_err(&self, what: &str, e: tokio::task::JoinError) -> StoreError {
        StoreError::Write {
            dir: self.dir.clone(),
            what: what.to_string(),
            reason: format!("store task failed: {e}"),
        }
    }

    fn next_seq(&self, cf_name: &str, prefix: &[u8]) -> Result<u64, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, cf_name)?;
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut it = db.iterator_cf(cf, IteratorMode::From(&upper, rocksdb::Direction::Reverse));
        match it.next() {
            Some(Ok((k, _))) if k.starts_with(prefix) && k.len() == prefix.len() + 8 => {
                let seq: [u8; 8] =
                    k[prefix.len()..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt {
                            what: "journal key".into(),
                        })?;
                Ok(u64::from_be_bytes(seq) + 1)
            }
            Some(Err(e)) => Err(self.read_err(e)),
            _ => Ok(0),
        }
    }

    /// Appends to the route's cutover journal. Safe from many threads: the
    /// next sequence number is read and written under one lock, so
    /// concurrent appends never reuse (overwrite) a key.
    pub fn journal_append(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let db = self.db()?;
        let value = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            what: e.to_string(),
        })?;
        let cf = Self::cf(&db, CF_JOURNAL)?;
        let prefix = route_prefix(&entry.route);
        // A poisoned lock only means another append panicked; the guarded
        // state lives in RocksDB, so carry on.
        let _seq = self
            .journal_seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seq = self.next_seq(CF_JOURNAL, &prefix)?;
        let mut key = prefix;
        key.extend_from_slice(&seq.to_be_bytes());
        db.put_cf_opt(cf, key, value, &self.write_opts())
            .map_err(|e| {
                self.write_err(format!("cutover journal entry of route {}", entry.route), e)
            })?;
        self.replicate(|| SharedRecord::Journal {
            entry: entry.clone(),
        });
        Ok(())
    }

    /// The routes that have a cutover journal here.
    pub fn journal_routes(&self) -> Result<Vec<String>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_JOURNAL)?;
        let mut out: Vec<String> = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.read_err(e))?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let route = String::from_utf8_lossy(&k[..end]).into_owned();
            if out.last() != Some(&route) {
                out.push(route);
            }
        }
        Ok(out)
    }

    pub fn journal(&self, route: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.scan_json(CF_JOURNAL, &route_prefix(route))
    }

    fn scan_json<T: for<'de> Deserialize<'de>>(
        &self,
        cf_name: &str,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, cf_name)?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                what: format!("{cf_name} entry: {e}"),
            })?);
        }
        Ok(out)
    }

    /// The key a release before issue 16 wrote: (route, queue, offset). A
    /// queue reset reuses offsets, so a second message at one offset
    /// overwrote the first; still read, replayed and dropped.
    fn quarantine_legacy_key(route: &str, queue: &SourceQueue, offset: i64) -> Vec<u8> {
        let mut k = queue_key(route, queue);
        k.extend_from_slice(&offset.to_be_bytes());
        k
    }

    /// (route, queue, offset, message): the legacy key followed by the
    /// message id, or, for a record without one (undecodable), the CRC-32 of
    /// what is kept. Two different messages at one reused offset get two
    /// keys; the same message quarantined again (re-read after a restart)
    /// gets the same key, so it is kept once.
    fn quarantine_key(entry: &QuarantineEntry) -> Vec<u8> {
        let mut k = Self::quarantine_legacy_key(&entry.route, &entry.queue, entry.offset);
        if entry.message_id.is_empty() {
            k.push(1);
            k.extend_from_slice(&crc32fast::hash(entry.message_json.as_bytes()).to_be_bytes());
        } else {
            k.push(0);
            k.extend_from_slice(entry.message_id.as_bytes());
        }
        k
    }

    /// Stores a quarantined message. Written before the checkpoint moves past it.
    pub fn quarantine_put(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        let db = self.db()?;
        let value = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            what: e.to_string(),
        })?;
        let cf = Self::cf(&db, CF_QUARANTINE)?;
        db.put_cf_opt(cf, Self::quarantine_key(entry), value, &self.write_opts())
            .map_err(|e| {
                self.write_err(
                    format!(
                        "quarantined message (route {} queue {} offset {})",
                        entry.route, entry.queue, entry.offset
                    ),
                    e,
                )
            })?;
        self.replicate(|| SharedRecord::Quarantined {
            entry: entry.clone(),
            refresh: false,
        });
        Ok(())
    }

    /// `quarantine_put` off the async runtime's threads (a slow or full
    /// disk must not block them). One attempt; the caller decides on retries.
    pub async fn quarantine_put_blocking(&self, entry: QuarantineEntry) -> Result<(), StoreError> {
        let store = self.clone();
        let what = format!(
            "quarantined message (route {} queue {} offset {})",
            entry.route, entry.queue, entry.offset
        );
        tokio::task::spawn_blocking(move || store.quarantine_put(&entry))
            .await
            .map_err(|e| self.task_err(&what, e))?
    }

    /// Quarantined messages, of one route or (None) all routes.
    pub fn quarantine_list(&self, route: Option<&str>) -> Result<Vec<QuarantineEntry>, StoreError> {
        let prefix = route.map(route_prefix).unwrap_or_default();
        self.scan_json(CF_QUARANTINE, &prefix)
    }

    pub fn quarantine_remove(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        self.quarantine_forget(entry)?;
        self.replicate(|| SharedRecord::QuarantineRemoved {
            key: shared::quarantine_key(entry),
            at_ms: shared::removal_version(entry, now_ms()),
        });
        Ok(())
    }

    /// Removes an entry from this store only: for one the estate state
    /// topic already says another instance removed (no second removal is
    /// published).
    pub fn quarantine_forget(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_QUARANTINE)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, Self::quarantine_key(entry));
        // An entry of the old key format is removed only when it is this
        // very entry (another message may sit under that key).
        let legacy = Self::quarantine_legacy_key(&entry.route, &entry.queue, entry.offset);
        if let Some(v) = db.get_cf(cf, &legacy).map_err(|e| self.read_err(e))? {
            if serde_json::from_slice::<QuarantineEntry>(&v).ok().as_ref() == Some(entry) {
                batch.delete_cf(cf, &legacy);
            }
        }
        db.write_opt(batch, &self.write_opts()).map_err(|e| {
            self.write_err(
                format!(
                    "removal of quarantined message (route {} queue {} offset {})",
                    entry.route, entry.queue, entry.offset
                ),
                e,
            )
        })
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_META)?;
        let v = db
            .get_cf(cf, key.as_bytes())
            .map_err(|e| self.read_err(e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the offset a route started `queue` from (the first
    /// checkpoint the route wrote for it), which `verify` starts from and
    /// `check --decommission` demands coverage from.
    pub fn record_route_start(
        &self,
        route: &str,
        queue: &SourceQueue,
        offset: i64,
    ) -> Result<(), StoreError> {
        self.meta_put(&route_start_key(route, queue), &offset.to_string())?;
        self.replicate(|| SharedRecord::Start {
            route: route.to_string(),
            queue: queue.clone(),
            offset,
        });
        Ok(())
    }

    /// Every recorded (route, queue, start offset).
    pub fn route_starts(&self) -> Result<Vec<(String, SourceQueue, i64)>, StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_META)?;
        let prefix = b"route_start\0";
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some((route, queue)) = key.split_once('\0') else {
                continue;
            };
            let Some((broker, id)) = queue.rsplit_once(':') else {
                continue;
            };
            let (Ok(queue_id), Ok(offset)) = (
                id.parse::<i32>(),
                String::from_utf8_lossy(&v).trim().parse::<i64>(),
            ) else {
                continue;
            };
            out.push((
                route.to_string(),
                SourceQueue {
                    broker_name: broker.to_string(),
                    queue_id,
                },
                offset,
            ));
        }
        Ok(out)
    }

    /// The offset the route started `queue` from, where it was recorded
    /// (queues started by bridges before the record existed have none).
    pub fn route_start(&self, route: &str, queue: &SourceQueue) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta_get(&route_start_key(route, queue))?
            .and_then(|v| v.trim().parse().ok()))
    }

    pub fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let db = self.db()?;
        let cf = Self::cf(&db, CF_META)?;
        db.put_cf_opt(cf, key.as_bytes(), value.as_bytes(), &self.write_opts())
            .map_err(|e| self.write_err(format!("meta key {key}"), e))
    }

    /// Flushes memtables and the WAL; called on shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        db.flush_wal(true)
            .map_err(|e| self.write_err("write-ahead log (final flush)", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(b: &str, id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: b.into(),
            queue_id: id,
        }
    }

    #[test]
    fn checkpoints_survive_reopen_and_are_per_route_and_queue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path(), true).unwrap();
            store
                .advance(&[
                    ("orders".into(), q("b1", 0), 10),
                    ("orders".into(), q("b1", 1), 20),
                    ("orders2".into(), q("b1", 0), 99),
                ])
                .unwrap();
            store.advance(&[("orders".into(), q("b1", 0), 11)]).unwrap();
        }
        let store = CheckpointStore::open(dir.path(), true).unwrap();
        assert_eq!(
            store.get("orders", &q("b1", 0)).unwrap().unwrap().offset,
            11
        );
        let all = store.route_checkpoints("orders").unwrap();
        assert_eq!(all.len(), 2, "orders2 must not leak into orders: {all:?}");
        assert_eq!(all[1].1.offset, 20);
        assert_eq!(store.routes().unwrap(), vec!["orders", "orders2"]);
        assert!(store.get("orders", &q("b2", 0)).unwrap().is_none());
    }

    #[test]
    fn second_writer_is_refused_with_a_clear_message_but_readers_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        store.advance(&[("r".into(), q("b", 0), 5)]).unwrap();
        let err = CheckpointStore::open(dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("locked"), "{err}");
        let ro = CheckpointStore::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.get("r", &q("b", 0)).unwrap().unwrap().offset, 5);
    }

    #[test]
    fn journal_and_quarantine_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        for (i, to) in [0u8, 30, 100].iter().enumerate() {
            store
                .journal_append(&JournalEntry {
                    route: "r".into(),
                    generation: i as u64,
                    from_percent: 0,
                    to_percent: *to,
                    changed_at_ms: 1,
                    queue: Some(q("b", 0)),
                    offset: Some(i as i64 * 10),
                    note: String::new(),
                    rule: None,
                })
                .unwrap();
        }
        let j = store.journal("r").unwrap();
        assert_eq!(
            j.iter().map(|e| e.to_percent).collect::<Vec<_>>(),
            vec![0, 30, 100]
        );
        assert!(store.journal("r2").unwrap().is_empty());

        let entry = QuarantineEntry {
            route: "r".into(),
            queue: q("b", 1),
            offset: 7,
            message_id: "ID".into(),
            reason: "type mismatch".into(),
            quarantined_at_ms: 1,
            message_json: "{}".into(),
        };
        store.quarantine_put(&entry).unwrap();
        assert_eq!(
            store.quarantine_list(Some("r")).unwrap(),
            vec![entry.clone()]
        );
        assert_eq!(store.quarantine_list(None).unwrap().len(), 1);
        store.quarantine_remove(&entry).unwrap();
        assert!(store.quarantine_list(None).unwrap().is_empty());
    }

    fn quarantined(offset: i64, id: &str, json: &str) -> QuarantineEntry {
        QuarantineEntry {
            route: "r".into(),
            queue: q("b", 1),
            offset,
            message_id: id.into(),
            reason: "type mismatch".into(),
            quarantined_at_ms: 1,
            message_json: json.into(),
        }
    }

    #[test]
    fn two_messages_at_one_reused_offset_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        // Before and after a 4.x queue reset: one offset, two messages.
        let before = quarantined(7, "ID-OLD", "{\"a\":1}");
        let after = quarantined(7, "ID-NEW", "{\"a\":2}");
        // Undecodable records have no id; they differ by what is kept.
        let raw_a = quarantined(7, "", "{\"raw\":1}");
        let raw_b = quarantined(7, "", "{\"raw\":2}");
        for e in [&before, &after, &raw_a, &raw_b] {
            store.quarantine_put(e).unwrap();
        }
        let listed = store.quarantine_list(Some("r")).unwrap();
        assert_eq!(listed.len(), 4, "{listed:?}");
        for e in [&before, &after, &raw_a, &raw_b] {
            assert!(listed.contains(e), "{e:?} lost");
        }
        // The same message quarantined again (re-read after a restart) is kept once.
        store.quarantine_put(&after).unwrap();
        assert_eq!(store.quarantine_list(Some("r")).unwrap().len(), 4);
        // Removing one leaves the others.
        store.quarantine_remove(&before).unwrap();
        let listed = store.quarantine_list(Some("r")).unwrap();
        assert_eq!(listed.len(), 3);
        assert!(!listed.contains(&before));
    }

    #[test]
    fn entries_of_the_old_key_format_list_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let old = quarantined(7, "ID-OLD", "{}");
        {
            // Written as a release before issue 16 did.
            let db = store.db().unwrap();
            let cf = CheckpointStore::cf(&db, CF_QUARANTINE).unwrap();
            db.put_cf(
                cf,
                CheckpointStore::quarantine_legacy_key("r", &old.queue, 7),
                serde_json::to_vec(&old).unwrap(),
            )
            .unwrap();
        }
        let new = quarantined(7, "ID-NEW", "{}");
        store.quarantine_put(&new).unwrap();
        let listed = store.quarantine_list(Some("r")).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.contains(&old) && listed.contains(&new));
        // Removing the new one keeps the old-format one, and vice versa.
        store.quarantine_remove(&new).unwrap();
        assert_eq!(store.quarantine_list(Some("r")).unwrap(), vec![old.clone()]);
        store.quarantine_remove(&old).unwrap();
        assert!(store.quarantine_list(None).unwrap().is_empty());
    }

    #[test]
    fn concurrent_journal_appends_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        store
                            .journal_append(&JournalEntry {
                                route: "r".into(),
                                generation: t * 1000 + i,
                                from_percent: 0,
                                to_percent: 50,
                                changed_at_ms: 1,
                                queue: Some(q("b", t as i32)),
                                offset: Some(i as i64),
                                note: String::new(),
                                rule: None,
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let journal = store.journal("r").unwrap();
        assert_eq!(journal.len(), 1600, "journal entries were overwritten");
        // Each worker's own entries stay in the order it wrote them.
        for t in 0..8u64 {
            let gens: Vec<u64> = journal
                .iter()
                .filter(|e| e.generation / 1000 == t)
                .map(|e| e.generation % 1000)
                .collect();
            assert_eq!(gens, (0..200).collect::<Vec<_>>());
        }
    }

    #[test]
    fn checkpoints_are_bound_to_their_source_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let bind = |route: &str, topic: &str| store.bind_route_topic(route, topic);
        assert_eq!(bind("r", "A").unwrap(), TopicBinding::New);
        store.advance(&[("r".into(), q("b", 0), 500)]).unwrap();
        assert_eq!(bind("r", "A").unwrap(), TopicBinding::Matches);

        let err = bind("r", "B").unwrap_err();
        assert!(
            matches!(&err, StoreError::TopicMismatch { route, bound, configured }
                if route == "r" && bound == "A" && configured == "B"),
            "{err:?}"
        );
        let text = err.to_string();
        for needle in [
            "`r`",
            "`A`",
            "`B`",
            "new name",
            "rmq-bridge reset-route -c FILE --route r",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        // Refused means unchanged: still bound to A, checkpoint intact.
        assert_eq!(store.route_topic("r").unwrap().as_deref(), Some("A"));
        assert_eq!(store.get("r", &q("b", 0)).unwrap().unwrap().offset, 500);
    }

    #[test]
    fn binding_several_routes_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        store.bind_route_topic("old", "A").unwrap();
        let routes = [
            ("fresh".to_string(), "F".to_string()),
            ("old".to_string(), "B".to_string()),
        ];
        assert!(matches!(
            store.bind_route_topics(&routes),
            Err(StoreError::TopicMismatch { .. })
        ));
        assert_eq!(store.route_topic("fresh").unwrap(), None);
    }

    #[test]
    fn checkpoints_from_before_bindings_adopt_the_configured_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        store
            .advance(&[("r".into(), q("b", 0), 1), ("r".into(), q("b", 1), 2)])
            .unwrap();
        assert_eq!(
            store.bind_route_topic("r", "A").unwrap(),
            TopicBinding::Adopted { queues: 2 }
        );
        assert!(store.bind_route_topic("r", "B").is_err());
    }

    #[test]
    fn reset_route_drops_checkpoints_and_binding_but_keeps_journal_and_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path(), true).unwrap();
            store.bind_route_topic("r", "A").unwrap();
            store.bind_route_topic("other", "A").unwrap();
            store
                .advance(&[("r".into(), q("b", 0), 7), ("other".into(), q("b", 0), 9)])
                .unwrap();
            store
                .journal_append(&JournalEntry {
                    route: "r".into(),
                    generation: 1,
                    from_percent: 0,
                    to_percent: 10,
                    changed_at_ms: 1,
                    queue: None,
                    offset: None,
                    note: String::new(),
                    rule: None,
                })
                .unwrap();
            store
                .quarantine_put(&QuarantineEntry {
                    route: "r".into(),
                    queue: q("b", 0),
                    offset: 3,
                    message_id: "ID".into(),
                    reason: "x".into(),
                    quarantined_at_ms: 1,
                    message_json: String::new(),
                })
                .unwrap();
            let reset = store.reset_route("r").unwrap();
            assert_eq!(reset.topic.as_deref(), Some("A"));
            assert_eq!(reset.checkpoints.len(), 1);
            assert_eq!(reset.checkpoints[0].1.offset, 7);
        }
        let store = CheckpointStore::open(dir.path(), true).unwrap();
        assert!(store.route_checkpoints("r").unwrap().is_empty());
        assert_eq!(store.bind_route_topic("r", "B").unwrap(), TopicBinding::New);
        assert_eq!(store.journal("r").unwrap().len(), 1);
        assert_eq!(store.quarantine_list(Some("r")).unwrap().len(), 1);
        assert_eq!(store.get("other", &q("b", 0)).unwrap().unwrap().offset, 9);
        assert_eq!(store.route_topic("other").unwrap().as_deref(), Some("A"));
    }

    #[test]
    fn write_errors_name_what_failed() {
        let err = StoreError::Write {
            dir: "/var/lib/rmq-bridge".into(),
            what: "checkpoints of 2 queue(s) of route(s) orders".into(),
            reason: "No space left on device".into(),
        }
        .to_string();
        assert!(
            err.contains("checkpoints of 2 queue(s)") && err.contains("free space"),
            "{err}"
        );
    }
}
