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
use crate::source::{SourceError, SourceSettings, TopicSource};

use super::admit::Admitter;
use super::coordinate::RouteOwnership;
use super::health::RouteHealth;
use super::ownership::Fence;
use super::positions::PositionHome;
use super::progress::{CheckpointFlusher, QueueProgress};
use super::quarantine::Quarantine;
use super::schedule_ledger::ScheduleLedger;
use super::scheduled::spawn_schedule_side;
use super::send::Sender;
use super::worker::{run_queue_worker, QueueContext};
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

async fn resolve_start(
    source: &TopicSource,
    queue: &SourceQueue,
    start: &StartPosition,
    route: &str,
) -> Result<i64, SourceError> {
    Ok(match start {
        StartPosition::Earliest => source.min_offset(queue).await?,
        StartPosition::Latest => source.max_offset(queue).await?,
        StartPosition::Timestamp(ms) => source.offset_at(queue, *ms).await?,
        StartPosition::Group(group) => match source.group_offset(queue, group).await? {
            Some(offset) if offset >= 0 => offset,
            _ => {
                let min = source.min_offset(queue).await?;
                tracing::warn!(route, %queue, group, min,
                    "4.x group has no committed offset on this queue; starting at its earliest offset");
                min
            }
        },
    })
}

/// Where a queue without a checkpoint starts. Only the queues of a new
/// route (no checkpoint of the route existed when this process first
/// discovered its queues) start at the configured position. Any other queue
/// is new to a running route (the topic grew, a broker joined, or one was
/// unreachable when the route started), perhaps while the bridge was down:
/// everything in it was written after the route started, so it starts at
/// its earliest offset, or at the route's start time for a route started
/// from a timestamp (a consumer group's committed offset for a handoff).
/// `start = "latest"` must never skip what producers wrote there meanwhile.
fn start_for_queue(configured: &StartPosition, queue_of_new_route: bool) -> StartPosition {
    if queue_of_new_route {
        return configured.clone();
    }
    match configured {
        StartPosition::Earliest | StartPosition::Latest => StartPosition::Earliest,
        StartPosition::Timestamp(ms) => StartPosition::Timestamp(*ms),
        StartPosition::Group(group) => StartPosition::Group(group.clone()),
    }
}

pub(super) struct QueueTask {
    pub(super) progress: Arc<QueueProgress>,
    worker: JoinHandle<()>,
    /// Stops this queue's puller and worker alone (a released queue).
    stop_tx: watch::Sender<bool>,
}

impl QueueTask {
    /// Stops the queue and waits until its worker drained (bounded by
    /// `pipeline.shutdown_drain_timeout`) and its last position is durable.
    async fn stop(self) -> Arc<QueueProgress> {
        let _ = self.stop_tx.send(true);
        let _ = self.worker.await;
        let done = self.progress.done();
        let mut durable = self.progress.watch_durable();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while *durable.borrow_and_update() < done {
                if durable.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.progress
    }
}

/// How often a coordinating instance rebalances and renews its locks
/// (also on NOTIFY_CONSUMER_IDS_CHANGED): within ownership::RENEW_EVERY.
pub(super) const REBALANCE_EVERY: Duration = Duration::from_secs(10);

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
        .map(|c| RouteOwnership::new(&name, c));
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
                let _ = task.worker.await;
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

/// The start of a queue that has no position anywhere, recorded in the store.
async fn fresh_queue_start(
    shared: &Shared,
    source: &TopicSource,
    name: &str,
    queue: &SourceQueue,
    configured: &StartPosition,
    of_new_route: bool,
) -> Option<i64> {
    let start = start_for_queue(configured, of_new_route);
    let o = match resolve_start(source, queue, &start, name).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(route = %name, %queue, error = %e, "cannot resolve start position; will retry");
            return None;
        }
    };
    if let Err(e) = shared.store.record_route_start(name, queue, o) {
        tracing::error!(route = %name, %queue, error = %e, "cannot record start position");
        return None;
    }
    if let Err(e) = shared
        .store
        .advance(&[(name.to_string(), queue.clone(), o)])
    {
        tracing::error!(route = %name, %queue, error = %e, "cannot record start position");
        return None;
    }
    if of_new_route {
        tracing::info!(route = %name, %queue, offset = o, start = %start, "starting queue of a new route");
    } else {
        tracing::warn!(route = %name, %queue, offset = o, start = %start, configured = %configured,
            "a queue new to this route (topic grown, or a broker joined or was unreachable when the route started): \
             forwarding it from {start}, not from the route's configured start, so nothing written to it is skipped");
    }
    Some(o)
}

/// Resolves when the instances' group changed members; never without
/// coordination.
pub(super) async fn members_changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// What a rebalance needs of its route (or of a route's schedule side,
/// scheduled.rs: `route` is then named `<route>#scheduled` and starts at
/// the earliest offset).
pub(super) struct RebalanceContext<'a> {
    pub shared: &'a Shared,
    pub source: &'a TopicSource,
    pub cfg: &'a Arc<BridgeConfig>,
    pub route: &'a RouteConfig,
    pub rule_rx: &'a watch::Receiver<Arc<RouteRule>>,
    pub worker_stop_rx: &'a watch::Receiver<bool>,
    pub sender: &'a Arc<Sender>,
    pub admitter: &'a Admitter,
    pub new_route: &'a std::collections::BTreeSet<SourceQueue>,
    /// Whether a queue changing hands is journaled (the cutover journal
    /// `verify` reads; the schedule side has none).
    pub journal: bool,
}

