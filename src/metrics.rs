//! The Prometheus surface. Metric names here are a contract with the Grafana
//! dashboard and alert rules in `config/`; change them together.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const SOURCE_LAG_MESSAGES: &str = "rmq_bridge_source_lag_messages";
pub const SOURCE_LAG_SECONDS: &str = "rmq_bridge_source_lag_seconds";
pub const MESSAGES_TOTAL: &str = "rmq_bridge_messages_total";
pub const FORWARD_LATENCY_SECONDS: &str = "rmq_bridge_forward_latency_seconds";
pub const CUTOVER_PERCENT: &str = "rmq_bridge_cutover_percent";
pub const CHECKPOINT_AGE_SECONDS: &str = "rmq_bridge_checkpoint_age_seconds";
pub const TARGET_ERRORS_TOTAL: &str = "rmq_bridge_target_errors_total";
pub const SOURCE_ERRORS_TOTAL: &str = "rmq_bridge_source_errors_total";
pub const QUARANTINE_SIZE: &str = "rmq_bridge_quarantine_messages";
pub const CONFIG_RELOADS_TOTAL: &str = "rmq_bridge_config_reloads_total";
pub const BUILD_INFO: &str = "rmq_bridge_build_info";
pub const UP: &str = "rmq_bridge_up";
/// 1 while a route is stalled because its 5.x target is misconfigured.
pub const ROUTE_STALLED: &str = "rmq_bridge_route_stalled";
/// 1 while a route refuses to write its progress back to its 4.x group
/// (`commit_as_group`): live or unconfirmed 4.x consumers; the log says which.
pub const COMMIT_REFUSED: &str = "rmq_bridge_commit_refused";
/// Source queues this instance holds the broker's lock on and forwards, per
/// route (exported only with `[instances] coordinate = true`).
pub const OWNED_QUEUES: &str = "rmq_bridge_owned_queues";
/// Source queues of a route whose owner, by the group's member list, is not
/// known to hold them: this instance's own assigned queues it could not
/// lock yet. Summed over instances it is the estate's unowned queues.
pub const UNOWNED_QUEUES: &str = "rmq_bridge_unowned_queues";
/// Estate records (quarantine, journal, queue starts) written here and not
/// yet on the 5.x state topic (`[instances] coordinate = true`); queue
/// positions are not written to the group while it is above 0.
pub const STATE_PENDING_RECORDS: &str = "rmq_bridge_state_pending_records";

// `rmq-bridge verify --follow` (its own endpoint, `--metrics-listen`).
/// Messages of the verified range per route and `state`: expected, found,
/// missing, damaged, duplicated, quarantined.
pub const VERIFY_MESSAGES: &str = "rmq_bridge_verify_messages";
/// 1 while the last verification found nothing missing or damaged.
pub const VERIFY_CLEAN: &str = "rmq_bridge_verify_clean";
/// When the last verification pass finished (unix seconds).
pub const VERIFY_LAST_RUN_TIMESTAMP_SECONDS: &str = "rmq_bridge_verify_last_run_timestamp_seconds";
/// Sum over a route's source queues of the offset verified up to (grows
/// as checkpoints are verified).
pub const VERIFY_VERIFIED_OFFSET_SUM: &str = "rmq_bridge_verify_verified_offset_sum";
/// Verification passes that could not complete (a cluster unreachable).
pub const VERIFY_ERRORS_TOTAL: &str = "rmq_bridge_verify_errors_total";

/// Seconds since a kept group (`routes[].keep_translated`) was last
/// translated and written to 5.x, per route and group.
pub const GROUP_TRANSLATION_AGE_SECONDS: &str = "rmq_bridge_group_translation_age_seconds";
/// Messages the kept group already consumed on 4.x that 5.x would deliver
/// again from the translated positions, per route and group.
pub const GROUP_REDELIVER: &str = "rmq_bridge_group_redeliver_messages";
/// Messages the kept group has not consumed on 4.x that 5.x does not hold.
pub const GROUP_HELD: &str = "rmq_bridge_group_held_messages";
/// Ids a route remembers as forwarded early (pipeline/schedule_ledger.rs).
pub const SCHEDULED_REMEMBERED: &str = "rmq_bridge_scheduled_remembered";

