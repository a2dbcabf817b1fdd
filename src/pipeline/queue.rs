//! One source queue's worker: takes pulled batches in offset order, decides
//! each message (cutover), translates it, sends it to 5.x inside a bounded
//! window, and moves the queue's done offset over the contiguous prefix of
//! finished messages. The flusher makes that offset durable.
//!
//! Memory: a message is translated only once a send permit is free, so what
//! waits for the 5.x side is the pulled record, not a spawned send. Every
//! translated message held (in flight, batched, or a FIFO successor waiting
//! for its group) also holds its size from a global budget
//! (`pipeline.max_inflight_mib`). The worker never blocks on that budget:
//! its own waiting FIFO successors may hold it, and only this loop starts
//! them, so a message over budget is deferred and retried.
//!
//! Ordering: messages of one FIFO message group are chained, so a send starts
//! only after the previous send of its group was acknowledged (or
//! quarantined). Retriable failures are retried in place, so they never
//! reorder a group.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use crate::checkpoint::{now_ms, CheckpointStore, QuarantineEntry, SourceQueue};
use crate::cutover::{self, CutoverDecision};
use crate::grpc::{MessageKind, OutgoingMessage, PublishError};
use crate::metrics as m;
use crate::remoting::MessageRecord;
use crate::source::{PullOutcome, PulledBatch};
use crate::translate::{self, SourceContext};

use super::progress::{CheckpointFlusher, QueueProgress};
use super::route::RouteRule;

/// Everything a queue worker needs that is shared by its route.
#[derive(Clone)]
pub struct QueueContext {
    pub route: String,
    pub target_topic: String,
    pub publishers: super::PublisherPool,
    pub store: CheckpointStore,
    pub flusher: Arc<CheckpointFlusher>,
    pub window: usize,
    pub rule: watch::Receiver<Arc<RouteRule>>,
    pub stop: watch::Receiver<bool>,
    pub drain_timeout: Duration,
    /// DELAY targets: a delivery time must stay at least this far ahead at send time.
    pub delay_min_lead: Duration,
    /// NORMAL messages of one queue are sent in batches of up to this many.
    pub send_batch_size: usize,
    /// Shared bound on sends in flight (one permit per request).
    pub send_permits: Arc<tokio::sync::Semaphore>,
    /// Shared budget, in KiB, for translated messages held in memory (in
    /// flight, batched or waiting for their FIFO group).
    pub held_kib: Arc<tokio::sync::Semaphore>,
    /// The whole `held_kib` budget (a larger message takes all of it).
    pub held_kib_total: u32,
    /// Shared count of acknowledged sends (see `quarantine_after_failures`).
    pub send_successes: Arc<AtomicU64>,
    /// Server refusals in a row, while other sends succeed, after which a
    /// message is quarantined; 0 = never.
    pub quarantine_after_failures: u32,
    /// This route's message counters and latency histogram.
    pub counters: m::RouteMessages,
}

/// Translated NORMAL messages waiting to go out as one request; `messages`
/// is what is sent, `slots[i]` what is tracked for `messages[i]`.
#[derive(Default)]
struct Batch {
    slots: Vec<BatchSlot>,
    messages: Vec<OutgoingMessage>,
}

struct BatchSlot {
    offset: i64,
    store_ms: i64,
    _held: OwnedSemaphorePermit,
}

// Boxing the record would cost an allocation per message on the hot path;
// items are only moved through a VecDeque.
#[allow(clippy::large_enum_variant)]
enum Item {
    Message(MessageRecord),
    /// Everything below this offset has been handed over (filtered gaps included).
    Advance(i64),
    /// The 4.x queue restarted below our position: continue from here.
    Reset(i64),
}

struct Slot {
    offset: i64,
    done: bool,
    store_ms: i64,
}

#[derive(Clone, Copy)]
enum SendOutcome {
    Forwarded,
    Quarantined,
    /// Stopped while retrying: not done, will be re-sent after restart.
    Abandoned,
}

struct Completion {
    offset: i64,
    outcome: SendOutcome,
    /// The FIFO group whose next message may now start.
    group: Option<String>,
}

/// A translated FIFO message waiting for the previous send of its group.
struct Waiting {
    offset: i64,
    store_ms: i64,
    message: OutgoingMessage,
    held: OwnedSemaphorePermit,
}

/// FIFO groups with a send in flight, each with its successors in order.
type FifoGroups = HashMap<String, VecDeque<Waiting>>;

