//! Pending scheduled messages (issue 11): a route with
//! `scheduled = "forward"` also reads the 4.x schedule topic and forwards
//! each message still pending for its source topic to 5.x at once, as DELAY
//! with its original deadline; every route skips the real-topic copy of a
//! message it forwarded that way.
//!
//! The schedule side is a second set of queue workers of the route
//! (`run_schedule_side`), reading `SCHEDULE_TOPIC_XXXX` with their own
//! checkpoints under the route name `<route>#scheduled` (a name no
//! configured route can have), admitted by [`ScheduleSide`] instead of the
//! plain cutover-and-translate path. Its promise, kept by one owner each:
//! - which records are pending for the route, and their deadline:
//!   `translate::scheduled` (pure);
//! - "forwarded early" is durable before the send starts:
//!   [`ScheduleSide::remember`], called by the send layer, writes the id
//!   to the store (`checkpoint/scheduled.rs`);
//! - the topic path skips what was forwarded early: [`ForwardedIds`],
//!   consulted by the admitter for records that passed the schedule topic;
//! - ids are forgotten once no real-topic copy can still come: [`prune`].
//!
//! Ownership of a message: once its id is remembered, the schedule side
//! owns it (it re-sends after a crash, even when due by then) and the topic
//! path skips its copy; otherwise the topic path forwards the copy. A
//! message due within `PENDING_MIN_LEAD` is left to the topic path.
//! Delivery stays at-least-once with one message id: a crash after the id
//! is remembered but before the schedule checkpoint passes it re-sends it
//! from the schedule topic with the same id.
//!
//! Must not touch: the window, retries, FIFO order (the worker and the send
//! layer own those for both sides).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::{now_ms, CheckpointStore, SourceQueue};
use crate::config::BridgeConfig;
use crate::cutover::{self, CutoverDecision};
use crate::grpc::TopicMessageType;
use crate::metrics as m;
use crate::remoting::MessageRecord;
use crate::shutdown::{Backoff, Shutdown};
use crate::source::{BodyLimit, SourceSettings, TopicSource};
use crate::translate::scheduled::{
    decide_pending, forward_key, passed_schedule_topic, translate_pending, DelayLevels,
    PendingDecision, TagFilter, SCHEDULE_TOPIC,
};
use crate::translate::SourceContext;

use super::admit::{Admission, Admitter};
use super::progress::QueueProgress;
use super::quarantine::Quarantine;
use super::rule::RouteRule;
use super::send::{Outgoing, Sender};
use super::worker::{run_queue_worker, QueueContext};
use super::Shared;

/// Suffix of the route name under which the schedule side keeps its
/// checkpoints, counters and quarantine entries.
pub const SCHEDULE_SIDE_SUFFIX: &str = "#scheduled";

/// A remembered id is kept this long past the topic path's watermark: the
/// broker moves a message into the real topic when it is due, normally
/// within a second; this covers a broker running late.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(300);

/// `rmq_bridge_messages_total` outcomes of this module.
pub mod outcome {
    /// Schedule side: due (or nearly) when read; left to the topic path.
    pub const SCHEDULED_DUE: &str = "scheduled_due";
    /// Schedule side: its level is not in `[source] delay_levels`; left
    /// to the topic path.
    pub const SCHEDULED_UNKNOWN_LEVEL: &str = "scheduled_unknown_level";
    /// Topic path: the broker's copy of a message forwarded early, skipped.
    pub const SCHEDULED_COPY_SKIPPED: &str = "scheduled_copy_skipped";
}

/// Ids a route remembers as forwarded early: gauge of their number.
pub const SCHEDULED_REMEMBERED: &str = "rmq_bridge_scheduled_remembered";

pub fn schedule_side_name(route: &str) -> String {
    format!("{route}{SCHEDULE_SIDE_SUFFIX}")
}

/// The topic path's view of the store: was this record forwarded early?
#[derive(Clone)]
pub struct ForwardedIds {
    store: CheckpointStore,
    route: String,
    copy_skipped: metrics::Counter,
}

