//! Pending scheduled messages (issue 11): a route with
//! `scheduled = "forward"` also reads the 4.x schedule topic and forwards
//! each message still pending for its source topic to 5.x at once, as DELAY
//! with its original deadline; every route skips the real-topic copy of a
//! message 5.x confirmed that way.
//!
//! The schedule side is a second set of queue workers of the route
//! (`ScheduleRun`), reading `SCHEDULE_TOPIC_XXXX` with their own
//! checkpoints under the route name `<route>#scheduled` (a name no
//! configured route can have), admitted by [`ScheduleSide`] instead of the
//! plain cutover-and-translate path. Its promise, kept by one owner each:
//! - which records are pending for the route, and their deadline:
//!   `translate::scheduled` (pure);
//! - who sends a pending message, and whether the topic path may skip its
//!   copy: the route's `ScheduleLedger` (schedule_ledger.rs), which the
//!   send layer asks before, during and after each send;
//! - which records the schedule side admits: [`ScheduleSide`] here.
//!
//! Instances sharing an estate (`[instances] coordinate = true`, issue 18):
//! each schedule queue is read by one instance at a time, under the
//! broker's lock like a topic queue (route.rs's rebalance, fenced sends),
//! its position shared in the estate state topic (pipeline/positions.rs),
//! and the ledger reads what the other instances confirmed or took.
//!
//! Must not touch: the window, retries, FIFO order (the worker and the send
//! layer own those for both sides).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::{now_ms, SourceQueue};
use crate::config::BridgeConfig;
use crate::cutover::{self, CutoverDecision};
use crate::grpc::TopicMessageType;
use crate::metrics as m;
use crate::remoting::MessageRecord;
use crate::source::{BodyLimit, SourceSettings, TopicSource};
use crate::translate::scheduled::{
    decide_pending, forward_key, translate_pending, DelayLevels, PendingDecision, TagFilter,
    SCHEDULE_TOPIC,
};
use crate::translate::SourceContext;

use super::admit::{Admission, Admitter, OwnAdmission};
use super::coordinate::RouteOwnership;
use super::progress::QueueProgress;
use super::quarantine::Quarantine;
use super::queues::{
    members_changed, rebalance_route, release_queue, QueueTask, RebalanceContext, REBALANCE_EVERY,
};
use super::rule::RouteRule;
use super::schedule_ledger::{outcome, schedule_side_name, ScheduleLedger};
use super::send::Sender;
use super::worker::{run_queue_worker, QueueContext};
use super::Shared;

/// `rmq_bridge_messages_total` outcome of this module: the schedule side
/// met a record whose level is not in `[source] delay_levels`; left to
/// the topic path.
pub const SCHEDULED_UNKNOWN_LEVEL: &str = "scheduled_unknown_level";

/// Admission of schedule-topic records for one route.
pub struct ScheduleSide {
    ledger: Arc<ScheduleLedger>,
    source_topic: String,
    filter: TagFilter,
    levels: DelayLevels,
    due: metrics::Counter,
    unknown_level: metrics::Counter,
}

impl ScheduleSide {
    pub fn new(
        ledger: Arc<ScheduleLedger>,
        source_topic: &str,
        filter: &str,
        levels: DelayLevels,
    ) -> Self {
        let side = schedule_side_name(ledger.route());
        let counter = |what: &'static str| metrics::counter!(m::MESSAGES_TOTAL, "route" => side.clone(), "outcome" => what);
        ScheduleSide {
            source_topic: source_topic.to_string(),
            filter: TagFilter::parse(filter),
            levels,
            due: counter(outcome::SCHEDULED_DUE),
            unknown_level: counter(SCHEDULED_UNKNOWN_LEVEL),
            ledger,
        }
    }
}

impl OwnAdmission for ScheduleSide {
    /// Admits one schedule-topic record read from `queue`. Never waits
    /// (one store read). Whether it is still pending is decided again when
    /// its send starts (`ScheduleLedger::claim`).
    fn admit(
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
                tracing::error!(route = %self.ledger.route(), %queue, offset = record.queue_offset,
                    msg_id = record.message_id(), level, table_len,
                    "pending scheduled message of a delay level missing from [source] delay_levels; \
                     left on 4.x until due (set delay_levels to the 4.x brokers' messageDelayLevel)");
                return Admission::Done;
            }
            // Due, or claimed before a restart and due by now: the topic
            // path forwards the broker's copy unless 5.x confirmed ours.
            PendingDecision::Due { .. } => {
                self.due.increment(1);
                return Admission::Done;
            }
            PendingDecision::Pending {
                deadline_ms,
                real_queue_id,
            } => (deadline_ms, real_queue_id),
        };
        let key = forward_key(&record);
        if !self.ledger.needs_send(&key) {
            // Confirmed before a restart, or taken by the topic path.
            return Admission::Done;
        }
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
            self.ledger
                .admitted(queue, record.queue_offset, key, deadline_ms);
        }
        admitter.hold(record, translated)
    }
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

