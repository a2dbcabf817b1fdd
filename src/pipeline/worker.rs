//! One source queue's worker: the select loop that takes pulled batches in
//! offset order, admits each record (admit.rs) while the window allows,
//! starts its send (send.rs) once a permit is free, and moves the queue's
//! done offset (window.rs) as completions arrive. The flusher makes that
//! offset durable.
//!
//! Each promise lives in its own file: the window (checkpoints never pass an
//! unfinished message), order.rs (one send per FIFO group), health.rs
//! (poison versus outage, route stalls), share.rs (fair permits and budget),
//! quarantine/ (kept before done). This file only wires them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::checkpoint::{CheckpointStore, SourceQueue};
use crate::grpc::MessageKind;
use crate::handoff;
use crate::remoting::{MessageRecord, UndecodableRecord};
use crate::shutdown::Shutdown;
use crate::source::{PullOutcome, PulledBatch};

use super::admit::{Admission, Admitter};
use super::order::GroupChains;
use super::progress::{CheckpointFlusher, QueueProgress};
use super::quarantine::Payload;
use super::rule::{journal_effect, RouteRule};
use super::send::{Outgoing, SendOutcome, Sender};
use super::window::Window;

/// Everything a queue worker needs that is shared by its route.
#[derive(Clone)]
pub struct QueueContext {
    /// Shared by the route's workers and their send tasks (one clone per send).
    pub sender: Arc<Sender>,
    pub admitter: Admitter,
    pub store: CheckpointStore,
    pub flusher: Arc<CheckpointFlusher>,
    /// Messages admitted beyond the durable checkpoint (the crash-duplicate bound).
    pub window: usize,
    pub rule: watch::Receiver<Arc<RouteRule>>,
    pub drain_timeout: Duration,
    /// NORMAL messages of one queue are sent in batches of up to this many.
    pub send_batch_size: usize,
}

// Boxing the record would cost an allocation per message on the hot path;
// items are only moved through a VecDeque.
#[allow(clippy::large_enum_variant)]
enum Item {
    Message(MessageRecord),
    Undecodable(UndecodableRecord),
    /// Everything below this offset has been handed over (filtered gaps included).
    Advance(i64),
    /// The 4.x queue restarted below our position: continue from here.
    Reset(i64),
}

struct Completion {
    offset: i64,
    outcome: SendOutcome,
    /// The FIFO group whose next message may now start.
    group: Option<String>,
}

type Done = handoff::Sender<Completion>;

/// Reports one offset settled to the worker.
fn complete(done: &Done, offset: i64, outcome: SendOutcome, group: Option<String>) {
    let _ = done.push(Completion {
        offset,
        outcome,
        group,
    });
}

struct Worker {
    ctx: QueueContext,
    queue: SourceQueue,
    progress: Arc<QueueProgress>,
    window: Window,
    queued: VecDeque<Item>,
    chains: GroupChains<Outgoing>,
    batch: Vec<Outgoing>,
    /// Completions still expected (sends started or waiting for their group).
    in_flight: usize,
    done_tx: Done,
    rule: Arc<RouteRule>,
    stop: Shutdown,
}

/// Why the admission loop paused.
#[derive(PartialEq, Eq)]
enum Paused {
    /// Nothing more queued, or the window / a reset waits for completions.
    Idle,
    /// The route's share of the budget is used up.
    Budget,
    /// The route is stalled (misconfigured target).
    Stalled,
    Stopping,
}