/// How `admit` left a message.
enum Admitted {
    /// Nothing to send (skipped, filtered, quarantined locally).
    Finished,
    /// A send was started, or the message waits for its FIFO group.
    Started,
    /// Stopping while waiting for a send permit: not done, re-sent after restart.
    Stopped,
    /// Over the budget for held messages: retried once `kib` KiB are free.
    Deferred {
        record: Box<MessageRecord>,
        kib: u32,
    },
}

pub async fn run_queue_worker(
    mut ctx: QueueContext,
    queue: SourceQueue,
    progress: Arc<QueueProgress>,
    mut batches: mpsc::Receiver<PulledBatch>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut queued: VecDeque<Item> = VecDeque::new();
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let mut frontier = progress.done();
    let mut fifo_groups: FifoGroups = HashMap::new();
    let mut rule = ctx.rule.borrow_and_update().clone();
    let mut in_flight = 0usize;
    let mut durable_rx = progress.watch_durable();
    let mut batch = Batch::default();
    // Budget for held messages: what a deferred message waits for, and the
    // permit obtained for it.
    let mut deferred_kib: Option<u32> = None;
    let mut reserved: Option<OwnedSemaphorePermit> = None;
    let held_kib = ctx.held_kib.clone();

    loop {
        // Admit what the window allows.
        while let Some(item) = queued.front() {
            match item {
                Item::Advance(next) => {
                    frontier = frontier.max(*next);
                    queued.pop_front();
                }
                Item::Reset(next) => {
                    if !pending.is_empty() {
                        // Let what is in flight finish first.
                        break;
                    }
                    frontier = *next;
                    progress.reset_done(*next);
                    queued.pop_front();
                }
                Item::Message(record) => {
                    if record.queue_offset - progress.durable() >= ctx.window as i64 {
                        ctx.flusher.wake.notify_one();
                        break;
                    }
                    let Some(Item::Message(record)) = queued.pop_front() else {
                        break;
                    };
                    if ctx.rule.has_changed().unwrap_or(false) {
                        let new_rule = ctx.rule.borrow_and_update().clone();
                        super::route::journal_effect(
                            &ctx.store,
                            &ctx.route,
                            &rule,
                            &new_rule,
                            &queue,
                            record.queue_offset,
                        );
                        rule = new_rule;
                    }
                    let store_ms = record.store_timestamp_ms;
                    let offset = record.queue_offset;
                    let admitted = admit(
                        &ctx,
                        &rule,
                        &queue,
                        record,
                        &done_tx,
                        &mut fifo_groups,
                        &mut batch,
                        &mut reserved,
                    )
                    .await;
                    if let Admitted::Deferred { record, kib } = admitted {
                        queued.push_front(Item::Message(*record));
                        deferred_kib = Some(kib);
                        break;
                    }
                    frontier = frontier.max(offset + 1);
                    if matches!(admitted, Admitted::Started) {
                        in_flight += 1;
                    }
                    pending.push_back(Slot {
                        offset,
                        done: matches!(admitted, Admitted::Finished),
                        store_ms,
                    });
                    if matches!(admitted, Admitted::Stopped) {
                        break;
                    }
                    if batch.messages.len() >= ctx.send_batch_size
                        && !start_batch(&ctx, &queue, &mut batch, &done_tx).await
                    {
                        break;
                    }
                }
            }
        }
        // A budget permit reserved for a message that was not admitted after
        // all (rule change, stop) must not sit idle.
        reserved = None;
        // Nothing more can be admitted right now: send what is batched.
        if !batch.messages.is_empty() {
            start_batch(&ctx, &queue, &mut batch, &done_tx).await;
        }
        // Move the done prefix.
        while pending.front().is_some_and(|s| s.done) {
            pending.pop_front();
        }
        let done = pending.front().map(|s| s.offset).unwrap_or(frontier);
        progress.set_done(done);
        progress.set_oldest_pending_store_ms(
            pending
                .front()
                .map(|s| s.store_ms)
                .or_else(|| {
                    queued.iter().find_map(|i| match i {
                        Item::Message(r) => Some(r.store_timestamp_ms),
                        Item::Advance(_) | Item::Reset(_) => None,
                    })
                })
                .unwrap_or(0),
        );
        progress.publish_lag();

        if *ctx.stop.borrow() {
            break;
        }
        tokio::select! {
            Some(c) = done_rx.recv() => {
                let mut next = Some(c);
                while let Some(c) = next {
                    in_flight = in_flight.saturating_sub(1);
                    if let Some(group) = mark_done(&mut pending, c) {
                        start_next_in_group(&ctx, &queue, group, &mut fifo_groups, &done_tx).await;
                    }
                    next = done_rx.try_recv().ok();
                }
            }
            batch = batches.recv(), if queued.is_empty() => {
                match batch {
                    Some(batch) => take_batch(&ctx, &progress, batch, &mut queued),
                    None => break,
                }
            }
            _ = durable_rx.changed(), if !queued.is_empty() => {}
            permit = held_budget(&held_kib, deferred_kib.unwrap_or(1)), if deferred_kib.is_some() => {
                deferred_kib = None;
                reserved = permit;
            }
            _ = ctx.stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)), if !queued.is_empty() => {}
        }
    }

    // Drain: let in-flight sends finish (bounded), keep what completed.
    // FIFO successors still waiting for their group are not started.
    let waiting: usize = fifo_groups.values().map(VecDeque::len).sum();
    in_flight = in_flight.saturating_sub(waiting);
    fifo_groups.clear();
    let deadline = tokio::time::Instant::now() + ctx.drain_timeout;
    while in_flight > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(c)) => {
                in_flight = in_flight.saturating_sub(1);
                // Waiting FIFO successors are not started while stopping.
                mark_done(&mut pending, c);
            }
            _ => {
                tracing::warn!(route = %ctx.route, %queue, in_flight, "drain timed out; unacknowledged sends will be re-sent after restart");
                break;
            }
        }
    }
    while pending.front().is_some_and(|s| s.done) {
        pending.pop_front();
    }
    progress.set_done(pending.front().map(|s| s.offset).unwrap_or(frontier));
    progress.retire();
    ctx.flusher.wake.notify_one();
}