/// One rebalance of a coordinating route: stops queues whose lease ended,
/// hands over those now assigned to another member, takes or renews the
/// locks of its own (a new one once settled, `coordinate::SETTLE_FOR`), and
/// starts the ones newly locked. Returns when the next waiting queue settles.
pub(super) async fn rebalance_route(
    ctx: &mut RebalanceContext<'_>,
    own: &mut RouteOwnership,
    known: &[SourceQueue],
    queues: &mut BTreeMap<SourceQueue, QueueTask>,
    releasing: &mut BTreeMap<SourceQueue, JoinHandle<()>>,
) -> Option<Duration> {
    let name = ctx.route.name.clone();
    releasing.retain(|_, r| !r.is_finished());
    for queue in own.take_expired(std::time::Instant::now()) {
        if let Some(task) = queues.remove(&queue) {
            tracing::error!(route = %name, %queue, "the queue's lock was not renewed in time (broker unreachable, or this process was paused); stopped sending for it");
            releasing.insert(
                queue.clone(),
                tokio::spawn(stop_lost(task, name.clone(), queue)),
            );
        }
    }
    if known.is_empty() {
        return None;
    }
    let assigned = match own.assigned(ctx.source, known).await {
        Ok(a) => a,
        Err(e) => {
            // Keep what is held (the locks say who may send); renew it.
            tracing::warn!(route = %name, error = %e, "cannot list the instances; keeping the queues held");
            queues.keys().cloned().collect()
        }
    };
    let leaving: Vec<SourceQueue> = queues
        .keys()
        .filter(|q| !assigned.contains(q))
        .cloned()
        .collect();
    for queue in leaving {
        if let Some(task) = queues.remove(&queue) {
            let release = release_queue(own, ctx.source, &name, queue.clone(), task);
            releasing.insert(queue, tokio::spawn(release));
        }
    }
    let (due, next_due) = own.to_lock(&assigned, std::time::Instant::now());
    let wanted: Vec<SourceQueue> = due
        .into_iter()
        .filter(|q| !releasing.contains_key(q))
        .collect();
    let granted = own.lock(ctx.source, &wanted).await;
    // Held before and refused now: another instance has it.
    let lost: Vec<SourceQueue> = queues.keys().filter(|q| !own.holds(q)).cloned().collect();
    for queue in lost {
        if let Some(task) = queues.remove(&queue) {
            releasing.insert(
                queue.clone(),
                tokio::spawn(stop_lost(task, name.clone(), queue)),
            );
        }
    }
    for queue in granted {
        if queues.contains_key(&queue) {
            continue;
        }
        match take_over(ctx, own, &queue).await {
            Some(task) => {
                queues.insert(queue, task);
            }
            None => {
                // Not started: let the lease go (taken again next time).
                own.close(&queue);
            }
        }
    }
    metrics::gauge!(m::OWNED_QUEUES, "route" => name.clone()).set(queues.len() as f64);
    let unowned = assigned.iter().filter(|q| !queues.contains_key(*q)).count();
    metrics::gauge!(m::UNOWNED_QUEUES, "route" => name).set(unowned as f64);
    next_due
}

/// Starts a queue this instance just locked, from the later of its own
/// checkpoint and the group's position.
async fn take_over(
    ctx: &mut RebalanceContext<'_>,
    own: &mut RouteOwnership,
    queue: &SourceQueue,
) -> Option<QueueTask> {
    let name = &ctx.route.name;
    let from_group = match own.home().read(ctx.source, queue).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(route = %name, %queue, home = ?own.home(), error = %e, "cannot read the shared position of a locked queue; not starting it yet");
            return None;
        }
    };
    let local = match ctx.shared.store.get(name, queue) {
        Ok(cp) => cp.map(|c| c.offset),
        Err(e) => {
            tracing::error!(route = %name, %queue, error = %e, "cannot read checkpoint; will retry");
            return None;
        }
    };
    let offset = match super::coordinate::takeover_offset(local, from_group) {
        Some(o) => {
            if local != Some(o) {
                if let Err(e) = ctx
                    .shared
                    .store
                    .advance(&[(name.clone(), queue.clone(), o)])
                {
                    tracing::error!(route = %name, %queue, error = %e, "cannot record the taken-over position");
                    return None;
                }
            }
            o
        }
        None => {
            fresh_queue_start(
                ctx.shared,
                ctx.source,
                name,
                queue,
                &ctx.route.start,
                ctx.new_route.contains(queue),
            )
            .await?
        }
    };
    // The position is the group's before anything is sent: an instance
    // taking the queue over after a crash here starts from it, not from
    // the route's start.
    own.commit(ctx.source, queue, offset, 1).await;
    tracing::info!(route = %name, %queue, offset, own_checkpoint = ?local, group_position = ?from_group,
        client_id = %own.client_id(), "owning queue");
    // Always journaled where a queue changes hands: the journal read at the
    // route's start may be older than another instance's last rule of it.
    if ctx.journal {
        super::rule::journal_start(
            &ctx.shared.store,
            name,
            &[],
            &ctx.rule_rx.borrow(),
            Some((queue, offset)),
        );
    }
    Some(start_queue(
        ctx.shared,
        ctx.source,
        ctx.cfg,
        ctx.route,
        queue.clone(),
        offset,
        ctx.rule_rx.clone(),
        ctx.worker_stop_rx.clone(),
        ctx.sender,
        ctx.admitter,
        own.fence(queue),
    ))
}

