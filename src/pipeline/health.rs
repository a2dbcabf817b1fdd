//! What the pipeline knows about the 5.x side, per target topic and per
//! route, to tell a poison message from an outage and a misconfigured route
//! from a bad message.
//!
//! Owns two rules:
//! - **Poison**: a message is poison only when it keeps being refused while
//!   other messages *to the same target topic* are accepted between its
//!   refusals ([`TopicHealth`], [`Refusals`]). Throttling and transport
//!   failures never count; a refusal that follows no success (an outage, a
//!   sick topic) does not count either, so a healthy message refused all
//!   through an outage is not quarantined by its first refusal after it.
//! - **Stall**: a route whose target is misconfigured (topic missing,
//!   credentials, access point) stalls alone ([`RouteHealth`]): it admits
//!   nothing new, its retrying sends give their permits back while they
//!   wait, and the reason is in the log, a metric and `status`.
//!
//! Must not touch: the network, checkpoints, the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Counters of one target topic, shared by every route sending to it.
#[derive(Debug, Default)]
pub struct TopicHealth {
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl TopicHealth {
    pub fn accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// A refusal that may be the message's fault (counted for poison).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// Every target topic's counters, per destination cluster: a 4.x topic
/// and the 5.x topic of the same name are judged apart.
#[derive(Debug, Default)]
pub struct TopicHealthMap {
    topics: Mutex<HashMap<(&'static str, String), Arc<TopicHealth>>>,
}

impl TopicHealthMap {
    pub fn new() -> Arc<Self> {
        Arc::new(TopicHealthMap::default())
    }

    pub fn topic(&self, cluster: &'static str, topic: &str) -> Arc<TopicHealth> {
        let mut map = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry((cluster, topic.to_string())).or_default())
    }
}

/// One message's run of refusals that may be its own fault.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Refusals each preceded by neighbours being accepted.
    pub counted: u32,
    /// The topic's (accepted, refused) at this message's previous refusal.
    last: Option<(u64, u64)>,
}

impl Refusals {
    /// Records a refusal of this message (call *before* counting it in
    /// `topic`); true when the message is now poison (`threshold` counted
    /// refusals, 0 = never).
    pub fn refused(&mut self, topic: &TopicHealth, threshold: u32) -> bool {
        let now = topic.snapshot();
        let neighbours_passed = match self.last {
            // The first refusal counts only the message itself.
            None => true,
            Some((accepted, refused)) => {
                let passed = now.0.saturating_sub(accepted);
                let others_refused = now.1.saturating_sub(refused);
                // Neighbours were accepted, and mostly: a topic refusing
                // many messages is sick, not fed one bad message.
                passed > 0 && others_refused.saturating_mul(4) <= passed
            }
        };
        if neighbours_passed {
            self.counted += 1;
        }
        topic.refused();
        self.last = Some(topic.snapshot());
        threshold > 0 && self.counted >= threshold
    }
}

/// A route's health: healthy, or stalled with the reason.
#[derive(Debug)]
pub struct RouteHealth {
    route: String,
    state: watch::Sender<Option<String>>,
    gauge: metrics::Gauge,
    /// Whether the current stall was logged as an error (a start's
    /// [`Self::starting`] is not, so a healthy start logs no stall at all).
    loud: std::sync::atomic::AtomicBool,
}

impl RouteHealth {
    pub fn new(route: &str) -> Arc<Self> {
        let gauge = metrics::gauge!(crate::metrics::ROUTE_STALLED, "route" => route.to_string());
        gauge.set(0.0);
        Arc::new(RouteHealth {
            route: route.to_string(),
            state: watch::channel(None).0,
            gauge,
            loud: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stalled while the route starts (nothing is admitted), without an
    /// error in the log: a healthy start clears it within milliseconds; a
    /// failure that keeps it stalled is reported through [`Self::stall`].
    pub fn starting(&self, reason: &str) {
        self.state.send_replace(Some(reason.to_string()));
        self.gauge.set(1.0);
        tracing::debug!(route = %self.route, reason, "route starting");
    }

    /// Marks the route stalled (logged once per new reason).
    pub fn stall(&self, reason: &str) {
        let changed = self.state.send_if_modified(|state| {
            if state.as_deref() == Some(reason) {
                false
            } else {
                *state = Some(reason.to_string());
                true
            }
        });
        if changed {
            self.gauge.set(1.0);
            self.loud.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(route = %self.route, reason,
                "route stalled: nothing is forwarded and nothing is quarantined on this route until its 5.x target works; it resumes by itself (other routes are not affected)");
        }
    }

    /// A send of the route was accepted: the route is healthy again.
    pub fn healthy(&self) {
        let changed = self.state.send_if_modified(|state| state.take().is_some());
        if changed {
            self.gauge.set(0.0);
            if self.loud.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(route = %self.route, "route recovered: its 5.x target accepts messages again");
            }
        }
    }

    pub fn stalled(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_during_an_outage_do_not_count() {
        let topic = TopicHealth::default();
        let mut r = Refusals::default();
        // Ten refusals with nothing accepted in between: one counted.
        for _ in 0..10 {
            assert!(!r.refused(&topic, 3));
        }
        assert_eq!(r.counted, 1);
        // The outage ends: one success, then the message is refused once
        // more. Before the fix this quarantined it at once.
        topic.accepted(1);
        assert!(!r.refused(&topic, 3));
        assert_eq!(r.counted, 2);
    }

    #[test]
    fn refused_while_neighbours_pass_is_poison() {
        let topic = TopicHealth::default();
        let mut r = Refusals::default();
        assert!(!r.refused(&topic, 3));
        topic.accepted(5);
        assert!(!r.refused(&topic, 3));
        topic.accepted(5);
        assert!(r.refused(&topic, 3));
    }

    #[test]
    fn successes_on_another_topic_do_not_count() {
        let sick = TopicHealth::default();
        let healthy = TopicHealth::default();
        let mut r = Refusals::default();
        for _ in 0..10 {
            healthy.accepted(100);
            assert!(!r.refused(&sick, 3));
        }
    }

    #[test]
    fn a_topic_refusing_many_messages_is_sick_not_poisoned() {
        let topic = TopicHealth::default();
        let mut mine = Refusals::default();
        for _ in 0..10 {
            // Half the neighbours pass, half are refused too.
            topic.accepted(2);
            topic.refused();
            topic.refused();
            assert!(!mine.refused(&topic, 3));
        }
    }

    #[test]
    fn threshold_zero_never_quarantines() {
        let topic = TopicHealth::default();
        let mut r = Refusals::default();
        for _ in 0..10 {
            topic.accepted(1);
            assert!(!r.refused(&topic, 0));
        }
    }

    #[test]
    fn route_health_stalls_and_recovers() {
        let h = RouteHealth::new("r");
        assert!(h.stalled().is_none());
        h.stall("topic `t` does not exist");
        assert_eq!(h.stalled().as_deref(), Some("topic `t` does not exist"));
        h.healthy();
        assert!(h.stalled().is_none());
    }
}
