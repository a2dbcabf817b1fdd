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

use crate::checkpoint::{now_ms, CheckpointStore, JournalEntry, SourceQueue};
use crate::config::{BridgeConfig, FifoGroupFrom, RouteConfig, StartPosition};
use crate::cutover::{CutoverRule, EnvironmentFilter};
use crate::grpc::TopicMessageType;
use crate::metrics as m;
use crate::source::{SourceError, SourceSettings, TopicSource};
use crate::translate::{FifoGroupSource, ProvenanceNames, TranslateOptions};

use super::progress::{CheckpointFlusher, QueueProgress};
use super::queue::{run_queue_worker, QueueContext};
use super::Shared;

/// What the queue workers of a route decide with; replaced on config change.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub generation: u64,
    pub cutover: CutoverRule,
    pub target_types: Vec<TopicMessageType>,
    pub translate: TranslateOptions,
}

pub fn build_rule(
    generation: u64,
    cfg: &BridgeConfig,
    route: &RouteConfig,
    target_types: Vec<TopicMessageType>,
) -> RouteRule {
    let t = &cfg.translate;
    RouteRule {
        generation,
        cutover: CutoverRule {
            percent: route.cutover_percent,
            routing_key: route.routing_key,
            environments: EnvironmentFilter::from_names(&route.environments),
            environment_property: cfg.environment_property.clone(),
        },
        target_types,
        translate: TranslateOptions {
            fifo_group_from: match t.fifo_group {
                FifoGroupFrom::ShardingKey => FifoGroupSource::ShardingKey,
                FifoGroupFrom::SourceQueue => FifoGroupSource::SourceQueue,
            },
            provenance: t.provenance.then(|| ProvenanceNames {
                cluster: t.provenance_cluster_property.clone(),
                broker: t.provenance_broker_property.clone(),
                queue: t.provenance_queue_property.clone(),
                offset: t.provenance_offset_property.clone(),
            }),
            source_cluster: t.source_cluster_name.clone(),
            delay_clamp_min_ahead: t.delay_min_lead,
        },
    }
}

