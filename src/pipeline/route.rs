//! One route's runner: discovers the source queues, resolves start positions,
//! learns the target topic's accepted message types, starts a puller and a
//! worker per queue, picks up queues added later, turns config changes into
//! new cutover rules (journaled), writes progress back to a 4.x group when
//! asked, and publishes the route's lag gauges.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::{now_ms, JournalEntry, SourceQueue};
use crate::config::{BridgeConfig, RouteConfig, ScheduledMode, StartPosition};
use crate::metrics as m;
use crate::source::{SourceSettings, TopicSource};

use super::admit::Admitter;
use super::coordinate::RouteOwnership;
use super::health::RouteHealth;
use super::positions::PositionHome;
use super::progress::CheckpointFlusher;
use super::quarantine::Quarantine;
use super::queues::{
    fresh_queue_start, members_changed, rebalance_route, release_queue, start_queue, QueueTask,
    RebalanceContext, REBALANCE_EVERY,
};
use super::schedule_ledger::ScheduleLedger;
use super::scheduled::spawn_schedule_side;
use super::send::Sender;
use super::Shared;
use crate::shutdown::{Backoff, Shutdown};

pub use super::rule::{build_rule, RouteRule};

/// Handle the bridge keeps for a running route.
pub struct RouteHandle {
    pub config: RouteConfig,
    pub config_tx: watch::Sender<(Arc<BridgeConfig>, RouteConfig)>,
    pub stop_tx: watch::Sender<bool>,
    pub task: JoinHandle<()>,
}

pub fn spawn_route(shared: Shared, cfg: Arc<BridgeConfig>, route: RouteConfig) -> RouteHandle {
    let (config_tx, config_rx) = watch::channel((cfg.clone(), route.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_route(shared, config_rx, stop_rx));
    RouteHandle {
        config: route,
        config_tx,
        stop_tx,
        task,
    }
}

async fn retry_until<T, F, Fut>(
    what: &str,
    route: &str,
    stop: &watch::Receiver<bool>,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut stop = Shutdown::new(stop.clone());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut attempts = 0u32;
    loop {
        if stop.is_stopping() {
            return None;
        }
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts % 10 == 0 {
                    tracing::error!(route, error = %e, "{what} failed; retrying");
                }
                if !backoff.wait(&mut stop).await {
                    return None;
                }
            }
        }
    }
}

