//! Implementations of the command-line verbs. Each returns an error whose
//! text is meant for the operator who typed the command.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::json;
use tokio::sync::watch;

use std::sync::Arc;

use crate::checkpoint::shared::{Records, SharedView};
use crate::checkpoint::{now_ms, CheckpointStore, QuarantineEntry};
use crate::config::{self, BridgeConfig};
use crate::grpc::{MessageKind, OutgoingMessage, Publisher};
use crate::pipeline::{self, quarantine::codec as quarantine_codec};
use crate::remoting::{MessageRecord, NameServers, RemotingClient, RemotingClientConfig};
use crate::source::{PullOutcome, SourceSettings, TopicSource};
use crate::translate;

pub fn init_logging(default_level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn load(path: &Path) -> anyhow::Result<BridgeConfig> {
    config::load(path).map_err(|e| anyhow!("{e}"))
}

pub async fn run(path: &Path, log_json: bool) -> anyhow::Result<()> {
    let cfg = load(path)?;
    init_logging(
        &cfg.log_level,
        log_json || cfg.log_format == config::LogFormat::Json,
    );
    if let Some(listen) = cfg.metrics_listen {
        crate::metrics::install(listen).map_err(anyhow::Error::msg)?;
        tracing::info!(%listen, "serving Prometheus metrics at /metrics");
    }
    pipeline::run_daemon(cfg).await
}

pub async fn check(path: &Path, online: bool) -> anyhow::Result<()> {
    let cfg = load(path)?;
    if cfg.target.namesrv_addrs.is_empty() {
        println!(
            "  note: no [target] namesrv_addr: `rmq-bridge verify` cannot read 5.x back until it is set"
        );
    }
    println!("{}: valid, {} route(s)", path.display(), cfg.routes.len());
    for r in &cfg.routes {
        println!(
            "  {}: {} [{}] -> {}  cutover {}%  routing_key {:?}  environments {:?}  start {}{}",
            r.name,
            r.source_topic,
            r.filter,
            r.target_topic,
            r.cutover_percent,
            r.routing_key,
            r.environments,
            r.start,
            r.commit_as_group
                .as_ref()
                .map(|g| format!("  commit_as_group {g}"))
                .unwrap_or_default()
        );
        if r.scheduled == crate::config::ScheduledMode::Forward {
            println!(
                "    scheduled forward: pending 4.x delay-level messages go to 5.x early (levels {}); the target must be a DELAY topic",
                cfg.source.delay_levels
            );
        }
    }
    if !online {
        return Ok(());
    }
    let mut problems = 0;
    let namesrv = pipeline::name_servers(&cfg).map_err(anyhow::Error::msg)?;
    let client = pipeline::remoting_client(&cfg);
    let publisher = match Publisher::connect(pipeline::grpc_config(&cfg)).await {
        Ok(p) => Some(p),
        Err(e) => {
            println!("  5.x {}: UNREACHABLE: {e}", cfg.target.endpoints.join(","));
            problems += 1;
            None
        }
    };
    for r in &cfg.routes {
        match namesrv.topic_route(&client, &r.source_topic).await {
            Ok(Some(route)) => {
                let queues = route.readable_queues();
                println!(
                    "  {}: 4.x topic {} has {} readable queue(s)",
                    r.name,
                    r.source_topic,
                    queues.len()
                );
                // The name server answers anyone; a broker with an ACL only
                // signed requests. Ask each master for one queue's end, as
                // every pull will.
                let mut asked = std::collections::BTreeSet::new();
                for (broker_name, queue_id) in &queues {
                    if !asked.insert(broker_name.clone()) {
                        continue;
                    }
                    let Some(addr) = route.master_addr(broker_name) else {
                        continue;
                    };
                    if let Err(e) = client
                        .get_max_offset(addr, &r.source_topic, *queue_id)
                        .await
                    {
                        println!(
                            "  {}: 4.x broker {broker_name} ({addr}) refuses to serve {}: {e}{}",
                            r.name,
                            r.source_topic,
                            if cfg.source.credentials.is_none() {
                                " (no [source] credentials are set: an ACL broker needs \
                                 RMQ_BRIDGE_SOURCE_ACCESS_KEY and RMQ_BRIDGE_SOURCE_SECRET_KEY)"
                            } else {
                                " (check RMQ_BRIDGE_SOURCE_ACCESS_KEY / _SECRET_KEY against the broker's plain_acl.yml)"
                            }
                        );
                        problems += 1;
                    }
                }
            }
            Ok(None) => {
                println!(
                    "  {}: 4.x topic {} NOT FOUND on {namesrv}",
                    r.name, r.source_topic
                );
                problems += 1;
            }
            Err(e) => {
                println!("  {}: 4.x name server error: {e}", r.name);
                problems += 1;
            }
        }
        if let Some(p) = &publisher {
            match p.accepted_types(&r.target_topic).await {
                Ok(types) => {
                    println!(
                        "  {}: 5.x topic {} accepts {:?}",
                        r.name, r.target_topic, types
                    );
                    let delay = crate::grpc::TopicMessageType::Delay;
                    if r.scheduled == crate::config::ScheduledMode::Forward
                        && !types.contains(&delay)
                    {
                        println!(
                            "  {}: scheduled = \"forward\" needs a DELAY target, but 5.x topic {} accepts {:?}: pending messages would become due at once. Create the target with message.type=DELAY, or set scheduled = \"ignore\"",
                            r.name, r.target_topic, types
                        );
                        problems += 1;
                    }
                }
                Err(e) => {
                    println!("  {}: 5.x topic {}: {e}", r.name, r.target_topic);
                    problems += 1;
                }
            }
        }
    }
    if let Some(p) = publisher {
        p.shutdown().await;
    }
    problems += check_target_namesrv(&cfg).await;
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    println!("online check passed");
    Ok(())
}

/// `check --online`: the 5.x name server (`[target] namesrv_addr`, for
/// `verify`) answers and routes the target topics. Returns the problems.
async fn check_target_namesrv(cfg: &BridgeConfig) -> usize {
    if cfg.target.namesrv_addrs.is_empty() {
        return 0;
    }
    let namesrv = match NameServers::parse(&cfg.target.namesrv_addrs.join(";")) {
        Ok(n) => n,
        Err(e) => {
            println!("  5.x name server: {e}");
            return 1;
        }
    };
    let client = crate::verify::target_client(cfg);
    let mut problems = 0;
    for r in &cfg.routes {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            namesrv.topic_route(&client, &r.target_topic),
        )
        .await;
        match answer {
            Ok(Ok(Some(_))) => println!(
                "  {}: 5.x topic {} routed by {namesrv} (verify can read it back)",
                r.name, r.target_topic
            ),
            Ok(Ok(None)) => {
                println!(
                    "  {}: 5.x topic {} NOT FOUND on {namesrv}: is [target] namesrv_addr the 5.x cluster's name server?",
                    r.name, r.target_topic
                );
                problems += 1;
            }
            Ok(Err(e)) => {
                println!("  5.x name server {namesrv} ([target] namesrv_addr) UNREACHABLE: {e}");
                return problems + 1;
            }
            Err(_) => {
                println!(
                    "  5.x name server {namesrv} ([target] namesrv_addr) did not answer in 5 s"
                );
                return problems + 1;
            }
        }
    }
    problems
}

