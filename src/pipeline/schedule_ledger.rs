//! The one owner of a route's forwarded pending scheduled messages
//! (issues 11 and 16): who sends each of them, and whether the topic path
//! may skip the broker's copy.
//!
//! The topic path asks one question, [`ScheduleLedger::copy_delivered`]:
//! "was this copy already delivered to 5.x?". The answer is yes only for a
//! message whose early send 5.x confirmed; for any other (claimed but not
//! confirmed, unknown, unreadable store) the topic path forwards the copy.
//! So no interleaving of the two paths, no failed send, prune or restart
//! can lose a message: at worst it is sent twice.
//!
//! The schedule side's send goes through three steps (called by the send
//! layer, send.rs):
//! - [`ScheduleLedger::claim`] decides Pending or Due at the moment the id
//!   is written, not at admission: a message that waited for a permit until
//!   it was nearly due is left to the topic path instead of being sent by
//!   both;
//! - [`ScheduleLedger::released`] before each attempt: once the topic path
//!   met the copy of an unconfirmed message, it forwards it and the
//!   schedule side stops;
//! - [`ScheduleLedger::confirm`] after 5.x accepted.
//!
//! An entry leaves the store ([`prune`]) only when neither path can read
//! its record again: a confirmed one once the schedule side's checkpoint is
//! past its record and the topic path's checkpoint is past the copy it met;
//! an unconfirmed one once the schedule side's checkpoint is past its
//! record. Only an entry whose copy never came is pruned by time, a week
//! past its deadline ([`STALE_AFTER`]): a 4.x broker that delivers late
//! keeps its ids.
//!
//! Instances sharing an estate (issue 18): a schedule queue and the queue
//! its copies come due in may be owned by two instances. Confirmations and
//! releases also go to the estate state topic (the store replicates them),
//! and the ledger reads what others shared there ([`SharedForwards`]):
//! a copy is skipped when 5.x confirmed its early send here or on another
//! instance; an early send stops when the copy was taken anywhere. What
//! crosses instances is only ever more forwarding: a confirmation not seen
//! yet forwards the copy too (a duplicate with the same id), never less.
//!
//! Must not touch: what is pending (`translate::scheduled`), sending and
//! retries (send.rs), the schedule topic's reading (scheduled.rs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use crate::checkpoint::shared::ForwardedShare;
use crate::checkpoint::{
    now_ms, CheckpointStore, ForwardEntry, ForwardState, SourceQueue, StoreError,
};
use crate::metrics as m;
use crate::remoting::MessageRecord;
use crate::shutdown::{Backoff, Shutdown};
use crate::translate::scheduled::{forward_key, passed_schedule_topic, PENDING_MIN_LEAD};

/// Suffix of the route name under which the schedule side keeps its
/// checkpoints, counters and quarantine entries.
pub const SCHEDULE_SIDE_SUFFIX: &str = "#scheduled";

/// An entry whose broker copy never reached the topic path is forgotten
/// this long past its deadline (measured against the topic path's
/// watermark): the copy of a message confirmed that long ago is no longer
/// expected; forgetting it costs at most a duplicate.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Entries of older bridges (no positions) keep their old rule: forgotten
/// this long past the watermark. They read as unconfirmed, so they never
/// make the topic path skip a copy.
pub const LEGACY_MARGIN: Duration = Duration::from_secs(300);

/// `rmq_bridge_messages_total` outcomes of this module.
pub mod outcome {
    /// Schedule side: due (or nearly) when read or when its send was to
    /// start; left to the topic path.
    pub const SCHEDULED_DUE: &str = "scheduled_due";
    /// Topic path: the broker's copy of a message 5.x confirmed, skipped.
    pub const SCHEDULED_COPY_SKIPPED: &str = "scheduled_copy_skipped";
    /// Topic path: the broker's copy of a message whose early send was not
    /// confirmed, forwarded (the schedule side stops sending it).
    pub const SCHEDULED_COPY_TAKEN: &str = "scheduled_copy_taken";
}

/// Ids a route remembers as forwarded early: gauge of their number.
pub use crate::metrics::SCHEDULED_REMEMBERED;

pub fn schedule_side_name(route: &str) -> String {
    format!("{route}{SCHEDULE_SIDE_SUFFIX}")
}