impl ForwardedIds {
    pub fn new(store: CheckpointStore, route: &str) -> Self {
        ForwardedIds {
            store,
            route: route.to_string(),
            copy_skipped: metrics::counter!(m::MESSAGES_TOTAL, "route" => route.to_string(),
                "outcome" => outcome::SCHEDULED_COPY_SKIPPED),
        }
    }

    /// True for the broker's real-topic copy of a message the route
    /// forwarded early (counted). A store that cannot be read forwards the
    /// copy: a duplicate with the same id, never a loss.
    pub fn skip_copy(&self, record: &MessageRecord) -> bool {
        if !passed_schedule_topic(record) {
            return false;
        }
        match self
            .store
            .scheduled_forwarded(&self.route, &forward_key(record))
        {
            Ok(Some(_)) => {
                self.copy_skipped.increment(1);
                tracing::debug!(route = %self.route, msg_id = record.message_id(),
                    "already forwarded from the 4.x schedule topic; skipping the broker's copy");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(route = %self.route, msg_id = record.message_id(), error = %e,
                    "cannot read forwarded scheduled ids; forwarding (may duplicate, same message id)");
                false
            }
        }
    }
}

/// What admitting a record means on each side of a route.
#[derive(Clone)]
pub enum ScheduledRole {
    /// The route's source topic: skip copies of messages forwarded early.
    Topic(ForwardedIds),
    /// The schedule topic.
    Schedule(Arc<ScheduleSide>),
}

/// Admission of schedule-topic records for one route, and the durable
/// "forwarded early" mark written before each send.
pub struct ScheduleSide {
    ids: ForwardedIds,
    source_topic: String,
    filter: TagFilter,
    levels: DelayLevels,
    /// Admitted, not yet remembered: (queue, offset) -> (key, deadline).
    admitted: Mutex<HashMap<(SourceQueue, i64), (String, i64)>>,
    due: metrics::Counter,
    unknown_level: metrics::Counter,
}

impl ScheduleSide {
    pub fn new(
        store: CheckpointStore,
        route: &str,
        source_topic: &str,
        filter: &str,
        levels: DelayLevels,
    ) -> Self {
        let side = schedule_side_name(route);
        let counter = |what: &'static str| metrics::counter!(m::MESSAGES_TOTAL, "route" => side.clone(), "outcome" => what);
        ScheduleSide {
            ids: ForwardedIds::new(store, route),
            source_topic: source_topic.to_string(),
            filter: TagFilter::parse(filter),
            levels,
            admitted: Mutex::new(HashMap::new()),
            due: counter(outcome::SCHEDULED_DUE),
            unknown_level: counter(outcome::SCHEDULED_UNKNOWN_LEVEL),
        }
    }

    /// Admits one schedule-topic record read from `queue`. Never waits
    /// (one store read).
    pub fn admit(
        &self,
        admitter: &Admitter,
        rule: &RouteRule,
        queue: &SourceQueue,
        record: MessageRecord,
    ) -> Admission {
        let now = now_ms();
        let decision = decide_pending(
            &record,
            queue.queue_id,
            &self.source_topic,
            &self.filter,
            &self.levels,
            now,
        );
        let (deadline_ms, real_queue_id) = match decision {
            PendingDecision::NotOurs => return Admission::Done,
            PendingDecision::UnknownLevel { level, table_len } => {
                self.unknown_level.increment(1);
                tracing::error!(route = %self.ids.route, %queue, offset = record.queue_offset,
                    msg_id = record.message_id(), level, table_len,
                    "pending scheduled message of a delay level missing from [source] delay_levels; \
                     left on 4.x until due (set delay_levels to the 4.x brokers' messageDelayLevel)");
                return Admission::Done;
            }
            PendingDecision::Due { deadline_ms } => {
                // Remembered before a crash: this side owns it, re-send.
                match self
                    .ids
                    .store
                    .scheduled_forwarded(&self.ids.route, &forward_key(&record))
                {
                    Ok(Some(_)) => (deadline_ms, real_queue_of(&record)),
                    _ => {
                        self.due.increment(1);
                        return Admission::Done;
                    }
                }
            }
            PendingDecision::Pending {
                deadline_ms,
                real_queue_id,
            } => (deadline_ms, real_queue_id),
        };
        // The same cutover and environment decision as the real copy gets
        // (its queue is the real one).
        match cutover::decide(&record, &rule.cutover, &queue.broker_name, real_queue_id) {
            CutoverDecision::Filtered => {
                admitter.counters.filtered.increment(1);
                return Admission::Done;
            }
            CutoverDecision::Skip { .. } => {
                admitter.counters.skipped.increment(1);
                return Admission::Done;
            }
            CutoverDecision::Forward => {}
        }
        let ctx = SourceContext {
            broker_name: &queue.broker_name,
            queue_id: queue.queue_id,
            now_ms: now,
        };
        let translated = translate_pending(
            &record,
            deadline_ms,
            &admitter.target_topic,
            &rule.target_types,
            &ctx,
            &rule.translate,
        );
        if translated.is_ok() {
            if let Ok(mut admitted) = self.admitted.lock() {
                admitted.insert(
                    (queue.clone(), record.queue_offset),
                    (forward_key(&record), deadline_ms),
                );
            }
        }
        admitter.hold(record, translated)
    }

