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
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(UP).set(1.0);
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        SOURCE_LAG_MESSAGES,
        Unit::Count,
        "4.x max offset minus bridge checkpoint, per source queue"
    );
    describe_gauge!(
        SOURCE_LAG_SECONDS,
        Unit::Seconds,
        "age of the oldest message not yet checkpointed, per route"
    );
    describe_counter!(
        MESSAGES_TOTAL,
        Unit::Count,
        "messages by outcome: forwarded, skipped, filtered, quarantined, expired, would_fail, loop_skipped"
    );
    describe_histogram!(
        FORWARD_LATENCY_SECONDS,
        Unit::Seconds,
        "4.x store time to 5.x acknowledgement"
    );
    describe_gauge!(CUTOVER_PERCENT, "cutover percent in force, per route");
    describe_gauge!(
        OWNED_QUEUES,
        Unit::Count,
        "source queues this instance holds and forwards, per route"
    );
    describe_gauge!(
        UNOWNED_QUEUES,
        Unit::Count,
        "source queues assigned to this instance that it could not lock yet, per route"
    );
    describe_gauge!(
        STATE_PENDING_RECORDS,
        Unit::Count,
        "estate records not yet on the 5.x state topic"
    );
    describe_gauge!(
        CHECKPOINT_AGE_SECONDS,
        Unit::Seconds,
        "seconds since the route's checkpoints were last written"
    );
    describe_counter!(TARGET_ERRORS_TOTAL, Unit::Count, "5.x send errors by code");
    describe_counter!(
        SOURCE_ERRORS_TOTAL,
        Unit::Count,
        "4.x pull / route errors by kind"
    );
    describe_gauge!(
        QUARANTINE_SIZE,
        Unit::Count,
        "messages held in quarantine, per route"
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "config reloads by result"
    );
    describe_gauge!(BUILD_INFO, "build information");
    describe_gauge!(UP, "1 while the bridge runs");
}
