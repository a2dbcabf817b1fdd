//! Cost of the bridge as the estate grows (issue 12, item 4): many routes and
//! source queues on the real 4.x peer, mostly idle, traffic on a few, the
//! 5.x side the in-process blackhole endpoint (`rmq_bridge::dev::blackhole`).
//!
//! Run with `scripts/bench-estate.sh` (or `cargo bench --bench estate`).
//! For each estate size (idle source queues, `RMQ_ESTATE_QUEUES`, ascending)
//! a fresh bridge process (release binary, fresh checkpoints) is started
//! with one route per idle topic (`RMQ_ESTATE_QUEUES_PER_TOPIC` queues each,
//! `start = "latest"`), and measured:
//!
//! 1. **startup**: spawn until the bridge's `/metrics` has one
//!    `rmq_bridge_source_lag_messages` series per idle queue (the series is
//!    registered when the queue's puller and worker are spawned, i.e. right
//!    before its first pull is sent); then one probe message is produced
//!    into each of `RMQ_ESTATE_PROBES` idle queues spread over the estate
//!    and the time until all probes reached the blackhole is reported (it
//!    proves those queues are really pulling, and is the pickup latency of a
//!    long-polled idle queue).
//! 2. **idle**: after the probes, `RMQ_ESTATE_IDLE_SECS` of no traffic:
//!    bridge CPU (utime+stime from /proc, % of one core), the 4.x broker's
//!    CPU meanwhile, bridge RSS (VmRSS now, VmHWM peak).
//! 3. **busy**: the busy routes (`RMQ_ESTATE_BUSY_ROUTES` topics, their
//!    backlog of `RMQ_ESTATE_BUSY_MESSAGES` messages preloaded once) are
//!    added by a config reload (SIGHUP) with `start = "earliest"`, and their
//!    drain rate into the blackhole is measured (first to last arrival), next
//!    to the same drain by a bridge with no idle estate (size 0, the
//!    baseline). Every message is checked at the blackhole (lost, duplicated).
//!
//! Prints one table of how each figure grows with the estate and writes it to
//! `target/bench-estate.txt` (bridge logs in `target/bench-estate-logs/`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RMQ_ESTATE_QUEUES` | `100,1000,8000` | idle source queues per leg, comma-separated |
//! | `RMQ_ESTATE_QUEUES_PER_TOPIC` | 16 | queues per 4.x topic (one route per topic) |
//! | `RMQ_ESTATE_BUSY_ROUTES` | 4 | busy routes (topics of the same queue count) |
//! | `RMQ_ESTATE_BUSY_MESSAGES` | 40000 | backlog drained by the busy routes in each leg |
//! | `RMQ_ESTATE_BODY_BYTES` | 1024 | body size of the busy messages |
//! | `RMQ_ESTATE_IDLE_SECS` | 30 | idle window for CPU |
//! | `RMQ_ESTATE_PROBES` | 16 | idle queues probed with one message after startup |
//! | `RMQ_ESTATE_STARTUP_CAP_SECS` | 600 | give up waiting for startup after this |
//! | `RMQ_ESTATE_CREATE_CONCURRENCY` | 16 | topic creations in flight on the 4.x broker |
//! | `RMQ_ESTATE_LONG_POLL_MS` | daemon default | `source.long_poll_ms` of the bridge |
//! | `RMQ_ESTATE_PIPELINE` | none | extra `[pipeline]` settings, `key=value,...` |
//! | `RMQ_ESTATE_PERF` | none | a directory: `perf record -e cpu-clock -g` the bridge during each idle window into `<dir>/idle-<N>.data` |

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::StreamExt;

use rmq_bridge::dev::blackhole::{Blackhole, BlackholeConfig};
use rmq_bridge::dev::chaos::{scrape, BridgeProcess};
use rmq_bridge::dev::cluster::{free_port, LocalCluster, Peer};
use rmq_bridge::dev::machine::{
    cpu_model, cpu_time, git_revision, open_fds, rss_kib, target_dir, threads,
};
use rmq_bridge::dev::testkit::{self, env_num, env_pairs};
use rmq_bridge::grpc::TopicMessageType;
use rmq_bridge::remoting::{names, BatchEntry, Properties, RemotingClient, SendBatchRequest};