/// `check --decommission`: the readiness report (see `crate::decommission`);
/// an error when any line is red, so the exit code says it.
pub async fn check_decommission(path: &Path) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let report = crate::decommission::run(&cfg).await?;
    print!("{}", report.render());
    if report.reds() > 0 {
        bail!(
            "not ready to decommission 4.x: {} red line(s)",
            report.reds()
        );
    }
    Ok(())
}

/// `verify`: reconciliation of 4.x against 5.x (see `crate::verify`); an
/// error when anything is missing or damaged, so the exit code says it.
pub async fn verify(path: &Path, opts: crate::verify::VerifyOptions) -> anyhow::Result<()> {
    if !crate::verify::run(path, opts).await? {
        bail!("verification failed: messages are missing or damaged in 5.x (see the table above)");
    }
    Ok(())
}

/// `rmq-bridge groups translate`: prints the table (and the JSON file).
pub async fn groups_translate(
    path: &Path,
    opts: &crate::groups::GroupOptions,
) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let report = crate::groups::run(&cfg, opts).await?;
    print!("{}", crate::groups::render(&report));
    Ok(())
}

/// Milliseconds since the epoch as RFC 3339 (UTC); 0 (unset) as `-`.
/// Anything RFC 3339 cannot spell — before 1970 or after 9999-12-31, which
/// a producer can put in the born timestamp — is printed as the raw number
/// rather than panicking (`to_string` panics when `Display` fails).
fn fmt_ms(ms: i64) -> String {
    use std::fmt::Write as _;
    /// 9999-12-31T23:59:59.999Z, the last instant humantime formats.
    const LAST_RFC3339_MS: i64 = 253_402_300_799_999;
    if ms == 0 {
        return "-".into();
    }
    if (1..=LAST_RFC3339_MS).contains(&ms) {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
        let mut out = String::new();
        if write!(out, "{}", humantime::format_rfc3339_millis(at)).is_ok() {
            return out;
        }
    }
    ms.to_string()
}

