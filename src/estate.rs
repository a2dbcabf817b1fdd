//! The estate state topic: where instances sharing an estate (`[instances]
//! coordinate = true`) keep what every one of them must be able to read
//! after another lost its disk (issue 18, item 4): quarantined messages,
//! the cutover journal and each queue's start. It is a topic of the 5.x
//! cluster (`[instances] state_topic`), written and read over Remoting like
//! the other 5.x-side tools; the 5.x cluster outlives 4.x, like RocketMQ
//! Connect keeps its offsets and configs in the cluster it serves.
//!
//! Owns: publishing records (the [`Outbox`], ordered per key), reading the
//! topic back into a [`SharedView`], and keeping live records younger than
//! the topic's retention. The records, their keys and the fold are
//! `checkpoint::shared`'s.
//!
//! The invariant the pipeline relies on: [`Outbox::flush`] returns Ok only
//! once every record enqueued before it is on 5.x. A queue's position is
//! written to the instances' group only after a flush (coordinate.rs), so
//! a successor that starts from the group's position finds on 5.x every
//! quarantine entry, journal entry and start written for the offsets
//! below it; what lies above it, it reads and decides again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::checkpoint::shared::{
    missing_from, removed_elsewhere, Replica, SharedRecord, SharedView,
};
use crate::checkpoint::{now_ms, CheckpointStore};
use crate::grpc::{MessageKind, OutgoingMessage};
use crate::metrics as m;
use crate::remoting::scan::{queue_range, scan_queue};
use crate::remoting::{NameServers, RemotingClient};
use crate::shutdown::Shutdown;
use crate::sink::RemotingSink;

pub const DEFAULT_TOPIC: &str = "rmq_bridge_state";

/// A live record whose newest copy is older than this is written again:
/// RocketMQ deletes commit-log files older than `fileReservedTime` (72 h
/// by default), so the topic's retention must exceed twice this.
pub const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum EstateError {
    /// The topic does not exist on 5.x.
    Missing {
        topic: String,
    },
    Unreachable {
        topic: String,
        reason: String,
    },
}

impl std::fmt::Display for EstateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EstateError::Missing { topic } => write!(
                f,
                "the estate state topic `{topic}` does not exist on 5.x: instances sharing an estate keep \
                 quarantine, cutover journal and queue starts there; create it once on the 5.x cluster \
                 (e.g. `mqadmin updateTopic -n <5.x namesrv> -c <cluster> -t {topic} -r 4 -w 4 -a +message.type=FIFO`) \
                 or name another with [instances] state_topic"
            ),
            EstateError::Unreachable { topic, reason } => {
                write!(f, "cannot read the estate state topic `{topic}` on 5.x: {reason}")
            }
        }
    }
}

impl std::error::Error for EstateError {}

/// The state topic on 5.x.
#[derive(Clone)]
pub struct StateTopic {
    client: RemotingClient,
    namesrv: NameServers,
    topic: String,
    sink: RemotingSink,
}

