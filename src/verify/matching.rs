//! Judging one source queue's records against the 5.x index: the decision
//! the bridge made at each offset (cutover and environment rule in force
//! there, quarantine), the message it should have sent (the same
//! translation the pipeline uses), and what 5.x holds under that message id.
//!
//! Owns: the counts of one queue and the per-FIFO-group order check. Must
//! not touch: the network, the report's wording.

use std::collections::{HashMap, HashSet};

use crate::checkpoint::SourceQueue;
use crate::cutover::{decide, CutoverDecision};
use crate::grpc::TopicMessageType;
use crate::remoting::{MessageRecord, UndecodableRecord};
use crate::translate::{translate, SourceContext, TranslateOptions};

use super::fingerprint::Fingerprint;
use super::index::{StoredCopy, TargetIndex, TargetPosition};
use super::report::{NamedMessage, QueueReport, NAMED_PER_QUEUE};
use crate::cutover::history::QueueHistory;

/// What every queue of a route is judged with.
#[derive(Debug, Clone)]
pub struct RouteJudge {
    pub target_topic: String,
    /// The 5.x topic's accepted types; `None` when they could not be learned
    /// (types, FIFO groups and delivery times are then not compared).
    pub target_types: Option<Vec<TopicMessageType>>,
    pub translate: TranslateOptions,
}

/// A missing message kept for a later look (`--follow`: 5.x may index it
/// a moment after acknowledging it).
#[derive(Debug, Clone)]
struct Pending {
    offset: i64,
    want: Fingerprint,
    /// A DELAY message whose 4.x copy was stored (due) this recently
    /// (unix ms): 5.x may not have delivered it into the topic yet.
    due_ms: Option<i64>,
}

/// How long after its deadline a missing DELAY message is still waited for.
pub const TIMER_GRACE_MS: i64 = 30_000;

pub struct QueueMatcher {
    pub queue: SourceQueue,
    history: QueueHistory,
    quarantined: HashSet<i64>,
    pub report: QueueReport,
    /// Per FIFO group: where its previous message of this queue is in 5.x.
    groups: HashMap<String, TargetPosition>,
    pending: Vec<Pending>,
}