pub async fn run_queue_worker(
    ctx: QueueContext,
    queue: SourceQueue,
    progress: Arc<QueueProgress>,
    mut batches: handoff::Receiver<PulledBatch>,
) {
    let (done_tx, mut done_rx) = handoff::unbounded::<Completion>();
    let mut rule_rx = ctx.rule.clone();
    let rule = rule_rx.borrow_and_update().clone();
    let stop = ctx.sender.stop.clone();
    let mut w = Worker {
        window: Window::new(progress.done()),
        queued: VecDeque::new(),
        chains: GroupChains::default(),
        batch: Vec::new(),
        in_flight: 0,
        done_tx,
        rule,
        stop: stop.clone(),
        queue,
        progress,
        ctx,
    };
    let mut durable_rx = w.progress.watch_durable();
    let mut released = w.ctx.admitter.share.released();
    let mut health = w.ctx.sender.health.watch();
    let mut stop_signal = stop.clone();

    loop {
        // Boxed: the admission path's state (permit waits, sends) would
        // otherwise sit inline in every queue's worker future, idle or not.
        let paused = Box::pin(w.admit_what_fits(&mut rule_rx)).await;
        w.publish_progress();
        if w.queued.is_empty() && w.queued.capacity() > 0 {
            // An idle queue keeps no buffer (928 bytes each at 8,000 queues).
            w.queued = VecDeque::new();
        }
        if paused == Paused::Stopping || w.stop.is_stopping() {
            break;
        }
        let queued = !w.queued.is_empty();
        tokio::select! {
            Some(c) = done_rx.recv() => {
                w.completed(c).await;
                while let Some(c) = done_rx.try_recv() {
                    w.completed(c).await;
                }
            }
            batch = batches.recv(), if !queued => {
                match batch {
                    Some(batch) => w.take_batch(batch),
                    None => break,
                }
            }
            _ = durable_rx.changed(), if queued => {}
            _ = released.changed(), if paused == Paused::Budget => {}
            _ = health.changed(), if paused == Paused::Stalled => {}
            _ = stop_signal.stopped() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)), if queued => {}
        }
    }
    Box::pin(w.drain(&mut done_rx)).await;
}

impl Worker {
    /// Admits queued items while the window, the budget and the route's
    /// health allow; says why it stopped.
    async fn admit_what_fits(&mut self, rule_rx: &mut watch::Receiver<Arc<RouteRule>>) -> Paused {
        let paused = loop {
            let Some(item) = self.queued.pop_front() else {
                break Paused::Idle;
            };
            match item {
                Item::Advance(next) => self.window.advance(next),
                Item::Reset(next) => {
                    if !self.window.reset(next) {
                        // Let what is in flight finish first.
                        self.queued.push_front(Item::Reset(next));
                        break Paused::Idle;
                    }
                    self.progress.reset_done(next);
                }
                Item::Undecodable(u) => {
                    if !self.within_window(u.queue_offset) {
                        self.queued.push_front(Item::Undecodable(u));
                        break Paused::Idle;
                    }
                    if self.window.take(u.queue_offset, 0, false).is_ok() {
                        self.spawn_quarantine_raw(u.queue_offset, String::new(), u.raw, u.reason);
                    }
                }
                Item::Message(record) => {
                    if !self.within_window(record.queue_offset) {
                        self.queued.push_front(Item::Message(record));
                        break Paused::Idle;
                    }
                    if let Some(reason) = self.ctx.sender.health.stalled() {
                        tracing::debug!(route = %self.ctx.sender.route, queue = %self.queue, reason, "route stalled; not admitting");
                        self.queued.push_front(Item::Message(record));
                        break Paused::Stalled;
                    }
                    if record.queue_offset < self.window.frontier() {
                        tracing::warn!(route = %self.ctx.sender.route, queue = %self.queue,
                            offset = record.queue_offset, expected_at_least = self.window.frontier(),
                            "4.x broker served an offset already taken; ignoring the repeated record");
                        continue;
                    }
                    if rule_rx.has_changed().unwrap_or(false) {
                        let new_rule = rule_rx.borrow_and_update().clone();
                        journal_effect(
                            &self.ctx.store,
                            &self.ctx.sender.route,
                            &self.rule,
                            &new_rule,
                            &self.queue,
                            record.queue_offset,
                        );
                        self.rule = new_rule;
                    }
                    if let Some(paused) = self.admit(record).await {
                        break paused;
                    }
                }
            }
        };
        // Nothing more can be admitted right now: send what is batched.
        if !self.batch.is_empty() && !self.start_batch().await {
            return Paused::Stopping;
        }
        paused
    }