impl StateTopic {
    /// `client` signs with the 5.x credentials; `namesrv` are the 5.x name
    /// servers.
    pub fn new(
        client: RemotingClient,
        namesrv: NameServers,
        topic: &str,
        producer_group: &str,
    ) -> Self {
        StateTopic {
            sink: RemotingSink::new(client.clone(), namesrv.clone(), producer_group),
            client,
            namesrv,
            topic: topic.to_string(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Every record of the topic, folded.
    pub async fn read(&self) -> Result<SharedView, EstateError> {
        let mut view = SharedView::default();
        let mut records = Vec::new();
        self.read_from(&mut BTreeMap::new(), &mut records).await?;
        for (record, stored_ms) in records {
            view.apply(record, stored_ms);
        }
        Ok(view)
    }

    /// The records stored from `next` on (per broker and queue; the
    /// queue's earliest offset where it has none), in each queue's order;
    /// `next` is moved past them.
    async fn read_from(
        &self,
        next: &mut BTreeMap<(String, i32), i64>,
        records: &mut Vec<(SharedRecord, i64)>,
    ) -> Result<(), EstateError> {
        let unreachable = |reason: String| EstateError::Unreachable {
            topic: self.topic.clone(),
            reason,
        };
        let route = self
            .namesrv
            .topic_route(&self.client, &self.topic)
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .ok_or_else(|| EstateError::Missing {
                topic: self.topic.clone(),
            })?;
        let mut undecodable = 0u64;
        for data in &route.queue_datas {
            let Some(addr) = route.master_addr(&data.broker_name).map(str::to_string) else {
                return Err(unreachable(format!(
                    "broker {} has no master in the route",
                    data.broker_name
                )));
            };
            for queue_id in 0..data.read_queue_nums.max(0) {
                let (min, max) = queue_range(&self.client, &addr, &self.topic, queue_id)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let at = next
                    .entry((data.broker_name.clone(), queue_id))
                    .or_insert(min);
                let from = (*at).max(min);
                if from >= max {
                    continue;
                }
                scan_queue(&self.client, &addr, &self.topic, queue_id, from, max, |r| {
                    match SharedRecord::decode(&r.body) {
                        Ok(record) => records.push((record, r.store_timestamp_ms)),
                        Err(_) => undecodable += 1,
                    }
                })
                .await
                .map_err(|e| unreachable(e.to_string()))?;
                *at = max;
            }
        }
        if undecodable > 0 {
            tracing::warn!(topic = %self.topic, undecodable,
                "records of the estate state topic that are not the bridge's were ignored; the topic must be the bridge's alone");
        }
        Ok(())
    }

    /// One record, to the queue its key picks (one attempt).
    pub async fn publish(&self, record: &SharedRecord) -> Result<(), String> {
        let key = record.key();
        let message = OutgoingMessage {
            topic: self.topic.clone(),
            message_id: format!("{:016x}{:013x}", fnv(&key), now_ms()),
            body: Bytes::from(record.encode()),
            tag: None,
            keys: vec![key.clone()],
            user_properties: Default::default(),
            born_timestamp_ms: now_ms(),
            born_host: String::new(),
            kind: MessageKind::Fifo { group: key },
        };
        self.sink.send(&message).await.map_err(|e| e.to_string())
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Records waiting to be published, in the order they were written.
pub struct Outbox {
    topic: StateTopic,
    pending: Mutex<VecDeque<SharedRecord>>,
    /// One flush at a time, so records leave in order.
    flushing: tokio::sync::Mutex<()>,
    /// Set once the store's earlier records were compared with the topic
    /// (and those it lacked enqueued); flushes fail until then.
    synced: std::sync::atomic::AtomicBool,
    store: std::sync::OnceLock<CheckpointStore>,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("topic", &self.topic.topic)
            .field("pending", &self.pending())
            .finish()
    }
}

impl Replica for Outbox {
    fn enqueue(&self, record: SharedRecord) {
        let len = match self.pending.lock() {
            Ok(mut p) => {
                p.push_back(record);
                p.len()
            }
            Err(poisoned) => {
                let mut p = poisoned.into_inner();
                p.push_back(record);
                p.len()
            }
        };
        self.gauge.set(len as f64);
    }
}

impl Outbox {
    pub fn new(topic: StateTopic) -> Arc<Self> {
        Arc::new(Outbox {
            topic,
            pending: Mutex::new(VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
            synced: Default::default(),
            store: Default::default(),
            gauge: metrics::gauge!(m::STATE_PENDING_RECORDS),
        })
    }

    fn front(&self) -> Option<SharedRecord> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned()
    }

    fn pop(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.pop_front();
        self.gauge.set(p.len() as f64);
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Publishes every pending record, in order; Ok once none is left.
    pub async fn flush(&self) -> Result<(), String> {
        let _one = self.flushing.lock().await;
        if !self.synced.load(std::sync::atomic::Ordering::Acquire) {
            self.try_sync().await?;
        }
        while let Some(record) = self.front() {
            self.topic
                .publish(&record)
                .await
                .map_err(|e| format!("estate state topic `{}`: {e}", self.topic.topic()))?;
            self.pop();
        }
        Ok(())
    }

    /// Takes every later write of `store`, and compares what it already
    /// holds with the topic: what the topic lacks (written before a crash,
    /// or while 5.x was away) is published first. Called once, before
    /// routes start. The view read is returned (None: 5.x unreachable now;
    /// the comparison is then made by the first flush that can read it).
    pub async fn attach(
        self: &Arc<Self>,
        store: &CheckpointStore,
    ) -> Result<Option<SharedView>, EstateError> {
        let _one = self.flushing.lock().await;
        if self.store.set(store.clone()).is_err() || !store.set_replica(self.clone()) {
            tracing::error!(
                "the estate outbox was attached twice; estate records may be published twice"
            );
        }
        match self.topic.read().await {
            Ok(view) => {
                self.sync(&view, store)
                    .map_err(|reason| EstateError::Unreachable {
                        topic: self.topic.topic.clone(),
                        reason,
                    })?;
                Ok(Some(view))
            }
            Err(e @ EstateError::Missing { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the estate state topic cannot be read now; this instance's records are published once it can");
                Ok(None)
            }
        }
    }

    async fn try_sync(&self) -> Result<(), String> {
        let Some(store) = self.store.get() else {
            return Err("not attached to a checkpoint store".into());
        };
        let view = self.topic.read().await.map_err(|e| e.to_string())?;
        self.sync(&view, store)
    }

    /// Puts what the store holds and the topic lacks before every pending
    /// record (those were written after it and may supersede it).
    fn sync(&self, view: &SharedView, store: &CheckpointStore) -> Result<(), String> {
        forget_removed(view, store);
        let missing = missing_from(view, store)
            .map_err(|e| format!("reading the local records to publish: {e}"))?;
        if !missing.is_empty() {
            tracing::info!(records = missing.len(), topic = %self.topic.topic(),
                "publishing this instance's records the estate state topic does not hold yet");
        }
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for r in missing.into_iter().rev() {
                p.push_front(r);
            }
            self.gauge.set(p.len() as f64);
        }
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Flushes every second and keeps live records fresh until `stop`.
    pub fn spawn(self: Arc<Self>, mut stop: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut logged: Option<Instant> = None;
            let mut refreshed = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FLUSH_EVERY) => {}
                    _ = stop.stopped() => break,
                }
                if let Err(e) = self.flush().await {
                    if logged.map_or(true, |t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::error!(error = %e, pending = self.pending(),
                            "cannot publish estate records; queue positions are not written to the group until they are (nothing is lost: a successor re-reads from the older position)");
                        logged = Some(Instant::now());
                    }
                    continue;
                }
                if refreshed.elapsed() >= REFRESH_EVERY {
                    refreshed = Instant::now();
                    self.refresh().await;
                }
            }
            // A last attempt for what the stop's final writes added.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.flush()).await;
        })
    }

    /// Writes again the live records whose newest copy is older than
    /// [`REFRESH_AFTER`], so the topic's retention keeps them.
    async fn refresh(&self) {
        match self.topic.read().await {
            Ok(view) => {
                if let Some(store) = self.store.get() {
                    forget_removed(&view, store);
                }
                let stale = view.stale(now_ms() - REFRESH_AFTER.as_millis() as i64);
                if !stale.is_empty() {
                    tracing::info!(
                        records = stale.len(),
                        "writing estate records again before the topic's retention drops them"
                    );
                }
                for r in stale {
                    self.enqueue(r);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the estate state topic to refresh it; trying again in an hour")
            }
        }
    }
}

/// Lets the store forget what another instance removed from the topic
/// (best effort: an entry kept is hidden by the removal while the topic
/// holds it, and forgotten at the next sync or refresh).
fn forget_removed(view: &SharedView, store: &CheckpointStore) {
    let gone = match removed_elsewhere(view, store) {
        Ok(gone) => gone,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the local quarantine to forget entries removed on another instance");
            return;
        }
    };
    for entry in gone {
        if let Err(e) = store.quarantine_forget(&entry) {
            tracing::warn!(error = %e, route = %entry.route, offset = entry.offset,
                "cannot forget a quarantine entry another instance removed");
        }
    }
}

/// A forwarded scheduled message is forgotten by the live view this long
/// past its deadline: its broker copy comes due at the deadline, so one
/// met later (a 4.x broker that was down) is forwarded again, a duplicate
/// with the same id. Bounds the view's memory to about the messages
/// forwarded within the delay levels' longest delay plus this.
pub const FORWARDED_HORIZON: Duration = Duration::from_secs(3600);
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The state topic as it is now, for a running instance: read in full
/// once, then followed every second (and on demand, [`LiveView::catch_up`],
/// before a queue is taken over). What the schedule side's ledger and
/// takeovers read (checkpoint::shared::schedule).
pub struct LiveView {
    topic: StateTopic,
    view: std::sync::RwLock<SharedView>,
    /// Next offset per (broker, queue); one catch-up at a time.
    next: tokio::sync::Mutex<BTreeMap<(String, i32), i64>>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("topic", &self.topic.topic)
            .finish()
    }
}