    /// Makes "forwarded early" durable for `out` before it is sent; false
    /// when stopping first (the message then stays not done).
    pub async fn remember(&self, out: &Outgoing, stop: &mut Shutdown) -> bool {
        let entry = self
            .admitted
            .lock()
            .ok()
            .and_then(|mut a| a.remove(&(out.queue.clone(), out.offset)));
        let Some((key, deadline_ms)) = entry else {
            return true;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let store = self.ids.store.clone();
            let (route, k) = (self.ids.route.clone(), key.clone());
            let written = tokio::task::spawn_blocking(move || {
                store.scheduled_remember(&route, &k, deadline_ms)
            })
            .await;
            match written {
                Ok(Ok(())) => return true,
                Ok(Err(e)) => {
                    attempt += 1;
                    if attempt == 1 || attempt % 20 == 0 {
                        tracing::error!(route = %self.ids.route, queue = %out.queue, offset = out.offset,
                            error = %e, "cannot remember a forwarded scheduled message; holding it until the store takes the write");
                    }
                }
                Err(e) => {
                    tracing::error!(route = %self.ids.route, error = %e, "scheduled-id write task failed; retrying")
                }
            }
            if !backoff.wait(stop).await {
                return false;
            }
        }
    }
}

fn real_queue_of(record: &MessageRecord) -> i32 {
    record
        .properties
        .get(crate::remoting::names::REAL_QID)
        .and_then(|q| q.trim().parse().ok())
        .unwrap_or(record.queue_id)
}

/// The store time before which the route's topic path has handled every
/// message (now when it is caught up); `None` while that is unknown.
pub fn topic_watermark<'a>(
    progress: impl Iterator<Item = &'a Arc<QueueProgress>>,
    now: i64,
) -> Option<i64> {
    let mut watermark = now;
    let mut any = false;
    for p in progress {
        any = true;
        if p.lag() > 0 {
            let oldest = p.oldest_pending_store_ms();
            if oldest <= 0 {
                return None;
            }
            watermark = watermark.min(oldest);
        }
    }
    any.then_some(watermark)
}

/// Forgets the route's forwarded ids whose copy can no longer come: due
/// before the topic path's watermark minus [`PRUNE_MARGIN`]. On a blocking
/// thread; updates the gauge of remembered ids.
pub fn prune(store: &CheckpointStore, route: &str, watermark: Option<i64>) {
    let Some(watermark) = watermark else {
        return;
    };
    let margin = i64::try_from(PRUNE_MARGIN.as_millis()).unwrap_or(i64::MAX);
    let before = watermark.saturating_sub(margin);
    let (store, route) = (store.clone(), route.to_string());
    drop(tokio::task::spawn_blocking(move || {
        match store.scheduled_prune(&route, before) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                route,
                pruned = n,
                "forgot forwarded scheduled ids now past due"
            ),
            Err(e) => {
                tracing::warn!(route, error = %e, "cannot prune forwarded scheduled ids; will retry")
            }
        }
        if let Ok((count, _)) = store.scheduled_summary(&route) {
            metrics::gauge!(SCHEDULED_REMEMBERED, "route" => route).set(count as f64);
        }
    }));
}