/// `[instances] coordinate = true`: the group's members and the queues
/// each owns by the allocation every member computes, with the group's
/// position of each queue (what the next owner starts from).
async fn print_instances(
    source: &TopicSource,
    group: &str,
    home: &crate::pipeline::positions::PositionHome,
) {
    let queues = match source.refresh_route().await {
        Ok(q) => q,
        Err(e) => {
            println!("  instances: cannot read the route: {e}");
            return;
        }
    };
    if queues.is_empty() {
        return;
    }
    let members = match pipeline::coordinate::group_members(source, &queues, group).await {
        Ok(m) => m,
        Err(e) => {
            println!("  instances: {e}");
            return;
        }
    };
    println!("  instances (group `{group}`): {}", members.len());
    let mut sorted = members.clone();
    sorted.sort();
    for member in &sorted {
        let owned = pipeline::ownership::allocate(&queues, &members, member);
        let mut shown = Vec::new();
        for q in &owned {
            let at = home.read(source, q).await.ok().flatten();
            shown.push(format!(
                "{q}@{}",
                at.map(|o| o.to_string()).unwrap_or_else(|| "?".into())
            ));
        }
        println!("    {member}: {} queue(s) {}", owned.len(), shown.join(" "));
    }
    if members.is_empty() {
        println!(
            "    none live: no queue is forwarded ({} queue(s) unowned)",
            queues.len()
        );
    }
}

pub async fn status(path: &Path, online: bool) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let store = CheckpointStore::open_read_only(&cfg.checkpoint.dir).map_err(|e| anyhow!("{e}"))?;
    let shared = if online {
        match pipeline::estate_view(&cfg).await {
            Ok(v) => v,
            Err(e) => {
                println!("estate: {e}\n  (journal and quarantine below are this instance's only)");
                None
            }
        }
    } else {
        None
    };
    let records = Records::new(&store, shared.as_ref());
    let forward =
        pipeline::read_side(&cfg, crate::config::Direction::Forward).map_err(anyhow::Error::msg)?;
    let reverse = pipeline::read_side(&cfg, crate::config::Direction::Reverse).ok();
    for r in &cfg.routes {
        let (arrow, read) = match r.direction {
            crate::config::Direction::Forward => ("4.x -> 5.x", Some(&forward)),
            crate::config::Direction::Reverse => ("5.x -> 4.x (reverse)", reverse.as_ref()),
        };
        let Some((client, namesrv)) = read else {
            println!(
                "route {}: reverse, but [target] namesrv_addr is not set",
                r.name
            );
            continue;
        };
        println!(
            "route {}: {} -> {}  {arrow}  cutover {}%  environments {:?}",
            r.name, r.source_topic, r.target_topic, r.cutover_percent, r.environments
        );
        let checkpoints = store
            .route_checkpoints(&r.name)
            .map_err(|e| anyhow!("{e}"))?;
        let source = TopicSource::new(
            client.clone(),
            namesrv.clone(),
            SourceSettings {
                topic: r.source_topic.clone(),
                filter: r.filter.clone(),
                consumer_group: cfg.source.consumer_group.clone(),
                pull_batch_size: 1,
                long_poll: Duration::from_millis(100),
            },
        );
        let reachable = online
            && tokio::time::timeout(Duration::from_secs(5), source.refresh_route())
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
        let mut total_lag = 0i64;
        println!(
            "  {:<24} {:>12} {:>12} {:>10}  updated",
            "queue", "checkpoint", "max", "lag"
        );
        for (queue, cp) in &checkpoints {
            let max = if reachable {
                tokio::time::timeout(Duration::from_secs(3), source.max_offset(queue))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            } else {
                None
            };
            let lag = max.map(|m| (m - cp.offset).max(0));
            total_lag += lag.unwrap_or(0);
            println!(
                "  {:<24} {:>12} {:>12} {:>10}  {}",
                queue.to_string(),
                cp.offset,
                max.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
                lag.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                fmt_ms(cp.updated_ms)
            );
        }
        if checkpoints.is_empty() {
            println!("  (no checkpoints yet)");
        } else if reachable {
            println!("  total lag: {total_lag} message(s)");
        } else if online {
            println!("  4.x not reachable: lag unknown");
        }
        if cfg.instances.coordinate && reachable {
            let home = pipeline::positions::PositionHome::of_configured_route(&cfg, &r.name);
            print_instances(&source, &cfg.source.consumer_group, &home).await;
        } else if cfg.instances.coordinate {
            println!(
                "  instances: shared through group `{}` (4.x not reachable: members unknown)",
                cfg.source.consumer_group
            );
        }
        if r.scheduled == crate::config::ScheduledMode::Forward {
            let side = pipeline::schedule_ledger::schedule_side_name(&r.name);
            let queues = store.route_checkpoints(&side).map_err(|e| anyhow!("{e}"))?;
            let (remembered, latest) = store
                .scheduled_summary(&r.name)
                .map_err(|e| anyhow!("{e}"))?;
            println!(
                "  scheduled forward: {} schedule queue checkpoint(s) as route {side}; {remembered} forwarded pending message(s) remembered, latest deadline {}",
                queues.len(),
                fmt_ms(latest.unwrap_or(0))
            );
        }
        let journal = records.journal(&r.name).map_err(|e| anyhow!("{e}"))?;
        if !journal.is_empty() {
            println!("  cutover journal:");
            for j in journal {
                let at = match (&j.queue, j.offset) {
                    (Some(q), Some(o)) => format!("took effect on {q} at offset {o}"),
                    _ => j.note.clone(),
                };
                println!(
                    "    {} gen {} {}% -> {}%: {at}",
                    fmt_ms(j.changed_at_ms),
                    j.generation,
                    j.from_percent,
                    j.to_percent
                );
            }
        }
        let quarantined = records
            .quarantine_list(Some(&r.name))
            .map_err(|e| anyhow!("{e}"))?
            .len();
        println!("  quarantined: {quarantined}");
        if let Ok(Some(reason)) = store.meta_get(&pipeline::stall_meta_key(&r.name)) {
            if !reason.is_empty() {
                println!(
                    "  STALLED (the daemon forwards nothing on this route until fixed): {reason}"
                );
            }
        }
    }
    Ok(())
}