impl LiveView {
    pub fn new(topic: StateTopic) -> Arc<Self> {
        Arc::new(LiveView {
            topic,
            view: Default::default(),
            next: Default::default(),
        })
    }

    /// Reads what was stored since the last catch-up; Ok once the view
    /// holds every record stored before the call.
    pub async fn catch_up(&self) -> Result<(), EstateError> {
        let mut next = self.next.lock().await;
        let mut records = Vec::new();
        let read = self.topic.read_from(&mut next, &mut records).await;
        // What was read is applied even after an error: a queue not read
        // to its end is read again from where it stood, and applying one
        // queue's suffix again leaves the same fold.
        if !records.is_empty() {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            for (record, stored_ms) in records {
                view.apply(record, stored_ms);
            }
        }
        read
    }

    /// Reads the view as it stands (never waits for the network).
    pub fn with<R>(&self, f: impl FnOnce(&SharedView) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Follows the topic until `stop`.
    pub fn spawn(self: Arc<Self>, mut stop: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut logged: Option<Instant> = None;
            let mut swept = Instant::now();
            loop {
                if let Err(e) = self.catch_up().await {
                    if logged.map_or(true, |t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "cannot follow the estate state topic; other instances' scheduled-message confirmations may be missed (duplicates, never losses)");
                        logged = Some(Instant::now());
                    }
                }
                if swept.elapsed() >= Duration::from_secs(60) {
                    swept = Instant::now();
                    let before = now_ms() - FORWARDED_HORIZON.as_millis() as i64;
                    self.view
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .forget_forwarded_before(before);
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                    _ = stop.stopped() => break,
                }
            }
        })
    }
}