    fn within_window(&self, offset: i64) -> bool {
        let ahead = offset.saturating_sub(self.progress.durable());
        if ahead >= self.ctx.window as i64 {
            self.ctx.flusher.wake.notify_one();
            return false;
        }
        true
    }

    /// Admits one record; Some(reason) when the loop must pause.
    async fn admit(&mut self, record: MessageRecord) -> Option<Paused> {
        let offset = record.queue_offset;
        let store_ms = record.store_timestamp_ms;
        match self.ctx.admitter.admit(&self.rule, &self.queue, record) {
            Admission::Done => {
                let _ = self.window.take(offset, store_ms, true);
                None
            }
            Admission::Untranslatable {
                message_id,
                reason,
                raw,
            } => {
                let _ = self.window.take(offset, store_ms, false);
                self.spawn_quarantine_raw(offset, message_id, raw, reason);
                None
            }
            Admission::Deferred(record) => {
                self.queued.push_front(Item::Message(*record));
                Some(Paused::Budget)
            }
            Admission::Send(message, held) => {
                let _ = self.window.take(offset, store_ms, false);
                self.in_flight += 1;
                let group = match &message.kind {
                    MessageKind::Fifo { group } => Some(group.clone()),
                    _ => None,
                };
                let normal = message.kind == MessageKind::Normal;
                let out = Outgoing {
                    queue: self.queue.clone(),
                    offset,
                    store_ms,
                    message,
                    held,
                };
                if normal && self.ctx.send_batch_size > 1 {
                    self.batch.push(out);
                    if self.batch.len() >= self.ctx.send_batch_size && !self.start_batch().await {
                        return Some(Paused::Stopping);
                    }
                    return None;
                }
                let out = match &group {
                    Some(group) => match self.chains.start_or_wait(group, out) {
                        Some(out) => out,
                        // Waits for the previous send of its group.
                        None => return None,
                    },
                    None => out,
                };
                if !self.start_send(out, group).await {
                    return Some(Paused::Stopping);
                }
                None
            }
        }
    }

    /// Starts one send once a permit is free; false when stopping (the
    /// message then stays not done).
    async fn start_send(&mut self, out: Outgoing, group: Option<String>) -> bool {
        let mut stop = self.stop.clone();
        let Some(permit) = self.ctx.admitter.share.send_permit(&mut stop).await else {
            complete(&self.done_tx, out.offset, SendOutcome::Abandoned, None);
            return false;
        };
        let sender = self.ctx.sender.clone();
        let done_tx = self.done_tx.clone();
        tokio::spawn(async move {
            let offset = out.offset;
            let outcome = sender.deliver(out, Some(permit)).await;
            complete(&done_tx, offset, outcome, group);
        });
        true
    }

    /// Sends what is batched as one request; false when stopping.
    async fn start_batch(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        let mut stop = self.stop.clone();
        let Some(permit) = self.ctx.admitter.share.send_permit(&mut stop).await else {
            for out in &batch {
                complete(&self.done_tx, out.offset, SendOutcome::Abandoned, None);
            }
            return false;
        };
        let sender = self.ctx.sender.clone();
        let done_tx = self.done_tx.clone();
        tokio::spawn(async move {
            sender
                .deliver_batch(batch, permit, |offset, outcome| {
                    complete(&done_tx, offset, outcome, None)
                })
                .await;
        });
        true
    }