/// With instances sharing an estate, the quarantine commands see every
/// instance's entries (the 5.x state topic) besides this store's.
pub async fn quarantine_list(path: &Path, route: Option<&str>) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let store = CheckpointStore::open_read_only(&cfg.checkpoint.dir).map_err(|e| anyhow!("{e}"))?;
    let shared = pipeline::estate_view(&cfg).await?;
    let entries = Records::new(&store, shared.as_ref())
        .quarantine_list(route)
        .map_err(|e| anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    for e in &entries {
        writeln!(
            out,
            "{}",
            json!({
                "route": e.route, "broker": e.queue.broker_name, "queue": e.queue.queue_id,
                "offset": e.offset, "msg_id": e.message_id, "reason": e.reason,
                "quarantined_at": fmt_ms(e.quarantined_at_ms), "replayable": matches!(quarantine_codec::decode_kept(&e.message_json), Ok(quarantine_codec::Kept::Translated(_))),
                "raw_record_kept": matches!(quarantine_codec::decode_kept(&e.message_json), Ok(quarantine_codec::Kept::RawRecord(_))),
            })
        )?;
    }
    eprintln!("{} quarantined message(s)", entries.len());
    Ok(())
}

fn open_for_write(cfg: &BridgeConfig) -> anyhow::Result<CheckpointStore> {
    CheckpointStore::open(&cfg.checkpoint.dir, true).map_err(|e| {
        anyhow!(
            "{e} (quarantine replay and drop need the daemon stopped: systemctl stop rmq-bridge)"
        )
    })
}

/// For `quarantine replay` / `drop` with instances sharing an estate: the
/// state topic as read, and an outbox that carries this store's removals
/// to it (None for a single instance).
async fn estate_for_write(
    cfg: &BridgeConfig,
    store: &CheckpointStore,
) -> anyhow::Result<(Option<SharedView>, Option<Arc<crate::estate::Outbox>>)> {
    if !cfg.instances.coordinate {
        return Ok((None, None));
    }
    let outbox =
        crate::estate::Outbox::new(pipeline::state_topic(cfg).map_err(anyhow::Error::msg)?);
    let view = outbox.attach(store).await.map_err(|e| anyhow!("{e}"))?;
    let view = view.ok_or_else(|| {
        anyhow!(
            "the estate state topic `{}` cannot be read on 5.x: the other instances' quarantine is unknown; try again when 5.x answers",
            cfg.instances.state_topic
        )
    })?;
    Ok((Some(view), Some(outbox)))
}

/// Publishes the removals of a replay or drop to the estate state topic.
async fn share_removals(outbox: Option<Arc<crate::estate::Outbox>>) -> anyhow::Result<()> {
    let Some(outbox) = outbox else {
        return Ok(());
    };
    outbox.flush().await.map_err(|e| {
        anyhow!(
            "{e}: removed here but not yet on the estate state topic ({} record(s)); other instances still list them. Run the command again when 5.x answers",
            outbox.pending()
        )
    })
}

/// What `quarantine replay` sends for a kept message: a DELAY delivery time
/// that has passed (or is nearer than `min_lead`) becomes `now_ms +
/// min_lead`, the earliest time the target accepts, as the live pipeline
/// clamps (`translate::clamp_delivery`, `[translate] delay_min_lead_ms`):
/// some 5.x servers refuse a past time ("Delivery time is invalid").
pub fn replay_message(
    mut msg: OutgoingMessage,
    now_ms: i64,
    min_lead: Duration,
) -> OutgoingMessage {
    if let MessageKind::Delay {
        delivery_timestamp_ms,
    } = msg.kind
    {
        msg.kind = MessageKind::Delay {
            delivery_timestamp_ms: translate::clamp_delivery(
                delivery_timestamp_ms,
                now_ms,
                min_lead,
            ),
        };
    }
    msg
}

