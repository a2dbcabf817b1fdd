//! `rmq-bridge verify`: proof that what the bridge forwarded is in 5.x,
//! intact (SPEC section 8, issue 11).
//!
//! For each route: the durable checkpoints are read first (everything below
//! them was acknowledged by 5.x before this run began), then the 5.x target
//! topic is read back over Remoting from the 5.x brokers (`[target]
//! namesrv_addr`) into a temporary on-disk index keyed by message id, then
//! each source queue's range, from the route's start position (or `--since`)
//! up to its checkpoint, is read from 4.x and every record judged: the
//! cutover and environment rule in force at its offset (the cutover
//! journal, see `history`), quarantine, translation as the pipeline does it,
//! and the 5.x copies under its message id (`matching`). The 5.x index is
//! spilled to RocksDB and the 4.x side is streamed, so memory does not grow
//! with the topic.
//!
//! `--follow` keeps one index and one matcher per queue and verifies each
//! new stretch of checkpoints as it lands, re-checking what was missing,
//! and serves `rmq_bridge_verify_*` gauges.
//!
//! Owns: the verification passes. Must not touch: the checkpoint store's
//! contents (opened read-only; the verdict is a file next to it).

pub mod fingerprint;
pub mod index;
pub mod matching;
pub mod read;
pub mod report;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::checkpoint::shared::Records;
use crate::checkpoint::{Checkpoint, CheckpointStore, SourceQueue};
use crate::config::{self, BridgeConfig, RouteConfig, StartPosition};
use crate::grpc::Publisher;
use crate::pipeline;
use crate::remoting::{NameServers, RemotingClient};
use crate::source::TopicSource;

use crate::cutover::history::QueueHistory;
use fingerprint::Fingerprint;
use index::{StoredCopy, TargetIndex, TargetPosition};
use matching::{QueueMatcher, RouteJudge};
use read::{read_many, topic_reader, Piece};
use report::{Report, RouteReport, StoredVerdict};

/// The command line of `verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub route: Option<String>,
    /// RFC 3339 time, or a duration ago (`2h`, `30m`).
    pub since: Option<String>,
    pub follow: bool,
    pub json: Option<PathBuf>,
    /// `--follow`: seconds between passes.
    pub interval: Duration,
    /// `--follow`: where to serve the `rmq_bridge_verify_*` metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Parent of the temporary index (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
}

/// Queues read at once, on each side.
const READ_PARALLEL: usize = 4;

/// Reader consumer group: never committed, only named in pull requests.
const READER_GROUP: &str = "rmq_bridge_verify";

/// Parses `--since`: an RFC 3339 time or a duration before now.
pub fn parse_since(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms - ago.as_millis() as i64);
    }
    bail!("--since `{text}` is neither an RFC 3339 time (2026-11-28T10:00:00Z) nor a duration ago (2h, 30m)")
}

/// A Remoting client for the 5.x brokers (5.x credentials).
pub fn target_client(cfg: &BridgeConfig) -> RemotingClient {
    pipeline::target_remoting_client(cfg, format!("rmq-bridge-verify@{}", std::process::id()))
}

/// Progress on stderr every few seconds of a long pass.
struct Progress {
    last: Instant,
    every: Duration,
}

impl Progress {
    fn new() -> Self {
        Progress {
            last: Instant::now(),
            every: Duration::from_secs(5),
        }
    }

    fn tick(&mut self, what: impl FnOnce() -> String) {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            eprintln!("verify: {}", what());
        }
    }
}

/// One route's verification state, kept across `--follow` passes.
struct RouteVerifier {
    route: RouteConfig,
    source: TopicSource,
    target: TopicSource,
    index: TargetIndex,
    /// 5.x queue -> next offset to read into the index.
    target_read: BTreeMap<SourceQueue, i64>,
    queues: BTreeMap<SourceQueue, QueueMatcher>,
    judge: RouteJudge,
    notes: Vec<String>,
}

struct Verifier {
    cfg: BridgeConfig,
    opts: VerifyOptions,
    since_ms: Option<i64>,
    routes: Vec<RouteVerifier>,
}