const LAG_SERIES: &str = "rmq_bridge_source_lag_messages{";
const MIB: f64 = 1024.0;

struct Params {
    sizes: Vec<usize>,
    per_topic: usize,
    busy_routes: usize,
    busy_messages: usize,
    body_bytes: usize,
    idle: Duration,
    probes: usize,
    startup_cap: Duration,
    create_concurrency: usize,
    long_poll_ms: Option<u64>,
    pipeline: Vec<(String, String)>,
    perf: Option<PathBuf>,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let sizes = std::env::var("RMQ_ESTATE_QUEUES").unwrap_or_else(|_| "100,1000,8000".into());
        let mut sizes: Vec<usize> = sizes
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| anyhow!("RMQ_ESTATE_QUEUES: `{s}` is not a number"))
            })
            .collect::<anyhow::Result<_>>()?;
        sizes.sort_unstable();
        sizes.dedup();
        Ok(Params {
            sizes,
            per_topic: env_num("RMQ_ESTATE_QUEUES_PER_TOPIC")?
                .unwrap_or(16usize)
                .max(1),
            busy_routes: env_num("RMQ_ESTATE_BUSY_ROUTES")?.unwrap_or(4usize),
            busy_messages: env_num("RMQ_ESTATE_BUSY_MESSAGES")?.unwrap_or(40_000usize),
            body_bytes: env_num("RMQ_ESTATE_BODY_BYTES")?
                .unwrap_or(1024usize)
                .max(1),
            idle: Duration::from_secs(env_num("RMQ_ESTATE_IDLE_SECS")?.unwrap_or(30u64)),
            probes: env_num("RMQ_ESTATE_PROBES")?.unwrap_or(16usize),
            startup_cap: Duration::from_secs(
                env_num("RMQ_ESTATE_STARTUP_CAP_SECS")?.unwrap_or(600u64),
            ),
            create_concurrency: env_num("RMQ_ESTATE_CREATE_CONCURRENCY")?
                .unwrap_or(16usize)
                .max(1),
            long_poll_ms: env_num("RMQ_ESTATE_LONG_POLL_MS")?,
            pipeline: env_pairs("RMQ_ESTATE_PIPELINE")?,
            perf: std::env::var_os("RMQ_ESTATE_PERF").map(PathBuf::from),
        })
    }

    fn describe(&self) -> String {
        format!(
            "idle queues {:?}, {} queues per topic, {} busy routes draining {} messages of {} B, \
             idle window {} s, {} probes, long_poll_ms {}, pipeline {:?}",
            self.sizes,
            self.per_topic,
            self.busy_routes,
            self.busy_messages,
            self.body_bytes,
            self.idle.as_secs(),
            self.probes,
            self.long_poll_ms
                .map(|v| v.to_string())
                .unwrap_or_else(|| "default".into()),
            self.pipeline
        )
    }
}

fn idle_topic(i: usize) -> String {
    format!("estate_{i:05}")
}

fn busy_topic(i: usize) -> String {
    format!("estate_busy_{i}")
}

