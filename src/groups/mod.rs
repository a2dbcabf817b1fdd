//! `rmq-bridge groups translate`: a consumer group's positions carried
//! exactly from one cluster to the other (issue 19).
//!
//! For group G and a route: read every message of the cluster G leaves
//! ("from") and of the one it moves to ("to") over Remoting, match them by
//! message id, and give each "to" queue the offset of the first message G
//! has not consumed on the "from" side (translate.rs owns that rule). With
//! `--apply` the positions are written to the "to" brokers
//! (UPDATE_CONSUMER_OFFSET) and read back, after refusing while G has live
//! consumers on either side (unless forced) or where a position would move
//! backwards (unless allowed).
//!
//! Owns: reading both sides and the apply interlocks. Must not touch: the
//! pipeline, checkpoints.

pub mod keeper;
pub mod translate;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use crate::checkpoint::SourceQueue;
use crate::config::{BridgeConfig, Direction, RouteConfig};
use crate::pipeline;
use crate::remoting::{LiveConsumers, RemotingClient};
use crate::source::{SourceSettings, TopicSource};
use translate::{id_key, translate_queue, IdKey, Origins};

/// Which way the group moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Toward {
    /// From 4.x to 5.x (the migration).
    FiveX,
    /// From 5.x back to 4.x (a rollback of consumers).
    FourX,
}

#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub group: String,
    /// The route whose topics the group consumes; the only route if None.
    pub route: Option<String>,
    pub toward: Toward,
    pub apply: bool,
    /// Apply although the group has (or may have) live consumers.
    pub force: bool,
    /// Apply while the group still consumes on the side it leaves (the
    /// daemon keeping a group translated until it moves); live consumers
    /// on the destination still refuse.
    pub source_may_be_live: bool,
    /// Progress lines on stderr (the command; not the daemon).
    pub progress: bool,
    /// Apply although a position moves backwards.
    pub allow_backwards: bool,
    pub json: Option<PathBuf>,
}

/// One "to" queue's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct QueueLine {
    pub broker: String,
    pub queue_id: i32,
    pub translated: i64,
    /// The group's position there before (None: none).
    pub current: Option<i64>,
    /// Already consumed on the "from" side, delivered again above `translated`.
    pub redeliver: u64,
    /// Not consumed yet: what the group receives first.
    pub pending: u64,
    pub max_offset: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub route: String,
    pub from_cluster: String,
    pub to_cluster: String,
    pub from_topic: String,
    pub to_topic: String,
    /// The group's committed offset per "from" queue.
    pub committed: Vec<(String, Option<i64>)>,
    pub queues: Vec<QueueLine>,
    /// Messages read on each side.
    pub from_messages: u64,
    pub to_messages: u64,
    /// "From" messages the group has not consumed that the "to" side does
    /// not hold (held by a cutover below 100 %, or not bridged yet): moving
    /// the group now would never deliver them.
    pub held_not_forwarded: u64,
    pub redeliver: u64,
    pub applied: bool,
    pub seconds: f64,
}

/// `--apply` refused: what was found, and why nothing was written.
#[derive(Debug)]
pub struct NotApplied {
    pub report: Box<GroupReport>,
    pub reasons: Vec<String>,
}

impl NotApplied {
    /// Refused because the group already has live consumers where it is
    /// moved to (it moved).
    pub fn moved(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| r.contains(&format!("live consumers on {}", self.report.to_cluster)))
    }
}

impl std::fmt::Display for NotApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not applied:\n  {}\n(--force applies despite live consumers and messages the group would never receive)",
            self.reasons.join("\n  ")
        )
    }
}

impl std::error::Error for NotApplied {}

/// One "to" queue as read: its max offset and (offset, id key) per message.
struct ToQueue {
    queue: SourceQueue,
    max: i64,
    records: Vec<(i64, IdKey)>,
}

struct Side {
    cluster: &'static str,
    client: RemotingClient,
    source: TopicSource,
}