/// What the send layer does with a message of the schedule side.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not a pending message of this ledger: send it as any other.
    Unclaimed,
    /// Claimed (durable): send it; its key for `released` and `confirm`.
    Send(String),
    /// Nothing to send: already confirmed, due, or taken by the topic path.
    Settled,
    /// Stopping before the claim could be written.
    Stopped,
}

/// What other instances shared of a route's forwarded messages (the
/// estate state topic, followed: `estate::LiveView`). Never waits.
pub trait SharedForwards: Send + Sync {
    fn forwarded(&self, route: &str, key: &str) -> Option<ForwardedShare>;
}

impl SharedForwards for crate::estate::LiveView {
    fn forwarded(&self, route: &str, key: &str) -> Option<ForwardedShare> {
        self.with(|v| v.schedule().get_forwarded(route, key))
    }
}

/// One route's ledger, shared by its topic path and its schedule side.
pub struct ScheduleLedger {
    store: CheckpointStore,
    /// Instances sharing an estate: what the others shared.
    shared: Option<Arc<dyn SharedForwards>>,
    route: String,
    /// Admitted by the schedule side, not yet claimed: (schedule queue,
    /// offset) -> (key, deadline).
    admitted: Mutex<HashMap<(SourceQueue, i64), (String, i64)>>,
    copy_skipped: metrics::Counter,
    copy_taken: metrics::Counter,
    due: metrics::Counter,
}

impl ScheduleLedger {
    pub fn new(store: CheckpointStore, route: &str) -> Self {
        let counter = |r: String, what: &'static str| metrics::counter!(m::MESSAGES_TOTAL, "route" => r, "outcome" => what);
        ScheduleLedger {
            store,
            shared: None,
            route: route.to_string(),
            admitted: Mutex::new(HashMap::new()),
            copy_skipped: counter(route.to_string(), outcome::SCHEDULED_COPY_SKIPPED),
            copy_taken: counter(route.to_string(), outcome::SCHEDULED_COPY_TAKEN),
            due: counter(schedule_side_name(route), outcome::SCHEDULED_DUE),
        }
    }

