//! Per-queue progress shared between a queue worker and the checkpoint
//! flusher, and the flusher itself: it writes every queue's done offset to
//! the store in one batch per interval (every IDLE_SCAN while nothing moves)
//! and publishes the durable offsets back.
//!
//! The worker admits a message only while `offset - durable < window`, so a
//! crash can re-send at most `window` messages per queue: the documented
//! duplicate bound.
//!
//! The flusher alone writes `written` (what the store holds) and writes
//! whenever `done` differs from it, in either direction: a reset below the
//! checkpoint is persisted like any advance. Store writes run on tokio's
//! blocking pool, never on the async runtime's threads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::checkpoint::{now_ms, CheckpointStore, SourceQueue, StoreError};

/// Progress of one (route, source queue).
#[derive(Debug)]
pub struct QueueProgress {
    pub route: String,
    pub queue: SourceQueue,
    /// Next offset not yet done (everything below was forwarded, skipped or quarantined).
    done: AtomicI64,
    /// Last value written to the store; only the flusher writes it.
    written: AtomicI64,
    /// Broker's max offset as last seen.
    max_offset: AtomicI64,
    /// Store time (ms) of the oldest message not yet done; 0 when none is known.
    oldest_pending_store_ms: AtomicI64,
    /// Set once the worker has stopped; the flusher forgets the queue after a final write.
    retired: AtomicBool,
    /// Publishes `durable` after each flush that moved it.
    flushed: watch::Sender<i64>,
    lag_gauge: metrics::Gauge,
    /// The lag last set on `lag_gauge` (`i64::MIN` before the first): an
    /// unchanged lag is not set again, so an idle estate of thousands of
    /// queues costs the flusher no gauge writes.
    published_lag: AtomicI64,
    /// The flusher's [`CheckpointFlusher::activity`], set by `register`:
    /// told when `done` moves, so an idle flusher scans again at once.
    activity: OnceLock<Arc<Notify>>,
}

impl QueueProgress {
    pub fn new(route: &str, queue: SourceQueue, start: i64) -> Arc<Self> {
        Arc::new(QueueProgress {
            route: route.to_string(),
            done: AtomicI64::new(start),
            written: AtomicI64::new(start),
            max_offset: AtomicI64::new(start),
            oldest_pending_store_ms: AtomicI64::new(0),
            retired: AtomicBool::new(false),
            flushed: watch::channel(start).0,
            lag_gauge: metrics::gauge!(crate::metrics::SOURCE_LAG_MESSAGES,
                "route" => route.to_string(),
                "broker" => queue.broker_name.clone(),
                "queue" => queue.queue_id.to_string()),
            published_lag: AtomicI64::new(i64::MIN),
            activity: OnceLock::new(),
            queue,
        })
    }

