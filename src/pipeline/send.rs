//! The one retry layer: a translated message (or a packed batch) is sent
//! until it is settled: acknowledged, quarantined, or abandoned because the
//! bridge stops. The publishers below make a single attempt per call, so
//! retries are never nested and every wait ends at stop.
//!
//! Owns: what each failure means for the message ([`Disposition`]):
//! - `Message`: quarantine now (the code names the message itself);
//! - `Route`: stall the route (health.rs), retry slowly, quarantine nothing;
//! - `Suspect`: retry; poison only by the rule in health.rs;
//! - `Transient`: retry.
//!
//! A send gives its permit back while it waits to retry, and a FIFO send
//! holds its group's turn (order.rs) until it is settled.
//! Must not touch: the window, cutover decisions, checkpoints.

use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{now_ms, SourceQueue};
use crate::grpc::{Disposition, MessageKind, OutgoingMessage};
use crate::metrics as m;
use crate::shutdown::{Backoff, Shutdown};
use crate::sink::SinkError;
use crate::translate;

use super::health::{Refusals, RouteHealth, TopicHealth};
use super::order::OrderLocks;
use super::ownership::Fence;
use super::publishers::PublisherPool;
use super::quarantine::{Payload, Quarantine};
use super::schedule_ledger::{Claim, ScheduleLedger};
use super::share::{Held, RouteShare, SendPermit};

/// How a send ended for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Forwarded,
    Quarantined,
    /// Stopped before it was settled: not done, re-sent after restart.
    Abandoned,
    /// Done without a send: a pending scheduled message 5.x already has,
    /// or one left to the topic path (schedule_ledger.rs).
    NotNeeded,
}

/// What every send of one route shares.
#[derive(Clone)]
pub struct Sender {
    pub route: String,
    pub publishers: PublisherPool,
    pub order: Arc<OrderLocks>,
    pub topic: Arc<TopicHealth>,
    pub health: Arc<RouteHealth>,
    pub share: Arc<RouteShare>,
    pub quarantine: Quarantine,
    pub counters: m::RouteMessages,
    /// DELAY targets that refuse a time not in the future: a delivery time
    /// is then kept at least this far ahead.
    pub delay_min_lead: Duration,
    /// Whether this route's target refused a past delivery time: until it
    /// does, DELAY messages go with their own time (Java 5.x takes a past
    /// time and delivers at once).
    pub delay_clamp: Arc<DelayClamp>,
    /// Counted refusals after which a message is poison; 0 = never.
    pub poison_threshold: u32,
    pub stop: Shutdown,
    /// The schedule side of a route: its ledger is asked before, during
    /// and after each send (schedule_ledger.rs).
    pub scheduled: Option<Arc<ScheduleLedger>>,
    /// Keeps "send failed; retrying" to one line per interval.
    pub retry_log: Arc<RetryLog>,
    /// The queue's lease where instances share the estate (ownership.rs):
    /// no attempt starts once it is closed. None: the queue is this
    /// instance's alone.
    pub fence: Option<Arc<Fence>>,
}

/// Learned per route: the target refused a DELAY message's past delivery
/// time (ILLEGAL_DELIVERY_TIME), so every DELAY send of the route is
/// clamped to now + `delay_min_lead` from then on (`translate::clamp_delivery`).
#[derive(Debug, Default)]
pub struct DelayClamp {
    on: std::sync::atomic::AtomicBool,
}