/// The entries `quarantine replay|drop` address: those at `offset` (when
/// given) with message id `msg_id` (when given). Offsets repeat across
/// queues and, after a 4.x queue reset, within one queue, so an `--offset`
/// that matches several messages is refused unless `--msg-id` picks one or
/// `all` says every match is meant.
pub fn select_quarantined(
    entries: Vec<QuarantineEntry>,
    offset: Option<i64>,
    msg_id: Option<&str>,
    all: bool,
) -> anyhow::Result<Vec<QuarantineEntry>> {
    let chosen: Vec<QuarantineEntry> = entries
        .into_iter()
        .filter(|e| offset.map_or(true, |o| o == e.offset))
        .filter(|e| msg_id.map_or(true, |id| id == e.message_id))
        .collect();
    if offset.is_some() && msg_id.is_none() && !all && chosen.len() > 1 {
        let names: Vec<String> = chosen
            .iter()
            .map(|e| {
                format!(
                    "{} {} offset {} msg_id `{}`",
                    e.route, e.queue, e.offset, e.message_id
                )
            })
            .collect();
        bail!(
            "--offset matches {} quarantined messages ({}); name one with --msg-id (and --route), or pass --all for every match",
            chosen.len(),
            names.join("; ")
        );
    }
    Ok(chosen)
}

pub async fn quarantine_replay(
    path: &Path,
    route: Option<&str>,
    offset: Option<i64>,
    msg_id: Option<&str>,
    all: bool,
) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let store = open_for_write(&cfg)?;
    let (shared, outbox) = estate_for_write(&cfg, &store).await?;
    let publisher = Publisher::connect(pipeline::grpc_config(&cfg))
        .await
        .map_err(|e| anyhow!("5.x: {e}"))?;
    // A reverse route's messages go back to 4.x, never to 5.x where they
    // came from: the route's direction in the config, else the store's
    // binding of a route no longer configured.
    let four = crate::sink::RemotingSink::new(
        pipeline::remoting_client(&cfg),
        pipeline::name_servers(&cfg).map_err(anyhow::Error::msg)?,
        &pipeline::reverse_producer_group(&cfg),
    );
    let is_reverse = |route: &str| match cfg.route(route) {
        Some(r) => r.direction == crate::config::Direction::Reverse,
        None => store
            .route_topic(route)
            .ok()
            .flatten()
            .is_some_and(|t| t.ends_with(pipeline::REVERSE_BINDING_SUFFIX)),
    };
    let mut sent = 0;
    let mut failed = 0;
    let listed = Records::new(&store, shared.as_ref())
        .quarantine_list(route)
        .map_err(|e| anyhow!("{e}"))?;
    for e in select_quarantined(listed, offset, msg_id, all)? {
        if e.message_json.is_empty() {
            println!(
                "{} {} offset {}: not replayable (translation failed: {})",
                e.route, e.queue, e.offset, e.reason
            );
            failed += 1;
            continue;
        }
        let msg = match quarantine_codec::decode_kept(&e.message_json)
            .map_err(anyhow::Error::msg)?
        {
            quarantine_codec::Kept::Translated(msg) => msg,
            quarantine_codec::Kept::RawRecord(raw) => {
                println!(
                    "{} {} offset {}: the raw 4.x record ({} bytes) is kept; it failed before translation ({}); \
                     fix the route's mapping and move the route's checkpoint back with `rmq-bridge reset-route`, or drop it",
                    e.route, e.queue, e.offset, raw.len(), e.reason
                );
                failed += 1;
                continue;
            }
        };
        let msg = replay_message(msg, now_ms(), cfg.translate.delay_min_lead);
        let result = if is_reverse(&e.route) {
            four.send(&msg).await.map_err(|e| e.to_string())
        } else {
            publisher
                .send(&msg)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => {
                store.quarantine_remove(&e).map_err(|e| anyhow!("{e}"))?;
                println!(
                    "{} {} offset {}: replayed as {}",
                    e.route, e.queue, e.offset, msg.message_id
                );
                sent += 1;
            }
            Err(err) => {
                println!(
                    "{} {} offset {}: still rejected: {err}",
                    e.route, e.queue, e.offset
                );
                failed += 1;
            }
        }
    }
    publisher.shutdown().await;
    println!("replayed {sent}, still quarantined {failed}");
    share_removals(outbox).await
}

pub async fn quarantine_drop(
    path: &Path,
    route: Option<&str>,
    offset: Option<i64>,
    msg_id: Option<&str>,
    all: bool,
) -> anyhow::Result<()> {
    if offset.is_none() && msg_id.is_none() && !all {
        bail!("name the message with --offset and/or --msg-id (and --route), or pass --all to drop every match");
    }
    let cfg = load(path)?;
    let store = open_for_write(&cfg)?;
    let (shared, outbox) = estate_for_write(&cfg, &store).await?;
    let mut dropped = 0;
    let listed = Records::new(&store, shared.as_ref())
        .quarantine_list(route)
        .map_err(|e| anyhow!("{e}"))?;
    for e in select_quarantined(listed, offset, msg_id, all)? {
        store.quarantine_remove(&e).map_err(|e| anyhow!("{e}"))?;
        println!(
            "dropped {} {} offset {} ({})",
            e.route, e.queue, e.offset, e.message_id
        );
        dropped += 1;
    }
    println!("dropped {dropped}");
    share_removals(outbox).await
}