/// Marks a finished send; returns the FIFO group whose next message may start.
fn mark_done(pending: &mut VecDeque<Slot>, c: Completion) -> Option<String> {
    if matches!(c.outcome, SendOutcome::Abandoned) {
        return None;
    }
    if let Ok(i) = pending.binary_search_by_key(&c.offset, |s| s.offset) {
        pending[i].done = true;
    }
    c.group
}

/// The previous send of `group` finished: start its next message, or mark
/// the group idle.
async fn start_next_in_group(
    ctx: &QueueContext,
    queue: &SourceQueue,
    group: String,
    fifo_groups: &mut FifoGroups,
    done_tx: &mpsc::UnboundedSender<Completion>,
) {
    let Some(waiting) = fifo_groups.get_mut(&group) else {
        return;
    };
    let Some(next) = waiting.pop_front() else {
        fifo_groups.remove(&group);
        return;
    };
    // Stopping: the successor stays not done and is re-sent after restart;
    // its in-flight count is released by the drain's bookkeeping below.
    let Some(permit) = send_permit(ctx).await else {
        let _ = done_tx.send(Completion {
            offset: next.offset,
            outcome: SendOutcome::Abandoned,
            group: None,
        });
        return;
    };
    spawn_send(
        ctx,
        queue,
        next.message,
        next.offset,
        next.store_ms,
        Some(group),
        [permit, next.held],
        done_tx,
    );
}

/// Waits until `kib` of the budget for held messages are free.
async fn held_budget(
    budget: &Arc<tokio::sync::Semaphore>,
    kib: u32,
) -> Option<OwnedSemaphorePermit> {
    budget.clone().acquire_many_owned(kib).await.ok()
}

/// A translated message's share of the budget: body plus a rough
/// allowance for properties and bookkeeping, in KiB (at least 1).
fn held_kib(message: &OutgoingMessage) -> u32 {
    let bytes = message.body.len() + 512;
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Waits for a free send slot; None when the bridge is stopping.
async fn send_permit(ctx: &QueueContext) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = ctx.send_permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let mut stop = ctx.stop.clone();
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        permit = ctx.send_permits.clone().acquire_owned() => permit.ok(),
        _ = stop.changed() => None,
    }
}