fn side(
    cfg: &BridgeConfig,
    direction: Direction,
    topic: &str,
    cluster: &'static str,
) -> anyhow::Result<Side> {
    let (client, namesrv) = pipeline::read_side(cfg, direction).map_err(anyhow::Error::msg)?;
    let source = TopicSource::new(
        client.clone(),
        namesrv,
        SourceSettings {
            topic: topic.to_string(),
            filter: "*".into(),
            consumer_group: cfg.source.consumer_group.clone(),
            pull_batch_size: 32,
            long_poll: Duration::from_millis(0),
        },
    );
    Ok(Side {
        cluster,
        client,
        source,
    })
}

fn pick_route<'c>(cfg: &'c BridgeConfig, name: Option<&str>) -> anyhow::Result<&'c RouteConfig> {
    match name {
        Some(n) => cfg
            .route(n)
            .ok_or_else(|| anyhow!("no route `{n}` in {}", cfg.file.display())),
        None if cfg.routes.len() == 1 => Ok(&cfg.routes[0]),
        None => bail!(
            "{} has {} routes: name the one whose topics the group consumes with --route",
            cfg.file.display(),
            cfg.routes.len()
        ),
    }
}

/// Live consumers of `group` on every broker of `side`: Err names them, or
/// the broker that could not say.
async fn live(side: &Side, queues: &[SourceQueue], group: &str) -> Result<(), String> {
    let mut addrs: Vec<String> = queues
        .iter()
        .filter_map(|q| side.source.master_addr(q).ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    for addr in addrs {
        match side.client.live_consumers(&addr, group).await {
            LiveConsumers::None => {}
            LiveConsumers::Some(ids) => {
                return Err(format!(
                    "group `{group}` has live consumers on {} (broker {addr}: {})",
                    side.cluster,
                    ids.join(", ")
                ))
            }
            LiveConsumers::Unknown(e) => {
                return Err(format!(
                "cannot tell whether group `{group}` has live consumers on {} (broker {addr}: {e})",
                side.cluster
            ))
            }
        }
    }
    Ok(())
}

fn progress(what: &str, n: u64, started: Instant) {
    eprintln!(
        "groups: {what}: {n} messages read ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
}

pub async fn run(cfg: &BridgeConfig, opts: &GroupOptions) -> anyhow::Result<GroupReport> {
    let started = Instant::now();
    let route = pick_route(cfg, opts.route.as_deref())?;
    // The route's 4.x and 5.x topics, whichever way it carries messages.
    let (four_topic, five_topic) = match route.direction {
        Direction::Forward => (&route.source_topic, &route.target_topic),
        Direction::Reverse => (&route.target_topic, &route.source_topic),
    };
    if cfg.target.namesrv_addrs.is_empty() {
        bail!(
            "groups translate reads 5.x over Remoting: set [target] namesrv_addr in {}",
            cfg.file.display()
        );
    }
    let four = side(cfg, Direction::Forward, four_topic, "4.x")?;
    let five = side(cfg, Direction::Reverse, five_topic, "5.x")?;
    let (from, to, from_topic, to_topic) = match opts.toward {
        Toward::FiveX => (four, five, four_topic, five_topic),
        Toward::FourX => (five, four, five_topic, four_topic),
    };
    let group = opts.group.as_str();
    let from_queues = from
        .source
        .refresh_route()
        .await
        .with_context(|| format!("{} topic `{from_topic}`", from.cluster))?;
    let to_queues = to
        .source
        .refresh_route()
        .await
        .with_context(|| format!("{} topic `{to_topic}`", to.cluster))?;

    // 1. The "to" side, kept compactly: (offset, id key) per queue.
    let mut to_records: Vec<ToQueue> = Vec::new();
    let mut to_ids: HashSet<IdKey> = HashSet::new();
    let mut to_messages = 0u64;
    for q in &to_queues {
        let addr = to.source.master_addr(q)?;
        let (min, max) = (
            to.source.min_offset(q).await?,
            to.source.max_offset(q).await?,
        );
        let mut records = Vec::with_capacity((max - min).max(0) as usize);
        crate::decommission::probe::scan_queue(
            &to.client,
            &addr,
            to_topic,
            q.queue_id,
            min,
            max,
            |r| {
                let key = id_key(r.message_id());
                records.push((r.queue_offset, key));
                to_ids.insert(key);
            },
        )
        .await
        .with_context(|| format!("reading {} {q}", to.cluster))?;
        to_messages += records.len() as u64;
        to_records.push(ToQueue {
            queue: q.clone(),
            max,
            records,
        });
        if opts.progress {
            progress(&format!("{} {to_topic}", to.cluster), to_messages, started);
        }
    }

    // 2. The "from" side: where each message sits, the group's offsets, and
    // what it has not consumed that the other side lacks.
    let mut origins = Origins::with_capacity(to_messages as usize);
    let mut committed = Vec::new();
    let mut committed_offsets = Vec::new();
    let mut from_messages = 0u64;
    let mut held = 0u64;
    for (i, q) in from_queues.iter().enumerate() {
        let addr = from.source.master_addr(q)?;
        let (min, max) = (
            from.source.min_offset(q).await?,
            from.source.max_offset(q).await?,
        );
        let c = from
            .client
            .query_consumer_offset(&addr, group, from_topic, q.queue_id)
            .await
            .with_context(|| format!("group `{group}`'s offset on {} {q}", from.cluster))?;
        committed.push((q.to_string(), c));
        // No offset: the group consumed nothing of the queue.
        let c = c.unwrap_or(min).max(min);
        committed_offsets.push(c);
        crate::decommission::probe::scan_queue(
            &from.client,
            &addr,
            from_topic,
            q.queue_id,
            min,
            max,
            |r| {
                origins.insert(r.message_id(), i as u32, r.queue_offset);
                if r.queue_offset >= c && !to_ids.contains(&id_key(r.message_id())) {
                    held += 1;
                }
            },
        )
        .await
        .with_context(|| format!("reading {} {q}", from.cluster))?;
        from_messages += (max - min).max(0) as u64;
        if opts.progress {
            progress(
                &format!("{} {from_topic}", from.cluster),
                from_messages,
                started,
            );
        }
    }
    drop(to_ids);

    // 3. Translate each "to" queue.
    let mut queues = Vec::new();
    for ToQueue {
        queue: q,
        max,
        records,
    } in &to_records
    {
        let t = translate_queue(
            records
                .iter()
                .map(|(offset, key)| (*offset, origins.consumed_key(*key, &committed_offsets))),
            *max,
        );
        let addr = to.source.master_addr(q)?;
        let current = to
            .client
            .query_consumer_offset(&addr, group, to_topic, q.queue_id)
            .await
            .with_context(|| format!("group `{group}`'s offset on {} {q}", to.cluster))?;
        queues.push(QueueLine {
            broker: q.broker_name.clone(),
            queue_id: q.queue_id,
            translated: t.offset,
            current,
            redeliver: t.redeliver,
            pending: t.pending,
            max_offset: *max,
        });
    }
    let mut report = GroupReport {
        group: group.to_string(),
        route: route.name.clone(),
        from_cluster: from.cluster.into(),
        to_cluster: to.cluster.into(),
        from_topic: from_topic.clone(),
        to_topic: to_topic.clone(),
        committed,
        redeliver: queues.iter().map(|q| q.redeliver).sum(),
        queues,
        from_messages,
        to_messages,
        held_not_forwarded: held,
        applied: false,
        seconds: 0.0,
    };

    if opts.apply {
        let mut refusals = Vec::new();
        if !opts.force {
            if !opts.source_may_be_live {
                if let Err(why) = live(&from, &from_queues, group).await {
                    refusals.push(format!(
                        "{why}: its position there is still moving; stop them first"
                    ));
                }
            }
            if let Err(why) = live(&to, &to_queues, group).await {
                refusals.push(format!(
                    "{why}: they would overwrite the translated positions; stop them first"
                ));
            }
        }
        if !opts.force && report.held_not_forwarded > 0 {
            refusals.push(format!(
                "{} message(s) the group has not consumed on {} are not on {} (held by a cutover below 100 %, or not bridged yet): the group would never receive them there; raise the route to 100 % and let it drain first",
                report.held_not_forwarded, report.from_cluster, report.to_cluster
            ));
        }
        if !opts.allow_backwards {
            for q in &report.queues {
                if let Some(c) = q.current.filter(|c| *c > q.translated) {
                    refusals.push(format!(
                        "{}:{}: the group is at {c} on {}, the translation says {}; moving it back re-delivers {} message(s) (--allow-backwards)",
                        q.broker, q.queue_id, to.cluster, q.translated, c - q.translated
                    ));
                }
            }
        }
        if !refusals.is_empty() {
            report.seconds = started.elapsed().as_secs_f64();
            return Err(NotApplied {
                report: Box::new(report),
                reasons: refusals,
            }
            .into());
        }
        for (line, ToQueue { queue: q, .. }) in report.queues.iter().zip(&to_records) {
            let addr = to.source.master_addr(q)?;
            let write = || {
                to.client.update_consumer_offset(
                    &addr,
                    group,
                    to_topic,
                    q.queue_id,
                    line.translated,
                )
            };
            match write().await {
                Err(crate::remoting::RemotingError::Broker { code, .. })
                    if code == crate::remoting::codes::response::SUBSCRIPTION_GROUP_NOT_EXIST =>
                {
                    // The group is new there: create it, then write.
                    to.client
                        .create_subscription_group(&addr, group)
                        .await
                        .with_context(|| {
                            format!("creating group `{group}` on {} broker {addr}", to.cluster)
                        })?;
                    write().await
                }
                other => other,
            }
            .with_context(|| format!("writing group `{group}`'s offset on {} {q}", to.cluster))?;
        }
        // Read back: a broker answers success and writes nothing while a
        // server-side reset is pending.
        let mut wrong = Vec::new();
        for (line, ToQueue { queue: q, .. }) in report.queues.iter().zip(&to_records) {
            let addr = to.source.master_addr(q)?;
            let got = to
                .client
                .query_consumer_offset(&addr, group, to_topic, q.queue_id)
                .await
                .with_context(|| {
                    format!(
                        "reading back group `{group}`'s offset on {} {q}",
                        to.cluster
                    )
                })?;
            if got != Some(line.translated) {
                wrong.push(format!("{q}: wrote {}, reads {got:?}", line.translated));
            }
        }
        if !wrong.is_empty() {
            bail!(
                "the {} brokers did not keep the written positions (a server-side offset reset pending?): {}",
                to.cluster,
                wrong.join("; ")
            );
        }
        report.applied = true;
    }
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// The report as a table.
pub fn render(r: &GroupReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "group {} ({} {} -> {} {}), route {}: {} message(s) read on {}, {} on {}",
        r.group,
        r.from_cluster,
        r.from_topic,
        r.to_cluster,
        r.to_topic,
        r.route,
        r.from_messages,
        r.from_cluster,
        r.to_messages,
        r.to_cluster
    );
    let committed: BTreeMap<&str, String> = r
        .committed
        .iter()
        .map(|(q, c)| (q.as_str(), c.map_or("none".to_string(), |c| c.to_string())))
        .collect();
    let _ = writeln!(out, "  committed on {}: {committed:?}", r.from_cluster);
    let _ = writeln!(
        out,
        "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
        format!("{} queue", r.to_cluster),
        "translated",
        "current",
        "max",
        "redeliver",
        "pending"
    );
    for q in &r.queues {
        let _ = writeln!(
            out,
            "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("{}:{}", q.broker, q.queue_id),
            q.translated,
            q.current.map_or("none".into(), |c| c.to_string()),
            q.max_offset,
            q.redeliver,
            q.pending
        );
    }
    let _ = writeln!(
        out,
        "  {} to re-deliver (already consumed on {}, interleaved above a position); 0 skipped",
        r.redeliver, r.from_cluster
    );
    if r.held_not_forwarded > 0 {
        let _ = writeln!(
            out,
            "  WARNING: {} message(s) the group has not consumed on {} are not on {} (held by a cutover below 100 %, or not bridged yet): the group would never receive them there",
            r.held_not_forwarded, r.from_cluster, r.to_cluster
        );
    }
    let _ = writeln!(
        out,
        "  {} in {:.1} s",
        if r.applied {
            format!(
                "APPLIED: the positions were written to {} and read back",
                r.to_cluster
            )
        } else {
            "not applied (--apply writes them)".to_string()
        },
        r.seconds
    );
    out
}
