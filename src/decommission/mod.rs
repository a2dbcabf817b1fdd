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
use crate::remoting::{codes, names, NameServers, RemotingClient};
use crate::source::{SourceSettings, TopicSource};
use crate::translate::scheduled::{
    deadline_ms, decide_pending, forward_key, level_of_queue, PendingDecision, TagFilter,
    SCHEDULE_TOPIC,
};
use crate::verify::report::StoredVerdict;

pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
pub const OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// Queues of `SCHEDULE_TOPIC_XXXX` on a Java 4.x broker (and the peers):
/// one per level of the default table.
const SCHEDULE_QUEUES: i32 = 18;
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
    is_own_or_system_group_of(&cfg.source.consumer_group, group)
}

/// [`is_own_or_system_group`] for the bridge's group `own`: it, the groups
/// named after it (each route's positions under `[instances] coordinate`,
/// `config::route_position_group`; the estate reader `<own>_state`), and
/// RocketMQ's own.
fn is_own_or_system_group_of(own: &str, group: &str) -> bool {
    let route_prefix = crate::config::route_position_group(own, "");
    group == own
        || group.starts_with(&route_prefix)
        || group == format!("{own}_state")
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
    /// Instances sharing an estate: every instance's records (crate::estate).
    shared: Option<crate::checkpoint::shared::SharedView>,
    now: i64,
}

impl Ctx<'_> {
    fn records(&self) -> Option<crate::checkpoint::shared::Records<'_>> {
        self.store
            .as_ref()
            .map(|s| crate::checkpoint::shared::Records::new(s, self.shared.as_ref()))
    }
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
    let shared = match pipeline::estate_view(cfg).await {
        Ok(v) => v,
        Err(e) => {
            report.red(
                "bridge",
                "estate state topic",
                format!("{e}"),
                "quarantine, journal and queue starts of the other instances are unknown: make the 5.x topic readable and run the check again",
            );
            None
        }
    };
    let ctx = Ctx {
        cfg,
        client: pipeline::remoting_client(cfg),
        namesrv,
        store,
        shared,
        now: now_ms(),
    };
    // Source topics and the brokers that hold them.
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for route in &cfg.routes {
        if route.direction == crate::config::Direction::Reverse {
            ctx.reverse_lines(&mut report, route).await;
            continue;
        }
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
    for route in &cfg.routes {
        for group in &route.keep_translated {
            kept_group_line(cfg, &mut report, route, group).await;
        }
    }
    let scan = ctx.scan_schedule(&topics).await;
    ctx.scheduled_lines(&mut report, &topics, &scan);
    ctx.half_lines(&mut report, &topics).await;
    ctx.group_lines(&mut report, &topics, &scan).await;
    Ok(report)
}

/// A kept group (`routes[].keep_translated`): can it move to 5.x now
/// without losing anything it has not consumed?
async fn kept_group_line(
    cfg: &BridgeConfig,
    report: &mut DecommissionReport,
    route: &RouteConfig,
    group: &str,
) {
    let scope = format!("group {group}");
    let opts = crate::groups::GroupOptions {
        group: group.to_string(),
        route: Some(route.name.clone()),
        toward: crate::groups::Toward::FiveX,
        apply: false,
        force: false,
        source_may_be_live: true,
        progress: false,
        allow_backwards: false,
        json: None,
    };
    match crate::groups::run(cfg, &opts).await {
        Ok(r) if r.held_not_forwarded == 0 => report.green(
            &scope,
            "translated",
            format!("translated, {} to re-deliver", r.redeliver),
        ),
        Ok(r) => report.red(
            &scope,
            "translated",
            format!(
                "{} message(s) it has not consumed on 4.x are not on 5.x",
                r.held_not_forwarded
            ),
            "raise the route to 100 % and let it drain, or let the group consume them on 4.x first",
        ),
        Err(e) => report.red(
            &scope,
            "translated",
            format!("cannot translate: {e:#}"),
            "fix what the message names (both clusters reachable, [target] namesrv_addr), then re-run",
        ),
    }
}