fn take_batch(
    ctx: &QueueContext,
    progress: &QueueProgress,
    batch: PulledBatch,
    queued: &mut VecDeque<Item>,
) {
    match batch.outcome {
        PullOutcome::Records {
            records,
            undecodable: _,
            next_offset,
            max_offset,
        } => {
            progress.set_max_offset(max_offset);
            queued.extend(records.into_iter().map(Item::Message));
            queued.push_back(Item::Advance(next_offset));
        }
        PullOutcome::Idle {
            next_offset,
            max_offset,
        } => {
            progress.set_max_offset(max_offset);
            queued.push_back(Item::Advance(next_offset));
        }
        PullOutcome::OffsetMoved {
            requested,
            next_offset,
            min_offset,
            max_offset,
        } => {
            progress.set_max_offset(max_offset);
            if next_offset > requested {
                let gap = next_offset - requested;
                tracing::error!(
                    route = %ctx.route, queue = %batch.queue, checkpoint = requested,
                    resumed_at = next_offset, min_offset, lost = gap,
                    "4.x retention deleted messages the bridge had not forwarded; resuming at the first available offset"
                );
                ctx.counters.expired.increment(gap as u64);
            } else {
                tracing::error!(
                    route = %ctx.route, queue = %batch.queue, checkpoint = requested,
                    resumed_at = next_offset, max_offset,
                    "checkpoint is beyond the 4.x queue's max offset (queue reset?); resuming at the broker's suggestion"
                );
            }
            if next_offset >= requested {
                queued.push_back(Item::Advance(next_offset));
            } else {
                queued.push_back(Item::Reset(next_offset));
            }
        }
    }
}

