//! `rmq-bridge check -c FILE --decommission`: everything that would be lost
//! or surprising if the 4.x cluster were switched off now, one line each,
//! green or red, with what to do about every red line (issue 11).
//!
//! Per route: cutover share, lag (messages and age), quarantine, the last
//! `verify` verdict (and whether it covers today's checkpoints). Per source
//! topic: delay-level messages still pending in `SCHEDULE_TOPIC_XXXX` that
//! the bridge has not forwarded, and prepared transactions no commit or
//! rollback resolved (`RMQ_SYS_TRANS_HALF_TOPIC` against
//! `RMQ_SYS_TRANS_OP_HALF_TOPIC`). Per consumer group of the source topics:
//! live consumers on 4.x, retry backlog (`%RETRY%group`, including retries
//! still waiting in the schedule topic) and dead letters (`%DLQ%group`).
//!
//! Retries and dead letters are reported, never moved. A dead letter counts
//! as handled once the group's committed offset on `%DLQ%group` is past it
//! (consume the DLQ with the group, or reset its offset there, after
//! dealing with each message).
//!
//! Owns: the judgement and its wording. Must not touch: anything on either
//! cluster (read-only requests only) or in the checkpoint store.

pub mod probe;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::anyhow;

use crate::checkpoint::{now_ms, CheckpointStore, SourceQueue};
use crate::config::{BridgeConfig, RouteConfig, ScheduledMode, StartPosition};
use crate::pipeline;
use crate::remoting::cmd::consumer::LiveConsumers;
use crate::remoting::{names, NameServers, RemotingClient};
use crate::source::{SourceSettings, TopicSource};
use crate::translate::scheduled::{
    deadline_ms, decide_pending, forward_key, level_of_queue, PendingDecision, TagFilter,
    SCHEDULE_TOPIC,
};
use crate::verify::report::StoredVerdict;

pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
pub const OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// The group a broker's transaction check service consumes the half topic as.
const TRANS_CHECK_GROUP: &str = "CID_RMQ_SYS_TRANS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Green,
    Red,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    /// "route orders", "topic orders", "group billing".
    pub scope: String,
    pub check: &'static str,
    pub detail: String,
    /// What to do (red lines).
    pub remedy: String,
}

#[derive(Debug, Default)]
pub struct DecommissionReport {
    pub lines: Vec<Line>,
}

impl DecommissionReport {
    fn green(&mut self, scope: impl Into<String>, check: &'static str, detail: impl Into<String>) {
        self.lines.push(Line {
            status: Status::Green,
            scope: scope.into(),
            check,
            detail: detail.into(),
            remedy: String::new(),
        });
    }

    fn red(
        &mut self,
        scope: impl Into<String>,
        check: &'static str,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) {
        self.lines.push(Line {
            status: Status::Red,
            scope: scope.into(),
            check,
            detail: detail.into(),
            remedy: remedy.into(),
        });
    }

    pub fn reds(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.status == Status::Red)
            .count()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            let _ = writeln!(
                out,
                "{:<5}  {:<28} {:<18} {}",
                match l.status {
                    Status::Green => "GREEN",
                    Status::Red => "RED",
                },
                l.scope,
                l.check,
                l.detail
            );
            if l.status == Status::Red {
                let _ = writeln!(out, "       -> {}", l.remedy);
            }
        }
        if self.reds() == 0 {
            let _ = writeln!(
                out,
                "DECOMMISSION: READY — nothing on 4.x would be lost by switching it off now"
            );
        } else {
            let _ = writeln!(
                out,
                "DECOMMISSION: NOT READY — {} red line(s); switching 4.x off now loses or strands what they name",
                self.reds()
            );
        }
        out
    }
}

/// "35 s", "4 min", "2.0 h" from milliseconds.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{:.1} h", s as f64 / 3600.0)
    }
}

/// Groups that belong to the bridge or to RocketMQ itself, never an
/// application's.
fn is_own_or_system_group(cfg: &BridgeConfig, group: &str) -> bool {
    group == cfg.source.consumer_group
        || group.starts_with("rmq_bridge")
        || group.starts_with("CID_RMQ_SYS_")
        || group.starts_with("CID_SYS_RMQ")
        || group == "TOOLS_CONSUMER"
        || group == "FILTERSRV_CONSUMER"
        || group == "SELF_TEST_C_GROUP"
}