/// Runs the schedule side of a route until `stop`: waits for the target's
/// types (DELAY required, else it logs why and forwards nothing), then
/// keeps one worker per schedule-topic queue.
pub fn spawn_schedule_side(
    shared: &Shared,
    cfg: &Arc<BridgeConfig>,
    route: &crate::config::RouteConfig,
    rule_rx: watch::Receiver<Arc<RouteRule>>,
    stop_rx: watch::Receiver<bool>,
    sender: &Arc<Sender>,
    admitter: &Admitter,
) -> JoinHandle<()> {
    let side_name = schedule_side_name(&route.name);
    let side = Arc::new(ScheduleSide::new(
        shared.store.clone(),
        &route.name,
        &route.source_topic,
        &route.filter,
        cfg.source.delay_levels.clone(),
    ));
    let counters = m::RouteMessages::new(&side_name);
    let sender = Arc::new(Sender {
        route: side_name.clone(),
        quarantine: Quarantine::new(
            shared.store.clone(),
            &side_name,
            counters.quarantined.clone(),
        ),
        counters: counters.clone(),
        scheduled: Some(side.clone()),
        retry_log: Default::default(),
        ..(**sender).clone()
    });
    let admitter = Admitter {
        route: side_name.clone(),
        counters,
        scheduled: Some(ScheduledRole::Schedule(side)),
        ..admitter.clone()
    };
    let source = TopicSource::new(
        shared.remoting.clone(),
        shared.namesrv.clone(),
        SourceSettings {
            topic: SCHEDULE_TOPIC.to_string(),
            // The broker cannot filter tags here; ScheduleSide does.
            filter: "*".to_string(),
            consumer_group: cfg.source.consumer_group.clone(),
            pull_batch_size: cfg.source.pull_batch_size,
            long_poll: cfg.source.long_poll,
        },
    )
    .with_body_limit(BodyLimit::from_fn({
        let publisher = shared.publisher.clone();
        move || publisher.max_body_size()
    }));
    let run = ScheduleRun {
        shared: shared.clone(),
        cfg: cfg.clone(),
        route: route.name.clone(),
        target: route.target_topic.clone(),
        side_name,
        source,
        sender,
        admitter,
    };
    tokio::spawn(run.run(rule_rx, stop_rx))
}

struct ScheduleRun {
    shared: Shared,
    cfg: Arc<BridgeConfig>,
    route: String,
    target: String,
    side_name: String,
    source: TopicSource,
    sender: Arc<Sender>,
    admitter: Admitter,
}