impl Verifier {
    async fn new(cfg: BridgeConfig, opts: VerifyOptions) -> anyhow::Result<Self> {
        if cfg.target.namesrv_addrs.is_empty() {
            bail!(
                "verify reads 5.x back over Remoting from the 5.x brokers and needs the 5.x cluster's \
                 name server: add `namesrv_addr = \"HOST:PORT\"` under [target] in {} (the name server \
                 of the cluster behind the proxy {})",
                cfg.file.display(),
                cfg.target.endpoints.join(",")
            );
        }
        let target_ns = NameServers::parse(&cfg.target.namesrv_addrs.join(";"))
            .map_err(|e| anyhow!("[target] namesrv_addr: {e}"))?;
        let source_ns = pipeline::name_servers(&cfg).map_err(anyhow::Error::msg)?;
        let since_ms = opts
            .since
            .as_deref()
            .map(|s| parse_since(s, crate::checkpoint::now_ms()))
            .transpose()?;
        let selected: Vec<RouteConfig> = match &opts.route {
            Some(name) => vec![cfg.route(name).cloned().ok_or_else(|| {
                anyhow!(
                    "no route `{name}` in {}; routes: {}",
                    cfg.file.display(),
                    cfg.routes
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?],
            None => cfg.routes.clone(),
        };
        // The 5.x topic's accepted types, as the bridge learns them (gRPC).
        let publisher = match tokio::time::timeout(
            Duration::from_secs(10),
            Publisher::connect(pipeline::grpc_config(&cfg)),
        )
        .await
        {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                eprintln!(
                    "verify: 5.x endpoint {}: {e}; message types will not be compared",
                    cfg.target.endpoints.join(",")
                );
                None
            }
            Err(_) => {
                eprintln!("verify: 5.x endpoint {} did not answer in 10 s; message types will not be compared", cfg.target.endpoints.join(","));
                None
            }
        };
        let source_client = pipeline::remoting_client(&cfg);
        let target_client = target_client(&cfg);
        let work = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let mut routes = Vec::new();
        for route in selected {
            let mut notes = Vec::new();
            // A reverse route (5.x -> 4.x) is verified the other way round:
            // its source is the 5.x cluster, its target 4.x, which takes
            // every message as NORMAL or FIFO (sink/remoting.rs).
            let reverse = route.direction == crate::config::Direction::Reverse;
            let (read_client, read_ns, write_client, write_ns) = if reverse {
                (
                    target_client.clone(),
                    target_ns.clone(),
                    source_client.clone(),
                    source_ns.clone(),
                )
            } else {
                (
                    source_client.clone(),
                    source_ns.clone(),
                    target_client.clone(),
                    target_ns.clone(),
                )
            };
            let target_types = match &publisher {
                _ if reverse => Some(vec![
                    crate::grpc::TopicMessageType::Normal,
                    crate::grpc::TopicMessageType::Fifo,
                ]),
                Some(p) => match p.accepted_types(&route.target_topic).await {
                    Ok(t) if !t.is_empty() => Some(t),
                    Ok(_) => {
                        notes.push(format!(
                            "5.x topic {} reports no message type; types not compared",
                            route.target_topic
                        ));
                        None
                    }
                    Err(e) => {
                        notes.push(format!(
                            "5.x topic {}: {e}; types not compared",
                            route.target_topic
                        ));
                        None
                    }
                },
                None => {
                    notes.push("5.x gRPC endpoint unreachable: message types, FIFO groups and delivery times not compared".into());
                    None
                }
            };
            let source = topic_reader(
                read_client,
                read_ns,
                &route.source_topic,
                &route.filter,
                READER_GROUP,
                cfg.source.pull_batch_size,
            );
            let target_ns = write_ns;
            let target = topic_reader(
                write_client,
                target_ns.clone(),
                &route.target_topic,
                "*",
                READER_GROUP,
                cfg.source.pull_batch_size,
            );
            match tokio::time::timeout(Duration::from_secs(15), target.refresh_route()).await {
                Err(_) => bail!(
                    "5.x name server {target_ns} ([target] namesrv_addr) did not answer in 15 s; \
                     check the address and that it is the 5.x cluster's name server"
                ),
                Ok(Err(crate::source::SourceError::TopicNotFound { .. })) => bail!(
                    "5.x topic `{}` (route {}) is not known to name server {target_ns}: is [target] \
                     namesrv_addr the name server of the 5.x cluster behind {}?",
                    route.target_topic,
                    route.name,
                    cfg.target.endpoints.join(",")
                ),
                Ok(Err(crate::source::SourceError::Remoting(e))) => bail!(
                    "5.x name server {target_ns} ([target] namesrv_addr) unreachable: {e}"
                ),
                Ok(Err(e)) => bail!(
                    "5.x name server {target_ns} ([target] namesrv_addr): {e}; check the address"
                ),
                Ok(Ok(_)) => {}
            }
            source
                .refresh_route()
                .await
                .map_err(|e| anyhow!("route {}: {e}", route.name))?;
            let translate = pipeline::rule::build_rule(1, &cfg, &route, Vec::new()).translate;
            routes.push(RouteVerifier {
                judge: RouteJudge {
                    target_topic: route.target_topic.clone(),
                    target_types,
                    translate,
                },
                source,
                target,
                index: TargetIndex::create(&work)?,
                target_read: BTreeMap::new(),
                queues: BTreeMap::new(),
                notes,
                route,
            });
        }
        if let Some(p) = publisher {
            p.shutdown().await;
        }
        Ok(Verifier {
            cfg,
            opts,
            since_ms,
            routes,
        })
    }

    /// One pass over every route: the stretch between what was verified
    /// and the checkpoints now.
    async fn pass(&mut self) -> anyhow::Result<Report> {
        // Checkpoints first: everything below them was acknowledged by 5.x
        // before the 5.x read below starts.
        let store = CheckpointStore::open_read_only(&self.cfg.checkpoint.dir)
            .map_err(|e| anyhow!("{e}"))?;
        let shared = pipeline::estate_view(&self.cfg).await?;
        let records = Records::new(&store, shared.as_ref());
        let mut reports = Vec::new();
        let mut progress = Progress::new();
        for rv in &mut self.routes {
            reports.push(
                rv.pass(&records, &self.cfg, self.since_ms, &mut progress)
                    .await?,
            );
        }
        drop(store);
        // DELAY messages due a moment ago may still sit in 5.x's timer
        // store: give the 5.x timer a little time before calling them lost.
        for _ in 0..6 {
            let waiting: usize = self.routes.iter().map(|r| r.waiting_for_5x_timer()).sum();
            if waiting == 0 {
                break;
            }
            eprintln!(
                "verify: {waiting} DELAY message(s) due moments ago are not in 5.x yet; \
                 waiting 5 s for the 5.x timer to deliver them"
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
            reports.clear();
            for rv in &mut self.routes {
                reports.push(rv.settle(&self.cfg, &mut progress).await?);
            }
        }
        Ok(Report::new(&self.cfg.file, reports))
    }
}

impl RouteVerifier {
    async fn pass(
        &mut self,
        records: &Records<'_>,
        cfg: &BridgeConfig,
        since_ms: Option<i64>,
        progress: &mut Progress,
    ) -> anyhow::Result<RouteReport> {
        let name = self.route.name.clone();
        let mut checkpoints = records
            .store()
            .route_checkpoints(&name)
            .map_err(|e| anyhow!("{e}"))?;
        if cfg.instances.coordinate {
            checkpoints = self.estate_checkpoints(cfg, checkpoints).await?;
        }
        let journal = records.journal(&name).map_err(|e| anyhow!("{e}"))?;
        let mut quarantined: BTreeMap<SourceQueue, HashSet<i64>> = BTreeMap::new();
        for e in records
            .quarantine_list(Some(&name))
            .map_err(|e| anyhow!("{e}"))?
        {
            quarantined
                .entry(e.queue.clone())
                .or_default()
                .insert(e.offset);
        }
        let current_rule = pipeline::rule::build_rule(1, cfg, &self.route, Vec::new()).cutover;

        // 5.x: everything new since the last pass, into the index.
        self.read_target(cfg, progress).await?;

        // 4.x: each queue from where it was verified to its checkpoint.
        if checkpoints.is_empty() {
            let note = "no checkpoints yet: the bridge has forwarded nothing on this route";
            if !self.notes.iter().any(|n| n == note) {
                self.notes.push(note.into());
            }
        }
        let mut ranges = Vec::new();
        for (queue, cp) in &checkpoints {
            let history = QueueHistory::build(&journal, queue, &current_rule);
            if !self.queues.contains_key(queue) {
                let recorded = records
                    .route_start(&name, queue)
                    .map_err(|e| anyhow!("{e}"))?;
                let from = self.start_offset(queue, since_ms, recorded).await?;
                self.queues.insert(
                    queue.clone(),
                    QueueMatcher::new(queue.clone(), from, history.clone()),
                );
            }
            let matcher = self
                .queues
                .get_mut(queue)
                .ok_or_else(|| anyhow!("queue state lost"))?;
            matcher.refresh(history, quarantined.remove(queue).unwrap_or_default());
            if cp.offset > matcher.report.to {
                ranges.push((queue.clone(), matcher.report.to, cp.offset));
            }
        }
        let total: i64 = ranges.iter().map(|(_, from, to)| to - from).sum();
        let ends: Vec<(SourceQueue, i64)> =
            ranges.iter().map(|(q, _, to)| (q.clone(), *to)).collect();
        let mut rx = read_many(
            &self.source,
            ranges,
            cfg.source.pull_batch_size,
            READ_PARALLEL,
        );
        let mut read = 0u64;
        while let Some((queue, piece)) = rx.recv().await {
            let matcher = self
                .queues
                .get_mut(&queue)
                .ok_or_else(|| anyhow!("queue state lost"))?;
            match piece? {
                Piece::Records {
                    records,
                    undecodable,
                } => {
                    read += (records.len() + undecodable.len()) as u64;
                    for rec in &records {
                        matcher.record(rec, &self.judge, &self.index)?;
                    }
                    for u in &undecodable {
                        matcher.undecodable(u);
                    }
                }
                Piece::Expired { from, to } => {
                    matcher.report.counts.expired += u64::try_from(to - from).unwrap_or(0);
                    self.notes.push(format!(
                        "{queue}: offsets {from}..{to} were removed from 4.x (retention) while verify read them; \
                         NOT verified (run verify again: it starts at what 4.x still holds)"
                    ));
                }
            }
            progress
                .tick(|| format!("route {name}: read {read} of {total} 4.x message(s) to verify"));
        }
        for (queue, to) in ends {
            if let Some(matcher) = self.queues.get_mut(&queue) {
                matcher.report.to = to;
            }
        }
        let compare_types = self.judge.target_types.is_some();
        for matcher in self.queues.values_mut() {
            matcher.recheck_missing(&self.index, compare_types)?;
        }

        let last_percent = self
            .queues
            .keys()
            .map(|q| {
                QueueHistory::build(&journal, q, &current_rule)
                    .last()
                    .percent
            })
            .max();
        if let Some(p) = last_percent {
            if p != current_rule.percent && self.queues.len() == checkpoints.len() {
                let note = format!(
                    "the cutover journal's last percent ({p}%) differs from the config's ({}%): edited while \
                     the bridge was stopped, or not yet applied? Offsets after the last journal entry were \
                     judged by the journal",
                    current_rule.percent
                );
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
            }
        }
        Ok(self.build_report())
    }

    /// Reads what 5.x holds beyond what the index has, into the index.
    /// Instances sharing an estate: every queue of the route's topic, at
    /// the later of this store's checkpoint and the route's shared
    /// position (what another instance confirmed), so that the verdict
    /// covers the estate and not only the queues this instance forwarded.
    async fn estate_checkpoints(
        &self,
        cfg: &BridgeConfig,
        local: Vec<(SourceQueue, Checkpoint)>,
    ) -> anyhow::Result<Vec<(SourceQueue, Checkpoint)>> {
        let mut by_queue: BTreeMap<SourceQueue, Checkpoint> = local.into_iter().collect();
        let queues = self.source.refresh_route().await.map_err(|e| {
            anyhow!(
                "route {}: 4.x topic {}: {e}",
                self.route.name,
                self.route.source_topic
            )
        })?;
        for q in queues {
            let group = crate::pipeline::positions::PositionHome::of_configured_route(
                cfg,
                &self.route.name,
            )
            .read(&self.source, &q)
            .await
            .map_err(|e| {
                anyhow!(
                    "route {}: the instances' position of {q}: {e}",
                    self.route.name
                )
            })?;
            let Some(offset) = group else {
                continue;
            };
            let cp = by_queue.entry(q).or_insert(Checkpoint {
                offset,
                updated_ms: 0,
            });
            cp.offset = cp.offset.max(offset);
        }
        Ok(by_queue.into_iter().collect())
    }

    async fn read_target(
        &mut self,
        cfg: &BridgeConfig,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let name = self.route.name.clone();
        let target_queues = self
            .target
            .refresh_route()
            .await
            .map_err(|e| anyhow!("5.x topic {}: {e}", self.route.target_topic))?;
        let mut ranges = Vec::new();
        for tq in target_queues {
            let max = self
                .target
                .max_offset(&tq)
                .await
                .map_err(|e| anyhow!("5.x topic {} {tq}: {e}", self.route.target_topic))?;
            let from = match self.target_read.get(&tq) {
                Some(o) => *o,
                None => self
                    .target
                    .min_offset(&tq)
                    .await
                    .map_err(|e| anyhow!("5.x topic {} {tq}: {e}", self.route.target_topic))?,
            };
            ranges.push((tq, from, max));
        }
        let ends: Vec<(SourceQueue, i64)> =
            ranges.iter().map(|(q, _, to)| (q.clone(), *to)).collect();
        let mut rx = read_many(
            &self.target,
            ranges,
            cfg.source.pull_batch_size,
            READ_PARALLEL,
        );
        while let Some((tq, piece)) = rx.recv().await {
            if let Piece::Records { records, .. } = piece? {
                let copies: Vec<StoredCopy> = records
                    .iter()
                    .map(|r| StoredCopy {
                        at: TargetPosition {
                            queue: tq.to_string(),
                            offset: r.queue_offset,
                        },
                        fingerprint: Fingerprint::stored(r),
                    })
                    .collect();
                self.index.add(&copies)?;
            }
            let read = self.index.records();
            progress.tick(|| {
                format!(
                    "route {name}: read {read} record(s) of 5.x topic {}",
                    self.route.target_topic
                )
            });
        }
        self.target_read.extend(ends);
        Ok(())
    }

    /// Missing messages that are DELAY messages due a moment ago: a 5.x
    /// server holds each in its timer store until its delivery time and
    /// moves it into the topic a little later (the test peer ~2 s), while
    /// the 4.x broker may already have released its copy.
    fn waiting_for_5x_timer(&self) -> usize {
        self.queues.values().map(|m| m.recent_delay_missing()).sum()
    }

    /// Re-reads 5.x and looks again for what was missing.
    async fn settle(
        &mut self,
        cfg: &BridgeConfig,
        progress: &mut Progress,
    ) -> anyhow::Result<RouteReport> {
        self.read_target(cfg, progress).await?;
        let compare_types = self.judge.target_types.is_some();
        for matcher in self.queues.values_mut() {
            matcher.recheck_missing(&self.index, compare_types)?;
        }
        Ok(self.build_report())
    }

    fn build_report(&self) -> RouteReport {
        let mut report = RouteReport {
            route: self.route.name.clone(),
            source_topic: self.route.source_topic.clone(),
            target_topic: self.route.target_topic.clone(),
            target_records: self.index.records(),
            notes: self.notes.clone(),
            ..Default::default()
        };
        for m in self.queues.values() {
            report.totals.add(&m.report.counts);
            report.queues.push(m.report.clone());
        }
        if report.totals.unexpected_found > 0 {
            report.notes.push(format!(
                "{} message(s) held on 4.x by the rule history were found in 5.x anyway: the journal \
                 does not tell the whole story (a percent edited while the bridge was stopped?)",
                report.totals.unexpected_found
            ));
        }
        report
    }

    /// Where a queue's verification starts: `--since`, else the offset the
    /// route recorded as the queue's start, else the route's start position
    /// when it can be recomputed.
    async fn start_offset(
        &self,
        queue: &SourceQueue,
        since_ms: Option<i64>,
        recorded: Option<i64>,
    ) -> anyhow::Result<i64> {
        let min = self
            .source
            .min_offset(queue)
            .await
            .map_err(|e| anyhow!("route {} {queue}: {e}", self.route.name))?;
        let at = |ms: i64| async move {
            self.source
                .offset_at(queue, ms)
                .await
                .map_err(|e| anyhow!("route {} {queue}: {e}", self.route.name))
        };
        Ok(match (since_ms, &self.route.start) {
            (Some(ms), _) => at(ms).await?.max(min),
            (None, _) if recorded.is_some() => recorded.unwrap_or(min).max(min),
            (None, StartPosition::Earliest) => min,
            (None, StartPosition::Timestamp(ms)) => at(*ms).await?.max(min),
            (None, start) => bail!(
                "route {} started at `{start}`: the offset it started from is not recorded, so verify \
                 cannot tell what it should have forwarded; pass --since TIME (the time the route first \
                 started, RFC 3339, or a duration ago such as 2h)",
                self.route.name
            ),
        })
    }
}

async fn terminated(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn install_metrics(listen: SocketAddr) -> anyhow::Result<()> {
    // Not `metrics::install`: that one also serves `rmq_bridge_up`, which
    // would hide a stopped daemon from the RmqBridgeDown alert.
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| {
            anyhow!("cannot serve verify metrics on {listen}: {e}; pass another --metrics-listen")
        })?;
    crate::metrics::describe(crate::metrics::VERIFY_METRICS);
    Ok(())
}

fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, text)
        .with_context(|| format!("cannot write the JSON report to {}", path.display()))
}

fn finish_pass(cfg: &BridgeConfig, opts: &VerifyOptions, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &opts.json {
        write_json(path, report)?;
    }
    if let Err(e) = StoredVerdict::of(report).save(&cfg.checkpoint.dir) {
        eprintln!("verify: {e:#} (check --decommission will not see this verdict)");
    }
    report::export_metrics(report);
    Ok(())
}

/// Runs `verify`; `Ok(true)` when clean.
pub async fn run(config_path: &Path, opts: VerifyOptions) -> anyhow::Result<bool> {
    let cfg = config::load(config_path).map_err(|e| anyhow!("{e}"))?;
    if opts.follow {
        if let Some(listen) = opts.metrics_listen {
            install_metrics(listen)?;
            eprintln!("verify: serving rmq_bridge_verify_* metrics on http://{listen}/metrics");
        }
    }
    let started = Instant::now();
    let mut verifier = Verifier::new(cfg, opts).await?;
    if !verifier.opts.follow {
        let report = verifier.pass().await?;
        print!("{}", report.table());
        finish_pass(&verifier.cfg, &verifier.opts, &report)?;
        eprintln!(
            "verify: finished in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(report.is_clean());
    }
    // SIGTERM (systemd stop) ends --follow like Ctrl-C, so the temporary
    // index is removed on the way out.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut last_clean = true;
    let mut printed_failure = false;
    loop {
        match verifier.pass().await {
            Ok(report) => {
                let t = &report.totals;
                println!(
                    "{} verify: {} expected, {} found, {} missing, {} damaged, {} duplicated — {}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                    t.expected,
                    t.found,
                    t.missing,
                    t.damaged,
                    t.duplicated,
                    report.verdict.to_uppercase()
                );
                if !report.is_clean() && !printed_failure {
                    print!("{}", report.table());
                    printed_failure = true;
                }
                if report.is_clean() {
                    printed_failure = false;
                }
                last_clean = report.is_clean();
                finish_pass(&verifier.cfg, &verifier.opts, &report)?;
            }
            Err(e) => {
                eprintln!(
                    "verify: pass failed: {e:#}; retrying in {:?}",
                    verifier.opts.interval
                );
                metrics::counter!(crate::metrics::VERIFY_ERRORS_TOTAL).increment(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(verifier.opts.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminated(&mut term) => break,
        }
    }
    Ok(last_clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("1970-01-01T00:00:10Z", 0).unwrap(), 10_000);
        assert_eq!(
            parse_since("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert!(parse_since("yesterday", 0).is_err());
    }
}