struct Ctx<'a> {
    cfg: &'a BridgeConfig,
    client: RemotingClient,
    namesrv: NameServers,
    store: Option<CheckpointStore>,
    now: i64,
}

/// Builds the report. Errors only for what stops every check (config).
pub async fn run(cfg: &BridgeConfig) -> anyhow::Result<DecommissionReport> {
    let mut report = DecommissionReport::default();
    let namesrv = pipeline::name_servers(cfg).map_err(anyhow::Error::msg)?;
    let store = match CheckpointStore::open_read_only(&cfg.checkpoint.dir) {
        Ok(s) => Some(s),
        Err(e) => {
            report.red(
                "bridge",
                "checkpoint store",
                format!("{e}"),
                "run the check on the bridge host with its config (checkpoint.dir), after the bridge has run",
            );
            None
        }
    };
    let ctx = Ctx {
        cfg,
        client: pipeline::remoting_client(cfg),
        namesrv,
        store,
        now: now_ms(),
    };
    // Source topics and the brokers that hold them.
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for route in &cfg.routes {
        let source = ctx.source(route);
        match tokio::time::timeout(Duration::from_secs(10), source.refresh_route()).await {
            Ok(Ok(queues)) => {
                let brokers: BTreeSet<String> = queues
                    .iter()
                    .filter_map(|q| source.master_addr(q).ok())
                    .collect();
                topics
                    .entry(route.source_topic.clone())
                    .or_default()
                    .extend(brokers);
                ctx.route_lines(&mut report, route, &source, &queues).await;
            }
            Ok(Err(e)) => report.red(
                format!("route {}", route.name),
                "4.x reachable",
                format!("{e}"),
                "the report needs the 4.x cluster: fix [source] namesrv_addr or the network, then re-run",
            ),
            Err(_) => report.red(
                format!("route {}", route.name),
                "4.x reachable",
                "the 4.x name server did not answer in 10 s",
                "fix [source] namesrv_addr or the network, then re-run",
            ),
        }
    }
    for brokers in topics.values_mut() {
        brokers.sort();
        brokers.dedup();
    }
    let scan = ctx.scan_schedule(&topics).await;
    ctx.scheduled_lines(&mut report, &topics, &scan);
    ctx.half_lines(&mut report, &topics).await;
    ctx.group_lines(&mut report, &topics, &scan).await;
    Ok(report)
}

/// What the schedule topic holds that is not due yet.
#[derive(Debug, Default)]
struct ScheduleScan {
    /// Per source topic: pending and not forwarded by the bridge (count,
    /// earliest deadline).
    pending: BTreeMap<String, (u64, Option<i64>)>,
    /// Per source topic: pending but already forwarded early.
    forwarded: BTreeMap<String, u64>,
    /// Per retry topic (`%RETRY%group`): waiting for their next attempt.
    retries: BTreeMap<String, (u64, Option<i64>)>,
    errors: Vec<String>,
}

impl ScheduleScan {
    fn merge(&mut self, other: ScheduleScan) {
        let earliest = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (k, (n, d)) in other.pending {
            let e = self.pending.entry(k).or_default();
            e.0 += n;
            e.1 = earliest(e.1, d);
        }
        for (k, n) in other.forwarded {
            *self.forwarded.entry(k).or_default() += n;
        }
        for (k, (n, d)) in other.retries {
            let e = self.retries.entry(k).or_default();
            e.0 += n;
            e.1 = earliest(e.1, d);
        }
        self.errors.extend(other.errors);
    }
}

