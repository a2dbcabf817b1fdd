//! Admission of one 4.x record: the cutover decision, translation, the dry
//! run, and the memory budget a translated message holds.
//!
//! Owns: "a message is translated only when it will be sent and its bytes
//! fit the route's share of the budget". Pure apart from the budget and the
//! counters; never waits (the worker's own FIFO successors may hold the
//! budget, and only the worker starts them, so waiting here could deadlock).
//! Must not touch: sending, the window, checkpoints.

use std::sync::Arc;

use bytes::Bytes;

use crate::checkpoint::{now_ms, SourceQueue};
use crate::cutover::{self, CutoverDecision};
use crate::grpc::OutgoingMessage;
use crate::metrics as m;
use crate::remoting::MessageRecord;
use crate::translate::{self, SourceContext};

use super::rule::RouteRule;
use super::schedule_ledger::ScheduleLedger;
use super::share::{Held, RouteShare};

/// What became of a record.
pub enum Admission {
    /// Nothing to send (skipped or filtered): done at once.
    Done,
    /// Translation refused it: quarantine the record as stored.
    Untranslatable {
        message_id: String,
        reason: String,
        raw: Bytes,
    },
    /// Translated, holding its share of the budget.
    Send(OutgoingMessage, Held),
    /// Over the route's budget share: hand the record back, retry later.
    Deferred(Box<MessageRecord>),
}

/// A side of a route that admits its records itself (the schedule side,
/// scheduled.rs), using [`Admitter::hold`] for what it sends.
pub trait OwnAdmission: Send + Sync {
    fn admit(
        &self,
        admitter: &Admitter,
        rule: &RouteRule,
        queue: &SourceQueue,
        record: MessageRecord,
    ) -> Admission;
}

/// One route's admission settings.
#[derive(Clone)]
pub struct Admitter {
    pub route: String,
    pub target_topic: String,
    pub share: Arc<RouteShare>,
    pub counters: m::RouteMessages,
    /// The largest body the 5.x target accepts (for the dry run).
    pub max_body_size: usize,
    /// The topic path: skips the broker's copies of pending scheduled
    /// messages 5.x already has (schedule_ledger.rs).
    pub copies: Option<Arc<ScheduleLedger>>,
    /// A side with its own admission (the schedule side).
    pub own: Option<Arc<dyn OwnAdmission>>,
}

impl Admitter {
    pub fn admit(&self, rule: &RouteRule, queue: &SourceQueue, record: MessageRecord) -> Admission {
        if let Some(own) = &self.own {
            return own.admit(self, rule, queue, record);
        }
        if let Some(copies) = &self.copies {
            if copies.copy_delivered(queue, &record) {
                return Admission::Done;
            }
        }
        // Before the cutover: a message that came from this route's
        // destination is never sent back, whatever the percent.
        if translate::looped(&record, &rule.translate) {
            self.counters.loop_skipped.increment(1);
            return Admission::Done;
        }
        let decision = cutover::decide(&record, &rule.cutover, &queue.broker_name, queue.queue_id);
        let source_ctx = SourceContext {
            broker_name: &queue.broker_name,
            queue_id: queue.queue_id,
            now_ms: now_ms(),
        };
        match decision {
            CutoverDecision::Filtered => {
                self.counters.filtered.increment(1);
                Admission::Done
            }
            CutoverDecision::Skip { .. } => {
                self.counters.skipped.increment(1);
                if rule.cutover.percent == 0 {
                    self.dry_run(rule, queue, &record, &source_ctx);
                }
                Admission::Done
            }
            CutoverDecision::Forward => {
                let translated = translate::translate(
                    &record,
                    &self.target_topic,
                    &rule.target_types,
                    &source_ctx,
                    &rule.translate,
                );
                self.hold(record, translated)
            }
        }
    }

    /// A translation's admission: quarantine what could not be translated,
    /// hold budget for the rest (or hand the record back).
    pub fn hold(
        &self,
        record: MessageRecord,
        translated: Result<OutgoingMessage, translate::Untranslatable>,
    ) -> Admission {
        let message = match translated {
            Ok(message) => message,
            Err(reason) => {
                return Admission::Untranslatable {
                    message_id: record.message_id().to_string(),
                    reason: reason.to_string(),
                    raw: raw_record(&record),
                }
            }
        };
        match self.share.try_budget(held_kib(&message)) {
            Some(held) => Admission::Send(message, held),
            None => Admission::Deferred(Box::new(record)),
        }
    }

    fn dry_run(
        &self,
        rule: &RouteRule,
        queue: &SourceQueue,
        record: &MessageRecord,
        source_ctx: &SourceContext,
    ) {
        let problem = match translate::translate(
            record,
            &self.target_topic,
            &rule.target_types,
            source_ctx,
            &rule.translate,
        ) {
            Err(reason) => Some(reason.to_string()),
            Ok(msg) => crate::grpc::validate(&msg, &rule.target_types, self.max_body_size)
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(problem) = problem {
            self.counters.would_fail.increment(1);
            tracing::warn!(route = %self.route, %queue, offset = record.queue_offset, msg_id = record.message_id(),
                reason = %problem, "dry run: this message would be rejected by the target topic");
        }
    }
}

/// The record as a 4.x broker stores it (body already inflated), so a
/// quarantined record can be translated again once the mapping is fixed.
fn raw_record(record: &MessageRecord) -> Bytes {
    crate::remoting::message::encode_record(record, true).unwrap_or_default()
}

/// A translated message's share of the budget: body plus a rough allowance
/// for properties and bookkeeping, in KiB (at least 1).
pub fn held_kib(message: &OutgoingMessage) -> u32 {
    let bytes = message.body.len() + 512;
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}