/// Runs the schedule side of a route until `stop`: waits for the target's
/// types (DELAY required, else it logs why and forwards nothing), then
/// keeps one worker per schedule-topic queue.
pub fn spawn_schedule_side(
    shared: &Shared,
    cfg: &Arc<BridgeConfig>,
    route: &crate::config::RouteConfig,
    rule_rx: watch::Receiver<Arc<RouteRule>>,
    sender: &Arc<Sender>,
    admitter: &Admitter,
    ledger: &Arc<ScheduleLedger>,
) -> JoinHandle<()> {
    // The route's workers' stop signal.
    let stop_rx = sender.stop.receiver();
    let side_name = schedule_side_name(&route.name);
    let side = Arc::new(ScheduleSide::new(
        ledger.clone(),
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
        scheduled: Some(ledger.clone()),
        retry_log: Default::default(),
        fence: None,
        // The route's delay_clamp: one target, one answer.
        ..(**sender).clone()
    });
    let admitter = Admitter {
        route: side_name.clone(),
        counters,
        copies: None,
        own: Some(side),
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
    // Coordinating: the schedule queues are shared out like topic queues.
    let ownership = shared
        .coordination
        .clone()
        .map(|c| RouteOwnership::schedule_side(&side_name, &route.name, c));
    let run = ScheduleRun {
        shared: shared.clone(),
        cfg: cfg.clone(),
        route_cfg: route.clone(),
        ownership,
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
    route_cfg: crate::config::RouteConfig,
    /// Coordinating: Some (None inside when the estate topic is missing,
    /// which the daemon refuses at its start).
    ownership: Option<Option<RouteOwnership>>,
    route: String,
    target: String,
    side_name: String,
    source: TopicSource,
    sender: Arc<Sender>,
    admitter: Admitter,
}

impl ScheduleRun {
    async fn run(
        mut self,
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
        match self.ownership.take() {
            Some(Some(own)) => return self.run_coordinated(own, rule_rx, stop).await,
            Some(None) => {
                tracing::error!(route = %self.route,
                    "instances sharing an estate keep the schedule side's positions in the estate state topic, which is not set up; pending scheduled messages are NOT forwarded early");
                return;
            }
            None => {}
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

    /// The schedule queues this instance holds the lock of, taken over from
    /// their shared positions and handed over with them (route.rs's
    /// rebalance, as for the route's topic queues).
    async fn run_coordinated(
        self,
        mut own: RouteOwnership,
        rule_rx: watch::Receiver<Arc<RouteRule>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let side_route = crate::config::RouteConfig {
            name: self.side_name.clone(),
            start: crate::config::StartPosition::Earliest,
            ..self.route_cfg.clone()
        };
        let mut membership_rx = Some(own.coordination().changed.subscribe());
        let mut refresh = tokio::time::interval(Duration::from_secs(30));
        let mut rebalance = tokio::time::interval(REBALANCE_EVERY);
        rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known: Vec<SourceQueue> = Vec::new();
        let mut queues: BTreeMap<SourceQueue, QueueTask> = BTreeMap::new();
        let mut releasing: BTreeMap<SourceQueue, JoinHandle<()>> = BTreeMap::new();
        let step = (self.cfg.pipeline.inflight_per_queue / 4).max(1) as i64;
        loop {
            tokio::select! {
                _ = refresh.tick() => match self.source.refresh_route().await {
                    Ok(found) => {
                        known = found;
                        rebalance.reset_immediately();
                    }
                    Err(e) => {
                        tracing::error!(route = %self.route, error = %e, "cannot read the 4.x schedule topic's route; retrying");
                        refresh.reset_after(Duration::from_secs(2));
                    }
                },
                _ = rebalance.tick() => {
                    // Every schedule queue is the side's from its earliest
                    // offset when no position is shared yet.
                    let all = known.iter().cloned().collect();
                    let mut ctx = RebalanceContext {
                        shared: &self.shared, source: &self.source, cfg: &self.cfg, route: &side_route,
                        rule_rx: &rule_rx, worker_stop_rx: &stop,
                        sender: &self.sender, admitter: &self.admitter, new_route: &all,
                        journal: false,
                    };
                    if let Some(due) = rebalance_route(&mut ctx, &mut own, &known, &mut queues, &mut releasing).await {
                        if due < REBALANCE_EVERY {
                            rebalance.reset_after(due + Duration::from_millis(100));
                        }
                    }
                }
                _ = members_changed(&mut membership_rx) => rebalance.reset_immediately(),
                _ = commit_tick.tick() => {
                    for (queue, task) in &queues {
                        own.commit(&self.source, queue, task.progress.durable(), step).await;
                    }
                }
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            }
        }
        let releases: Vec<_> = std::mem::take(&mut queues)
            .into_iter()
            .map(|(queue, task)| {
                release_queue(&mut own, &self.source, &self.side_name, queue, task)
            })
            .collect();
        futures::future::join_all(releases).await;
        for (_, release) in releasing {
            let _ = release.await;
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
}