/// Decides and starts one message: skipped and filtered ones finish at once;
/// a forwarded one is translated and sent once a send permit is free (or
/// queued behind the in-flight send of its FIFO group).
#[allow(clippy::too_many_arguments)]
async fn admit(
    ctx: &QueueContext,
    rule: &RouteRule,
    queue: &SourceQueue,
    record: MessageRecord,
    done_tx: &mpsc::UnboundedSender<Completion>,
    fifo_groups: &mut FifoGroups,
    batch: &mut Batch,
    reserved: &mut Option<OwnedSemaphorePermit>,
) -> Admitted {
    let decision = cutover::decide(&record, &rule.cutover, &queue.broker_name, queue.queue_id);
    let source_ctx = SourceContext {
        broker_name: &queue.broker_name,
        queue_id: queue.queue_id,
        now_ms: now_ms(),
    };
    match decision {
        CutoverDecision::Filtered => {
            ctx.counters.filtered.increment(1);
            Admitted::Finished
        }
        CutoverDecision::Skip { .. } => {
            ctx.counters.skipped.increment(1);
            if rule.cutover.percent == 0 {
                dry_run_validate(ctx, rule, queue, &record, &source_ctx);
            }
            Admitted::Finished
        }
        CutoverDecision::Forward => {
            let translated = translate::translate(
                &record,
                &ctx.target_topic,
                &rule.target_types,
                &source_ctx,
                &rule.translate,
            );
            let message = match translated {
                Ok(msg) => msg,
                Err(reason) => {
                    quarantine(
                        ctx,
                        queue,
                        record.queue_offset,
                        record.message_id(),
                        None,
                        &reason.to_string(),
                    )
                    .await;
                    return Admitted::Finished;
                }
            };
            // Never wait for the budget here: the budget may be held by
            // this worker's own FIFO successors, which only this loop starts.
            let kib = held_kib(&message).min(ctx.held_kib_total);
            let held = match reserved.take() {
                Some(permit) if permit.num_permits() >= kib as usize => permit,
                _ => match ctx.held_kib.clone().try_acquire_many_owned(kib) {
                    Ok(permit) => permit,
                    Err(_) => {
                        return Admitted::Deferred {
                            record: Box::new(record),
                            kib,
                        }
                    }
                },
            };
            let offset = record.queue_offset;
            let store_ms = record.store_timestamp_ms;
            drop(record);
            if message.kind == MessageKind::Normal && ctx.send_batch_size > 1 {
                batch.slots.push(BatchSlot {
                    offset,
                    store_ms,
                    _held: held,
                });
                batch.messages.push(message);
                return Admitted::Started;
            }
            let group = match &message.kind {
                MessageKind::Fifo { group } => Some(group.clone()),
                _ => None,
            };
            if let Some(group) = &group {
                if let Some(waiting) = fifo_groups.get_mut(group) {
                    waiting.push_back(Waiting {
                        offset,
                        store_ms,
                        message,
                        held,
                    });
                    return Admitted::Started;
                }
            }
            let Some(permit) = send_permit(ctx).await else {
                return Admitted::Stopped;
            };
            if let Some(group) = &group {
                fifo_groups.insert(group.clone(), VecDeque::new());
            }
            spawn_send(
                ctx,
                queue,
                message,
                offset,
                store_ms,
                group,
                [permit, held],
                done_tx,
            );
            Admitted::Started
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_send(
    ctx: &QueueContext,
    queue: &SourceQueue,
    message: OutgoingMessage,
    offset: i64,
    store_ms: i64,
    group: Option<String>,
    permits: [OwnedSemaphorePermit; 2],
    done_tx: &mpsc::UnboundedSender<Completion>,
) {
    let task_ctx = ctx.clone();
    let queue = queue.clone();
    let done_tx = done_tx.clone();
    tokio::spawn(async move {
        let outcome = send_with_retry(&task_ctx, &queue, &message, offset, store_ms).await;
        drop(message);
        drop(permits);
        let _ = done_tx.send(Completion {
            offset,
            outcome,
            group,
        });
    });
}

fn dry_run_validate(
    ctx: &QueueContext,
    rule: &RouteRule,
    queue: &SourceQueue,
    record: &MessageRecord,
    source_ctx: &SourceContext,
) {
    let problem = match translate::translate(
        record,
        &ctx.target_topic,
        &rule.target_types,
        source_ctx,
        &rule.translate,
    ) {
        Err(reason) => Some(reason.to_string()),
        Ok(msg) => crate::grpc::validate(
            &msg,
            &rule.target_types,
            ctx.publishers.first().max_body_size(),
        )
        .err()
        .map(|e| e.to_string()),
    };
    if let Some(problem) = problem {
        ctx.counters.would_fail.increment(1);
        tracing::warn!(route = %ctx.route, %queue, offset = record.queue_offset, msg_id = record.message_id(),
            reason = %problem, "dry run: this message would be rejected by the target topic");
    }
}

async fn quarantine(
    ctx: &QueueContext,
    queue: &SourceQueue,
    offset: i64,
    message_id: &str,
    message: Option<&OutgoingMessage>,
    reason: &str,
) {
    let entry = QuarantineEntry {
        route: ctx.route.clone(),
        queue: queue.clone(),
        offset,
        message_id: message_id.to_string(),
        reason: reason.to_string(),
        quarantined_at_ms: now_ms(),
        message_json: message
            .map(super::quarantine_codec::encode)
            .unwrap_or_default(),
    };
    // The checkpoint must not pass a message that is neither sent nor kept:
    // retry the write until it lands (a full disk is reported, not ignored).
    let mut attempt = 0u32;
    loop {
        match ctx.store.quarantine_put(&entry) {
            Ok(()) => break,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 100 == 0 {
                    tracing::error!(route = %ctx.route, %queue, offset, error = %e,
                        "cannot write quarantine entry; holding the queue until it can");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ctx.counters.quarantined.increment(1);
    metrics::gauge!(m::QUARANTINE_SIZE, "route" => ctx.route.clone()).increment(1.0);
    tracing::error!(route = %ctx.route, %queue, offset, msg_id = %entry.message_id,
        reason, "message quarantined; see `rmq-bridge quarantine list`");
}

async fn send_with_retry(
    ctx: &QueueContext,
    queue: &SourceQueue,
    message: &OutgoingMessage,
    offset: i64,
    store_ms: i64,
) -> SendOutcome {
    let mut backoff = Duration::from_millis(50);
    let mut stop = ctx.stop.clone();
    let mut message = std::borrow::Cow::Borrowed(message);
    let mut refusals = Refusals::default();
    loop {
        // A retry can outlive the clamp made at translation time.
        if let MessageKind::Delay {
            delivery_timestamp_ms,
        } = message.kind
        {
            let clamped =
                translate::clamp_delivery(delivery_timestamp_ms, now_ms(), ctx.delay_min_lead);
            if clamped != delivery_timestamp_ms {
                message.to_mut().kind = MessageKind::Delay {
                    delivery_timestamp_ms: clamped,
                };
            }
        }
        let message = message.as_ref();
        match ctx.publishers.next().send(message).await {
            Ok(_) => {
                ctx.send_successes.fetch_add(1, Ordering::Relaxed);
                ctx.counters.forwarded.increment(1);
                ctx.counters
                    .latency
                    .record((now_ms() - store_ms).max(0) as f64 / 1000.0);
                return SendOutcome::Forwarded;
            }
            Err(e) => {
                count_target_error(ctx, &e);
                let poison = refusals.record(&e, ctx);
                if e.is_permanent() || poison {
                    let reason = if poison {
                        format!(
                            "refused {} times in a row while other sends succeeded \
                             (pipeline.quarantine_after_failures); last: {e}",
                            refusals.in_a_row
                        )
                    } else {
                        e.to_string()
                    };
                    quarantine(
                        ctx,
                        queue,
                        offset,
                        &message.message_id,
                        Some(message),
                        &reason,
                    )
                    .await;
                    return SendOutcome::Quarantined;
                }
                tracing::warn!(route = %ctx.route, %queue, offset, error = %e, "send failed; retrying");
                if *stop.borrow() {
                    return SendOutcome::Abandoned;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return SendOutcome::Abandoned,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One message's run of server refusals. A 5.x server can refuse a message
/// it will never take with a retriable code (the rocketmq-rust and Java
/// proxies answer a body over the broker's limit with INTERNAL_ERROR);
/// retrying it forever would stall its queue. An outage refuses every send,
/// so a message is only given up on while other sends keep succeeding.
#[derive(Default)]
struct Refusals {
    in_a_row: u32,
    successes_at_first: Option<u64>,
}

impl Refusals {
    /// Records a failure; true when the message should now be quarantined.
    fn record(&mut self, e: &PublishError, ctx: &QueueContext) -> bool {
        if !matches!(e, PublishError::Retriable { .. }) {
            // Transport trouble, missing topic, credentials: not the message.
            *self = Refusals::default();
            return false;
        }
        let successes = ctx.send_successes.load(Ordering::Relaxed);
        let first = *self.successes_at_first.get_or_insert(successes);
        self.in_a_row += 1;
        ctx.quarantine_after_failures > 0
            && self.in_a_row >= ctx.quarantine_after_failures
            && successes > first
    }
}

/// Sends a batch of NORMAL messages as one request, retrying retriable
/// failures; a permanent rejection of the batch falls back to one-by-one
/// sends so only the offending message is quarantined.
/// Returns false when stopping before a permit was free: the batch's
/// messages then stay not done (in flight is released by Abandoned
/// completions) and are re-sent after restart.
async fn start_batch(
    ctx: &QueueContext,
    queue: &SourceQueue,
    batch: &mut Batch,
    done_tx: &mpsc::UnboundedSender<Completion>,
) -> bool {
    let Batch { slots, messages } = std::mem::take(batch);
    let Some(permit) = send_permit(ctx).await else {
        complete_all(done_tx, &slots, SendOutcome::Abandoned);
        return false;
    };
    let ctx = ctx.clone();
    let queue = queue.clone();
    let done_tx = done_tx.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut backoff = Duration::from_millis(50);
        let mut stop = ctx.stop.clone();
        loop {
            match ctx.publishers.next().send_batch(&messages).await {
                Ok(_) => {
                    ctx.send_successes
                        .fetch_add(slots.len() as u64, Ordering::Relaxed);
                    ctx.counters.forwarded.increment(slots.len() as u64);
                    let now = now_ms();
                    for slot in &slots {
                        ctx.counters
                            .latency
                            .record((now - slot.store_ms).max(0) as f64 / 1000.0);
                    }
                    complete_all(&done_tx, &slots, SendOutcome::Forwarded);
                    return;
                }
                Err(e) if e.is_permanent() => {
                    // Only the offending message must be quarantined.
                    count_target_error(&ctx, &e);
                    for (slot, message) in slots.iter().zip(&messages) {
                        let outcome =
                            send_with_retry(&ctx, &queue, message, slot.offset, slot.store_ms)
                                .await;
                        complete_all(&done_tx, std::slice::from_ref(slot), outcome);
                    }
                    return;
                }
                Err(e) => {
                    count_target_error(&ctx, &e);
                    tracing::warn!(route = %ctx.route, %queue, messages = slots.len(), error = %e, "batch send failed; retrying");
                    let abandoned = *stop.borrow()
                        || tokio::select! {
                            _ = tokio::time::sleep(backoff) => false,
                            _ = stop.changed() => true,
                        };
                    if abandoned {
                        complete_all(&done_tx, &slots, SendOutcome::Abandoned);
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    true
}

/// Reports every slot of a batch finished with `outcome`.
fn complete_all(
    done_tx: &mpsc::UnboundedSender<Completion>,
    slots: &[BatchSlot],
    outcome: SendOutcome,
) {
    for slot in slots {
        let _ = done_tx.send(Completion {
            offset: slot.offset,
            outcome,
            group: None,
        });
    }
}

fn count_target_error(ctx: &QueueContext, e: &PublishError) {
    metrics::counter!(m::TARGET_ERRORS_TOTAL, "route" => ctx.route.clone(), "code" => e.code_label())
        .increment(1);
}

#[cfg(test)]
mod tests;