/// Where a queue's verification must have started for a verdict to count:
/// the route's recorded start of the queue, or what 4.x still holds of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueFloor {
    /// The offset the route started the queue from (bridges before it was
    /// recorded have none).
    pub recorded: Option<i64>,
    /// The queue's minimum offset in 4.x now (`None`: unknown).
    pub min: Option<i64>,
}

/// Instances sharing an estate: the position each queue must be verified
/// to is the later of this store's checkpoint and the estate's position
/// (what any instance forwarded), never this instance's alone.
pub fn estate_positions(
    local: BTreeMap<SourceQueue, i64>,
    estate: &BTreeMap<SourceQueue, i64>,
) -> BTreeMap<SourceQueue, i64> {
    let mut out = local;
    for (q, at) in estate {
        let e = out.entry(q.clone()).or_insert(*at);
        *e = (*e).max(*at);
    }
    out
}

/// Why a clean verdict does not cover the route (empty: it does). Every
/// queue of the route (in 4.x now, or with a checkpoint) must have been
/// verified up to its checkpoint, and from its start: the recorded start,
/// or the first offset 4.x still holds when retention removed the start
/// since. A queue whose start is not recorded must have been verified from
/// what 4.x holds. So a narrow `verify --since` never turns the line green,
/// nor does a verdict that skipped a queue.
pub fn coverage_gaps(
    v: &crate::verify::report::RouteVerdict,
    checkpoints: &BTreeMap<SourceQueue, i64>,
    floors: &BTreeMap<SourceQueue, QueueFloor>,
) -> Vec<String> {
    let queues: BTreeSet<&SourceQueue> = checkpoints.keys().chain(floors.keys()).collect();
    let mut gaps = Vec::new();
    for q in queues {
        let key = q.to_string();
        let Some(to) = v.verified_to.get(&key).copied() else {
            gaps.push(format!("{q} never verified"));
            continue;
        };
        if let Some(cp) = checkpoints.get(q) {
            if to < *cp {
                gaps.push(format!("{q} verified to {to} < checkpoint {cp}"));
            }
        }
        let floor = floors.get(q).copied().unwrap_or_default();
        let start = match (floor.recorded, floor.min) {
            (Some(r), Some(m)) => Some(r.max(m)),
            (Some(r), None) => Some(r),
            (None, m) => m,
        };
        match (v.verified_from.get(&key).copied(), start) {
            (Some(from), Some(start)) if from <= start => {}
            (Some(from), Some(start)) => gaps.push(format!(
                "{q} verified from {from}, not from its start {start} (a narrow --since run?)"
            )),
            (None, _) => gaps.push(format!("{q}: the verdict does not say where it started")),
            (Some(_), None) => gaps.push(format!("{q}: its start offset is unknown")),
        }
    }
    gaps
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
    /// Per source topic: past their deadline, not moved into the topic by
    /// the broker yet, not forwarded early.
    overdue: BTreeMap<String, u64>,
    /// Per source topic: not moved yet, of a level `[source] delay_levels`
    /// does not have (deadline unknown).
    unknown_level: BTreeMap<String, u64>,
    errors: Vec<String>,
}

/// Where one schedule-topic record stands.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    /// The broker moved it into its real topic.
    Delivered,
    /// Not due yet (its deadline).
    Pending(i64),
    /// Past its deadline, not moved yet (its deadline).
    Overdue(i64),
    /// Not moved, of a level the bridge's table does not have.
    UnknownLevel,
}