impl ScheduleRun {
    async fn run(
        self,
        mut rule_rx: watch::Receiver<Arc<RouteRule>>,
        mut stop: watch::Receiver<bool>,
    ) {
        // The route learns its target's types first.
        let types = loop {
            let types = rule_rx.borrow_and_update().target_types.clone();
            if !types.is_empty() {
                break types;
            }
            tokio::select! {
                changed = rule_rx.changed() => if changed.is_err() { return },
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
            }
        };
        if !types.contains(&TopicMessageType::Delay) {
            tracing::error!(route = %self.route, target = %self.target, accepts = ?types,
                "scheduled = \"forward\" needs a DELAY target topic; pending scheduled messages are NOT forwarded early (they stay on 4.x until due). Create the target with message.type=DELAY or set scheduled = \"ignore\"");
            return;
        }
        let mut workers: BTreeMap<SourceQueue, JoinHandle<()>> = BTreeMap::new();
        let mut refresh = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = refresh.tick() => self.discover(&mut workers, &rule_rx, &stop).await,
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            }
        }
        for (_, worker) in workers {
            let _ = worker.await;
        }
    }

    async fn discover(
        &self,
        workers: &mut BTreeMap<SourceQueue, JoinHandle<()>>,
        rule_rx: &watch::Receiver<Arc<RouteRule>>,
        stop: &watch::Receiver<bool>,
    ) {
        let found = match self.source.refresh_route().await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(route = %self.route, error = %e, "cannot read the 4.x schedule topic's route; retrying");
                return;
            }
        };
        for queue in found {
            if workers.contains_key(&queue) {
                continue;
            }
            // Without a checkpoint: the queue's earliest offset. What is
            // already due there is left to the topic path, so reading from
            // the start forwards exactly what is still pending.
            let offset = match self.shared.store.get(&self.side_name, &queue) {
                Ok(Some(cp)) => cp.offset,
                Ok(None) => match self.source.min_offset(&queue).await {
                    Ok(min) => {
                        let start = [(self.side_name.clone(), queue.clone(), min)];
                        if let Err(e) = self.shared.store.advance(&start) {
                            tracing::error!(route = %self.side_name, %queue, error = %e, "cannot record start position");
                            continue;
                        }
                        min
                    }
                    Err(e) => {
                        tracing::error!(route = %self.side_name, %queue, error = %e, "cannot read the schedule queue's earliest offset; will retry");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::error!(route = %self.side_name, %queue, error = %e, "cannot read checkpoint; will retry");
                    continue;
                }
            };
            tracing::info!(route = %self.side_name, %queue, offset, "reading 4.x schedule queue");
            let progress = QueueProgress::new(&self.side_name, queue.clone(), offset);
            self.shared.flusher.register(progress.clone());
            let pipeline = &self.cfg.pipeline;
            let prefetch = (pipeline.inflight_per_queue
                / self.cfg.source.pull_batch_size.max(1) as usize)
                .clamp(1, 4);
            let batches = self
                .source
                .spawn_puller(queue.clone(), offset, prefetch, stop.clone());
            let ctx = QueueContext {
                sender: self.sender.clone(),
                admitter: self.admitter.clone(),
                store: self.shared.store.clone(),
                flusher: self.shared.flusher.clone(),
                window: pipeline.inflight_per_queue,
                rule: rule_rx.clone(),
                drain_timeout: pipeline.shutdown_drain_timeout,
                send_batch_size: pipeline.send_batch_size,
            };
            let worker = tokio::spawn(run_queue_worker(ctx, queue.clone(), progress, batches));
            workers.insert(queue, worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "b".into(),
            queue_id: id,
        }
    }

    #[test]
    fn watermark_is_the_oldest_unhandled_store_time_or_now() {
        let now = 1_000_000;
        assert_eq!(topic_watermark(std::iter::empty(), now), None);

        let caught_up = QueueProgress::new("wm", queue(0), 10);
        caught_up.set_max_offset(10);
        assert_eq!(topic_watermark([&caught_up].into_iter(), now), Some(now));

        let behind = QueueProgress::new("wm", queue(1), 3);
        behind.set_max_offset(8);
        behind.set_oldest_pending_store_ms(400_000);
        let both = [&caught_up, &behind];
        assert_eq!(topic_watermark(both.into_iter(), now), Some(400_000));

        // Behind, but the oldest pending message is not known yet: a copy
        // may be among what is unread, so no pruning.
        let unknown = QueueProgress::new("wm", queue(2), 0);
        unknown.set_max_offset(5);
        let all = [&caught_up, &behind, &unknown];
        assert_eq!(topic_watermark(all.into_iter(), now), None);
    }

    #[tokio::test]
    async fn prune_keeps_ids_within_the_margin_of_the_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::open(dir.path(), true).expect("store");
        let margin = PRUNE_MARGIN.as_millis() as i64;
        let watermark = 10_000_000;
        store
            .scheduled_remember("r", "u:old", watermark - margin - 1)
            .expect("old");
        store
            .scheduled_remember("r", "u:recent", watermark - margin + 1)
            .expect("recent");
        prune(&store, "r", None);
        prune(&store, "r", Some(watermark));
        // The prune runs on a blocking thread.
        for _ in 0..100 {
            if store
                .scheduled_forwarded("r", "u:old")
                .expect("get")
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.scheduled_forwarded("r", "u:old").expect("get"), None);
        assert!(store
            .scheduled_forwarded("r", "u:recent")
            .expect("get")
            .is_some());
    }
}