/// Values of the `outcome` label of `rmq_bridge_messages_total`.
pub mod outcome {
    pub const FORWARDED: &str = "forwarded";
    pub const SKIPPED: &str = "skipped";
    pub const FILTERED: &str = "filtered";
    pub const QUARANTINED: &str = "quarantined";
    pub const EXPIRED: &str = "expired";
    /// Dry run (0%): the message would be rejected by its target topic.
    pub const WOULD_FAIL: &str = "would_fail";
    /// Came from the route's destination (its origin stamp names it): not
    /// sent back (translate/origin.rs).
    pub const LOOP_SKIPPED: &str = "loop_skipped";
}

/// One route's per-message counters and latency histogram, looked up once:
/// the `metrics!` macros hash the key and allocate the labels on every call,
/// which the per-message path need not pay.
#[derive(Clone)]
pub struct RouteMessages {
    pub forwarded: metrics::Counter,
    pub skipped: metrics::Counter,
    pub filtered: metrics::Counter,
    pub quarantined: metrics::Counter,
    pub expired: metrics::Counter,
    pub would_fail: metrics::Counter,
    pub loop_skipped: metrics::Counter,
    pub latency: metrics::Histogram,
}

impl RouteMessages {
    pub fn new(route: &str) -> Self {
        let counter = |what: &'static str| metrics::counter!(MESSAGES_TOTAL, "route" => route.to_string(), "outcome" => what);
        RouteMessages {
            forwarded: counter(outcome::FORWARDED),
            skipped: counter(outcome::SKIPPED),
            filtered: counter(outcome::FILTERED),
            quarantined: counter(outcome::QUARANTINED),
            expired: counter(outcome::EXPIRED),
            would_fail: counter(outcome::WOULD_FAIL),
            loop_skipped: counter(outcome::LOOP_SKIPPED),
            latency: metrics::histogram!(FORWARD_LATENCY_SECONDS, "route" => route.to_string()),
        }
    }
}

/// Starts the HTTP exporter on `listen` and describes every metric.
pub fn install(listen: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            Matcher::Full(FORWARD_LATENCY_SECONDS.to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 1800.0, 3600.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| {
            format!("cannot serve metrics on {listen}: {e}; change [metrics] listen or stop what uses the port")
        })?;
    describe(DAEMON_METRICS);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(UP).set(1.0);
    Ok(())
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric and its `# HELP` text.
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<metrics::Unit>,
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: Option<metrics::Unit>,
    help: &'static str,
) -> Described {
    Described {
        name,
        kind,
        unit,
        help,
    }
}

/// Every metric `rmq-bridge run` exports, with its help text (promtool's
/// lint wants one on each).
pub const DAEMON_METRICS: &[Described] = {
    use metrics::Unit::{Count, Seconds};
    use Kind::{Counter, Gauge, Histogram};
    &[
        metric(SOURCE_LAG_MESSAGES, Gauge, Some(Count), "4.x max offset minus bridge checkpoint, per source queue"),
        metric(SOURCE_LAG_SECONDS, Gauge, Some(Seconds), "age of the oldest message not yet checkpointed, per route"),
        metric(MESSAGES_TOTAL, Counter, Some(Count), "messages by outcome: forwarded, skipped, filtered, quarantined, expired, would_fail, loop_skipped"),
        metric(FORWARD_LATENCY_SECONDS, Histogram, Some(Seconds), "4.x store time to 5.x acknowledgement"),
        metric(CUTOVER_PERCENT, Gauge, None, "cutover percent in force, per route"),
        metric(OWNED_QUEUES, Gauge, Some(Count), "source queues this instance holds and forwards, per route"),
        metric(UNOWNED_QUEUES, Gauge, Some(Count), "source queues assigned to this instance that it could not lock yet, per route"),
        metric(STATE_PENDING_RECORDS, Gauge, Some(Count), "estate records not yet on the 5.x state topic"),
        metric(CHECKPOINT_AGE_SECONDS, Gauge, Some(Seconds), "seconds since the route's checkpoints were last written"),
        metric(TARGET_ERRORS_TOTAL, Counter, Some(Count), "5.x send errors by code"),
        metric(SOURCE_ERRORS_TOTAL, Counter, Some(Count), "4.x pull / route errors by kind"),
        metric(QUARANTINE_SIZE, Gauge, Some(Count), "messages held in quarantine, per route"),
        metric(CONFIG_RELOADS_TOTAL, Counter, Some(Count), "config reloads by result"),
        metric(BUILD_INFO, Gauge, None, "build information"),
        metric(UP, Gauge, None, "1 while the bridge runs"),
        metric(ROUTE_STALLED, Gauge, None, "1 while a route is stalled because its target is misconfigured or unreachable; the log and `status` say why"),
        metric(COMMIT_REFUSED, Gauge, None, "1 while a route refuses to write its progress back to its 4.x group (commit_as_group); the log says which consumers"),
        metric(GROUP_TRANSLATION_AGE_SECONDS, Gauge, Some(Seconds), "seconds since a kept group was last translated and written to 5.x, per route and group"),
        metric(GROUP_REDELIVER, Gauge, Some(Count), "messages a kept group already consumed on 4.x that 5.x would deliver again, per route and group"),
        metric(GROUP_HELD, Gauge, Some(Count), "messages a kept group has not consumed on 4.x that 5.x does not hold, per route and group"),
        metric(SCHEDULED_REMEMBERED, Gauge, Some(Count), "ids of scheduled messages a route remembers as forwarded early"),
    ]
};