impl QueueMatcher {
    pub fn new(queue: SourceQueue, from: i64, history: QueueHistory) -> Self {
        QueueMatcher {
            report: QueueReport {
                queue: queue.to_string(),
                from,
                to: from,
                ..Default::default()
            },
            queue,
            history,
            quarantined: HashSet::new(),
            groups: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// The queue's rule history and quarantined offsets, re-read each pass.
    pub fn refresh(&mut self, history: QueueHistory, quarantined: HashSet<i64>) {
        self.history = history;
        self.quarantined = quarantined;
    }

    fn name(list: &mut Vec<NamedMessage>, unnamed: &mut u64, msg: NamedMessage) {
        if list.len() < NAMED_PER_QUEUE {
            list.push(msg);
        } else {
            *unnamed += 1;
        }
    }

    pub fn record(
        &mut self,
        rec: &MessageRecord,
        judge: &RouteJudge,
        index: &TargetIndex,
    ) -> anyhow::Result<()> {
        let offset = rec.queue_offset;
        self.report.counts.read += 1;
        // Quarantined and not (yet) replayed into 5.x: known, not lost
        // silently. A replayed one is judged like any other.
        if self.quarantined.contains(&offset) && index.copies(rec.message_id())?.is_empty() {
            self.report.counts.quarantined += 1;
            return Ok(());
        }
        // Bridged from the destination: the original is there; the route
        // never sends it back, whatever the percent (admit.rs).
        if crate::translate::looped(rec, &judge.translate) {
            self.report.counts.loop_skipped += 1;
            return Ok(());
        }
        let rule = self.history.rule_at(offset);
        match decide(rec, &rule, &self.queue.broker_name, self.queue.queue_id) {
            CutoverDecision::Forward => {}
            held => {
                if matches!(held, CutoverDecision::Filtered) {
                    self.report.counts.filtered += 1;
                } else {
                    self.report.counts.skipped += 1;
                }
                if !index.copies(rec.message_id())?.is_empty() {
                    self.report.counts.unexpected_found += 1;
                }
                return Ok(());
            }
        }
        let types = judge
            .target_types
            .clone()
            .unwrap_or_else(|| vec![TopicMessageType::Normal]);
        // now_ms 0: no clamping of a DELAY time, so the expected time is the
        // original deadline; a stored time may be later, never earlier.
        let ctx = SourceContext {
            broker_name: &self.queue.broker_name,
            queue_id: self.queue.queue_id,
            now_ms: 0,
        };
        let msg = match translate(rec, &judge.target_topic, &types, &ctx, &judge.translate) {
            Ok(msg) => msg,
            Err(e) => {
                if let crate::translate::Untranslatable::HalfTransaction { .. } = e {
                    self.report.counts.not_forwardable += 1;
                    return Ok(());
                }
                // The bridge quarantines what it cannot translate; this one
                // is not in quarantine, so it is lost.
                self.report.counts.expected += 1;
                self.report.counts.missing += 1;
                Self::name(
                    &mut self.report.missing,
                    &mut self.report.unnamed,
                    NamedMessage {
                        offset,
                        message_id: rec.message_id().to_string(),
                        problems: vec![format!(
                            "cannot be translated and is not in quarantine: {e}"
                        )],
                        target_position: None,
                    },
                );
                return Ok(());
            }
        };
        self.report.counts.expected += 1;
        let mut want = Fingerprint::expected(&msg);
        // A record the broker moved out of the schedule topic carries no
        // deadline of its own (the level is cleared): its store time is when
        // it was moved, a little after the deadline the bridge may have sent
        // it with (`scheduled = "forward"`). Only its type is compared.
        let props = &rec.properties;
        if props.get(crate::remoting::names::REAL_TOPIC).is_some()
            && props
                .get(crate::remoting::names::TIMER_DELIVER_MS)
                .is_none()
            && props
                .get(crate::remoting::names::START_DELIVER_TIME)
                .is_none()
        {
            want.delivery_ms = None;
        }
        let due_ms = (want.kind == super::fingerprint::StoredType::Delay).then(|| {
            want.delivery_ms
                .unwrap_or(rec.store_timestamp_ms)
                .max(rec.store_timestamp_ms)
        });
        self.judge_copies(
            offset,
            want,
            due_ms,
            index,
            judge.target_types.is_some(),
            false,
        )
    }

    /// A record the 4.x broker returned but that cannot be decoded: the
    /// bridge quarantines those, so it must be in quarantine.
    pub fn undecodable(&mut self, u: &UndecodableRecord) {
        self.report.counts.read += 1;
        if self.quarantined.contains(&u.queue_offset) {
            self.report.counts.quarantined += 1;
            return;
        }
        self.report.counts.expected += 1;
        self.report.counts.missing += 1;
        Self::name(
            &mut self.report.missing,
            &mut self.report.unnamed,
            NamedMessage {
                offset: u.queue_offset,
                message_id: "(undecodable record)".into(),
                problems: vec![format!("undecodable ({}) and not in quarantine", u.reason)],
                target_position: None,
            },
        );
    }

    fn judge_copies(
        &mut self,
        offset: i64,
        mut want: Fingerprint,
        due_ms: Option<i64>,
        index: &TargetIndex,
        compare_types: bool,
        recheck: bool,
    ) -> anyhow::Result<()> {
        let copies = index.copies(&want.message_id)?;
        if copies.is_empty() {
            if !recheck {
                self.report.counts.missing += 1;
                let named = NamedMessage {
                    offset,
                    message_id: want.message_id.clone(),
                    problems: vec![],
                    target_position: None,
                };
                if self.report.missing.len() < NAMED_PER_QUEUE {
                    self.pending.push(Pending {
                        offset,
                        want,
                        due_ms,
                    });
                }
                Self::name(&mut self.report.missing, &mut self.report.unnamed, named);
            }
            return Ok(());
        }
        self.report.counts.found += 1;
        self.report.counts.duplicated += copies.len() as u64 - 1;
        let mut best: Option<(&StoredCopy, Vec<String>)> = None;
        for c in &copies {
            if !compare_types {
                want.kind = c.fingerprint.kind;
                want.group = c.fingerprint.group.clone();
                want.delivery_ms = c.fingerprint.delivery_ms;
            }
            let diffs = want.differences(&c.fingerprint);
            let better = best.as_ref().map_or(true, |(_, d)| diffs.len() < d.len());
            if better {
                best = Some((c, diffs));
            }
        }
        let Some((copy, mut problems)) = best else {
            return Ok(());
        };
        if let Some(group) = &want.group {
            if let Some(previous) = self.groups.get(group) {
                if previous.queue != copy.at.queue || copy.at.offset < previous.offset {
                    problems.push(format!(
                        "FIFO order: group {group} is at 5.x {} after its predecessor at {}",
                        copy.at, previous
                    ));
                }
            }
            self.groups.insert(group.clone(), copy.at.clone());
        }
        if !problems.is_empty() {
            self.report.counts.damaged += 1;
            Self::name(
                &mut self.report.damaged,
                &mut self.report.unnamed,
                NamedMessage {
                    offset,
                    message_id: want.message_id.clone(),
                    problems,
                    target_position: Some(copy.at.to_string()),
                },
            );
        }
        Ok(())
    }

    /// Missing DELAY messages due within [`TIMER_GRACE_MS`] (or not yet).
    pub fn recent_delay_missing(&self) -> usize {
        let now = crate::checkpoint::now_ms();
        self.pending
            .iter()
            .filter(|p| p.due_ms.is_some_and(|due| due >= now - TIMER_GRACE_MS))
            .count()
    }

    /// Looks again for the messages this queue reported missing (`--follow`).
    pub fn recheck_missing(
        &mut self,
        index: &TargetIndex,
        compare_types: bool,
    ) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if index.copies(&p.want.message_id)?.is_empty() {
                self.pending.push(p);
                continue;
            }
            self.report.counts.missing -= 1;
            self.report
                .missing
                .retain(|m| !(m.offset == p.offset && m.message_id == p.want.message_id));
            self.judge_copies(p.offset, p.want, p.due_ms, index, compare_types, true)?;
        }
        Ok(())
    }
}