/// `moved`: the broker's delay offset of the record's level (below it
/// every record was moved); `delay`: the level's delay in `[source]
/// delay_levels`.
fn schedule_slot(
    store_ms: i64,
    offset: i64,
    delay: Option<Duration>,
    moved: i64,
    now: i64,
) -> Slot {
    if offset < moved {
        return Slot::Delivered;
    }
    match delay.map(|d| deadline_ms(store_ms, d)) {
        None => Slot::UnknownLevel,
        Some(deadline) if deadline > now => Slot::Pending(deadline),
        Some(deadline) => Slot::Overdue(deadline),
    }
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
        for (k, n) in other.overdue {
            *self.overdue.entry(k).or_default() += n;
        }
        for (k, n) in other.unknown_level {
            *self.unknown_level.entry(k).or_default() += n;
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

    /// A queue's durable checkpoint (its min offset where the route has
    /// none: nothing of it forwarded) and its max offset.
    async fn queue_span(
        &self,
        route: &RouteConfig,
        source: &TopicSource,
        q: &SourceQueue,
    ) -> Result<(i64, i64), String> {
        let max = source.max_offset(q).await.map_err(|e| e.to_string())?;
        let local = match self.store.as_ref().map(|s| s.get(&route.name, q)) {
            Some(Ok(cp)) => cp.map(|c| c.offset),
            Some(Err(e)) => return Err(e.to_string()),
            None => None,
        };
        // Instances sharing an estate: what any of them confirmed is the
        // route's shared position (this store has only this instance's
        // queues).
        let group = if self.cfg.instances.coordinate {
            pipeline::positions::PositionHome::of_configured_route(self.cfg, &route.name)
                .read(source, q)
                .await?
        } else {
            None
        };
        let checkpoint = match pipeline::coordinate::takeover_offset(local, group) {
            Some(o) => o,
            None => source.min_offset(q).await.map_err(|e| e.to_string())?,
        };
        Ok((checkpoint, max))
    }

    /// A reverse route (5.x -> 4.x) keeps 4.x a destination: while it has
    /// lag, 4.x consumers still wait for what was produced on 5.x.
    async fn reverse_lines(&self, report: &mut DecommissionReport, route: &RouteConfig) {
        let scope = format!("route {} (reverse)", route.name);
        let Ok((client, namesrv)) = pipeline::read_side(self.cfg, route.direction) else {
            report.red(
                &scope,
                "lag",
                "unknown: [target] namesrv_addr is not set",
                "set [target] namesrv_addr to the 5.x name servers, then re-run",
            );
            return;
        };
        let source = TopicSource::new(
            client,
            namesrv,
            SourceSettings {
                topic: route.source_topic.clone(),
                filter: route.filter.clone(),
                consumer_group: self.cfg.source.consumer_group.clone(),
                pull_batch_size: 1,
                long_poll: Duration::from_millis(0),
            },
        );
        let queues =
            match tokio::time::timeout(Duration::from_secs(10), source.refresh_route()).await {
                Ok(Ok(q)) => q,
                Ok(Err(e)) => {
                    report.red(
                        &scope,
                        "lag",
                        format!("unknown: {e}"),
                        "make the 5.x cluster's brokers reachable over Remoting, then re-run",
                    );
                    return;
                }
                Err(_) => {
                    report.red(
                        &scope,
                        "lag",
                        "unknown: the 5.x name server did not answer in 10 s",
                        "fix [target] namesrv_addr or the network, then re-run",
                    );
                    return;
                }
            };
        let mut lag = 0i64;
        let mut unknown = Vec::new();
        for q in &queues {
            match self.queue_span(route, &source, q).await {
                Ok((checkpoint, max)) => lag += (max - checkpoint).max(0),
                Err(e) => unknown.push(format!("{q}: {e}")),
            }
        }
        if !unknown.is_empty() {
            report.red(
                &scope,
                "lag",
                format!("unknown for {}", unknown.join("; ")),
                "make every 5.x broker of the topic reachable, then re-run",
            );
        } else if lag > 0 {
            report.red(
                &scope,
                "lag",
                format!("{lag} message(s) produced on 5.x not yet on 4.x"),
                "4.x consumers still wait for them: keep the bridge running until the reverse route's lag is 0, or move those consumers to 5.x and remove the route",
            );
        } else {
            report.green(&scope, "lag", "0: everything produced on 5.x is on 4.x");
        }
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
        // Each queue's position in the estate (instances sharing it: the
        // later of this store's and the route's shared one), which the
        // verify line below must cover.
        let mut positions = BTreeMap::new();
        for q in queues {
            let (checkpoint, max) = match self.queue_span(route, source, q).await {
                Ok(span) => span,
                Err(e) => {
                    unknown.push(format!("{q}: {e}"));
                    continue;
                }
            };
            positions.insert(q.clone(), checkpoint);
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

        // Quarantine: the route's and its schedule side's (`<route>#scheduled`,
        // pending scheduled messages 5.x refused).
        let side = pipeline::schedule_ledger::schedule_side_name(&route.name);
        match self.records().map(|s| {
            let mut entries = s.quarantine_list(Some(&route.name))?;
            entries.extend(s.quarantine_list(Some(&side))?);
            Ok::<_, crate::checkpoint::StoreError>(entries)
        }) {
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

        // The last verify verdict, and whether it covers every queue of the
        // route from its start to today's checkpoints.
        let mut floors = BTreeMap::new();
        for q in queues {
            let recorded = self
                .records()
                .and_then(|s| s.route_start(&route.name, q).ok().flatten());
            let min = source.min_offset(q).await.ok();
            floors.insert(q.clone(), QueueFloor { recorded, min });
        }
        self.verify_line(report, route, &scope, &floors, &positions);
    }

    fn verify_line(
        &self,
        report: &mut DecommissionReport,
        route: &RouteConfig,
        scope: &str,
        floors: &BTreeMap<SourceQueue, QueueFloor>,
        positions: &BTreeMap<SourceQueue, i64>,
    ) {
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
                    "FAILED {when} ago: {} missing, {} damaged of {}{}",
                    v.missing,
                    v.damaged,
                    v.expected,
                    if v.expired > 0 {
                        format!(
                            ", {} offset(s) removed from 4.x while verify read them (not verified)",
                            v.expired
                        )
                    } else {
                        String::new()
                    }
                ),
                remedy,
            );
            return;
        }
        let checkpoints: BTreeMap<SourceQueue, i64> = self
            .store
            .as_ref()
            .and_then(|s| s.route_checkpoints(&route.name).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(q, cp)| (q, cp.offset))
            .collect();
        let checkpoints = if self.cfg.instances.coordinate {
            estate_positions(checkpoints, positions)
        } else {
            checkpoints
        };
        let behind = coverage_gaps(&v, &checkpoints, floors);
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
            // How far the broker delivered each level; the levels it has
            // beyond the bridge's table are read too.
            let moved = match probe::delay_offsets(&self.client, broker).await {
                Ok(moved) => moved,
                Err(e) => {
                    scan.errors.push(format!("{e}"));
                    continue;
                }
            };
            // Java brokers create the schedule topic with 18 queues whatever
            // their table; a longer table or delay offsets name more.
            let last_level = moved
                .keys()
                .copied()
                .max()
                .unwrap_or(0)
                .max(levels.len() as i32)
                .max(SCHEDULE_QUEUES);
            for queue_id in 0..last_level {
                let delivered_below = moved.get(&level_of_queue(queue_id)).copied().unwrap_or(0);
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
                    |r| self.classify_scheduled(r, queue_id, delivered_below, topics, &mut found),
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

    /// Counts one schedule-topic record the broker has not moved into its
    /// real topic yet (`moved`: its level's delay offset): per real topic
    /// (forwarded early, pending, overdue or of an unknown level) or per
    /// retry topic. Records are not kept, so memory does not grow with the
    /// schedule topic.
    fn classify_scheduled(
        &self,
        r: &crate::remoting::MessageRecord,
        queue_id: i32,
        moved: i64,
        topics: &BTreeMap<String, Vec<String>>,
        scan: &mut ScheduleScan,
    ) {
        let levels = &self.cfg.source.delay_levels;
        let delay = levels.delay(level_of_queue(queue_id));
        let slot = schedule_slot(r.store_timestamp_ms, r.queue_offset, delay, moved, self.now);
        let deadline = match slot {
            Slot::Delivered => return,
            Slot::Pending(d) | Slot::Overdue(d) => Some(d),
            Slot::UnknownLevel => None,
        };
        let earliest = |e: Option<i64>| match (e, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let real = r.properties.get(names::REAL_TOPIC).unwrap_or("");
        tracing::debug!(
            queue_id,
            offset = r.queue_offset,
            moved,
            ?slot,
            real,
            msg_id = r.message_id(),
            now = self.now,
            "schedule-topic record not moved by the broker yet"
        );
        if real.starts_with("%RETRY%") {
            let e = scan.retries.entry(real.to_string()).or_default();
            e.0 += 1;
            e.1 = earliest(e.1);
            return;
        }
        if !topics.contains_key(real) {
            return;
        }
        if slot == Slot::UnknownLevel {
            *scan.unknown_level.entry(real.to_string()).or_default() += 1;
            return;
        }
        // Forwarded early only where 5.x confirmed the send (here, or on
        // another instance sharing the estate).
        let forwarded = self.cfg.routes.iter().any(|route| {
            let key = forward_key(r);
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
                && (self
                    .store
                    .as_ref()
                    .and_then(|s| s.scheduled_entry(&route.name, &key).ok().flatten())
                    .is_some_and(|e| e.state == crate::checkpoint::ForwardState::Confirmed)
                    || self.shared.as_ref().is_some_and(|v| {
                        v.schedule()
                            .get_forwarded(&route.name, &key)
                            .is_some_and(|e| e.confirmed)
                    }))
        });
        if forwarded {
            *scan.forwarded.entry(real.to_string()).or_default() += 1;
        } else if let Slot::Overdue(_) = slot {
            *scan.overdue.entry(real.to_string()).or_default() += 1;
        } else {
            let e = scan.pending.entry(real.to_string()).or_default();
            e.0 += 1;
            e.1 = earliest(e.1);
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
            let overdue = scan.overdue.get(topic).copied().unwrap_or(0);
            let unknown = scan.unknown_level.get(topic).copied().unwrap_or(0);
            if overdue > 0 || unknown > 0 {
                let mut what = Vec::new();
                if overdue > 0 {
                    what.push(format!(
                        "{overdue} delay message(s) past their deadline that the 4.x broker has not moved into the topic yet"
                    ));
                }
                if unknown > 0 {
                    what.push(format!(
                        "{unknown} delay message(s) pending at a level [source] delay_levels does not have"
                    ));
                }
                report.red(
                    &scope,
                    "scheduled",
                    format!("{} in {SCHEDULE_TOPIC}, not forwarded", what.join("; ")),
                    "keep 4.x up until its schedule service has moved them and the bridge forwarded them \
                     (set delay_levels to the brokers' messageDelayLevel so the schedule side can forward them early)",
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
        // Brokers whose op topic is not served: a 4.9.x broker writes op
        // records straight to its store and never registers the op topic, so
        // a pull answers TOPIC_NOT_EXIST. Then only the broker's own check
        // offset tells resolved half messages apart (never fewer reds).
        let mut ops_unserved: BTreeSet<String> = BTreeSet::new();
        for broker in brokers {
            let mut resolved: HashSet<i64> = HashSet::new();
            // Java and the peers write the op record to the op queue with
            // the half queue's id; both topics have one queue by default.
            for queue_id in 0..1 {
                match probe::queue_range(&self.client, broker, OP_TOPIC, queue_id).await {
                    Ok((min, max)) => {
                        let scanned = probe::scan_queue(
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
                        .await;
                        match scanned {
                            Ok(_) => {}
                            Err(e) if answered(&e, codes::response::TOPIC_NOT_EXIST) => {
                                ops_unserved.insert(broker.to_string());
                            }
                            Err(e) => errors.push(format!("{e}")),
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
                        let scanned = probe::scan_queue(
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
                        .await;
                        match scanned {
                            Ok(_) => {}
                            Err(e) if answered(&e, codes::response::TOPIC_NOT_EXIST) => {
                                errors.push(format!(
                                    "{broker} holds {} half message(s) in {HALF_TOPIC} queue {queue_id} it does \
                                     not serve yet: a 4.x broker registers its half topic at its first \
                                     transaction check (transactionCheckInterval, 60 s by default) after a start; \
                                     re-run once it has",
                                    max - from
                                ));
                            }
                            Err(e) => errors.push(format!("{e}")),
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
                        "{n} prepared transaction(s) neither committed nor rolled back, oldest {} old{}",
                        oldest.map(|t| age(self.now - t)).unwrap_or_else(|| "?".into()),
                        if ops_unserved.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (as far as the broker's transaction check has passed: {} serve no \
                                 {OP_TOPIC} to read commits and rollbacks from; those it has not \
                                 checked yet count as open, re-run after its transactionCheckInterval)",
                                ops_unserved.iter().cloned().collect::<Vec<_>>().join(", ")
                            )
                        }
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

            // What the group skipped that the bridge did not forward.
            for route in self
                .cfg
                .routes
                .iter()
                .filter(|r| of_topics.contains(&r.source_topic))
            {
                self.held_line(report, &scope, route, group).await;
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

    /// Issue 16 item 4: the messages of `route` that the group has not
    /// consumed on 4.x (at or above its committed offset) and that the
    /// bridge did not forward either (held on 4.x only by a cutover below
    /// 100 %, an environment list or the tag filter, per the journal's rule
    /// at each offset): processed by nobody once 4.x is gone.
    async fn held_line(
        &self,
        report: &mut DecommissionReport,
        scope: &str,
        route: &RouteConfig,
        group: &str,
    ) {
        const MAX_SCAN: i64 = 1_000_000;
        let check = "held on 4.x only";
        let Some(records) = self.records() else {
            return; // the route lines already say the store is unreadable
        };
        let journal = match records.journal(&route.name) {
            Ok(j) => j,
            Err(e) => {
                report.red(
                    scope,
                    check,
                    format!("route {}: {e}", route.name),
                    "check the checkpoint store",
                );
                return;
            }
        };
        let current = pipeline::rule::build_rule(1, self.cfg, route, Vec::new()).cutover;
        let tags = crate::translate::scheduled::TagFilter::parse(&route.filter);
        let source = self.source(route);
        let queues = match source.refresh_route().await {
            Ok(q) => q,
            Err(e) => {
                report.red(
                    scope,
                    check,
                    format!("route {}: {e}", route.name),
                    "make 4.x reachable, then re-run",
                );
                return;
            }
        };
        let mut count = 0u64;
        let mut named = Vec::new();
        let mut problems = Vec::new();
        let mut truncated = false;
        for q in &queues {
            let history = crate::cutover::history::QueueHistory::build(&journal, q, &current);
            let cp = match records.store().get(&route.name, q) {
                Ok(Some(cp)) => cp.offset,
                Ok(None) => continue, // nothing decided on this queue yet
                Err(e) => {
                    problems.push(format!("{q}: {e}"));
                    continue;
                }
            };
            // Tag-filtered routes hold what the filter leaves out anywhere.
            let held_until = if route.filter.trim() == "*" || route.filter.trim().is_empty() {
                history.held_until()
            } else {
                Some(i64::MAX)
            };
            let Some(held_until) = held_until else {
                continue;
            };
            let end = held_until.min(cp);
            let committed = match source.group_offset(q, group).await {
                Ok(Some(o)) if o >= 0 => o,
                Ok(_) => match source.min_offset(q).await {
                    Ok(m) => m,
                    Err(e) => {
                        problems.push(format!("{q}: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    problems.push(format!("{q}: {e}"));
                    continue;
                }
            };
            if committed >= end {
                continue;
            }
            let Ok(addr) = source.master_addr(q) else {
                problems.push(format!("{q}: no master broker"));
                continue;
            };
            let to = end.min(committed.saturating_add(MAX_SCAN));
            truncated |= to < end;
            let scanned = probe::scan_queue(
                &self.client,
                &addr,
                &route.source_topic,
                q.queue_id,
                committed,
                to,
                |r| {
                    let rule = history.rule_at(r.queue_offset);
                    let held = !tags.matches(r.tag())
                        || !matches!(
                            crate::cutover::decide(r, &rule, &q.broker_name, q.queue_id),
                            crate::cutover::CutoverDecision::Forward
                        );
                    if held {
                        count += 1;
                        if named.len() < 5 {
                            named.push(format!("{} at {q}@{}", r.message_id(), r.queue_offset));
                        }
                    }
                },
            )
            .await;
            if let Err(e) = scanned {
                problems.push(format!("{q}: {e:#}"));
            }
        }
        let remedy = "start the group's 4.x consumers again until they have consumed past these messages \
                      (or re-send them to the source topic while the route is at 100 %), then re-run; \
                      `commit_as_group` does not move the group past them";
        if count > 0 {
            report.red(
                scope,
                check,
                format!(
                    "{}{count} message(s) of route {} that the group has not consumed were held on 4.x only \
                     (not forwarded): {}",
                    if truncated { "at least " } else { "" },
                    route.name,
                    named.join(", ")
                ),
                remedy,
            );
        } else if !problems.is_empty() {
            report.red(
                scope,
                check,
                format!("route {}: unconfirmed: {}", route.name, problems.join("; ")),
                "make 4.x reachable, then re-run",
            );
        } else {
            report.green(
                scope,
                check,
                format!(
                    "route {}: nothing the group left unconsumed stayed on 4.x only",
                    route.name
                ),
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

    /// A custom `consumer_group`: the route groups named after it (issue
    /// 30 item 1) are the bridge's, not an application's.
    #[test]
    fn the_bridges_own_groups_are_never_taken_for_an_applications() {
        for g in [
            "bridge_x",
            "bridge_x-route-pay",
            "bridge_x_state",
            "rmq_bridge-route-a",
        ] {
            assert!(is_own_or_system_group_of("bridge_x", g), "{g}");
        }
        for g in ["pay_app", "bridge_x2", "bridge_y-route-pay"] {
            assert!(!is_own_or_system_group_of("bridge_x", g), "{g}");
        }
    }

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
    fn a_schedule_record_counts_until_the_broker_moved_it() {
        let (store, now) = (1_000_000, 2_000_000);
        let d = Some(Duration::from_secs(60));
        // Below the broker's delay offset: moved into the topic.
        assert_eq!(schedule_slot(store, 4, d, 5, now), Slot::Delivered);
        assert_eq!(schedule_slot(store, 4, None, 5, now), Slot::Delivered);
        // Not moved, deadline passed (a broker behind, or stopped): it
        // still needs 4.x; it used to be taken as delivered.
        assert_eq!(
            schedule_slot(store, 5, d, 5, now),
            Slot::Overdue(store + 60_000)
        );
        assert_eq!(
            schedule_slot(store, 5, d, 0, store + 1),
            Slot::Pending(store + 60_000)
        );
        // A level the bridge's table lacks: it used to be skipped.
        assert_eq!(schedule_slot(store, 5, None, 5, now), Slot::UnknownLevel);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(35_000), "35 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(3 * 3_600_000), "3.0 h");
    }
}

#[cfg(test)]
mod coverage_tests {
    use super::*;
    use crate::verify::report::RouteVerdict;

    fn q(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "b".into(),
            queue_id: id,
        }
    }

    fn verdict(ranges: &[(i32, i64, i64)]) -> RouteVerdict {
        RouteVerdict {
            verdict: "clean".into(),
            at_ms: 0,
            missing: 0,
            damaged: 0,
            expected: 0,
            quarantined: 0,
            expired: 0,
            verified_to: ranges
                .iter()
                .map(|(id, _, to)| (q(*id).to_string(), *to))
                .collect(),
            verified_from: ranges
                .iter()
                .map(|(id, from, _)| (q(*id).to_string(), *from))
                .collect(),
        }
    }

    fn floor(recorded: Option<i64>, min: i64) -> QueueFloor {
        QueueFloor {
            recorded,
            min: Some(min),
        }
    }

    /// Issue 16 item 7: a clean `verify --since 5m` after a FAILED full
    /// run, and a verdict that never looked at one queue, are not coverage.
    #[test]
    fn only_a_verdict_from_each_queues_start_to_its_checkpoint_covers_the_route() {
        let checkpoints: BTreeMap<SourceQueue, i64> = [(q(0), 100), (q(1), 80)].into();
        let floors: BTreeMap<SourceQueue, QueueFloor> =
            [(q(0), floor(Some(0), 0)), (q(1), floor(Some(10), 0))].into();
        let full = verdict(&[(0, 0, 100), (1, 10, 80)]);
        assert!(coverage_gaps(&full, &checkpoints, &floors).is_empty());

        let narrow = verdict(&[(0, 95, 100), (1, 78, 80)]);
        let gaps = coverage_gaps(&narrow, &checkpoints, &floors);
        assert_eq!(gaps.len(), 2, "{gaps:?}");

        // A queue of the topic that has no checkpoint was never verified.
        let mut floors3 = floors.clone();
        floors3.insert(q(2), floor(None, 0));
        let gaps = coverage_gaps(&full, &checkpoints, &floors3);
        assert_eq!(gaps, vec!["b:2 never verified".to_string()]);

        // Stale: the checkpoint moved on since.
        let stale: BTreeMap<SourceQueue, i64> = [(q(0), 120), (q(1), 80)].into();
        assert_eq!(coverage_gaps(&full, &stale, &floors).len(), 1);

        // Retention removed the start: verified from what 4.x holds counts.
        let trimmed: BTreeMap<SourceQueue, QueueFloor> =
            [(q(0), floor(Some(0), 40)), (q(1), floor(Some(10), 0))].into();
        let from_min = verdict(&[(0, 40, 100), (1, 10, 80)]);
        assert!(coverage_gaps(&from_min, &checkpoints, &trimmed).is_empty());

        // A verdict of an older bridge says nowhere where it started.
        let mut old = full.clone();
        old.verified_from.clear();
        assert_eq!(coverage_gaps(&old, &checkpoints, &floors).len(), 2);
    }

    /// Issue 30, item 2: instance A verified q0 to 100 and stopped; B then
    /// forwarded q0 to 300 and q1 (which A never held) to 50. A's report
    /// judges by the estate's positions, not by its own store.
    #[test]
    fn a_verdict_covers_the_estate_only_up_to_what_it_read() {
        let local: BTreeMap<SourceQueue, i64> = [(q(0), 100)].into();
        let estate: BTreeMap<SourceQueue, i64> = [(q(0), 300), (q(1), 50)].into();
        let floors: BTreeMap<SourceQueue, QueueFloor> =
            [(q(0), floor(Some(0), 0)), (q(1), floor(Some(0), 0))].into();
        let a = verdict(&[(0, 0, 100), (1, 0, 0)]);
        assert!(
            coverage_gaps(&a, &local, &floors).is_empty(),
            "what the old report saw"
        );
        let positions = estate_positions(local.clone(), &estate);
        assert_eq!(positions, estate);
        let gaps = coverage_gaps(&a, &positions, &floors);
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        // A store ahead of what the estate shows (not written back yet) counts too.
        let ahead: BTreeMap<SourceQueue, i64> = [(q(0), 400)].into();
        assert_eq!(estate_positions(ahead, &estate)[&q(0)], 400);
    }
}

/// Whether `error` is a broker's answer with response `code`.
fn answered(error: &anyhow::Error, code: i32) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<crate::remoting::RemotingError>()
            .and_then(crate::remoting::RemotingError::response_code)
            == Some(code)
    })
}