/// Records that a new rule took effect on `queue` at `offset`.
pub fn journal_effect(
    store: &CheckpointStore,
    route: &str,
    old: &RouteRule,
    new: &RouteRule,
    queue: &SourceQueue,
    offset: i64,
) {
    if old.cutover.percent == new.cutover.percent
        && old.cutover.environments == new.cutover.environments
    {
        return;
    }
    let entry = JournalEntry {
        route: route.to_string(),
        generation: new.generation,
        from_percent: old.cutover.percent,
        to_percent: new.cutover.percent,
        changed_at_ms: now_ms(),
        queue: Some(queue.clone()),
        offset: Some(offset),
        note: "took effect".into(),
    };
    if let Err(e) = store.journal_append(&entry) {
        tracing::error!(route, %queue, error = %e, "cannot journal cutover change");
    }
}

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
    stop: &mut watch::Receiver<bool>,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        if *stop.borrow() {
            return None;
        }
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts % 10 == 0 {
                    tracing::error!(route, error = %e, "{what} failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
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

struct QueueTask {
    progress: Arc<QueueProgress>,
    worker: JoinHandle<()>,
}

async fn run_route(
    shared: Shared,
    mut config_rx: watch::Receiver<(Arc<BridgeConfig>, RouteConfig)>,
    mut stop: watch::Receiver<bool>,
) {
    let (cfg, route) = config_rx.borrow_and_update().clone();
    let name = route.name.clone();
    let source = TopicSource::new(
        shared.remoting.clone(),
        shared.namesrv.clone(),
        SourceSettings {
            topic: route.source_topic.clone(),
            filter: route.filter.clone(),
            consumer_group: cfg.source.consumer_group.clone(),
            pull_batch_size: cfg.source.pull_batch_size,
            long_poll: cfg.source.long_poll,
        },
    );

    let publisher = shared.publisher.clone();
    let target = route.target_topic.clone();
    let Some(target_types) = retry_until(
        "learning the 5.x target topic's message type",
        &name,
        &mut stop,
        || {
            let publisher = publisher.clone();
            let target = target.clone();
            async move {
                publisher
                    .accepted_types(&target)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await
    else {
        return;
    };
    tracing::info!(route = %name, target = %target, types = ?target_types, "target topic accepts");

    let mut generation = 1u64;
    let rule = build_rule(generation, &cfg, &route, target_types.clone());
    metrics::gauge!(m::CUTOVER_PERCENT, "route" => name.clone()).set(route.cutover_percent as f64);
    let (rule_tx, rule_rx) = watch::channel(Arc::new(rule));
    let (worker_stop_tx, worker_stop_rx) = watch::channel(false);

    let mut queues: BTreeMap<SourceQueue, QueueTask> = BTreeMap::new();
    let mut current_route = route.clone();
    // Queues seen at the first discovery start at the configured position;
    // queues added to the topic later start at their earliest offset.
    let mut initial_queues: Option<std::collections::BTreeSet<SourceQueue>> = None;
    let mut refresh = tokio::time::interval(Duration::from_secs(30));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    let mut commit_refusal_logged_at = 0i64;

    loop {
        tokio::select! {
            _ = refresh.tick() => {
                match source.refresh_route().await {
                    Ok(found) => {
                        let initial = initial_queues.get_or_insert_with(|| found.iter().cloned().collect()).clone();
                        for queue in found {
                            if queues.contains_key(&queue) {
                                continue;
                            }
                            // Queues that appear after the route started only hold
                            // messages produced since, so they start at their earliest offset.
                            let start = if initial.contains(&queue) { current_route.start.clone() } else { StartPosition::Earliest };
                            let offset = match shared.store.get(&name, &queue) {
                                Ok(Some(cp)) => cp.offset,
                                Ok(None) => match resolve_start(&source, &queue, &start, &name).await {
                                    Ok(o) => {
                                        if let Err(e) = shared.store.advance(&[(name.clone(), queue.clone(), o)]) {
                                            tracing::error!(route = %name, %queue, error = %e, "cannot record start position");
                                            continue;
                                        }
                                        tracing::info!(route = %name, %queue, offset = o, start = %start, "starting queue with no checkpoint");
                                        o
                                    }
                                    Err(e) => {
                                        tracing::error!(route = %name, %queue, error = %e, "cannot resolve start position; will retry");
                                        continue;
                                    }
                                },
                                Err(e) => {
                                    tracing::error!(route = %name, %queue, error = %e, "cannot read checkpoint; will retry");
                                    continue;
                                }
                            };
                            let task = start_queue(&shared, &source, &cfg, &current_route, queue.clone(), offset, rule_rx.clone(), worker_stop_rx.clone());
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
            _ = housekeeping.tick() => {
                publish_route_gauges(&name, &queues, &shared.flusher);
                if let Some(group) = current_route.commit_as_group.clone() {
                    commit_back(&source, &name, &group, &queues, &mut commit_refusal_logged_at).await;
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
    for (_, task) in queues {
        let _ = task.worker.await;
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
) -> QueueTask {
    let progress = QueueProgress::new(&route.name, queue.clone(), offset);
    shared.flusher.register(progress.clone());
    // Prefetch: a few pulled batches hide the pull round trip; more would
    // only hold memory while the 5.x side is the slower one.
    let prefetch =
        (cfg.pipeline.inflight_per_queue / cfg.source.pull_batch_size.max(1) as usize).clamp(1, 4);
    let batches = source.spawn_puller(queue.clone(), offset, prefetch, stop_rx.clone());
    let ctx = QueueContext {
        route: route.name.clone(),
        target_topic: route.target_topic.clone(),
        publishers: shared.publishers.clone(),
        store: shared.store.clone(),
        flusher: shared.flusher.clone(),
        window: cfg.pipeline.inflight_per_queue,
        rule: rule_rx,
        stop: stop_rx,
        drain_timeout: cfg.pipeline.shutdown_drain_timeout,
        delay_min_lead: cfg.translate.delay_min_lead,
        send_batch_size: cfg.pipeline.send_batch_size,
        send_permits: shared.send_permits.clone(),
        send_successes: shared.send_successes.clone(),
        held_kib: shared.held_kib.clone(),
        held_kib_total: cfg.pipeline.max_inflight_mib.saturating_mul(1024),
        counters: crate::metrics::RouteMessages::new(&route.name),
        quarantine_after_failures: cfg.pipeline.quarantine_after_failures,
    };
    let worker = tokio::spawn(run_queue_worker(ctx, queue, progress.clone(), batches));
    QueueTask { progress, worker }
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

/// Writes the route's durable checkpoints to a 4.x consumer group, unless the
/// group still has live consumers (they would fight over the offsets).
async fn commit_back(
    source: &TopicSource,
    route: &str,
    group: &str,
    queues: &BTreeMap<SourceQueue, QueueTask>,
    logged_at: &mut i64,
) {
    let mut live: Vec<String> = Vec::new();
    for addr in source.all_broker_addrs() {
        match source
            .client()
            .get_consumer_list_by_group(&addr, group)
            .await
        {
            // Our own client id shows up if we heartbeat under this very group.
            Ok(ids) => live.extend(
                ids.into_iter()
                    .filter(|id| *id != crate::pipeline::client_id()),
            ),
            Err(e) => {
                tracing::debug!(route, group, %addr, error = %e, "consumer list query failed")
            }
        }
    }
    live.sort();
    live.dedup();
    if !live.is_empty() {
        metrics::gauge!("rmq_bridge_commit_refused", "route" => route.to_string()).set(1.0);
        let now = now_ms();
        if now - *logged_at > 60_000 {
            *logged_at = now;
            tracing::error!(route, group, live_consumers = ?live,
                "refusing to commit progress as 4.x group `{group}`: it still has {} live consumer(s); stop them, or clear commit_as_group", live.len());
        }
        return;
    }
    metrics::gauge!("rmq_bridge_commit_refused", "route" => route.to_string()).set(0.0);
    for (queue, task) in queues {
        let offset = task.progress.durable();
        let Ok(addr) = source.master_addr(queue) else {
            continue;
        };
        if let Err(e) = source
            .client()
            .update_consumer_offset(&addr, group, source.topic(), queue.queue_id, offset)
            .await
        {
            tracing::warn!(route, group, %queue, error = %e, "cannot write progress back to the 4.x group");
        }
    }
}