impl Ctx<'_> {
    fn source(&self, route: &RouteConfig) -> TopicSource {
        TopicSource::new(
            self.client.clone(),
            self.namesrv.clone(),
            SourceSettings {
                topic: route.source_topic.clone(),
                filter: route.filter.clone(),
                consumer_group: self.cfg.source.consumer_group.clone(),
                pull_batch_size: 1,
                long_poll: Duration::from_millis(0),
            },
        )
    }

    async fn route_lines(
        &self,
        report: &mut DecommissionReport,
        route: &RouteConfig,
        source: &TopicSource,
        queues: &[SourceQueue],
    ) {
        let scope = format!("route {}", route.name);
        if route.cutover_percent < 100 || !route.environments.is_empty() {
            report.red(
                &scope,
                "cutover",
                format!(
                    "{}% of the traffic, environments {:?}: the rest is held on 4.x only",
                    route.cutover_percent, route.environments
                ),
                "raise cutover_percent to 100 and set environments = [] (hot reload), then let the bridge drain",
            );
        } else {
            report.green(&scope, "cutover", "100%, every environment");
        }

        // Lag: 4.x max offset against the durable checkpoint.
        let mut lag = 0i64;
        let mut oldest: Option<i64> = None;
        let mut unknown = Vec::new();
        for q in queues {
            let max = match source.max_offset(q).await {
                Ok(m) => m,
                Err(e) => {
                    unknown.push(format!("{q}: {e}"));
                    continue;
                }
            };
            let checkpoint = match self.store.as_ref().map(|s| s.get(&route.name, q)) {
                Some(Ok(Some(cp))) => cp.offset,
                Some(Ok(None)) | None => match source.min_offset(q).await {
                    Ok(min) => min,
                    Err(e) => {
                        unknown.push(format!("{q}: {e}"));
                        continue;
                    }
                },
                Some(Err(e)) => {
                    unknown.push(format!("{q}: {e}"));
                    continue;
                }
            };
            if max > checkpoint {
                lag += max - checkpoint;
                if let Ok(addr) = source.master_addr(q) {
                    if let Some(t) = probe::store_time_at(
                        &self.client,
                        &addr,
                        &route.source_topic,
                        q.queue_id,
                        checkpoint,
                    )
                    .await
                    {
                        oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
                    }
                }
            }
        }
        let stalled = self
            .store
            .as_ref()
            .and_then(|s| {
                s.meta_get(&pipeline::stall_meta_key(&route.name))
                    .ok()
                    .flatten()
            })
            .filter(|r| !r.is_empty());
        if !unknown.is_empty() {
            report.red(
                &scope,
                "lag",
                format!("unknown for {}", unknown.join("; ")),
                "make every 4.x broker of the topic reachable, then re-run",
            );
        } else if lag > 0 {
            report.red(
                &scope,
                "lag",
                format!(
                    "{lag} message(s) not forwarded yet, oldest {} old{}",
                    oldest.map(|t| age(self.now - t)).unwrap_or_else(|| "?".into()),
                    stalled.as_ref().map(|r| format!("; route STALLED: {r}")).unwrap_or_default()
                ),
                "keep the bridge running until lag is 0 with producers off 4.x (playbook stage 4); \
                 if the route is stalled, fix what `rmq-bridge status` names",
            );
        } else {
            report.green(&scope, "lag", "0 messages");
        }

        // Quarantine.
        match self
            .store
            .as_ref()
            .map(|s| s.quarantine_list(Some(&route.name)))
        {
            Some(Ok(entries)) if !entries.is_empty() => {
                let oldest = entries
                    .iter()
                    .map(|e| e.quarantined_at_ms)
                    .min()
                    .unwrap_or(self.now);
                report.red(
                    &scope,
                    "quarantine",
                    format!("{} message(s) 5.x refused, oldest {} ago", entries.len(), age(self.now - oldest)),
                    "`rmq-bridge quarantine list`, fix the cause, `quarantine replay` (daemon stopped); \
                     `quarantine drop` only what you accept to lose",
                );
            }
            Some(Ok(_)) => report.green(&scope, "quarantine", "empty"),
            Some(Err(e)) => report.red(
                &scope,
                "quarantine",
                format!("{e}"),
                "check the checkpoint store",
            ),
            None => {}
        }

        // The last verify verdict, and whether it covers today's checkpoints.
        self.verify_line(report, route, &scope);
    }

    fn verify_line(&self, report: &mut DecommissionReport, route: &RouteConfig, scope: &str) {
        let remedy =
            "run `rmq-bridge verify -c FILE` once lag is 0 (it needs [target] namesrv_addr), \
                      and deal with every missing or damaged message it names";
        let stored = match StoredVerdict::load(&self.cfg.checkpoint.dir) {
            Ok(v) => v.and_then(|v| v.routes.get(&route.name).cloned()),
            Err(e) => {
                report.red(scope, "verify", format!("{e:#}"), remedy);
                return;
            }
        };
        let Some(v) = stored else {
            report.red(scope, "verify", "never verified", remedy);
            return;
        };
        let when = age(self.now - v.at_ms);
        if v.verdict != "clean" {
            report.red(
                scope,
                "verify",
                format!(
                    "FAILED {when} ago: {} missing, {} damaged of {}",
                    v.missing, v.damaged, v.expected
                ),
                remedy,
            );
            return;
        }
        let checkpoints = self
            .store
            .as_ref()
            .and_then(|s| s.route_checkpoints(&route.name).ok())
            .unwrap_or_default();
        let behind: Vec<String> = checkpoints
            .iter()
            .filter(|(q, cp)| {
                v.verified_to
                    .get(&q.to_string())
                    .map_or(true, |to| *to < cp.offset)
            })
            .map(|(q, cp)| {
                format!(
                    "{q} verified to {} < checkpoint {}",
                    v.verified_to.get(&q.to_string()).copied().unwrap_or(-1),
                    cp.offset
                )
            })
            .collect();
        if behind.is_empty() {
            report.green(
                scope,
                "verify",
                format!(
                    "clean {when} ago, {} message(s), up to today's checkpoints{}",
                    v.expected,
                    if v.quarantined > 0 {
                        format!(" ({} were in quarantine then, not in 5.x)", v.quarantined)
                    } else {
                        String::new()
                    }
                ),
            );
        } else {
            report.red(
                scope,
                "verify",
                format!("clean {when} ago but stale: {}", behind.join(", ")),
                remedy,
            );
        }
    }

    /// One pass over the schedule topic of every broker of the source topics.
    async fn scan_schedule(&self, topics: &BTreeMap<String, Vec<String>>) -> ScheduleScan {
        let mut scan = ScheduleScan::default();
        let levels = &self.cfg.source.delay_levels;
        let brokers: BTreeSet<&String> = topics.values().flatten().collect();
        for broker in brokers {
            for queue_id in 0..levels.len() as i32 {
                let (min, max) = match probe::queue_range(
                    &self.client,
                    broker,
                    SCHEDULE_TOPIC,
                    queue_id,
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        scan.errors.push(format!("{e}"));
                        continue;
                    }
                };
                let mut found = ScheduleScan::default();
                let result = probe::scan_queue(
                    &self.client,
                    broker,
                    SCHEDULE_TOPIC,
                    queue_id,
                    min,
                    max,
                    |r| self.classify_scheduled(r, queue_id, topics, &mut found),
                )
                .await;
                if let Err(e) = result {
                    scan.errors.push(format!("{e}"));
                }
                scan.merge(found);
            }
        }
        scan
    }

    /// Counts one schedule-topic record if it is still pending: per real
    /// topic (forwarded early or not) or per retry topic. Records are not
    /// kept, so memory does not grow with the schedule topic.
    fn classify_scheduled(
        &self,
        r: &crate::remoting::MessageRecord,
        queue_id: i32,
        topics: &BTreeMap<String, Vec<String>>,
        scan: &mut ScheduleScan,
    ) {
        let levels = &self.cfg.source.delay_levels;
        // The schedule topic also holds every message already delivered.
        let Some(delay) = levels.delay(level_of_queue(queue_id)) else {
            return;
        };
        let deadline = deadline_ms(r.store_timestamp_ms, delay);
        if deadline <= self.now {
            return;
        }
        let real = r.properties.get(names::REAL_TOPIC).unwrap_or("");
        if real.starts_with("%RETRY%") {
            let e = scan.retries.entry(real.to_string()).or_default();
            e.0 += 1;
            e.1 = Some(e.1.map_or(deadline, |d| d.min(deadline)));
            return;
        }
        if !topics.contains_key(real) {
            return;
        }
        let forwarded = self.cfg.routes.iter().any(|route| {
            route.source_topic == real
                && route.scheduled == ScheduledMode::Forward
                && matches!(
                    decide_pending(
                        r,
                        queue_id,
                        real,
                        &TagFilter::parse(&route.filter),
                        levels,
                        self.now
                    ),
                    PendingDecision::Pending { .. } | PendingDecision::Due { .. }
                )
                && self
                    .store
                    .as_ref()
                    .and_then(|s| {
                        s.scheduled_forwarded(&route.name, &forward_key(r))
                            .ok()
                            .flatten()
                    })
                    .is_some()
        });
        if forwarded {
            *scan.forwarded.entry(real.to_string()).or_default() += 1;
        } else {
            let e = scan.pending.entry(real.to_string()).or_default();
            e.0 += 1;
            e.1 = Some(e.1.map_or(deadline, |d| d.min(deadline)));
        }
    }

    fn scheduled_lines(
        &self,
        report: &mut DecommissionReport,
        topics: &BTreeMap<String, Vec<String>>,
        scan: &ScheduleScan,
    ) {
        for topic in topics.keys() {
            let scope = format!("topic {topic}");
            let forwarded = scan.forwarded.get(topic).copied().unwrap_or(0);
            if !scan.errors.is_empty() {
                report.red(
                    &scope,
                    "scheduled",
                    format!("{SCHEDULE_TOPIC} not fully read: {}", scan.errors.join("; ")),
                    "make the 4.x brokers reachable (and [source] delay_levels match their messageDelayLevel), then re-run",
                );
                continue;
            }
            match scan.pending.get(topic) {
                Some((n, first)) if *n > 0 => report.red(
                    &scope,
                    "scheduled",
                    format!(
                        "{n} delay message(s) pending in {SCHEDULE_TOPIC}, not forwarded; the first is due in {}{}",
                        first.map(|d| age(d - self.now)).unwrap_or_else(|| "?".into()),
                        if forwarded > 0 { format!(" ({forwarded} more already forwarded early)") } else { String::new() }
                    ),
                    "set scheduled = \"forward\" on the route of this topic (its 5.x target must be a DELAY topic) \
                     and let the bridge forward them, or keep 4.x up until the last of them is due and forwarded",
                ),
                _ => report.green(
                    &scope,
                    "scheduled",
                    if forwarded > 0 {
                        format!("nothing pending unforwarded ({forwarded} forwarded early)")
                    } else {
                        "nothing pending".to_string()
                    },
                ),
            }
        }
    }

    async fn half_lines(
        &self,
        report: &mut DecommissionReport,
        topics: &BTreeMap<String, Vec<String>>,
    ) {
        // Per broker: which half offsets an op record resolved, then the
        // unresolved half messages per real topic.
        let brokers: BTreeSet<&String> = topics.values().flatten().collect();
        let mut pending: BTreeMap<String, (u64, Option<i64>)> = BTreeMap::new();
        let mut errors = Vec::new();
        for broker in brokers {
            let mut resolved: HashSet<i64> = HashSet::new();
            // Java and the peers write the op record to the op queue with
            // the half queue's id; both topics have one queue by default.
            for queue_id in 0..1 {
                match probe::queue_range(&self.client, broker, OP_TOPIC, queue_id).await {
                    Ok((min, max)) => {
                        if let Err(e) = probe::scan_queue(
                            &self.client,
                            broker,
                            OP_TOPIC,
                            queue_id,
                            min,
                            max,
                            |r| {
                                if r.tag() == Some("d") {
                                    resolved.extend(probe::op_offsets(&r.body));
                                }
                            },
                        )
                        .await
                        {
                            errors.push(format!("{e}"));
                        }
                    }
                    Err(e) => errors.push(format!("{e}")),
                }
                match probe::queue_range(&self.client, broker, HALF_TOPIC, queue_id).await {
                    Ok((min, max)) => {
                        // The broker's check service consumes the half queue
                        // as CID_RMQ_SYS_TRANS: below its offset every half
                        // message is resolved or was put back further on.
                        let checked = self
                            .client
                            .query_consumer_offset(broker, TRANS_CHECK_GROUP, HALF_TOPIC, queue_id)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or(min);
                        let from = checked.clamp(min, max);
                        if let Err(e) = probe::scan_queue(
                            &self.client,
                            broker,
                            HALF_TOPIC,
                            queue_id,
                            from,
                            max,
                            |r| {
                                let real = r.properties.get(names::REAL_TOPIC).unwrap_or("");
                                if topics.contains_key(real) && !resolved.contains(&r.queue_offset)
                                {
                                    let e = pending.entry(real.to_string()).or_default();
                                    e.0 += 1;
                                    e.1 = Some(e.1.map_or(r.store_timestamp_ms, |t| {
                                        t.min(r.store_timestamp_ms)
                                    }));
                                }
                            },
                        )
                        .await
                        {
                            errors.push(format!("{e}"));
                        }
                    }
                    Err(e) => errors.push(format!("{e}")),
                }
            }
        }
        for topic in topics.keys() {
            let scope = format!("topic {topic}");
            if !errors.is_empty() {
                report.red(
                    &scope,
                    "half transactions",
                    format!("not fully read: {}", errors.join("; ")),
                    "make the 4.x brokers reachable, then re-run",
                );
                continue;
            }
            match pending.get(topic) {
                Some((n, oldest)) => report.red(
                    &scope,
                    "half transactions",
                    format!(
                        "{n} prepared transaction(s) neither committed nor rolled back, oldest {} old",
                        oldest.map(|t| age(self.now - t)).unwrap_or_else(|| "?".into())
                    ),
                    "their producers must commit or roll back (the 4.x broker asks them by check-back); keep 4.x \
                     and the producers' check-back listeners up until this is 0 — committed ones reach the topic \
                     and the bridge forwards them",
                ),
                None => report.green(&scope, "half transactions", "none unresolved"),
            }
        }
    }

    async fn group_lines(
        &self,
        report: &mut DecommissionReport,
        topics: &BTreeMap<String, Vec<String>>,
        scan: &ScheduleScan,
    ) {
        // The groups of the source topics: what the brokers know, plus the
        // groups the config names.
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (topic, brokers) in topics {
            for broker in brokers {
                match probe::groups_of_topic(&self.client, broker, topic).await {
                    Ok(list) => {
                        for g in list {
                            groups.entry(g).or_default().insert(topic.clone());
                        }
                    }
                    Err(e) => report.red(
                        format!("topic {topic}"),
                        "consumer groups",
                        format!("{e}"),
                        "make the broker reachable, then re-run (groups of this topic are unknown)",
                    ),
                }
            }
        }
        for route in &self.cfg.routes {
            let named = [
                route.commit_as_group.clone(),
                match &route.start {
                    StartPosition::Group(g) => Some(g.clone()),
                    _ => None,
                },
            ];
            for g in named.into_iter().flatten() {
                groups
                    .entry(g)
                    .or_default()
                    .insert(route.source_topic.clone());
            }
        }
        groups.retain(|g, _| !is_own_or_system_group(self.cfg, g));
        for (group, of_topics) in &groups {
            let scope = format!("group {group}");
            let brokers: BTreeSet<&String> = of_topics
                .iter()
                .filter_map(|t| topics.get(t))
                .flatten()
                .collect();
            // Live consumers on 4.x.
            let mut live = Vec::new();
            let mut unknown = Vec::new();
            for b in &brokers {
                match self.client.live_consumers(b, group).await {
                    LiveConsumers::None => {}
                    LiveConsumers::Some(ids) => live.extend(ids),
                    LiveConsumers::Unknown(e) => unknown.push(format!("{b}: {e}")),
                }
            }
            live.sort();
            live.dedup();
            let topics_text = of_topics.iter().cloned().collect::<Vec<_>>().join(", ");
            if !live.is_empty() {
                report.red(
                    &scope,
                    "consuming on 4.x",
                    format!("{} live consumer(s) of {topics_text}: {}", live.len(), live.join(" ")),
                    "move the group's consumers to 5.x and stop them on 4.x (they may still be working through \
                     the 4.x share or retries), then re-run",
                );
            } else if !unknown.is_empty() {
                report.red(
                    &scope,
                    "consuming on 4.x",
                    format!("unconfirmed: {}", unknown.join("; ")),
                    "make every broker answer, then re-run",
                );
            } else {
                report.green(
                    &scope,
                    "consuming on 4.x",
                    format!("no live consumer ({topics_text})"),
                );
            }

            // Retry backlog.
            let retry_topic = format!("%RETRY%{group}");
            let waiting = scan.retries.get(&retry_topic).copied().unwrap_or((0, None));
            match self.backlog(&retry_topic, group, &brokers).await {
                Ok((n, oldest)) if n > 0 || waiting.0 > 0 => report.red(
                    &scope,
                    "retry backlog",
                    format!(
                        "{n} in {retry_topic} not consumed (oldest {} old), {} waiting in {SCHEDULE_TOPIC} for their next attempt",
                        oldest.map(|t| age(self.now - t)).unwrap_or_else(|| "-".into()),
                        waiting.0
                    ),
                    "keep the group's 4.x consumers running until its retries are consumed (or end in the DLQ); \
                     the bridge does not move retries",
                ),
                Ok(_) => report.green(&scope, "retry backlog", format!("none in {retry_topic}")),
                Err(e) => report.red(&scope, "retry backlog", format!("{e:#}"), "make the brokers reachable, then re-run"),
            }

            // Dead letters.
            let dlq = format!("%DLQ%{group}");
            match self.backlog(&dlq, group, &brokers).await {
                Ok((n, oldest)) if n > 0 => report.red(
                    &scope,
                    "dead letters",
                    format!(
                        "{n} unhandled in {dlq}, oldest {} old",
                        oldest.map(|t| age(self.now - t)).unwrap_or_else(|| "-".into())
                    ),
                    "look at each (`rmq-bridge peek --topic %DLQ%GROUP`), re-send what must still be processed \
                     to the source topic while the bridge runs, keep a copy of the rest; then mark them handled \
                     by moving the group's offset on the DLQ topic to its end",
                ),
                Ok(_) => report.green(&scope, "dead letters", format!("none unhandled in {dlq}")),
                Err(e) => report.red(&scope, "dead letters", format!("{e:#}"), "make the brokers reachable, then re-run"),
            }
        }
        if groups.is_empty() {
            report.green(
                "groups",
                "consumer groups",
                "no application group consumes the source topics on 4.x",
            );
        }
    }

    /// Messages of `topic` above `group`'s committed offset (count, store
    /// time of the oldest); 0 when the topic does not exist. Queues from the
    /// name server's route of `topic`, and queue 0 on each of `brokers`
    /// (a retry or DLQ topic the broker created may not be routed yet).
    async fn backlog(
        &self,
        topic: &str,
        group: &str,
        brokers: &BTreeSet<&String>,
    ) -> anyhow::Result<(i64, Option<i64>)> {
        let mut queues: BTreeSet<(String, i32)> = BTreeSet::new();
        match self.namesrv.topic_route(&self.client, topic).await {
            Ok(Some(route)) => {
                for (broker_name, queue_id) in route.readable_queues() {
                    if let Some(addr) = route.master_addr(&broker_name) {
                        queues.insert((addr.to_string(), queue_id));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(anyhow!("{topic}: {e}")),
        }
        let routed = queues.clone();
        for b in brokers {
            queues.insert(((*b).clone(), 0));
        }
        let mut total = 0;
        let mut oldest: Option<i64> = None;
        for (addr, queue_id) in queues {
            let (min, max) = match probe::queue_range(&self.client, &addr, topic, queue_id).await {
                Ok(r) => r,
                // Not routed and not on this broker: nothing there.
                Err(_) if !routed.contains(&(addr.clone(), queue_id)) => continue,
                Err(e) => return Err(e),
            };
            let committed = self
                .client
                .query_consumer_offset(&addr, group, topic, queue_id)
                .await
                .ok()
                .flatten()
                .filter(|o| *o >= 0)
                .unwrap_or(min);
            let from = committed.max(min);
            if max > from {
                total += max - from;
                if let Some(t) =
                    probe::store_time_at(&self.client, &addr, topic, queue_id, from).await
                {
                    oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
                }
            }
        }
        Ok((total, oldest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_ready_only_without_red_lines() {
        let mut r = DecommissionReport::default();
        r.green("route a", "lag", "0 messages");
        assert!(r.render().contains("DECOMMISSION: READY"));
        r.red("group g", "dead letters", "2 unhandled", "look at them");
        let text = r.render();
        assert!(text.contains("RED    group g"));
        assert!(text.contains("-> look at them"));
        assert!(text.contains("NOT READY — 1 red line(s)"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(35_000), "35 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(3 * 3_600_000), "3.0 h");
    }
}