/// Stops a queue whose lock this instance no longer holds (its fence is
/// already closed); nothing is written to the group.
async fn stop_lost(task: QueueTask, route: String, queue: SourceQueue) {
    let progress = task.stop().await;
    progress.zero_lag();
    tracing::info!(route = %route, %queue, offset = progress.durable(), "stopped queue: its lock is lost");
}

/// Releases a queue now assigned to another member: stops admitting and
/// sending, waits for in-flight sends (bounded) and the durable position,
/// writes it to the group, reads it back, then unlocks.
pub(super) fn release_queue(
    own: &mut RouteOwnership,
    source: &TopicSource,
    name: &str,
    queue: SourceQueue,
    task: QueueTask,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let lease_end = own.close(&queue).map(|(_, end)| end);
    let coordination = own.coordination().clone();
    let home = own.home().clone();
    let (source, name) = (source.clone(), name.to_string());
    async move {
        let progress = task.stop().await;
        progress.zero_lag();
        let offset = progress.durable();
        tracing::info!(route = %name, %queue, offset, "stopped queue: releasing it");
        if lease_end.is_some_and(|end| std::time::Instant::now() < end) {
            super::coordinate::release_lock(&source, &coordination, &home, &name, &queue, offset)
                .await;
            tracing::info!(route = %name, %queue, offset, "released queue to another instance");
        } else {
            tracing::warn!(route = %name, %queue, offset,
                "released queue after its lease ended: its position is not written (the next owner may re-send from an older one)");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start_queue(
    shared: &Shared,
    source: &TopicSource,
    cfg: &BridgeConfig,
    route: &RouteConfig,
    queue: SourceQueue,
    offset: i64,
    rule_rx: watch::Receiver<Arc<RouteRule>>,
    stop_rx: watch::Receiver<bool>,
    sender: &Arc<Sender>,
    admitter: &Admitter,
    fence: Option<Arc<Fence>>,
) -> QueueTask {
    // A queue held through a lease stops alone (released or lost), and its
    // sends ask the lease's fence; any other stops with its route.
    let (stop_tx, queue_stop_rx) = watch::channel(false);
    let (stop_rx, sender) = match fence {
        Some(fence) => {
            let mut own = (**sender).clone();
            own.stop = Shutdown::new(queue_stop_rx.clone());
            own.fence = Some(fence);
            (queue_stop_rx, Arc::new(own))
        }
        None => (stop_rx, sender.clone()),
    };
    let progress = QueueProgress::new(&route.name, queue.clone(), offset);
    shared.flusher.register(progress.clone());
    // Prefetch: a few pulled batches hide the pull round trip; more would
    // only hold memory while the 5.x side is the slower one.
    let prefetch =
        (cfg.pipeline.inflight_per_queue / cfg.source.pull_batch_size.max(1) as usize).clamp(1, 4);
    let batches = source.spawn_puller(queue.clone(), offset, prefetch, stop_rx);
    let ctx = QueueContext {
        sender,
        admitter: admitter.clone(),
        store: shared.store.clone(),
        flusher: shared.flusher.clone(),
        window: cfg.pipeline.inflight_per_queue,
        rule: rule_rx,
        drain_timeout: cfg.pipeline.shutdown_drain_timeout,
        send_batch_size: cfg.pipeline.send_batch_size,
    };
    let worker = tokio::spawn(run_queue_worker(ctx, queue, progress.clone(), batches));
    QueueTask {
        progress,
        worker,
        stop_tx,
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

    #[test]
    fn only_the_queues_of_a_new_route_start_at_the_configured_position() {
        let latest = StartPosition::Latest;
        assert_eq!(start_for_queue(&latest, true), StartPosition::Latest);
        // A queue that appears in an established route (topic grown while
        // the bridge was down, a broker joining) holds only messages written
        // since the route started: all of them are forwarded.
        assert_eq!(start_for_queue(&latest, false), StartPosition::Earliest);
        assert_eq!(
            start_for_queue(&StartPosition::Earliest, false),
            StartPosition::Earliest
        );
        assert_eq!(
            start_for_queue(&StartPosition::Timestamp(1_700_000_000_000), false),
            StartPosition::Timestamp(1_700_000_000_000)
        );
        assert_eq!(
            start_for_queue(&StartPosition::Group("g".into()), false),
            StartPosition::Group("g".into())
        );
    }
}
