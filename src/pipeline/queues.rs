//! The queues of one route (or of a route's schedule side) as tasks: where
//! a queue starts, starting and stopping its puller and worker, and, for
//! instances sharing an estate, the rebalance that takes queues over, hands
//! them to another member and stops those whose lease ended. The one owner
//! of "which queues run here, from where" that both the route runner
//! (route.rs) and the schedule side (scheduled.rs) use; it imports
//! neither.
//!
//! Must not touch: the leases and brokers' locks (coordinate.rs), the
//! cutover rule, admission and sending (the worker's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::SourceQueue;
use crate::config::{BridgeConfig, RouteConfig, StartPosition};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::source::{SourceError, TopicSource};

use super::admit::Admitter;
use super::coordinate::RouteOwnership;
use super::ownership::Fence;
use super::progress::QueueProgress;
use super::rule::RouteRule;
use super::send::Sender;
use super::worker::{run_queue_worker, QueueContext};
use super::Shared;

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
    /// Waits for the worker to end by itself (the route's stop reached it).
    pub(super) async fn finished(self) {
        let _ = self.worker.await;
    }

    pub(super) async fn stop(self) -> Arc<QueueProgress> {
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

/// The start of a queue that has no position anywhere, recorded in the store.
pub(super) async fn fresh_queue_start(
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
    let cluster = own.cluster();
    let (source, name) = (source.clone(), name.to_string());
    async move {
        let progress = task.stop().await;
        progress.zero_lag();
        let offset = progress.durable();
        tracing::info!(route = %name, %queue, offset, "stopped queue: releasing it");
        if lease_end.is_some_and(|end| std::time::Instant::now() < end) {
            super::coordinate::release_lock(
                &source,
                cluster,
                &coordination,
                &home,
                &name,
                &queue,
                offset,
            )
            .await;
            tracing::info!(route = %name, %queue, offset, "released queue to another instance");
        } else {
            tracing::warn!(route = %name, %queue, offset,
                "released queue after its lease ended: its position is not written (the next owner may re-send from an older one)");
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_queue(
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

#[cfg(test)]
mod tests {
    use super::*;

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