async fn run_route(
    shared: Shared,
    mut config_rx: watch::Receiver<(Arc<BridgeConfig>, RouteConfig)>,
    mut stop: watch::Receiver<bool>,
) {
    let (cfg, route) = config_rx.borrow_and_update().clone();
    let name = route.name.clone();
    // Forward: 4.x read over Remoting, 5.x written over gRPC; reverse: 5.x
    // read over Remoting, 4.x written over Remoting. Nothing below knows
    // which (crate::sink).
    let Some(ends) = shared.ends(route.direction) else {
        tracing::error!(route = %name, direction = %route.direction,
            "a reverse route needs [target] namesrv_addr; the route does not run");
        return;
    };
    let source = TopicSource::new(
        ends.remoting.clone(),
        ends.namesrv.clone(),
        SourceSettings {
            topic: route.source_topic.clone(),
            filter: route.filter.clone(),
            consumer_group: cfg.source.consumer_group.clone(),
            pull_batch_size: cfg.source.pull_batch_size,
            long_poll: cfg.source.long_poll,
        },
    )
    // Inflate no body beyond what the 5.x target accepts (asked at every
    // pull: the target announces its limit after connecting).
    .with_body_limit(crate::source::BodyLimit::from_fn({
        let sink = ends.sinks.first().clone();
        move || sink.max_body_size()
    }));

    // Until the target's accepted types are known (5.x unreachable, topic
    // missing) the route's queues pull and report lag, but admit nothing:
    // the route is stalled and says what it waits for.
    let mut target_types = Vec::new();
    // The journal as this run of the route starts: its rules continue the
    // journal's generations, and each queue's start is journaled where the
    // rule differs from the journal's last (see `journal_start`).
    // With instances sharing an estate, the journal every instance wrote.
    let journal = match shared.records().journal(&name) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(route = %name, error = %e, "cannot read the cutover journal; its generations may repeat");
            Vec::new()
        }
    };
    let mut generation = crate::checkpoint::next_generation(&journal);
    let rule = build_rule(generation, &cfg, &route, target_types.clone());
    super::rule::journal_start(&shared.store, &name, &journal, &rule, None);
    metrics::gauge!(m::CUTOVER_PERCENT, "route" => name.clone()).set(route.cutover_percent as f64);
    let (rule_tx, rule_rx) = watch::channel(Arc::new(rule));
    let (worker_stop_tx, worker_stop_rx) = watch::channel(false);
    let counters = m::RouteMessages::new(&name);
    let share = shared.shares.route();
    let health = RouteHealth::new(&name);
    spawn_stall_recorder(&shared, &name, &health);
    let mut types_rx = spawn_type_learner(&ends, &name, &route.target_topic, &health, &stop);
    let sender = Arc::new(Sender {
        route: name.clone(),
        publishers: ends.sinks.clone(),
        order: shared.order.clone(),
        topic: shared
            .topics
            .topic(ends.sinks.first().cluster(), &route.target_topic),
        health,
        share: share.clone(),
        quarantine: Quarantine::new(shared.store.clone(), &name, counters.quarantined.clone()),
        counters: counters.clone(),
        delay_min_lead: cfg.translate.delay_min_lead,
        poison_threshold: cfg.pipeline.quarantine_after_failures,
        stop: Shutdown::new(worker_stop_rx.clone()),
        scheduled: None,
        retry_log: Default::default(),
        delay_clamp: Default::default(),
        fence: None,
    });
    // Instances sharing an estate: also what the others confirmed or took.
    let others = shared
        .coordination
        .as_ref()
        .and_then(|c| c.live.clone())
        .map(|live| live as Arc<dyn super::schedule_ledger::SharedForwards>);
    let ledger = Arc::new(ScheduleLedger::new(shared.store.clone(), &name).with_shared(others));
    let admitter = Admitter {
        route: name.clone(),
        target_topic: route.target_topic.clone(),
        share,
        counters,
        max_body_size: ends.sinks.first().max_body_size(),
        copies: Some(ledger.clone()),
        own: None,
    };
    // scheduled = "forward": also the messages pending in the schedule topic.
    let schedule_side = (route.scheduled == ScheduledMode::Forward).then(|| {
        spawn_schedule_side(
            &shared,
            &cfg,
            &route,
            rule_rx.clone(),
            &sender,
            &admitter,
            &ledger,
        )
    });

    let mut queues: BTreeMap<SourceQueue, QueueTask> = BTreeMap::new();
    let mut current_route = route.clone();
    // Whether the route is new: known at the first discovery that could
    // read the store (see `start_for_queue`).
    let mut new_route_queues: Option<std::collections::BTreeSet<SourceQueue>> = None;
    let mut refresh = tokio::time::interval(Duration::from_secs(30));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    // Pruning the ids the schedule side remembers is a store scan on the
    // blocking pool. With the schedule side on, every housekeeping tick; with
    // it off only leftovers of an earlier `scheduled = "forward"` can be
    // there, so once every PRUNE_IDLE_EVERY ticks (5 min), at a phase of
    // the route's own: hundreds of idle routes must not start hundreds of
    // blocking threads at once every 5 s.
    const PRUNE_IDLE_EVERY: u64 = 60;
    let prune_phase = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        % PRUNE_IDLE_EVERY;
    let mut housekeeping_ticks = 0u64;
    let mut commit_refusal_logged_at = 0i64;
    // `[instances] coordinate = true`: this instance runs only the queues
    // it holds the broker's lock on (coordinate.rs).
    let mut ownership = shared
        .coordination
        .clone()
        .map(|c| RouteOwnership::new(&name, route.direction.read_cluster(), c));
    let mut membership_rx = shared.coordination.as_ref().map(|c| c.changed.subscribe());
    let mut rebalance = tokio::time::interval(REBALANCE_EVERY);
    rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Vec<SourceQueue> = Vec::new();
    // Queues stopping here (released or lost); not taken again until done.
    let mut releasing: BTreeMap<SourceQueue, JoinHandle<()>> = BTreeMap::new();

    loop {
        tokio::select! {
            learned = &mut types_rx, if target_types.is_empty() => {
                let Ok(types) = learned else { break };
                tracing::info!(route = %name, target = %route.target_topic, types = ?types, "target topic accepts");
                target_types = types;
                generation += 1;
                let _ = rule_tx.send(Arc::new(build_rule(generation, &cfg, &current_route, target_types.clone())));
                sender.health.healthy();
            }
            _ = refresh.tick() => {
                match source.refresh_route().await {
                    Ok(found) => {
                        if new_route_queues.is_none() {
                            let home = ownership.as_ref().map(|o| o.home());
                            match route_is_new(&shared, &source, &name, &found, home).await {
                                Ok(new) => new_route_queues = Some(if new {
                                    found.iter().cloned().collect()
                                } else {
                                    Default::default()
                                }),
                                Err(e) => {
                                    tracing::error!(route = %name, error = %e, "cannot tell whether the route is new (its checkpoints or the instances' group offsets); will retry");
                                    refresh.reset_after(Duration::from_secs(2));
                                    continue;
                                }
                            }
                        }
                        if ownership.is_some() {
                            // Coordinating: the rebalance decides what runs here.
                            known = found;
                            rebalance.reset_immediately();
                            continue;
                        }
                        let new_route = new_route_queues.as_ref().cloned().unwrap_or_default();
                        for queue in found {
                            if queues.contains_key(&queue) {
                                continue;
                            }
                            let Some(offset) = queue_start(&shared, &source, &name, &queue, &current_route.start, new_route.contains(&queue)).await else {
                                continue;
                            };
                            super::rule::journal_start(&shared.store, &name, &journal, &rule_rx.borrow(), Some((&queue, offset)));
                            let task = start_queue(&shared, &source, &cfg, &current_route, queue.clone(), offset, rule_rx.clone(), worker_stop_rx.clone(), &sender, &admitter, None);
                            queues.insert(queue, task);
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::SOURCE_ERRORS_TOTAL, "kind" => "route").increment(1);
                        tracing::error!(route = %name, error = %e, "cannot refresh the 4.x route; retrying");
                        refresh.reset_after(Duration::from_secs(2));
                    }
                }
            }
            _ = rebalance.tick(), if ownership.is_some() => {
                if let Some(own) = ownership.as_mut() {
                    let new_route = new_route_queues.as_ref().cloned().unwrap_or_default();
                    let mut ctx = RebalanceContext {
                        shared: &shared, source: &source, cfg: &cfg, route: &current_route,
                        rule_rx: &rule_rx, worker_stop_rx: &worker_stop_rx,
                        sender: &sender, admitter: &admitter, new_route: &new_route,
                        journal: true,
                    };
                    if let Some(due) = rebalance_route(&mut ctx, own, &known, &mut queues, &mut releasing).await {
                        // A queue waiting to settle is taken when due, not a tick later.
                        if due < REBALANCE_EVERY {
                            rebalance.reset_after(due + Duration::from_millis(100));
                        }
                    }
                }
            }
            _ = members_changed(&mut membership_rx) => {
                rebalance.reset_immediately();
            }
            _ = commit_tick.tick(), if ownership.is_some() => {
                if let Some(own) = ownership.as_mut() {
                    // Positions shared through the group: what 5.x confirmed
                    // and the local store holds, while the lease is ours.
                    let step = (cfg.pipeline.inflight_per_queue / 4).max(1) as i64;
                    for (queue, task) in &queues {
                        own.commit(&source, queue, task.progress.durable(), step).await;
                    }
                }
            }
            _ = housekeeping.tick() => {
                publish_route_gauges(&name, &queues, &shared.flusher);
                let prune_now = schedule_side.is_some() || housekeeping_ticks % PRUNE_IDLE_EVERY == prune_phase;
                housekeeping_ticks += 1;
                if prune_now {
                    let watermark = super::scheduled::topic_watermark(queues.values().map(|t| &t.progress), now_ms());
                    super::schedule_ledger::prune(&shared.store, &name, watermark);
                }
                if let Some(group) = current_route.commit_as_group.clone() {
                    let current_rule = rule_rx.borrow().cutover.clone();
                    commit_back(&shared, &source, &name, &group, &queues, &current_rule, &mut commit_refusal_logged_at).await;
                }
            }
            changed = config_rx.changed() => {
                if changed.is_err() { break; }
                let (new_cfg, new_route) = config_rx.borrow_and_update().clone();
                generation += 1;
                let old_percent = current_route.cutover_percent;
                let new_rule = build_rule(generation, &new_cfg, &new_route, target_types.clone());
                if old_percent != new_route.cutover_percent || current_route.environments != new_route.environments {
                    let offsets: Vec<String> = queues.iter().map(|(q, t)| format!("{q}@{}", t.progress.done())).collect();
                    let entry = JournalEntry {
                        route: name.clone(),
                        generation,
                        from_percent: old_percent,
                        to_percent: new_route.cutover_percent,
                        changed_at_ms: now_ms(),
                        queue: None,
                        offset: None,
                        note: format!("accepted; environments {:?}; queues at {}", new_route.environments, offsets.join(" ")),
                        rule: Some(new_rule.journaled.clone()),
                    };
                    if let Err(e) = shared.store.journal_append(&entry) {
                        tracing::error!(route = %name, error = %e, "cannot journal cutover change");
                    }
                    tracing::info!(route = %name, from = old_percent, to = new_route.cutover_percent,
                        environments = ?new_route.environments, "cutover changed");
                }
                metrics::gauge!(m::CUTOVER_PERCENT, "route" => name.clone()).set(new_route.cutover_percent as f64);
                let _ = rule_tx.send(Arc::new(new_rule));
                current_route = new_route;
            }
            _ = stop.changed() => {
                if *stop.borrow() { break; }
            }
        }
    }

    let _ = worker_stop_tx.send(true);
    match ownership.as_mut() {
        // Hand every queue over: position written to the group, then unlocked.
        Some(own) => {
            let releases: Vec<_> = std::mem::take(&mut queues)
                .into_iter()
                .map(|(queue, task)| release_queue(own, &source, &name, queue, task))
                .collect();
            futures::future::join_all(releases).await;
        }
        None => {
            for (_, task) in queues {
                task.finished().await;
            }
        }
    }
    for (_, release) in releasing {
        let _ = release.await;
    }
    if let Some(side) = schedule_side {
        let _ = side.await;
    }
}