    pub fn done(&self) -> i64 {
        self.done.load(Ordering::Acquire)
    }
    pub fn set_done(&self, offset: i64) {
        if self.done.fetch_max(offset, Ordering::AcqRel) < offset {
            self.moved();
        }
    }
    fn moved(&self) {
        if let Some(activity) = self.activity.get() {
            activity.notify_one();
        }
    }
    /// Where the window and lag count from: the stored checkpoint, or `done`
    /// while that is lower (just after `reset_done`, until the flusher has
    /// written the lower offset), so the worker admits from the reset point
    /// rather than from the old, higher checkpoint.
    pub fn durable(&self) -> i64 {
        self.written.load(Ordering::Acquire).min(self.done())
    }
    pub fn max_offset(&self) -> i64 {
        self.max_offset.load(Ordering::Acquire)
    }
    pub fn set_max_offset(&self, offset: i64) {
        self.max_offset.store(offset, Ordering::Release);
    }
    pub fn set_oldest_pending_store_ms(&self, ms: i64) {
        self.oldest_pending_store_ms.store(ms, Ordering::Release);
    }
    pub fn oldest_pending_store_ms(&self) -> i64 {
        self.oldest_pending_store_ms.load(Ordering::Acquire)
    }
    /// Follows durable-offset changes without missing one.
    pub fn watch_durable(&self) -> watch::Receiver<i64> {
        self.flushed.subscribe()
    }
    /// Moves the done offset backwards (the 4.x queue was reset below our
    /// checkpoint); only valid while nothing of the queue is in flight. The
    /// store still holds the higher offset: the next flush writes this one
    /// (a restart before then resumes at the old offset, as if the reset had
    /// not been seen yet).
    pub fn reset_done(&self, offset: i64) {
        self.done.store(offset, Ordering::Release);
        self.moved();
    }
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.moved();
    }
    /// Sets this queue's lag gauge to 0: another instance forwards it now
    /// (its gauge there counts the lag; summed, they must not count twice).
    pub fn zero_lag(&self) {
        self.published_lag.store(0, Ordering::Release);
        self.lag_gauge.set(0.0);
    }
    /// Messages stored on 4.x and not yet checkpointed.
    pub fn lag(&self) -> i64 {
        (self.max_offset() - self.durable()).max(0)
    }
    /// Updates `rmq_bridge_source_lag_messages` for this queue.
    pub fn publish_lag(&self) {
        let lag = self.lag();
        if self.published_lag.swap(lag, Ordering::AcqRel) != lag {
            self.lag_gauge.set(lag as f64);
        }
    }
}

/// How often a flusher that found nothing to write scans anyway.
pub const IDLE_SCAN: Duration = Duration::from_millis(500);

/// Batches checkpoint writes for every queue of every route.
pub struct CheckpointFlusher {
    store: CheckpointStore,
    /// In (route, queue) order, so one pass sees each route's queues together.
    queues: Mutex<BTreeMap<(String, SourceQueue), Arc<QueueProgress>>>,
    /// Wakes the flusher early (a worker's window is full).
    pub wake: Notify,
    /// Told by a registered queue whose done offset moved: wakes a flusher
    /// that found nothing to write (it then scans only every
    /// [`IDLE_SCAN`], so an idle estate of thousands of queues is not
    /// walked 50 times a second).
    activity: Arc<Notify>,
    /// Last successful write or up-to-date confirmation per route (ms).
    route_fresh_ms: Mutex<HashMap<String, i64>>,
    /// Flush cycles completed (written or failed): the pipeline's heartbeat
    /// for the systemd watchdog.
    cycles: std::sync::atomic::AtomicU64,
}