    /// Also reads what other instances shared (see the module doc).
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedForwards>>) -> Self {
        self.shared = shared;
        self
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    fn shared(&self, key: &str) -> ForwardedShare {
        self.shared
            .as_ref()
            .and_then(|s| s.forwarded(&self.route, key))
            .unwrap_or_default()
    }

    /// The topic path's question for a record read from `queue`: true (and
    /// counted) only for the broker's copy of a message whose early send
    /// 5.x confirmed. The copy of an unconfirmed message is forwarded and
    /// the schedule side told to stop; a store that cannot be read forwards
    /// the copy (a duplicate with the same id, never a loss). Never waits
    /// for the disk.
    pub fn copy_delivered(&self, queue: &SourceQueue, record: &MessageRecord) -> bool {
        if !passed_schedule_topic(record) {
            return false;
        }
        let key = forward_key(record);
        let elsewhere = self.shared(&key).confirmed;
        let confirmed_elsewhere = || {
            self.copy_skipped.increment(1);
            tracing::debug!(route = %self.route, msg_id = record.message_id(),
                "another instance forwarded it from the 4.x schedule topic; skipping the broker's copy");
            true
        };
        let mut entry = match self.store.scheduled_entry(&self.route, &key) {
            Ok(Some(entry)) => entry,
            Ok(None) if elsewhere => return confirmed_elsewhere(),
            Ok(None) => return false,
            Err(_) if elsewhere => return confirmed_elsewhere(),
            Err(e) => {
                tracing::error!(route = %self.route, msg_id = record.message_id(), error = %e,
                    "cannot read forwarded scheduled ids; forwarding the broker's copy (may duplicate, same message id)");
                return false;
            }
        };
        let here = Some((queue.clone(), record.queue_offset));
        let delivered = match entry.state {
            ForwardState::Released => return false,
            ForwardState::Confirmed => {
                self.copy_skipped.increment(1);
                tracing::debug!(route = %self.route, msg_id = record.message_id(),
                    "already forwarded from the 4.x schedule topic; skipping the broker's copy");
                if entry.copy == here {
                    // Met again after a restart: nothing new to note.
                    return true;
                }
                true
            }
            // Claimed here, then the schedule queue changed hands and its
            // new owner's send was confirmed.
            ForwardState::Claimed if elsewhere => {
                return confirmed_elsewhere();
            }
            ForwardState::Claimed => {
                self.copy_taken.increment(1);
                tracing::info!(route = %self.route, %queue, offset = record.queue_offset, msg_id = record.message_id(),
                    "the broker delivered a scheduled message whose early send 5.x has not confirmed; \
                     forwarding the broker's copy (the schedule side stops sending it)");
                entry.state = ForwardState::Released;
                false
            }
        };
        entry.copy = here;
        if let Err(e) = self.store.scheduled_note(&self.route, &key, &entry) {
            tracing::warn!(route = %self.route, msg_id = record.message_id(), error = %e,
                "cannot note where the broker's copy of a forwarded scheduled message is; \
                 its id is kept until it is stale");
        }
        delivered
    }

    /// Whether the schedule side still has to send the message of `key`
    /// (admission: a store error answers yes, `claim` reads again).
    pub fn needs_send(&self, key: &str) -> bool {
        let shared = self.shared(key);
        if shared.confirmed || shared.released {
            return false;
        }
        !matches!(
            self.store.scheduled_entry(&self.route, key),
            Ok(Some(ForwardEntry {
                state: ForwardState::Confirmed | ForwardState::Released,
                ..
            }))
        )
    }

    /// The schedule side admitted the record at (`queue`, `offset`): it is
    /// claimed when its send is about to start.
    pub fn admitted(&self, queue: &SourceQueue, offset: i64, key: String, deadline_ms: i64) {
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.insert((queue.clone(), offset), (key, deadline_ms));
        }
    }

    /// Claims the message at (`queue`, `offset`) just before its send
    /// starts, deciding Pending or Due now. Store errors are retried
    /// (never read as "not stored").
    pub async fn claim(&self, queue: &SourceQueue, offset: i64, stop: &mut Shutdown) -> Claim {
        let admitted = self
            .admitted
            .lock()
            .ok()
            .and_then(|mut a| a.remove(&(queue.clone(), offset)));
        let Some((key, deadline_ms)) = admitted else {
            return Claim::Unclaimed;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let (store, route, k, q) = (
                self.store.clone(),
                self.route.clone(),
                key.clone(),
                queue.clone(),
            );
            let done = tokio::task::spawn_blocking(move || -> Result<Claim, StoreError> {
                let due = is_due(deadline_ms, now_ms());
                match store.scheduled_entry(&route, &k)? {
                    Some(e) => Ok(match e.state {
                        ForwardState::Confirmed | ForwardState::Released => Claim::Settled,
                        // Claimed before a restart: still ours unless due.
                        ForwardState::Claimed if due => Claim::Settled,
                        ForwardState::Claimed => Claim::Send(k),
                    }),
                    None if due => Ok(Claim::Settled),
                    None => {
                        store.scheduled_put(
                            &route,
                            &k,
                            &ForwardEntry::claimed(deadline_ms, (q, offset)),
                        )?;
                        Ok(Claim::Send(k))
                    }
                }
            })
            .await;
            let failure = match done {
                Ok(Ok(claim)) => {
                    if claim == Claim::Settled {
                        self.due.increment(1);
                    }
                    return claim;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("store task failed: {e}"),
            };
            attempt += 1;
            if attempt == 1 || attempt % 20 == 0 {
                tracing::error!(route = %self.route, %queue, offset, error = %failure,
                    "cannot claim a pending scheduled message; holding it until the store answers");
            }
            if !backoff.wait(stop).await {
                return Claim::Stopped;
            }
        }
    }

    /// True once the topic path took the message of `key` (or it is gone):
    /// the schedule side sends it no more. A store error answers false (a
    /// duplicate with the same id at worst).
    pub fn released(&self, key: &str) -> bool {
        if self.shared(key).released {
            return true;
        }
        match self.store.scheduled_entry(&self.route, key) {
            Ok(Some(e)) => e.state == ForwardState::Released,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Records that 5.x accepted the message of `key`; false when stopping
    /// first (the message then stays not done: re-sent after a restart,
    /// same id).
    pub async fn confirm(&self, key: &str, stop: &mut Shutdown) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let (store, route, k) = (self.store.clone(), self.route.clone(), key.to_string());
            let done = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                match store.scheduled_entry(&route, &k)? {
                    Some(mut e) if e.state == ForwardState::Claimed => {
                        e.state = ForwardState::Confirmed;
                        store.scheduled_put(&route, &k, &e)
                    }
                    // Taken by the topic path meanwhile (or pruned): it stays so.
                    _ => Ok(()),
                }
            })
            .await;
            let failure = match done {
                Ok(Ok(())) => return true,
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("store task failed: {e}"),
            };
            attempt += 1;
            if attempt == 1 || attempt % 20 == 0 {
                tracing::error!(route = %self.route, error = %failure,
                    "cannot record that 5.x accepted a scheduled message; retrying");
            }
            if !backoff.wait(stop).await {
                return false;
            }
        }
    }
}