/// Whether the route is new: no checkpoint of it here and, where instances
/// share the estate, no shared position of the route on any of its queues (a replacement instance without its state directory is not a new
/// route).
async fn route_is_new(
    shared: &Shared,
    source: &TopicSource,
    route: &str,
    found: &[SourceQueue],
    home: Option<&PositionHome>,
) -> Result<bool, String> {
    let known = shared
        .store
        .route_checkpoints(route)
        .map_err(|e| e.to_string())?;
    if !known.is_empty() {
        return Ok(false);
    }
    let Some(home) = home else {
        return Ok(true);
    };
    for queue in found {
        if home.read(source, queue).await?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a queue without a running task starts: its checkpoint, or (none
/// yet) the route's start rules, recorded as its start.
async fn queue_start(
    shared: &Shared,
    source: &TopicSource,
    name: &str,
    queue: &SourceQueue,
    configured: &StartPosition,
    of_new_route: bool,
) -> Option<i64> {
    match shared.store.get(name, queue) {
        Ok(Some(cp)) => Some(cp.offset),
        Ok(None) => fresh_queue_start(shared, source, name, queue, configured, of_new_route).await,
        Err(e) => {
            tracing::error!(route = %name, %queue, error = %e, "cannot read checkpoint; will retry");
            None
        }
    }
}

/// Learns the target topic's accepted message types, retrying until it
/// succeeds (the route stays stalled meanwhile) or the route stops.
fn spawn_type_learner(
    ends: &super::Ends,
    route: &str,
    target: &str,
    health: &Arc<RouteHealth>,
    stop: &watch::Receiver<bool>,
) -> tokio::sync::oneshot::Receiver<Vec<crate::grpc::TopicMessageType>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Every client of the route announces the topic now, not at its first
    // send: a restarted bridge with nothing left to send there must still
    // answer the 5.x broker's transaction check-backs.
    for sink in ends.sinks.all() {
        sink.declare_topic(target);
    }
    let publisher = ends.sinks.first().clone();
    let cluster = publisher.cluster();
    let (route, target, health, stop) = (
        route.to_string(),
        target.to_string(),
        Arc::clone(health),
        stop.clone(),
    );
    health.starting(&format!(
        "waiting to learn the message types of {cluster} topic `{target}` (is the {cluster} cluster reachable and the topic created?)"
    ));
    tokio::spawn(async move {
        let mut first = true;
        let types = retry_until(
            "learning the target topic's message type",
            &route,
            &stop,
            || {
                let publisher = publisher.clone();
                let target = target.clone();
                let health = Arc::clone(&health);
                let report = std::mem::take(&mut first);
                async move {
                    let result = publisher
                        .accepted_types(&target)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|types| known_types(cluster, &target, types));
                    if let (Err(e), true) = (&result, report) {
                        health.stall(&format!(
                            "cannot learn the message types of {cluster} topic `{target}`: {e}"
                        ));
                    }
                    result
                }
            },
        )
        .await;
        if let Some(types) = types {
            let _ = tx.send(types);
        }
    });
    rx
}

/// The target's accepted types once it declares some. None declared
/// (UNSPECIFIED) is no answer yet, never a reason to refuse messages: a
/// Java 5.x proxy says so while it cannot read the topic's config from its
/// broker (for a while after a broker restart), so the route waits and
/// asks again.
fn known_types(
    cluster: &str,
    target: &str,
    types: Vec<crate::grpc::TopicMessageType>,
) -> Result<Vec<crate::grpc::TopicMessageType>, String> {
    if types.is_empty() {
        return Err(format!(
            "{cluster} topic `{target}` declares no message type (UNSPECIFIED): a 5.x proxy \
             answers so while it cannot reach the topic's broker; if it lasts, check the \
             topic's message.type attribute on its brokers"
        ));
    }
    Ok(types)
}

/// Keeps the route's stall reason in the store (`status` shows it) while
/// the daemon runs; written on a blocking thread.
fn spawn_stall_recorder(shared: &Shared, route: &str, health: &Arc<RouteHealth>) {
    let mut rx = health.watch();
    let store = shared.store.clone();
    let key = super::stall_meta_key(route);
    tokio::spawn(async move {
        loop {
            let value = rx.borrow_and_update().clone().unwrap_or_default();
            let store = store.clone();
            let key = key.clone();
            let _ = tokio::task::spawn_blocking(move || store.meta_put(&key, &value)).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

fn publish_route_gauges(
    route: &str,
    queues: &BTreeMap<SourceQueue, QueueTask>,
    flusher: &CheckpointFlusher,
) {
    let now = now_ms();
    let mut oldest = 0i64;
    let mut total_lag = 0i64;
    for task in queues.values() {
        let lag = task.progress.lag();
        total_lag += lag;
        let ts = task.progress.oldest_pending_store_ms();
        if lag > 0 && ts > 0 && (oldest == 0 || ts < oldest) {
            oldest = ts;
        }
    }
    let lag_seconds = if total_lag > 0 && oldest > 0 {
        ((now - oldest).max(0) as f64) / 1000.0
    } else {
        0.0
    };
    metrics::gauge!(m::SOURCE_LAG_SECONDS, "route" => route.to_string()).set(lag_seconds);
    metrics::gauge!(m::CHECKPOINT_AGE_SECONDS, "route" => route.to_string())
        .set(flusher.checkpoint_age_seconds(route));
}

/// Writes the route's durable checkpoints to its 4.x consumer group;
/// [`super::writeback`] owns the live-consumer interlock.
async fn commit_back(
    shared: &Shared,
    source: &TopicSource,
    route: &str,
    group: &str,
    queues: &BTreeMap<SourceQueue, QueueTask>,
    current: &crate::cutover::CutoverRule,
    logged_at: &mut i64,
) {
    // Where each queue's history may have held messages on 4.x only; an
    // unreadable journal writes nothing back (fail closed). Instances
    // sharing an estate: the journal every instance wrote, read up to now
    // (a queue taken over from an instance whose disk is gone may have been
    // held there, which this store never saw).
    let journal = match shared.coordination.as_ref().and_then(|c| c.live.clone()) {
        Some(live) => match live.catch_up().await {
            Ok(()) => live.with(|v| {
                crate::checkpoint::shared::Records::new(&shared.store, Some(v)).journal(route)
            }),
            Err(e) => {
                tracing::warn!(route, group, error = %e, "cannot read the other instances' cutover journal (estate state topic); not writing progress back");
                return;
            }
        },
        None => shared.store.journal(route),
    };
    let journal = match journal {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(route, group, error = %e, "cannot read the cutover journal; not writing progress back");
            return;
        }
    };
    let progress: Vec<(SourceQueue, i64, Option<i64>)> = queues
        .iter()
        .map(|(queue, task)| {
            let held =
                crate::cutover::history::QueueHistory::build(&journal, queue, current).held_until();
            (queue.clone(), task.progress.durable(), held)
        })
        .collect();
    super::writeback::commit_back(source, route, group, &progress, logged_at).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chaos run of 2026-12-07: a bridge restarted just after the 5.x
    /// broker learned "no type" from the proxy and quarantined 448 NORMAL
    /// messages as untypeable.
    #[test]
    fn no_declared_type_is_no_answer_yet() {
        use crate::grpc::TopicMessageType as T;
        let err = known_types("5.x", "orders", Vec::new()).unwrap_err();
        assert!(
            err.contains("`orders`") && err.contains("UNSPECIFIED"),
            "{err}"
        );
        assert_eq!(
            known_types("5.x", "orders", vec![T::Normal]),
            Ok(vec![T::Normal])
        );
    }
}