impl CheckpointFlusher {
    pub fn new(store: CheckpointStore) -> Arc<Self> {
        Arc::new(CheckpointFlusher {
            store,
            queues: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            activity: Arc::new(Notify::new()),
            route_fresh_ms: Mutex::new(HashMap::new()),
            cycles: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn register(&self, progress: Arc<QueueProgress>) {
        let _ = progress.activity.set(self.activity.clone());
        if let Ok(mut q) = self.queues.lock() {
            q.insert((progress.route.clone(), progress.queue.clone()), progress);
        }
    }

    /// Seconds since the route's checkpoints were last written or confirmed
    /// current (an idle route with zero lag stays fresh).
    pub fn checkpoint_age_seconds(&self, route: &str) -> f64 {
        let last = self
            .route_fresh_ms
            .lock()
            .ok()
            .and_then(|m| m.get(route).copied())
            .unwrap_or(0);
        if last == 0 {
            return 0.0;
        }
        ((now_ms() - last).max(0) as f64) / 1000.0
    }

    /// Per route: (lag in messages, number of queues) from the registered queues.
    pub fn lag_by_route(&self) -> std::collections::BTreeMap<String, (i64, usize)> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(q) = self.queues.lock() {
            for p in q.values() {
                let e = out.entry(p.route.clone()).or_insert((0i64, 0usize));
                e.0 += p.lag();
                e.1 += 1;
            }
        }
        out
    }

    /// Writes every queue whose done offset moved; returns how many.
    ///
    /// Runs every flush interval over every registered queue, so an idle
    /// queue must cost next to nothing here: one pass under the lock reading
    /// atomics (and forgetting retired queues already written), no
    /// allocation per queue; only queues that moved are collected.
    pub fn flush_once(&self) -> Result<usize, StoreError> {
        let mut updates = Vec::new();
        let mut moved = Vec::new();
        // One queue of each route written now or confirmed current (lag 0);
        // the map is in route order, so a route is pushed once.
        let mut fresh: Vec<Arc<QueueProgress>> = Vec::new();
        match self.queues.lock() {
            Ok(mut q) => q.retain(|_, p| {
                p.publish_lag();
                let done = p.done();
                let moves = done != p.written.load(Ordering::Acquire);
                if moves {
                    updates.push((p.route.clone(), p.queue.clone(), done));
                    moved.push((p.clone(), done));
                }
                if (moves || p.lag() == 0) && fresh.last().map(|f| &f.route) != Some(&p.route) {
                    fresh.push(p.clone());
                }
                // A retired queue is forgotten once its last offset is written.
                moves || !p.retired.load(Ordering::Acquire)
            }),
            Err(_) => return Ok(0),
        }
        self.store.advance(&updates)?;
        for (p, done) in &moved {
            p.written.store(*done, Ordering::Release);
            p.flushed.send_replace(*done);
            p.publish_lag();
        }
        let now = now_ms();
        if let Ok(mut m) = self.route_fresh_ms.lock() {
            for p in fresh {
                match m.get_mut(p.route.as_str()) {
                    Some(at) => *at = now,
                    None => {
                        m.insert(p.route.clone(), now);
                    }
                }
            }
        }
        Ok(updates.len())
    }

    fn task_failed(&self, what: &str, e: tokio::task::JoinError) -> StoreError {
        StoreError::Write {
            dir: self.store.dir().to_path_buf(),
            what: what.to_string(),
            reason: format!("store task failed: {e}"),
        }
    }

    /// Runs until `stop` turns true, then flushes one last time. Every
    /// store write runs on the blocking pool: a slow or full disk must not
    /// hold an async runtime thread.
    /// Flush cycles completed so far.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Acquire)
    }

    pub async fn run(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        const REOPEN_EVERY: Duration = Duration::from_secs(1);
        let mut failing = false;
        let mut last_reopen = std::time::Instant::now();
        loop {
            let stopping = *stop.borrow();
            if failing && last_reopen.elapsed() >= REOPEN_EVERY {
                // RocksDB refuses all writes after one failed (a full disk)
                // until it is reopened: try, so the bridge resumes by itself
                // once space is free.
                last_reopen = std::time::Instant::now();
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.reopen()).await {
                    Ok(Ok(())) => tracing::info!("checkpoint store reopened after failed writes"),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "reopening the checkpoint store failed; retrying")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reopening the checkpoint store failed; retrying")
                    }
                }
            }
            let flusher = self.clone();
            let written = tokio::task::spawn_blocking(move || flusher.flush_once())
                .await
                .unwrap_or_else(|e| Err(self.task_failed("checkpoints", e)));
            let wrote_nothing = matches!(written, Ok(0));
            self.cycles.fetch_add(1, Ordering::Release);
            match written {
                Ok(_) => {
                    if failing {
                        tracing::info!("checkpoint writes succeed again");
                        failing = false;
                    }
                }
                Err(e) => {
                    // Positions stay in memory and workers stop admitting once
                    // their window is full, so nothing is lost while we retry.
                    if !failing {
                        tracing::error!(error = %e, "checkpoint write failed; positions stay in memory, retrying every flush interval");
                    }
                    failing = true;
                    metrics::counter!(crate::metrics::SOURCE_ERRORS_TOTAL, "kind" => "checkpoint_write")
                        .increment(1);
                }
            }
            if stopping {
                let store = self.store.clone();
                let flushed = tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .unwrap_or_else(|e| Err(self.task_failed("write-ahead log (final flush)", e)));
                if let Err(e) = flushed {
                    tracing::error!(error = %e, "final checkpoint flush failed");
                }
                return;
            }
            // Nothing moved: scan again when a queue moves (or after
            // IDLE_SCAN, which keeps idle routes' checkpoint age and the
            // watchdog's cycles current); else batch for `interval`.
            let idle = wrote_nothing && !failing;
            tokio::select! {
                _ = tokio::time::sleep(if idle { IDLE_SCAN.max(interval) } else { interval }) => {}
                _ = self.wake.notified() => {}
                _ = self.activity.notified(), if idle => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> SourceQueue {
        SourceQueue {
            broker_name: "b".into(),
            queue_id: 0,
        }
    }

    #[test]
    fn a_reset_below_the_checkpoint_is_written_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path(), true).unwrap();
            let flusher = CheckpointFlusher::new(store.clone());
            let progress = QueueProgress::new("r", q(), 0);
            flusher.register(progress.clone());
            progress.set_done(100);
            assert_eq!(flusher.flush_once().unwrap(), 1);
            assert_eq!(progress.durable(), 100);