impl DelayClamp {
    pub fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True the first time.
    fn turn_on(&self) -> bool {
        !self.on.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// During an outage every message in flight fails and retries: logging each
/// failure wrote ~1,000 lines a second in the chaos soak. One line per
/// route every [`RetryLog::EVERY`], with how many failures it stands for;
/// `rmq_bridge_target_errors_total` still counts each.
#[derive(Debug, Default)]
pub struct RetryLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RetryLog {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Some(failures not logged since the last line) when this one is to be
    /// logged; None (and counted) otherwise.
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let Ok(mut last) = self.last.lock() else {
            return Some(0);
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// One translated message on its way, with what it holds.
pub struct Outgoing {
    pub queue: SourceQueue,
    pub offset: i64,
    pub store_ms: i64,
    pub message: OutgoingMessage,
    pub held: Held,
}

/// An `Outgoing` of a packed batch without its message.
struct Slot {
    queue: SourceQueue,
    offset: i64,
    store_ms: i64,
    held: Held,
}

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Sender {
    /// Sends one message until settled. `permit` is the send permit the
    /// caller obtained (None: take one here).
    pub async fn deliver(&self, out: Outgoing, permit: Option<SendPermit>) -> SendOutcome {
        let mut stop = self.stop.clone();
        let mut permit = permit;
        // FIFO: one send of the group in flight bridge-wide. Never wait for
        // the turn while holding a send permit others could use.
        let _turn = match &out.message.kind {
            MessageKind::Fifo { group } => {
                let topic = out.message.topic.clone();
                match self.order.try_turn(&topic, group) {
                    Some(turn) => Some(turn),
                    None => {
                        permit = None;
                        tokio::select! {
                            turn = self.order.turn(&topic, group) => Some(turn),
                            _ = stop.stopped() => return SendOutcome::Abandoned,
                        }
                    }
                }
            }
            _ => None,
        };
        let claimed = match &self.scheduled {
            None => None,
            Some(ledger) => match ledger.claim(&out.queue, out.offset, &mut stop).await {
                Claim::Unclaimed => None,
                Claim::Send(key) => Some((ledger, key)),
                Claim::Settled => return SendOutcome::NotNeeded,
                Claim::Stopped => return SendOutcome::Abandoned,
            },
        };
        let mut message = out.message;
        let mut refusals = Refusals::default();
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let p = match permit.take() {
                Some(p) => p,
                None => match self.share.send_permit(&mut stop).await {
                    Some(p) => p,
                    None => return SendOutcome::Abandoned,
                },
            };
            if !self.fenced_open() {
                return SendOutcome::Abandoned;
            }
            if let Some((ledger, key)) = &claimed {
                if ledger.released(key) {
                    // The broker delivered it meanwhile; the topic path
                    // forwards its copy.
                    return SendOutcome::NotNeeded;
                }
            }
            // Clamped where the target refused a past time; again at each
            // attempt, which can outlive the last clamp.
            if let (
                MessageKind::Delay {
                    delivery_timestamp_ms,
                },
                true,
            ) = (&message.kind, self.delay_clamp.is_on())
            {
                let clamped = translate::clamp_delivery(
                    *delivery_timestamp_ms,
                    now_ms(),
                    self.delay_min_lead,
                );
                message.kind = MessageKind::Delay {
                    delivery_timestamp_ms: clamped,
                };
            }
            let result = self.publishers.next().send(&message).await;
            drop(p);
            let e = match result {
                Ok(_) => {
                    self.accepted(std::slice::from_ref(&out.store_ms));
                    if let Some((ledger, key)) = &claimed {
                        if !ledger.confirm(key, &mut stop).await {
                            return SendOutcome::Abandoned;
                        }
                    }
                    return SendOutcome::Forwarded;
                }
                Err(e) => e,
            };
            self.count_error(&e);
            if let (
                MessageKind::Delay {
                    delivery_timestamp_ms,
                },
                true,
            ) = (&message.kind, e.refuses_delivery_time())
            {
                let clamped = translate::clamp_delivery(
                    *delivery_timestamp_ms,
                    now_ms(),
                    self.delay_min_lead,
                );
                if clamped != *delivery_timestamp_ms {
                    if self.delay_clamp.turn_on() {
                        tracing::warn!(route = %self.route, topic = %message.topic, error = %e,
                            lead = ?self.delay_min_lead,
                            "the target refuses a DELAY delivery time that is not in the future; \
                             this route's DELAY messages are sent no earlier than now + \
                             [translate] delay_min_lead_ms from now on");
                    }
                    continue;
                }
            }
            let quarantine_reason =
                match e.disposition() {
                    Disposition::Message => Some(e.to_string()),
                    Disposition::Suspect => refusals
                        .refused(&self.topic, self.poison_threshold)
                        .then(|| {
                            format!(
                            "refused {} times while other messages to topic `{}` were accepted \
                             (pipeline.quarantine_after_failures); last: {e}",
                            refusals.counted, message.topic
                        )
                        }),
                    Disposition::Route => {
                        self.health.stall(&e.to_string());
                        None
                    }
                    Disposition::Transient => None,
                };
            if let Some(reason) = quarantine_reason {
                let kept = self
                    .quarantine
                    .put(
                        &out.queue,
                        out.offset,
                        &message.message_id,
                        Payload::Translated(&message),
                        &reason,
                        &mut stop,
                    )
                    .await;
                return if kept {
                    SendOutcome::Quarantined
                } else {
                    SendOutcome::Abandoned
                };
            }
            if let Some(suppressed) = self.retry_log.admit() {
                tracing::warn!(route = %self.route, queue = %out.queue, offset = out.offset, error = %e,
                    similar_failures_not_logged = suppressed, "send failed; retrying (logged at most every 10 s per route)");
            }
            if !backoff.wait(&mut stop).await {
                return SendOutcome::Abandoned;
            }
        }
    }

    /// Sends NORMAL messages as one request until settled; calls `settled`
    /// for each. A refusal that is not the route's or transient falls back
    /// to one-by-one sends, so each message meets the quarantine and poison
    /// rules alone.
    pub async fn deliver_batch(
        &self,
        batch: Vec<Outgoing>,
        permit: SendPermit,
        mut settled: impl FnMut(i64, SendOutcome),
    ) {
        let mut stop = self.stop.clone();
        let mut permit = Some(permit);
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        // The messages travel as the request as they are (no copy per
        // message); the rest of each `Outgoing` waits beside them.
        let (messages, batch): (Vec<OutgoingMessage>, Vec<Slot>) = batch
            .into_iter()
            .map(|o| {
                (
                    o.message,
                    Slot {
                        queue: o.queue,
                        offset: o.offset,
                        store_ms: o.store_ms,
                        held: o.held,
                    },
                )
            })
            .unzip();
        loop {
            let p = match permit.take() {
                Some(p) => p,
                None => match self.share.send_permit(&mut stop).await {
                    Some(p) => p,
                    None => {
                        batch
                            .iter()
                            .for_each(|o| settled(o.offset, SendOutcome::Abandoned));
                        return;
                    }
                },
            };
            if !self.fenced_open() {
                drop(p);
                batch
                    .iter()
                    .for_each(|o| settled(o.offset, SendOutcome::Abandoned));
                return;
            }
            let result = self.publishers.next().send_batch(&messages).await;
            drop(p);
            let e = match result {
                Ok(_) => {
                    let store_ms: Vec<i64> = batch.iter().map(|o| o.store_ms).collect();
                    self.accepted(&store_ms);
                    batch
                        .iter()
                        .for_each(|o| settled(o.offset, SendOutcome::Forwarded));
                    return;
                }
                Err(e) => e,
            };
            self.count_error(&e);
            match e.disposition() {
                Disposition::Route => self.health.stall(&e.to_string()),
                Disposition::Transient => {}
                Disposition::Message | Disposition::Suspect => {
                    tracing::warn!(route = %self.route, messages = batch.len(), error = %e,
                        "packed send refused; sending its messages one by one");
                    for (slot, message) in batch.into_iter().zip(messages) {
                        let offset = slot.offset;
                        let out = Outgoing {
                            queue: slot.queue,
                            offset,
                            store_ms: slot.store_ms,
                            message,
                            held: slot.held,
                        };
                        let outcome = self.deliver(out, None).await;
                        settled(offset, outcome);
                    }
                    return;
                }
            }
            if let Some(suppressed) = self.retry_log.admit() {
                tracing::warn!(route = %self.route, messages = batch.len(), error = %e,
                    similar_failures_not_logged = suppressed, "batch send failed; retrying (logged at most every 10 s per route)");
            }
            if !backoff.wait(&mut stop).await {
                batch
                    .iter()
                    .for_each(|o| settled(o.offset, SendOutcome::Abandoned));
                return;
            }
        }
    }

    /// Whether this queue may still send: always, unless its lease closed.
    fn fenced_open(&self) -> bool {
        self.fence.as_ref().map_or(true, |f| f.open())
    }

    fn accepted(&self, store_ms: &[i64]) {
        self.topic.accepted(store_ms.len() as u64);
        self.health.healthy();
        self.counters.forwarded.increment(store_ms.len() as u64);
        let now = now_ms();
        for ms in store_ms {
            self.counters
                .latency
                .record((now - ms).max(0) as f64 / 1000.0);
        }
    }

    fn count_error(&self, e: &SinkError) {
        metrics::counter!(m::TARGET_ERRORS_TOTAL, "route" => self.route.clone(), "code" => e.code_label())
            .increment(1);
    }
}

#[cfg(test)]
mod retry_log_tests {
    use super::RetryLog;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let log = RetryLog::default();
        assert_eq!(log.admit(), Some(0));
        for _ in 0..999 {
            assert_eq!(log.admit(), None);
        }
        *log.last.lock().unwrap() = Some(std::time::Instant::now() - RetryLog::EVERY);
        assert_eq!(log.admit(), Some(999));
    }
}