/// Every metric `rmq-bridge verify --follow` exports on its own endpoint.
pub const VERIFY_METRICS: &[Described] = {
    use metrics::Unit::{Count, Seconds};
    use Kind::{Counter, Gauge};
    &[
        metric(VERIFY_MESSAGES, Gauge, Some(Count), "messages of the verified range per route and state: expected, found, missing, damaged, duplicated, quarantined"),
        metric(VERIFY_CLEAN, Gauge, None, "1 while the last verification found nothing missing or damaged"),
        metric(VERIFY_LAST_RUN_TIMESTAMP_SECONDS, Gauge, Some(Seconds), "when the last verification pass finished (unix seconds)"),
        metric(VERIFY_VERIFIED_OFFSET_SUM, Gauge, None, "sum over a route's source queues of the offset verified up to"),
        metric(VERIFY_ERRORS_TOTAL, Counter, Some(Count), "verification passes that could not complete"),
    ]
};

/// Gives every metric of `list` its help text (and unit) in the installed
/// recorder.
pub fn describe(list: &[Described]) {
    for m in list {
        let help = m.help;
        match (m.kind, m.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `list` as the exporter would, each metric set once.
    fn rendered(list: &[Described]) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe(list);
            for m in list {
                match m.kind {
                    Kind::Counter => metrics::counter!(m.name).increment(1),
                    Kind::Gauge => metrics::gauge!(m.name).set(1.0),
                    Kind::Histogram => metrics::histogram!(m.name).record(1.0),
                }
            }
        });
        handle.render()
    }

    /// promtool's lint of the scrape (issue 30: `rmq_bridge_route_stalled`
    /// had no HELP): every exported metric has a `# HELP` line, and every
    /// metric name in this module is in one of the two lists.
    #[test]
    fn every_metric_has_help() {
        for list in [DAEMON_METRICS, VERIFY_METRICS] {
            let text = rendered(list);
            for m in list {
                assert!(
                    text.contains(&format!("# HELP {} ", m.name)),
                    "no HELP for {}:\n{text}",
                    m.name
                );
            }
            for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
                let name = line.split_whitespace().nth(2).unwrap_or_default();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has a TYPE but no HELP"
                );
            }
        }
        let listed: Vec<&str> = DAEMON_METRICS
            .iter()
            .chain(VERIFY_METRICS)
            .map(|m| m.name)
            .collect();
        for line in include_str!("metrics.rs").lines() {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            if let Some(name) = rest
                .split('"')
                .nth(1)
                .filter(|n| n.starts_with("rmq_bridge_"))
            {
                assert!(listed.contains(&name), "{name} is in neither list");
            }
        }
    }
}