fn body(seed: usize, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed as u64 | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Creates `topics` on the broker, `concurrency` at a time; returns how long it took.
async fn create_topics(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topics: Vec<String>,
    queues: i32,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut results =
        futures::stream::iter(topics.into_iter().map(|t| async move {
            testkit::create_topic(client, cluster, &t, queues, None).await
        }))
        .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// Preloads `total` messages spread over the queues of `topic`, 64 per batch.
async fn preload(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
    queues: usize,
    total: usize,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let batch = (512 * 1024 / body_bytes).clamp(1, 64);
    let mut tasks = Vec::new();
    for q in 0..queues {
        let count = total / queues + usize::from(q < total % queues);
        let (client, broker, topic) = (client.clone(), broker.to_string(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < count {
                let n = batch.min(count - sent);
                let entries = (sent..sent + n)
                    .map(|i| {
                        let mut properties = Properties::new();
                        properties.insert(names::UNIQ_KEY, format!("{topic}-{q:03}-{i:09}"));
                        BatchEntry {
                            body: body(q * 10_000_000 + i, body_bytes),
                            properties,
                            flag: 0,
                        }
                    })
                    .collect();
                let request = SendBatchRequest {
                    producer_group: "estate_bench".into(),
                    topic: topic.clone(),
                    queue_id: q as i32,
                    entries,
                    born_timestamp_ms: rmq_bridge::checkpoint::now_ms(),
                };
                client
                    .send_batch(&broker, &request)
                    .await
                    .with_context(|| format!("preload {topic} queue {q} after {sent}"))?;
                sent += n;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("preload task")??;
    }
    Ok(())
}

/// Text of a bridge config: the 4.x peer, the blackhole, and `routes`
/// (name = source = target topic, `start`).
fn config_text(
    params: &Params,
    src: &LocalCluster,
    blackhole: &str,
    checkpoints: &Path,
    metrics: &str,
    routes: &[(String, &str)],
) -> String {
    let mut text = format!("[source]\nnamesrv_addr = \"{}\"\n", src.namesrv_addr);
    if let Some(ms) = params.long_poll_ms {
        let _ = writeln!(text, "long_poll_ms = {ms}");
    }
    let _ = write!(
        text,
        "\n[target]\nendpoint = \"{blackhole}\"\n\n[checkpoint]\ndir = \"{}\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n[pipeline]\n",
        checkpoints.display()
    );
    for (k, v) in &params.pipeline {
        let _ = writeln!(text, "{k} = {v}");
    }
    text.push('\n');
    for (topic, start) in routes {
        let _ = write!(
            text,
            "[[routes]]\nname = \"{topic}\"\nsource_topic = \"{topic}\"\ntarget_topic = \"{topic}\"\ncutover_percent = 100\nstart = \"{start}\"\n\n"
        );
    }
    text
}

/// `perf record` of the bridge while a window runs (RMQ_ESTATE_PERF).
struct Perf(Option<Child>);

impl Perf {
    fn attach(dir: Option<&Path>, pid: u32, name: &str) -> Perf {
        let Some(dir) = dir else { return Perf(None) };
        let _ = std::fs::create_dir_all(dir);
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "499", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(dir.join(format!("{name}.data")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record not started: {e}"))
            .ok();
        Perf(child)
    }

    fn finish(self) {
        if let Some(mut c) = self.0 {
            rmq_bridge::dev::chaos::bridge::signal(c.id(), "INT");
            let _ = c.wait();
        }
    }
}

/// One estate size's figures.
#[derive(Default, Clone)]
struct Row {
    idle_queues: usize,
    routes: usize,
    topics_created: Option<Duration>,
    startup: Option<Duration>,
    probe: Option<Duration>,
    idle_cpu_pct: Option<f64>,
    broker_cpu_pct: Option<f64>,
    rss_mib: Option<f64>,
    hwm_mib: Option<f64>,
    threads: Option<u64>,
    fds: Option<usize>,
    scrape_kib: Option<f64>,
    busy_rate: Option<f64>,
    busy_cpu_us: Option<f64>,
    busy_intact: Option<bool>,
    stop: Option<Duration>,
    note: Vec<String>,
}

struct Env {
    params: Params,
    src: LocalCluster,
    client: RemotingClient,
    bh: Blackhole,
    bh_addr: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Env {
    fn busy_total(&self) -> u64 {
        (0..self.params.busy_routes)
            .map(|i| self.bh.tally(&busy_topic(i)).messages)
            .sum()
    }
}

/// Waits until the blackhole tally of `topics` sums to `expected`; returns
/// (first arrival, last arrival) since `from`, None on timeout.
async fn wait_arrivals(
    bh: &Blackhole,
    topics: &[String],
    expected: u64,
    from: Instant,
    cap: Duration,
) -> Option<(Duration, Duration)> {
    let mut first = None;
    loop {
        let n: u64 = topics.iter().map(|t| bh.tally(t).messages).sum();
        let now = from.elapsed();
        if n > 0 && first.is_none() {
            first = Some(now);
        }
        if n >= expected {
            return Some((first.unwrap_or(now), now));
        }
        if now > cap {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leg(env: &Env, idle_queues: usize, row: &mut Row) -> anyhow::Result<()> {
    let p = &env.params;
    let topics = idle_queues.div_ceil(p.per_topic);
    row.idle_queues = topics * p.per_topic;
    row.routes = topics + p.busy_routes;
    let name = format!("estate-{idle_queues}");
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let ckpt = env.dir.path().join(format!("checkpoints-{idle_queues}"));
    let idle_routes: Vec<(String, &str)> = (0..topics).map(|i| (idle_topic(i), "latest")).collect();
    let config = env.dir.path().join(format!("{name}.toml"));
    testkit::write_config(
        &config,
        &config_text(p, &env.src, &env.bh_addr, &ckpt, &metrics, &idle_routes),
    )?;
    for i in 0..p.busy_routes {
        env.bh.reset(&busy_topic(i));
    }
    let log = env.dir.path().join(format!("{name}.log"));
    let spawned = Instant::now();
    let mut bridge = BridgeProcess::start(&env.bin, &config, &log);
    let pid = bridge
        .pid()
        .ok_or_else(|| anyhow!("bridge did not start"))?;

    // (1) startup: one lag series per idle queue.
    println!(
        "[{idle_queues}] waiting for {} lag series ...",
        row.idle_queues
    );
    let mut last_count = 0;
    loop {
        if let Some(status) = bridge.exited() {
            bail!(
                "bridge exited during startup ({status}); log {}",
                log.display()
            );
        }
        let text = scrape(&metrics);
        let count = text.lines().filter(|l| l.starts_with(LAG_SERIES)).count();
        if count != last_count {
            last_count = count;
        }
        if count >= row.idle_queues && (row.idle_queues > 0 || !text.is_empty()) {
            row.startup = Some(spawned.elapsed());
            row.scrape_kib = Some(text.len() as f64 / 1024.0);
            break;
        }
        if spawned.elapsed() > p.startup_cap {
            row.note.push(format!(
                "startup capped at {} s with {last_count} of {} lag series",
                p.startup_cap.as_secs(),
                row.idle_queues
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "[{idle_queues}] startup {:?} ({last_count} series)",
        row.startup
    );

    // Probes: one message into each of `probes` idle queues spread over the estate.
    if topics > 0 && p.probes > 0 {
        // Let every queue have resolved `latest` before producing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let probes = p.probes.min(row.idle_queues);
        let mut probe_topics = Vec::new();
        for k in 0..probes {
            let slot = k * row.idle_queues / probes;
            let (t, q) = (slot / p.per_topic, slot % p.per_topic);
            let topic = idle_topic(t);
            let mut properties = Properties::new();
            properties.insert(names::UNIQ_KEY, format!("probe-{idle_queues}-{k}"));
            let request = SendBatchRequest {
                producer_group: "estate_bench".into(),
                topic: topic.clone(),
                queue_id: q as i32,
                entries: vec![BatchEntry {
                    body: body(k, 64),
                    properties,
                    flag: 0,
                }],
                born_timestamp_ms: rmq_bridge::checkpoint::now_ms(),
            };
            if !probe_topics.contains(&topic) {
                env.bh.reset(&topic);
                probe_topics.push(topic.clone());
            }
            let sent = Instant::now();
            env.client
                .send_batch(&env.src.broker_addr, &request)
                .await
                .with_context(|| format!("probe into {topic} queue {q}"))?;
            match wait_arrivals(
                &env.bh,
                &probe_topics,
                k as u64 + 1,
                sent,
                Duration::from_secs(60),
            )
            .await
            {
                Some((_, last)) => row.probe = Some(row.probe.unwrap_or_default().max(last)),
                None => {
                    row.note.push(format!(
                        "probe {k} into {topic} queue {q} not forwarded within 60 s"
                    ));
                    break;
                }
            }
        }
        println!("[{idle_queues}] slowest probe pickup {:?}", row.probe);
    }

    // (2) idle window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker_pid = env.src.pid(Peer::Broker);
    let perf = Perf::attach(p.perf.as_deref(), pid, &format!("idle-{idle_queues}"));
    let (c0, b0, t0) = (
        bridge.cpu_time(),
        broker_pid.and_then(cpu_time),
        Instant::now(),
    );
    tokio::time::sleep(p.idle).await;
    let (c1, b1, wall) = (
        bridge.cpu_time(),
        broker_pid.and_then(cpu_time),
        t0.elapsed(),
    );
    perf.finish();
    let pct = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() / wall.as_secs_f64() * 100.0),
        _ => None,
    };
    row.idle_cpu_pct = pct(c0, c1);
    row.broker_cpu_pct = pct(b0, b1);
    row.rss_mib = rss_kib(pid).map(|k| k as f64 / MIB);
    // What the memory is, for the record (target/bench-estate-logs/).
    let logs = target_dir().join("bench-estate-logs");
    let _ = std::fs::create_dir_all(&logs);
    for what in ["status", "smaps_rollup", "smaps"] {
        let _ = std::fs::copy(
            format!("/proc/{pid}/{what}"),
            logs.join(format!("{name}.{what}")),
        );
    }
    row.threads = threads(pid);
    row.fds = open_fds(pid);
    println!(
        "[{idle_queues}] idle CPU {:?} %, broker {:?} %, RSS {:?} MiB",
        row.idle_cpu_pct, row.broker_cpu_pct, row.rss_mib
    );

    // (3) busy routes added by reload.
    if p.busy_routes > 0 && p.busy_messages > 0 {
        let mut all = idle_routes.clone();
        all.extend((0..p.busy_routes).map(|i| (busy_topic(i), "earliest")));
        testkit::write_config(
            &config,
            &config_text(p, &env.src, &env.bh_addr, &ckpt, &metrics, &all),
        )?;
        let busy: Vec<String> = (0..p.busy_routes).map(busy_topic).collect();
        let cpu0 = bridge.cpu_time();
        let from = Instant::now();
        bridge.sighup();
        match wait_arrivals(
            &env.bh,
            &busy,
            p.busy_messages as u64,
            from,
            Duration::from_secs(600),
        )
        .await
        {
            Some((first, last)) => {
                let window = (last - first).as_secs_f64().max(1e-3);
                row.busy_rate = Some(p.busy_messages as f64 / window);
                if let (Some(a), Some(b)) = (cpu0, bridge.cpu_time()) {
                    row.busy_cpu_us = Some((b - a).as_secs_f64() / p.busy_messages as f64 * 1e6);
                }
                println!(
                    "[{idle_queues}] busy drain: first arrival {:?} after SIGHUP, {:.0} msg/s",
                    first,
                    row.busy_rate.unwrap_or(0.0)
                );
            }
            None => row.note.push(format!(
                "busy routes forwarded {} of {} within 600 s",
                env.busy_total(),
                p.busy_messages
            )),
        }
        // Let late duplicates (if any) arrive before judging.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let intact = busy.iter().all(|t| {
            let tally = env.bh.tally(t);
            let expected = (p.busy_messages / p.busy_routes
                + usize::from(
                    busy.iter().position(|b| b == t).unwrap_or(0) < p.busy_messages % p.busy_routes,
                )) as u64;
            let ok = tally.intact(expected);
            if !ok {
                row.note
                    .push(format!("busy `{t}` expected {expected}: {tally}"));
            }
            ok
        });
        row.busy_intact = Some(intact);
    }
    row.hwm_mib = bridge.peak_rss_kib().map(|k| k as f64 / MIB);
    let stopping = Instant::now();
    if bridge.terminate_within(Duration::from_secs(60)) {
        row.stop = Some(stopping.elapsed());
    } else {
        row.note
            .push("did not exit cleanly on SIGTERM within 60 s".into());
    }
    keep_log(&log);
    Ok(())
}

fn keep_log(log: &Path) {
    let dir = target_dir().join("bench-estate-logs");
    let _ = std::fs::create_dir_all(&dir);
    if let Some(name) = log.file_name() {
        let _ = std::fs::copy(log, dir.join(name));
    }
}

fn fmt_d(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

fn fmt_f(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map(|v| format!("{v:.digits$}{unit}"))
        .unwrap_or_else(|| "-".into())
}

fn render(rows: &[Row], baseline_rate: Option<f64>) -> String {
    let mut out = String::new();
    let header = [
        "idle queues",
        "routes",
        "topics created",
        "startup",
        "probe pickup",
        "idle CPU",
        "broker CPU",
        "RSS",
        "peak RSS",
        "threads",
        "fds",
        "/metrics",
        "busy msg/s",
        "vs base",
        "busy µs/msg",
        "intact",
        "SIGTERM",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.idle_queues.to_string(),
                r.routes.to_string(),
                fmt_d(r.topics_created),
                fmt_d(r.startup),
                fmt_d(r.probe),
                fmt_f(r.idle_cpu_pct, 1, " %"),
                fmt_f(r.broker_cpu_pct, 1, " %"),
                fmt_f(r.rss_mib, 1, " MiB"),
                fmt_f(r.hwm_mib, 1, " MiB"),
                r.threads
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.fds.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                fmt_f(r.scrape_kib, 0, " KiB"),
                fmt_f(r.busy_rate, 0, ""),
                match (r.busy_rate, baseline_rate) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                },
                fmt_f(r.busy_cpu_us, 1, ""),
                r.busy_intact
                    .map(|b| if b { "yes" } else { "NO" }.to_string())
                    .unwrap_or_else(|| "-".into()),
                fmt_d(r.stop),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, vals: Vec<&str>| {
        let mut s = String::from("|");
        for (v, w) in vals.iter().zip(&widths) {
            let _ = write!(s, " {v:>w$} |", w = *w);
        }
        let _ = writeln!(out, "{s}");
    };
    line(&mut out, header.to_vec());
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, sep.iter().map(String::as_str).collect());
    for c in &cells {
        line(&mut out, c.iter().map(String::as_str).collect());
    }
    out
}

async fn run(env: &Env, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let p = &env.params;
    let q = p.per_topic as i32;
    if p.busy_routes > 0 {
        let busy: Vec<String> = (0..p.busy_routes).map(busy_topic).collect();
        create_topics(&env.client, &env.src, busy.clone(), q, p.create_concurrency).await?;
        let started = Instant::now();
        for (i, t) in busy.iter().enumerate() {
            let n =
                p.busy_messages / p.busy_routes + usize::from(i < p.busy_messages % p.busy_routes);
            preload(
                &env.client,
                &env.src.broker_addr,
                t,
                p.per_topic,
                n,
                p.body_bytes,
            )
            .await?;
        }
        println!(
            "preloaded {} messages into {} busy topics in {:.1} s",
            p.busy_messages,
            p.busy_routes,
            started.elapsed().as_secs_f64()
        );
    }
    let mut created = 0usize;
    // The baseline: the busy routes next to one idle route (the daemon
    // needs at least one route at startup; the busy ones come by reload).
    let baseline = p.per_topic;
    let sizes: Vec<usize> = std::iter::once(baseline)
        .chain(p.sizes.iter().copied().filter(|&s| s > baseline))
        .collect();
    for size in sizes {
        let mut row = Row::default();
        let topics = size.div_ceil(p.per_topic);
        if topics > created {
            println!("creating topics {created}..{topics} on the 4.x broker ...");
            let names: Vec<String> = (created..topics).map(idle_topic).collect();
            for t in &names {
                env.bh.add_topic(t, &[TopicMessageType::Normal]);
            }
            let took = create_topics(&env.client, &env.src, names, q, p.create_concurrency).await?;
            println!(
                "  {} topics in {:.1} s",
                topics - created,
                took.as_secs_f64()
            );
            row.topics_created = Some(took);
            row.note.push(format!(
                "created {} more topics in {:.1} s",
                topics - created,
                took.as_secs_f64()
            ));
            created = topics;
        }
        if let Err(e) = leg(env, size, &mut row).await {
            row.note.push(format!("LEG FAILED: {e:#}"));
        }
        rows.push(row);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut header = String::new();
    let _ = writeln!(
        header,
        "rmq-bridge estate benchmark (benches/estate.rs): Apache RocketMQ 4.9.7 broker, blackhole 5.x endpoint"
    );
    let _ = writeln!(
        header,
        "machine: {} cores ({}), load average before {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        header,
        "bridge: {} built from {} (release profile)",
        env!("CARGO_BIN_EXE_rmq-bridge"),
        git_revision()
    );
    let _ = writeln!(header, "parameters: {}", params.describe());
    print!("{header}");

    println!("starting the 4.x peers ...");
    let src = testkit::start_source_cluster("estate-src")?;
    let dir = tempfile::tempdir().context("tempdir")?;
    let bin = dir.path().join("rmq-bridge");
    std::fs::copy(env!("CARGO_BIN_EXE_rmq-bridge"), &bin)
        .context("copying the rmq-bridge binary")?;
    let bh_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("blackhole")
        .enable_all()
        .build()?;
    let bh = Blackhole::new(BlackholeConfig::default());
    for i in 0..params.busy_routes {
        bh.add_topic(&busy_topic(i), &[TopicMessageType::Normal]);
    }
    let bh_addr = bh_runtime
        .block_on(bh.start("127.0.0.1:0"))
        .context("starting the blackhole")?
        .to_string();
    let env = Env {
        params,
        src,
        client: testkit::client(),
        bh,
        bh_addr,
        dir,
        bin,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let result = runtime.block_on(run(&env, &mut rows));
    let baseline = rows.first().and_then(|r| r.busy_rate);
    let mut out = header;
    let _ = writeln!(
        out,
        "finished in {:.0} s; load average after {}",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    out.push('\n');
    out.push_str(&render(&rows, baseline));
    let _ = writeln!(
        out,
        "\ntargets at 8,000 idle queues: RSS <= 128 MiB, idle CPU <= 5 % of one core, busy msg/s vs base (the first row, one idle route) ~ 1.00"
    );
    let _ = writeln!(
        out,
        "startup = spawn until one rmq_bridge_source_lag_messages series per idle queue (puller spawned); \
         probe pickup = slowest of the probes (one message each into idle queues spread over the estate) \
         from send to arrival at the blackhole; idle CPU = bridge utime+stime over the idle window, % of one core; \
         broker CPU = the 4.x broker meanwhile; RSS = VmRSS after the idle window; peak RSS = VmHWM at the end; \
         busy = the busy routes added by SIGHUP drain their backlog, first to last arrival; \
         busy µs/msg = bridge CPU from SIGHUP to last arrival / messages."
    );
    for r in &rows {
        for n in &r.note {
            let _ = writeln!(out, "note [{} idle queues]: {n}", r.idle_queues);
        }
    }
    if let Err(e) = &result {
        let _ = writeln!(out, "RUN FAILED: {e:#}");
        eprintln!("4.x broker log:\n{}", env.src.log_tail(Peer::Broker, 20));
    }
    println!("\n{out}");
    let path = target_dir().join("bench-estate.txt");
    let _ = std::fs::create_dir_all(target_dir());
    match std::fs::write(&path, &out) {
        Ok(()) => println!("table written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    drop(runtime);
    drop(env);
    drop(bh_runtime);
    result
}