/// `reset-route`: drops a route's checkpoints and its source-topic binding
/// (daemon stopped), so its next start begins at its configured `start`
/// position and may name another source topic. Journal and quarantine stay.
///
/// With `[instances] coordinate = true` that promise does not hold: the
/// instances resume a queue from the larger of a local checkpoint and their
/// route's group position on the brokers it reads, which this command does not touch.
/// So it refuses and names the remedy, unless `local_only` accepts that
/// only this instance's store changes (e.g. to bind the route to another
/// source topic, whose positions the group keeps apart).
pub fn reset_route(path: &Path, route: &str, local_only: bool) -> anyhow::Result<()> {
    let cfg = load(path)?;
    if cfg.instances.coordinate && !local_only {
        let (topic, cluster) = cfg.route(route).map_or_else(
            || ("<its source topic>".to_string(), "4.x"),
            |r| (r.source_topic.clone(), r.direction.read_cluster()),
        );
        // The route's positions live in a group of its own (issue 30).
        let group = crate::config::route_position_group(&cfg.source.consumer_group, route);
        bail!(
            "reset-route would not make route {route} start over: with [instances] coordinate = true \
             every instance resumes from the larger of its local checkpoint and the route's group \
             `{group}` position on the {cluster} brokers, which this command does not change. To re-send: \
             stop every instance, move that group back on the {cluster} brokers (e.g. `mqadmin \
             resetOffsetByTime -n <{cluster} namesrv> -g {group} -t {topic} -s <timestamp ms>`), then run \
             `rmq-bridge reset-route --local-only -c <config> --route {route}` for every instance's \
             config, and start them. To drop only this instance's checkpoints and topic binding \
             (e.g. to bind the route to another topic), pass --local-only."
        );
    }
    let dir = &cfg.checkpoint.dir;
    if !dir.join("CURRENT").exists() {
        bail!(
            "no checkpoint store at {} (checkpoint.dir of {}): nothing to reset",
            dir.display(),
            path.display()
        );
    }
    let store = CheckpointStore::open(dir, true).map_err(|e| {
        anyhow!("{e} (reset-route needs the daemon stopped, the store has a single writer: systemctl stop rmq-bridge)")
    })?;
    let reset = store.reset_route(route).map_err(|e| anyhow!("{e}"))?;
    match &reset.topic {
        Some(topic) => println!(
            "route {route}: removed {} checkpoint(s) and its binding to 4.x topic {topic}",
            reset.checkpoints.len()
        ),
        None => println!(
            "route {route}: removed {} checkpoint(s) (no topic binding was recorded)",
            reset.checkpoints.len()
        ),
    }
    for (queue, cp) in &reset.checkpoints {
        println!(
            "  {:<24} was at offset {:>12}  updated {}",
            queue.to_string(),
            cp.offset,
            fmt_ms(cp.updated_ms)
        );
    }
    // The schedule side of `scheduled = "forward"` starts over with it
    // (remembered forwarded ids are kept: their real copies stay skipped).
    let side = pipeline::schedule_ledger::schedule_side_name(route);
    let side_reset = store.reset_route(&side).map_err(|e| anyhow!("{e}"))?;
    if !side_reset.checkpoints.is_empty() {
        println!(
            "route {side}: removed {} schedule-topic checkpoint(s); it re-reads SCHEDULE_TOPIC_XXXX from the start",
            side_reset.checkpoints.len()
        );
    }
    let journal = store.journal(route).map_err(|e| anyhow!("{e}"))?.len();
    let quarantined = store
        .quarantine_list(Some(route))
        .map_err(|e| anyhow!("{e}"))?
        .len();
    println!("kept: {journal} cutover journal entry(ies), {quarantined} quarantined message(s)");
    if quarantined > 0 {
        println!(
            "  (drop those with: rmq-bridge quarantine drop -c {} --route {route} --all)",
            path.display()
        );
    }
    match cfg.route(route) {
        Some(r) if cfg.instances.coordinate => println!(
            "next start: route {route} reads {cluster} topic {} from its group `{}` positions \
             on the {cluster} brokers where they exist, else from its start position ({})",
            r.source_topic,
            crate::config::route_position_group(&cfg.source.consumer_group, route),
            r.start,
            cluster = r.direction.read_cluster(),
        ),
        Some(r) => println!(
            "next start: route {route} reads 4.x topic {} from its start position ({})",
            r.source_topic, r.start
        ),
        None => println!(
            "route {route} is not in {}; if added, it starts at its start position",
            path.display()
        ),
    }
    Ok(())
}