    fn spawn_quarantine_raw(
        &mut self,
        offset: i64,
        message_id: String,
        raw: bytes::Bytes,
        reason: String,
    ) {
        self.in_flight += 1;
        let quarantine = self.ctx.sender.quarantine.clone();
        let queue = self.queue.clone();
        let done_tx = self.done_tx.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let kept = quarantine
                .put(
                    &queue,
                    offset,
                    &message_id,
                    Payload::Raw(&raw),
                    &reason,
                    &mut stop,
                )
                .await;
            let outcome = if kept {
                SendOutcome::Quarantined
            } else {
                SendOutcome::Abandoned
            };
            complete(&done_tx, offset, outcome, None);
        });
    }

    async fn completed(&mut self, c: Completion) {
        if let Some((next, group)) = self.settle(c) {
            // Boxed: only a FIFO successor waits here (see the admission path).
            Box::pin(self.start_send(next, Some(group))).await;
        }
    }

    /// Books one completion; the FIFO successor it lets start, if any.
    fn settle(&mut self, c: Completion) -> Option<(Outgoing, String)> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if c.outcome == SendOutcome::Abandoned {
            return None;
        }
        self.window.mark_done(c.offset);
        let group = c.group?;
        if self.stop.is_stopping() {
            return None;
        }
        let next = self.chains.finished(&group)?;
        Some((next, group))
    }

    fn take_batch(&mut self, batch: PulledBatch) {
        match batch.outcome {
            PullOutcome::Records {
                records,
                undecodable,
                next_offset,
                max_offset,
            } => {
                self.progress.set_max_offset(max_offset);
                // Both lists are in offset order: merge them.
                let mut undecodable = undecodable.into_iter().peekable();
                for record in records {
                    while undecodable
                        .peek()
                        .is_some_and(|u| u.queue_offset < record.queue_offset)
                    {
                        if let Some(u) = undecodable.next() {
                            self.queued.push_back(Item::Undecodable(u));
                        }
                    }
                    self.queued.push_back(Item::Message(record));
                }
                self.queued.extend(undecodable.map(Item::Undecodable));
                self.queued.push_back(Item::Advance(next_offset));
            }
            PullOutcome::Idle {
                next_offset,
                max_offset,
            } => {
                self.progress.set_max_offset(max_offset);
                self.queued.push_back(Item::Advance(next_offset));
            }
            PullOutcome::OffsetMoved {
                requested,
                next_offset,
                min_offset,
                max_offset,
            } => {
                self.progress.set_max_offset(max_offset);
                let route = &self.ctx.sender.route;
                if next_offset > requested {
                    let gap = next_offset.saturating_sub(requested);
                    tracing::error!(
                        route = %route, queue = %batch.queue, checkpoint = requested,
                        resumed_at = next_offset, min_offset, lost = gap,
                        "4.x retention deleted messages the bridge had not forwarded; resuming at the first available offset"
                    );
                    self.ctx.admitter.counters.expired.increment(gap as u64);
                    self.queued.push_back(Item::Advance(next_offset));
                } else if next_offset < requested {
                    tracing::error!(
                        route = %route, queue = %batch.queue, checkpoint = requested,
                        resumed_at = next_offset, max_offset,
                        "checkpoint is beyond the 4.x queue's max offset (queue reset?); resuming at the broker's suggestion"
                    );
                    self.queued.push_back(Item::Reset(next_offset));
                }
            }
        }
    }

    fn publish_progress(&mut self) {
        self.progress.set_done(self.window.done());
        let oldest = self.window.oldest_pending_store_ms().or_else(|| {
            self.queued.iter().find_map(|i| match i {
                Item::Message(r) => Some(r.store_timestamp_ms),
                _ => None,
            })
        });
        self.progress
            .set_oldest_pending_store_ms(oldest.unwrap_or(0));
        self.progress.publish_lag();
    }

    /// Lets in-flight sends finish (bounded), keeps what completed. FIFO
    /// successors still waiting for their group are not started.
    async fn drain(mut self, done_rx: &mut handoff::Receiver<Completion>) {
        let waiting = self.chains.clear();
        self.in_flight = self.in_flight.saturating_sub(waiting);
        let deadline = tokio::time::Instant::now() + self.ctx.drain_timeout;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(c)) => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if c.outcome != SendOutcome::Abandoned {
                        self.window.mark_done(c.offset);
                    }
                }
                _ => {
                    tracing::warn!(route = %self.ctx.sender.route, queue = %self.queue, in_flight = self.in_flight,
                        "drain timed out; unacknowledged sends will be re-sent after restart");
                    break;
                }
            }
        }
        self.progress.set_done(self.window.done());
        self.progress.retire();
        self.ctx.flusher.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