            progress.reset_done(40);
            assert_eq!(progress.done(), 40);
            assert_eq!(
                flusher.flush_once().unwrap(),
                1,
                "the lower offset must be written"
            );
            assert_eq!(progress.durable(), 40);
            assert_eq!(flusher.flush_once().unwrap(), 0, "nothing left to write");
        }
        let store = CheckpointStore::open(dir.path(), true).unwrap();
        assert_eq!(store.get("r", &q()).unwrap().unwrap().offset, 40);
    }

    #[test]
    fn after_a_reset_the_window_counts_from_the_reset_point_until_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let flusher = CheckpointFlusher::new(store.clone());
        let progress = QueueProgress::new("r", q(), 0);
        flusher.register(progress.clone());
        progress.set_done(100);
        flusher.flush_once().unwrap();
        progress.set_max_offset(120);

        progress.reset_done(40);
        // Not 100: a worker admitting `offset - durable < window` must not
        // run ahead of the reset point, and lag counts from it.
        assert_eq!(progress.durable(), 40);
        assert_eq!(progress.lag(), 80);
        // Work done after the reset but before the flush is written as is.
        progress.set_done(45);
        assert_eq!(progress.durable(), 45);
        assert_eq!(flusher.flush_once().unwrap(), 1);
        assert_eq!(store.get("r", &q()).unwrap().unwrap().offset, 45);
        assert_eq!(progress.durable(), 45);
    }

    #[test]
    fn a_retired_queue_is_forgotten_only_after_its_reset_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let flusher = CheckpointFlusher::new(store.clone());
        let progress = QueueProgress::new("r", q(), 0);
        flusher.register(progress.clone());
        progress.set_done(100);
        flusher.flush_once().unwrap();
        progress.reset_done(40);
        progress.retire();
        assert_eq!(flusher.flush_once().unwrap(), 1);
        assert_eq!(store.get("r", &q()).unwrap().unwrap().offset, 40);
        assert_eq!(flusher.flush_once().unwrap(), 0);
        assert!(flusher.lag_by_route().is_empty(), "retired queue forgotten");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_writes_from_the_blocking_pool_and_flushes_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), false).unwrap();
        let flusher = CheckpointFlusher::new(store.clone());
        let progress = QueueProgress::new("r", q(), 0);
        flusher.register(progress.clone());
        progress.set_done(7);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(flusher.clone().run(Duration::from_millis(10), stop_rx));
        let mut durable = progress.watch_durable();
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|d| *d == 7))
            .await
            .unwrap()
            .unwrap();
        progress.reset_done(3);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.get("r", &q()).unwrap().unwrap().offset, 3);
    }
}