/// One decoded 4.x message as the JSON object `peek` prints.
pub fn record_json(broker: &str, r: &MessageRecord) -> serde_json::Value {
    let props: BTreeMap<&str, &str> = r.properties.iter().collect();
    let mut v = json!({
        "topic": r.topic,
        "broker": broker,
        "queue": r.queue_id,
        "offset": r.queue_offset,
        "msg_id": r.message_id(),
        "offset_msg_id": r.offset_msg_id,
        "tag": r.tag(),
        "keys": r.keys(),
        "properties": props,
        "born_time": fmt_ms(r.born_timestamp_ms),
        "born_host": r.born_host.to_string(),
        "store_time": fmt_ms(r.store_timestamp_ms),
        "store_host": r.store_host.to_string(),
        "reconsume_times": r.reconsume_times,
        "sys_flag": r.sys_flag,
        "body_size": r.body.len(),
    });
    match std::str::from_utf8(&r.body) {
        Ok(text) => v["body"] = json!(text),
        Err(_) => {
            v["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&r.body))
        }
    }
    v
}

pub async fn peek(
    namesrv: &str,
    topic: &str,
    count: usize,
    from: &str,
    filter: &str,
    follow: bool,
) -> anyhow::Result<()> {
    let namesrv = NameServers::parse(namesrv).map_err(|e| anyhow!("--namesrv: {e}"))?;
    let client = RemotingClient::new(RemotingClientConfig {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        credentials: None,
        client_id: pipeline::client_id(),
    });
    let source = TopicSource::new(
        client,
        namesrv,
        SourceSettings {
            topic: topic.to_string(),
            filter: filter.to_string(),
            consumer_group: "rmq_bridge_peek".into(),
            pull_batch_size: 32,
            long_poll: Duration::from_millis(if follow { 15_000 } else { 500 }),
        },
    );
    let queues = source
        .refresh_route()
        .await
        .context("cannot read the topic route")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    for queue in &queues {
        let start = match from {
            "earliest" => source.min_offset(queue).await?,
            "latest" => source.max_offset(queue).await?,
            n => n
                .parse::<i64>()
                .map_err(|_| anyhow!("--from `{n}`: use earliest, latest or an offset"))?,
        };
        let mut batches = source.spawn_puller(queue.clone(), start, 2, stop_rx.clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(b) = batches.recv().await {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut printed = 0;
    let mut idle: std::collections::BTreeSet<String> = Default::default();
    let mut out = std::io::stdout().lock();
    while printed < count {
        let Some(batch) = rx.recv().await else { break };
        match batch.outcome {
            PullOutcome::Records { records, .. } => {
                if !records.is_empty() {
                    idle.remove(&batch.queue.to_string());
                }
                for r in records {
                    if printed >= count {
                        break;
                    }
                    writeln!(out, "{}", record_json(&batch.queue.broker_name, &r))?;
                    printed += 1;
                }
            }
            PullOutcome::Idle { .. } => {
                idle.insert(batch.queue.to_string());
                if !follow && idle.len() >= queues.len() {
                    break;
                }
            }
            PullOutcome::OffsetMoved {
                requested,
                next_offset,
                ..
            } => {
                eprintln!(
                    "{}: offset {requested} not available; continuing at {next_offset}",
                    batch.queue
                );
            }
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

#[cfg(test)]
mod fmt_ms_tests {
    use super::fmt_ms;

    /// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can spell.
    const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

    #[test]
    fn fmt_ms_never_panics_and_shows_raw_ms_out_of_range() {
        assert_eq!(fmt_ms(0), "-");
        assert_eq!(fmt_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(fmt_ms(LAST_RFC3339_MS), "9999-12-31T23:59:59.999Z");
        // Producers set the born timestamp: anything can arrive.
        for ms in [
            LAST_RFC3339_MS + 1,
            i64::MAX,
            i64::MAX - 1,
            -1,
            -1_000,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(fmt_ms(ms), ms.to_string(), "raw ms for {ms}");
        }
    }
}

#[cfg(test)]
mod reset_route_tests {
    use super::reset_route;
    use crate::checkpoint::{CheckpointStore, SourceQueue};

    fn config(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("bridge.toml");
        let text = format!(
            "[source]\nnamesrv_addr = \"127.0.0.1:9876\"\n[target]\nendpoint = \"127.0.0.1:8081\"\n\
             [checkpoint]\ndir = \"{}\"\n[[routes]]\nname = \"orders\"\nsource_topic = \"orders_v2\"\n",
            dir.join("store").display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reset_route_lets_a_route_start_over_on_a_new_topic() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path());
        let q = SourceQueue {
            broker_name: "b".into(),
            queue_id: 0,
        };
        {
            let store = CheckpointStore::open(&dir.path().join("store"), true).unwrap();
            store.bind_route_topic("orders", "orders").unwrap();
            store.advance(&[("orders".into(), q.clone(), 42)]).unwrap();
            assert!(store.bind_route_topic("orders", "orders_v2").is_err());
            // While the daemon holds the store, reset is refused and says why.
            let err = reset_route(&path, "orders", false).unwrap_err().to_string();
            assert!(
                err.contains("locked") && err.contains("daemon stopped"),
                "{err}"
            );
        }
        reset_route(&path, "orders", false).unwrap();
        let store = CheckpointStore::open(&dir.path().join("store"), true).unwrap();
        assert!(store.get("orders", &q).unwrap().is_none());
        assert!(store.bind_route_topic("orders", "orders_v2").is_ok());
    }

    #[test]
    fn reset_route_without_a_store_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = reset_route(&config(dir.path()), "orders", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no checkpoint store"), "{err}");
    }

    /// Issue 30 item 4: under `coordinate` the command said the route would
    /// start over while every instance resumed from the group's positions.
    /// It refuses, names the remedy and changes nothing; `--local-only`
    /// drops this instance's checkpoints and says where the route resumes.
    #[test]
    fn reset_route_under_coordinate_refuses_unless_local_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path());
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "endpoint = \"127.0.0.1:8081\"\n",
            "endpoint = \"127.0.0.1:8081\"\nnamesrv_addr = \"127.0.0.1:9877\"\n",
        ) + "[instances]\ncoordinate = true\n";
        std::fs::write(&path, text).unwrap();
        let q = SourceQueue {
            broker_name: "b".into(),
            queue_id: 0,
        };
        {
            let store = CheckpointStore::open(&dir.path().join("store"), true).unwrap();
            store.advance(&[("orders".into(), q.clone(), 42)]).unwrap();
        }
        let err = reset_route(&path, "orders", false).unwrap_err().to_string();
        assert!(
            err.contains("coordinate")
                && err.contains("resetOffsetByTime")
                && err.contains("--local-only")
                && err.contains("rmq_bridge-route-orders"),
            "{err}"
        );
        {
            let store = CheckpointStore::open(&dir.path().join("store"), true).unwrap();
            assert_eq!(store.get("orders", &q).unwrap().map(|c| c.offset), Some(42));
        }
        reset_route(&path, "orders", true).unwrap();
        let store = CheckpointStore::open(&dir.path().join("store"), true).unwrap();
        assert!(store.get("orders", &q).unwrap().is_none());
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;
    use crate::checkpoint::SourceQueue;

    fn delayed(at_ms: i64) -> OutgoingMessage {
        OutgoingMessage {
            topic: "t".into(),
            message_id: "id".into(),
            body: bytes::Bytes::from_static(b"b"),
            tag: None,
            keys: vec![],
            user_properties: Default::default(),
            born_timestamp_ms: 1,
            born_host: "h".into(),
            kind: MessageKind::Delay {
                delivery_timestamp_ms: at_ms,
            },
        }
    }

    #[test]
    fn replay_moves_a_past_delivery_time_to_the_earliest_accepted() {
        let lead = Duration::from_secs(1);
        let now = 1_000_000;
        let past = replay_message(delayed(now - 60_000), now, lead);
        assert_eq!(
            past.kind,
            MessageKind::Delay {
                delivery_timestamp_ms: now + 1_000
            }
        );
        // Too near counts as past; a time far enough ahead is kept.
        let near = replay_message(delayed(now + 10), now, lead);
        assert_eq!(
            near.kind,
            MessageKind::Delay {
                delivery_timestamp_ms: now + 1_000
            }
        );
        let future = replay_message(delayed(now + 60_000), now, lead);
        assert_eq!(
            future.kind,
            MessageKind::Delay {
                delivery_timestamp_ms: now + 60_000
            }
        );
        // Other kinds are sent as kept.
        let mut normal = delayed(0);
        normal.kind = MessageKind::Normal;
        assert_eq!(replay_message(normal.clone(), now, lead), normal);
    }

    fn entry(queue_id: i32, offset: i64, id: &str) -> QuarantineEntry {
        QuarantineEntry {
            route: "r".into(),
            queue: SourceQueue {
                broker_name: "b".into(),
                queue_id,
            },
            offset,
            message_id: id.into(),
            reason: "x".into(),
            quarantined_at_ms: 1,
            message_json: String::new(),
        }
    }

    #[test]
    fn an_offset_matching_several_messages_needs_msg_id_or_all() {
        let all = vec![entry(0, 7, "A"), entry(0, 7, "B"), entry(1, 8, "C")];
        let err = select_quarantined(all.clone(), Some(7), None, false).unwrap_err();
        assert!(err.to_string().contains("--msg-id"), "{err}");
        let one = select_quarantined(all.clone(), Some(7), Some("B"), false).unwrap();
        assert_eq!(one, vec![entry(0, 7, "B")]);
        assert_eq!(
            select_quarantined(all.clone(), Some(7), None, true)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            select_quarantined(all.clone(), Some(8), None, false).unwrap(),
            vec![entry(1, 8, "C")]
        );
        assert_eq!(
            select_quarantined(all, None, Some("C"), false)
                .unwrap()
                .len(),
            1
        );
    }
}