fn is_due(deadline_ms: i64, now: i64) -> bool {
    let lead = i64::try_from(PENDING_MIN_LEAD.as_millis()).unwrap_or(i64::MAX);
    deadline_ms < now.saturating_add(lead)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `entry` may leave the store: neither path can read its record
/// again (see the module doc). `schedule_cp` and `topic_cp` give the
/// durable checkpoint of a schedule-topic and a topic queue; `watermark`
/// is the topic path's (none while unknown).
pub fn prunable(
    entry: &ForwardEntry,
    mut schedule_cp: impl FnMut(&SourceQueue) -> Option<i64>,
    mut topic_cp: impl FnMut(&SourceQueue) -> Option<i64>,
    watermark: Option<i64>,
) -> bool {
    let older_than = |margin: Duration| {
        watermark.is_some_and(|w| entry.deadline_ms < w.saturating_sub(ms(margin)))
    };
    let Some((record_queue, record_offset)) = &entry.record else {
        return older_than(LEGACY_MARGIN);
    };
    let record_passed = schedule_cp(record_queue).is_some_and(|cp| cp > *record_offset);
    match entry.state {
        ForwardState::Claimed | ForwardState::Released => record_passed || older_than(STALE_AFTER),
        ForwardState::Confirmed => {
            let copy_passed = entry
                .copy
                .as_ref()
                .is_some_and(|(q, offset)| topic_cp(q).is_some_and(|cp| cp > *offset));
            (record_passed && copy_passed) || older_than(STALE_AFTER)
        }
    }
}

/// Forgets the route's entries that [`prunable`] allows, on a blocking
/// thread; updates the gauge of remembered ids.
pub fn prune(store: &CheckpointStore, route: &str, watermark: Option<i64>) {
    let (store, route) = (store.clone(), route.to_string());
    drop(tokio::task::spawn_blocking(move || {
        match prune_now(&store, &route, watermark, now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                route,
                pruned = n,
                "forgot forwarded scheduled ids neither path can read again"
            ),
            Err(e) => {
                tracing::warn!(route, error = %e, "cannot prune forwarded scheduled ids; will retry")
            }
        }
        if let Ok((count, _)) = store.scheduled_summary(&route) {
            metrics::gauge!(SCHEDULED_REMEMBERED, "route" => route).set(count as f64);
        }
    }));
}

/// [`prune`]'s work, blocking, over the entries due before `now`: how
/// many it forgot.
pub fn prune_now(
    store: &CheckpointStore,
    route: &str,
    watermark: Option<i64>,
    now: i64,
) -> Result<usize, StoreError> {
    let side = schedule_side_name(route);
    let mut cps: HashMap<(bool, SourceQueue), Option<i64>> = HashMap::new();
    let mut lookup = |schedule: bool, q: &SourceQueue| -> Option<i64> {
        *cps.entry((schedule, q.clone())).or_insert_with(|| {
            let name = if schedule { side.as_str() } else { route };
            store.get(name, q).ok().flatten().map(|cp| cp.offset)
        })
    };
    store.scheduled_sweep(route, now, |_, entry| {
        let cp_s = entry.record.as_ref().and_then(|(q, _)| lookup(true, q));
        let cp_t = entry.copy.as_ref().and_then(|(q, _)| lookup(false, q));
        prunable(entry, |_| cp_s, |_| cp_t, watermark)
    })
}

#[cfg(test)]
mod tests;
