//! End-to-end benchmark of the bridge against real peers on loopback
//! (SPEC.md section 7), in one run:
//!
//! 1. raw pull: every queue of a 4.x topic from earliest to end with our
//!    source (`TopicSource::spawn_puller`), records decoded and discarded;
//! 2. raw send: the same number of 1 KiB messages into a 5.x NORMAL topic
//!    with our `Publisher` alone, one message per call with many calls in
//!    flight, then packed batches (`send_batch`);
//! 3. bridged: the `rmq-bridge` binary (release build) forwards the
//!    preloaded topic at 100% from earliest; time from spawn to all N
//!    forwarded (its `rmq_bridge_messages_total`), confirmed by the 5.x
//!    topic size; peak RSS and the CPU of every process meanwhile;
//! 4. latency: a second route fed at about half the bridged rate; p50/p99
//!    from the bridge's own histogram (bucket resolution) and, exactly, by
//!    joining the 4.x and 5.x store times of each message read back;
//! 5. restart: SIGTERM, more messages, start again; spawn to first forward;
//! 6. backlog: a fresh bridge drains a preloaded backlog (default 1M) while
//!    its VmHWM / VmRSS are sampled every 200 ms.
//! 7. the bridge's own ceiling, against a blackhole 5.x endpoint
//!    (`rmq_bridge::dev::blackhole`, served in this process on its own
//!    threads): raw send into the blackhole (our `Publisher` alone), single
//!    and packed; then the bridge drains the preloaded 4.x topic into the
//!    blackhole, with `send_batch_size = 1` and with packed batches. Each
//!    leg reports msg/s, CPU µs per message (publisher or bridge), the
//!    bridge's peak RSS, the blackhole's tally (lost / duplicated ids) and
//!    bridged / min(raw pull, raw send into the blackhole).
//!
//! It prints one table (also written to `target/bench-e2e.txt`) with the
//! ratios and the targets of the issue: bridged >= 0.9 x min(raw pull, raw
//! send), RSS <= 64 MiB while draining the backlog, restart to first forward
//! <= 1 s.
//!
//! Run: `scripts/bench.sh` (installs what is missing), or
//! `cargo bench --bench e2e` (after `scripts/install-peers.sh`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RMQ_BENCH_MESSAGES` | 200000 | N: messages preloaded for raw pull and the bridged drain |
//! | `RMQ_BENCH_SEND_MESSAGES` | N | messages of each raw send measurement |
//! | `RMQ_BENCH_SEND_CONCURRENCY` | 256 | single-message sends in flight (raw send) |
//! | `RMQ_BENCH_SEND_BATCH` | 32 | messages per packed `send_batch` call; 0 skips that measurement |
//! | `RMQ_BENCH_SEND_BATCH_CONCURRENCY` | 16 | packed batches in flight |
//! | `RMQ_BENCH_DIRECT_MESSAGES` | 10000 | reference: single-message Remoting sends straight to the 5.x broker (no proxy); 0 skips |
//! | `RMQ_BENCH_PULL_BATCH` | bridge default (32) | `pull_batch_size` of the raw pull and of the bridge |
//! | `RMQ_BENCH_INFLIGHT` | bridge default (1024) | `pipeline.inflight_per_queue` of the bridge |
//! | `RMQ_BENCH_PIPELINE` | none | more `[pipeline]` keys of the bridge, `key=value,...` (e.g. `max_concurrent_sends=256`) |
//! | `RMQ_BENCH_DRAIN_CAP_SECS` | 900 | bound on the bridged drain of N |
//! | `RMQ_BENCH_LAT_SECS` | 10 | duration of the paced latency run |
//! | `RMQ_BENCH_LAT_RATE` | half the bridged rate | messages per second of the latency run |
//! | `RMQ_BENCH_RESTART_MESSAGES` | 10000 | messages added while the bridge is stopped |
//! | `RMQ_BENCH_BACKLOG` | 1000000 | backlog drained for the RSS measurement; 0 skips it |
//! | `RMQ_BENCH_BACKLOG_CAP_SECS` | 600 | bound on the backlog drain (a capped drain is reported as partial) |
//! | `RMQ_BENCH_BODY_BYTES` | 1024 | body size of every message (the targets are for 1 KiB) |
//! | `RMQ_BENCH_CLIENTS` | 4 (bridge default) | 5.x producer clients of the raw send and of the bridge (`target.clients`) |
//! | `RMQ_BENCH_ONLY_BACKLOG` | 0 | 1 runs only the backlog leg (6), for iterating on memory |
//! | `RMQ_BENCH_BLACKHOLE` | 1 | 0 skips the blackhole legs (7) |
//! | `RMQ_BENCH_ONLY_BLACKHOLE` | 0 | 1 runs only preload, raw pull (1) and the blackhole legs (7), for iterating on CPU |
//! | `RMQ_BENCH_BH_SERVICE_US` | 0 | fixed service time of the blackhole per send, µs |
//! | `RMQ_BENCH_PERF` | none | a directory: `perf record` the bridge during each blackhole leg into `<dir>/<leg>.data` |
//! | `RMQ_BENCH_PERF_ARGS` | `-e cpu-clock -F 499 --call-graph dwarf,16384` | the `perf record` options of `RMQ_BENCH_PERF` |
//! | `RMQ_BENCH_BRIDGE_BIN` | the bench's own build | another `rmq-bridge` binary to run in the bridged legs (A/B on one machine state) |
//!
//! Everything runs on the same cores: the peers (4.x broker, 5.x proxy and
//! broker), the bridge and this driver compete for CPU, so the table shows
//! where CPU went (cores used per process, and by anything else on the
//! machine) next to every rate.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use rmq_bridge::dev::blackhole::{Blackhole, BlackholeConfig, TopicTally};
use rmq_bridge::dev::cluster::{free_port, LocalCluster, Peer};
use rmq_bridge::dev::machine::{cpu_model, git_revision, load_average, nproc, threads};
use rmq_bridge::dev::testkit::{self, env_num, env_pairs, metric, RouteSpec};
use rmq_bridge::grpc::{
    GrpcClientConfig, MessageKind, OutgoingMessage, Publisher, TopicMessageType,
};
use rmq_bridge::remoting::{
    names, BatchEntry, NameServers, Properties, RemotingClient, SendBatchRequest, SendRequest,
};
use rmq_bridge::source::{PullOutcome, SourceSettings, TopicSource};

const QUEUES: i32 = 8;
/// Body size of every message (`RMQ_BENCH_BODY_BYTES`, default 1 KiB).
fn body_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("RMQ_BENCH_BODY_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1024usize)
            .max(1)
    })
}

/// Messages per preload SEND_BATCH_MESSAGE: 64, fewer for large bodies so
/// a batch stays within the broker's 4 MiB message limit.
fn preload_batch() -> usize {
    (512 * 1024 / body_bytes()).clamp(1, 64)
}
const PREFETCH: usize = 8;
const TOPIC: &str = "bench";
const RAW_TOPIC: &str = "bench_raw";
const BATCH_TOPIC: &str = "bench_raw_batch";
const LAT_TOPIC: &str = "bench_lat";
const BACKLOG_TOPIC: &str = "bench_backlog";
/// Blackhole topics: raw single sends, raw packed sends, bridged single,
/// bridged packed.
const BH_RAW: &str = "bh_raw";
const BH_RAW_BATCH: &str = "bh_raw_batch";
const BH_BRIDGED: &str = "bh_bridged";
const BH_BRIDGED_BATCH: &str = "bh_bridged_batch";
/// Name prefix of the blackhole's threads (their CPU is counted apart).
const BH_THREADS: &str = "blackhole";
const FORWARDED: &str = "rmq_bridge_messages_total";
const LATENCY: &str = "rmq_bridge_forward_latency_seconds";
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------- parameters

struct Params {
    messages: usize,
    send_messages: usize,
    send_concurrency: Vec<usize>,
    send_batch: usize,
    send_batch_concurrency: usize,
    direct_messages: usize,
    pull_batch: Option<u32>,
    inflight: Option<usize>,
    pipeline_extra: Vec<(String, String)>,
    drain_cap: Duration,
    lat_secs: f64,
    lat_rate: Option<f64>,
    restart_messages: usize,
    backlog: usize,
    backlog_cap: Duration,
    /// Run only leg (6): for iterating on memory.
    only_backlog: bool,
    /// Producer clients of the raw send and of the bridge (`target.clients`).
    clients: usize,
    blackhole: bool,
    only_blackhole: bool,
    bh_service: Duration,
    perf_dir: Option<PathBuf>,
    perf_args: String,
}

/// `a,b,c`: a non-empty list of positive numbers.
fn env_list(name: &str) -> anyhow::Result<Option<Vec<usize>>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    let list: Vec<usize> = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| anyhow!("{name}: `{s}` is not a positive number"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((!list.is_empty()).then_some(list))
}

impl Params {
    fn from_env() -> anyhow::Result<Self> {
        let messages = env_num("RMQ_BENCH_MESSAGES")?.unwrap_or(200_000usize);
        if messages < QUEUES as usize {
            bail!("RMQ_BENCH_MESSAGES must be at least {QUEUES}");
        }
        Ok(Params {
            messages,
            send_messages: env_num("RMQ_BENCH_SEND_MESSAGES")?.unwrap_or(messages),
            send_concurrency: env_list("RMQ_BENCH_SEND_CONCURRENCY")?.unwrap_or_else(|| vec![256]),
            send_batch: env_num("RMQ_BENCH_SEND_BATCH")?.unwrap_or(32),
            send_batch_concurrency: env_num("RMQ_BENCH_SEND_BATCH_CONCURRENCY")?
                .unwrap_or(16usize)
                .max(1),
            direct_messages: env_num("RMQ_BENCH_DIRECT_MESSAGES")?.unwrap_or(10_000),
            pull_batch: env_num("RMQ_BENCH_PULL_BATCH")?,
            inflight: env_num("RMQ_BENCH_INFLIGHT")?,
            pipeline_extra: env_pairs("RMQ_BENCH_PIPELINE")?,
            drain_cap: Duration::from_secs(env_num("RMQ_BENCH_DRAIN_CAP_SECS")?.unwrap_or(900)),
            lat_secs: env_num("RMQ_BENCH_LAT_SECS")?.unwrap_or(10.0f64).max(1.0),
            lat_rate: env_num("RMQ_BENCH_LAT_RATE")?,
            restart_messages: env_num("RMQ_BENCH_RESTART_MESSAGES")?
                .unwrap_or(10_000usize)
                .max(1),
            backlog: env_num("RMQ_BENCH_BACKLOG")?.unwrap_or(1_000_000),
            backlog_cap: Duration::from_secs(env_num("RMQ_BENCH_BACKLOG_CAP_SECS")?.unwrap_or(600)),
            only_backlog: env_num::<u8>("RMQ_BENCH_ONLY_BACKLOG")?.unwrap_or(0) == 1,
            clients: env_num("RMQ_BENCH_CLIENTS")?.unwrap_or(4usize).max(1),
            blackhole: env_num::<u8>("RMQ_BENCH_BLACKHOLE")?.unwrap_or(1) == 1,
            only_blackhole: env_num::<u8>("RMQ_BENCH_ONLY_BLACKHOLE")?.unwrap_or(0) == 1,
            bh_service: Duration::from_micros(env_num("RMQ_BENCH_BH_SERVICE_US")?.unwrap_or(0)),
            perf_dir: std::env::var_os("RMQ_BENCH_PERF").map(PathBuf::from),
            perf_args: std::env::var("RMQ_BENCH_PERF_ARGS")
                .unwrap_or_else(|_| "-e cpu-clock -F 499 --call-graph dwarf,16384".into()),
        })
    }

    fn describe(&self) -> String {
        format!(
            "N={} messages of {} B over {QUEUES} queues (preload: send_batch {}/call, {QUEUES} queues at once); \
             raw send {} messages, {:?} single sends in flight{}; pull_batch_size {}; inflight_per_queue {}; other [pipeline] keys {}; \
             latency run {} s at {}; restart adds {} messages; backlog {} (cap {} s); drain cap {} s; {} 5.x producer clients; blackhole legs {}",
            self.messages,
            body_bytes(),
            preload_batch(),
            self.send_messages,
            self.send_concurrency,
            if self.send_batch > 1 {
                format!(
                    ", then batches of {} with {} in flight",
                    self.send_batch, self.send_batch_concurrency
                )
            } else {
                String::new()
            },
            self.pull_batch
                .map_or("32 (bridge default)".into(), |b| b.to_string()),
            self.inflight
                .map_or("1024 (bridge default)".into(), |b| b.to_string()),
            if self.pipeline_extra.is_empty() {
                "bridge defaults".to_string()
            } else {
                self.pipeline_extra
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.lat_secs,
            self.lat_rate
                .map_or("half the bridged rate".into(), |r| format!("{r} msg/s")),
            self.restart_messages,
            self.backlog,
            self.backlog_cap.as_secs(),
            self.drain_cap.as_secs(),
            self.clients,
            match (self.blackhole, self.only_blackhole) {
                (false, _) => "off".to_string(),
                (true, only) => format!(
                    "on{} (service time {} µs{})",
                    if only { ", ONLY these" } else { "" },
                    self.bh_service.as_micros(),
                    if self.perf_dir.is_some() { ", bridge under perf record" } else { "" }
                ),
            },
        )
    }
}

// ---------------------------------------------------------------- machine

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    rmq_bridge::dev::machine::cpu_time(pid).map(|d| d.as_secs_f64())
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
fn system_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy / 100.0)
}

/// CPU seconds used so far by this process's threads named `prefix...`.
fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut sum = 0.0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        sum += (tick(11) + tick(12)) / 100.0;
    }
    sum
}

/// (VmHWM, VmRSS) in bytes.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// The processes whose CPU a measurement window accounts for.
#[derive(Clone)]
struct Watched(Vec<(&'static str, Option<u32>)>);

impl Watched {
    fn new(src: &LocalCluster, dst: &LocalCluster, bridge: Option<u32>) -> Self {
        let mut v = Vec::new();
        if let Some(pid) = bridge {
            v.push(("bridge", Some(pid)));
        }
        v.push(("4.x broker", src.pid(Peer::Broker)));
        v.push(("5.x proxy", dst.pid(Peer::Proxy)));
        v.push(("5.x broker", dst.pid(Peer::Broker)));
        v.push(("4.x namesrv", src.pid(Peer::NameServer)));
        v.push(("5.x namesrv", dst.pid(Peer::NameServer)));
        v.push(("bench driver", Some(std::process::id())));
        Watched(v)
    }
}

struct CpuWindow {
    started: Instant,
    before: Vec<Option<f64>>,
    system_before: Option<f64>,
}

/// Cores used on average over a window, per process.
struct CpuShares {
    wall: f64,
    per: Vec<(&'static str, Option<f64>)>,
    system: Option<f64>,
}

impl CpuWindow {
    fn start(w: &Watched) -> Self {
        CpuWindow {
            started: Instant::now(),
            before: w.0.iter().map(|(_, p)| p.and_then(cpu_seconds)).collect(),
            system_before: system_busy_seconds(),
        }
    }

    fn finish(&self, w: &Watched) -> CpuShares {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let per =
            w.0.iter()
                .zip(&self.before)
                .map(|((name, pid), before)| {
                    let after = pid.and_then(cpu_seconds);
                    (*name, before.zip(after).map(|(a, b)| (b - a) / wall))
                })
                .collect();
        let system = self
            .system_before
            .zip(system_busy_seconds())
            .map(|(a, b)| (b - a) / wall);
        CpuShares { wall, per, system }
    }
}

impl CpuShares {
    fn get(&self, name: &str) -> Option<f64> {
        self.per
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }

    fn ours(&self) -> f64 {
        self.per.iter().filter_map(|(_, v)| *v).sum()
    }

    /// `bridge 0.71, 4.x broker 0.20, ... | other 0.05, idle 0.30 (cores of 2)`
    fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .per
            .iter()
            .filter(|(_, v)| v.is_some_and(|c| c >= 0.005))
            .map(|(n, v)| format!("{n} {:.2}", v.unwrap_or(0.0)))
            .collect();
        if let Some(sys) = self.system {
            parts.push(format!(
                "other processes {:.2}, idle {:.2}",
                (sys - self.ours()).max(0.0),
                (nproc() as f64 - sys).max(0.0)
            ));
        }
        format!(
            "{} (cores of {}, over {:.1} s)",
            parts.join(", "),
            nproc(),
            self.wall
        )
    }
}

/// `bridge 41 µs, 4.x broker 9 µs, ...`: CPU time per message in a window.
fn cpu_per_message(cpu: &CpuShares, messages: u64) -> String {
    ["bridge", "4.x broker", "5.x proxy", "5.x broker"]
        .iter()
        .filter_map(|name| {
            cpu.get(name).map(|cores| {
                format!(
                    "{name} {:.0} µs",
                    cores * cpu.wall / messages.max(1) as f64 * 1e6
                )
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- messages

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn body(seed: usize) -> Bytes {
    // xorshift output: not a single repeated byte.
    let mut out = Vec::with_capacity(body_bytes() + 8);
    let mut x = seed as u64 | 1;
    while out.len() < body_bytes() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(body_bytes());
    Bytes::from(out)
}

/// 32 characters, unique per (prefix, queue, index).
fn message_id(prefix: &str, queue: usize, i: usize) -> String {
    format!("{prefix:.4}{queue:02}{i:026}")
}

fn split(total: usize) -> Vec<usize> {
    let q = QUEUES as usize;
    (0..q)
        .map(|i| total / q + usize::from(i < total % q))
        .collect()
}

fn batch_entries(prefix: &str, queue: usize, range: std::ops::Range<usize>) -> Vec<BatchEntry> {
    range
        .map(|i| {
            let mut properties = Properties::new();
            properties.insert(names::TAGS, "bench");
            properties.insert(names::KEYS, format!("key-{queue}-{i}"));
            properties.insert(names::UNIQ_KEY, message_id(prefix, queue, i));
            BatchEntry {
                body: body(queue * 10_000_000 + i),
                properties,
                flag: 0,
            }
        })
        .collect()
}

/// Preloads `per_queue[q]` messages into queue q of a 4.x topic, all queues
/// at once, `preload_batch()` per SEND_BATCH_MESSAGE.
async fn preload(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
    prefix: &str,
    total: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (q, count) in split(total).into_iter().enumerate() {
        let client = client.clone();
        let broker = broker.to_string();
        let topic = topic.to_string();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < count {
                let n = preload_batch().min(count - sent);
                let request = SendBatchRequest {
                    producer_group: "e2e_bench".into(),
                    topic: topic.clone(),
                    queue_id: q as i32,
                    entries: batch_entries(&prefix, q, sent..sent + n),
                    born_timestamp_ms: now_ms(),
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
    Ok(started.elapsed())
}

// ---------------------------------------------------------------- raw legs

struct Leg {
    messages: u64,
    elapsed: Duration,
    cpu: CpuShares,
    note: String,
}

impl Leg {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Prints the leg and adds its two table rows: the rate, and the CPU of
    /// every process meanwhile.
    fn report(&self, table: &mut Table, title: &str, cpu_title: &str) {
        println!(
            "  {} in {:.2} s: {}; CPU {}",
            self.messages,
            self.elapsed.as_secs_f64(),
            rate(self.rate()),
            self.cpu.summary()
        );
        table.row(
            title,
            format!(
                "{} in {:.2} s: {}",
                self.messages,
                self.elapsed.as_secs_f64(),
                rate(self.rate())
            ),
            "info",
            self.note.clone(),
        );
        table.row(cpu_title, self.cpu.summary(), "", String::new());
    }
}

async fn raw_pull(
    src: &LocalCluster,
    watched: &Watched,
    pull_batch: u32,
    expected: usize,
) -> anyhow::Result<Leg> {
    let source = TopicSource::new(
        testkit::client(),
        NameServers::parse(&src.namesrv_addr)?,
        SourceSettings {
            topic: TOPIC.into(),
            filter: "*".into(),
            consumer_group: "e2e_bench_raw_pull".into(),
            pull_batch_size: pull_batch,
            long_poll: Duration::from_secs(2),
        },
    );
    let queues = source.refresh_route().await?;
    // A Java broker indexes what it stored a moment later (its consume
    // queues are built by a background dispatcher): wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ends = loop {
        let mut ends = Vec::new();
        for q in &queues {
            ends.push(source.max_offset(q).await?);
        }
        let stored: i64 = ends.iter().sum();
        if stored == expected as i64 {
            break ends;
        }
        if Instant::now() > deadline {
            bail!("4.x topic {TOPIC} holds {stored} messages 30 s after the preload, {expected} were preloaded");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let messages = Arc::new(AtomicU64::new(0));
    let pulls = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu = CpuWindow::start(watched);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (queue, want) in queues.into_iter().zip(ends) {
        let mut rx = source.spawn_puller(queue.clone(), 0, PREFETCH, stop_rx.clone());
        let (messages, pulls) = (messages.clone(), pulls.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = 0;
            while next < want {
                let Some(batch) = rx.recv().await else {
                    bail!("puller of {queue} ended at {next} of {want}");
                };
                pulls.fetch_add(1, Ordering::Relaxed);
                match batch.outcome {
                    PullOutcome::Records {
                        records,
                        next_offset,
                        ..
                    } => {
                        messages.fetch_add(records.len() as u64, Ordering::Relaxed);
                        drop(records);
                        next = next_offset;
                    }
                    PullOutcome::Idle { next_offset, .. } => next = next_offset,
                    PullOutcome::OffsetMoved { requested, .. } => {
                        bail!("{queue}: OFFSET_MOVED at {requested}")
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("pull task")??;
    }
    let elapsed = started.elapsed();
    let cpu = cpu.finish(watched);
    let _ = stop_tx.send(true);
    let messages = messages.load(Ordering::Relaxed);
    let pulls = pulls.load(Ordering::Relaxed);
    Ok(Leg {
        messages,
        elapsed,
        cpu,
        note: format!(
            "{pulls} pulls, {:.1} msg/pull",
            messages as f64 / pulls.max(1) as f64
        ),
    })
}

fn outgoing(topic: &str, prefix: &str, lane: usize, i: usize) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        message_id: message_id(prefix, lane, i),
        body: body(lane * 10_000_000 + i),
        tag: Some("bench".into()),
        keys: vec![format!("key-{lane}-{i}")],
        user_properties: Default::default(),
        born_timestamp_ms: now_ms(),
        born_host: "127.0.0.1".into(),
        kind: MessageKind::Normal,
    }
}

/// `total` messages into a 5.x NORMAL topic, `batch` per call (1: `send`,
/// more: `send_batch`), `concurrency` calls in flight.
async fn raw_send(
    publishers: &[Publisher],
    watched: &Watched,
    topic: &str,
    prefix: &str,
    total: usize,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<Leg> {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu = CpuWindow::start(watched);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..concurrency {
        let publisher = publishers[lane % publishers.len()].clone();
        let (next, errors) = (next.clone(), errors.clone());
        let prefix = prefix.to_string();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(());
                }
                let msgs: Vec<OutgoingMessage> = (first..(first + batch).min(total))
                    .map(|i| outgoing(&topic, &prefix, i % QUEUES as usize, i))
                    .collect();
                let mut attempt = 0;
                loop {
                    let result = if msgs.len() == 1 {
                        publisher.send(&msgs[0]).await.map(|_| ())
                    } else {
                        publisher.send_batch(&msgs).await.map(|_| ())
                    };
                    match result {
                        Ok(()) => break,
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            if e.is_permanent() || attempt >= 5 {
                                bail!("raw send of message {first} failed: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("send task")??;
    }
    let elapsed = started.elapsed();
    let cpu = cpu.finish(watched);
    Ok(Leg {
        messages: total as u64,
        elapsed,
        cpu,
        note: format!(
            "{} per call, {concurrency} calls in flight over {} clients, {} retried errors",
            batch,
            publishers.len(),
            errors.load(Ordering::Relaxed)
        ),
    })
}

/// Reference leg: `total` SEND_MESSAGE requests (one message each) straight
/// to a 5.x broker over Remoting, `concurrency` in flight, into `bench_raw`.
async fn direct_send(
    client: &RemotingClient,
    broker: &str,
    watched: &Watched,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<Leg> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuWindow::start(watched);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, broker) = (client.clone(), next.clone(), broker.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let q = i % QUEUES as usize;
                let mut req = SendRequest::new("e2e_bench_direct", RAW_TOPIC, q as i32, body(i));
                req.properties.insert(names::TAGS, "bench");
                req.properties.insert(names::KEYS, format!("key-{q}-{i}"));
                req.properties
                    .insert(names::UNIQ_KEY, message_id("DRCT", q, i));
                client
                    .send_message(&broker, &req)
                    .await
                    .with_context(|| format!("direct send of message {i} to {broker}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.context("direct send task")??;
    }
    let elapsed = started.elapsed();
    Ok(Leg {
        messages: total as u64,
        elapsed,
        cpu: cpu.finish(watched),
        note: format!("SEND_MESSAGE, {concurrency} in flight"),
    })
}

// ---------------------------------------------------------------- the bridge

/// The bridge binary as a child process, output in a log file.
struct Bridge {
    child: Option<Child>,
    pid: u32,
    spawned: Instant,
    log: PathBuf,
    metrics: String,
}

impl Bridge {
    fn start(binary: &Path, config: &Path, log: &Path, metrics: &str) -> anyhow::Result<Bridge> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("open bridge log")?;
        let err = out.try_clone().context("clone log handle")?;
        let spawned = Instant::now();
        let child = Command::new(binary)
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("spawn rmq-bridge")?;
        Ok(Bridge {
            pid: child.id(),
            child: Some(child),
            spawned,
            log: log.to_path_buf(),
            metrics: metrics.to_string(),
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, wait for the exit; (time to exit, clean exit).
    async fn terminate(&mut self) -> (Duration, bool) {
        let Some(mut c) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (started.elapsed(), status.success());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                return (started.elapsed(), false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn scrape(&self) -> Option<String> {
        scrape(&self.metrics).await
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn scrape(addr: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.starts_with("HTTP/1.1 200").then_some(text)
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

fn forwarded(text: &str, route: &str) -> u64 {
    metric(
        text,
        FORWARDED,
        &[("route", route), ("outcome", "forwarded")],
    ) as u64
}

fn not_forwarded(text: &str, route: &str) -> u64 {
    ["skipped", "filtered", "quarantined", "expired"]
        .iter()
        .map(|o| metric(text, FORWARDED, &[("route", route), ("outcome", o)]) as u64)
        .sum()
}

fn target_errors(text: &str, route: &str) -> u64 {
    metric(text, "rmq_bridge_target_errors_total", &[("route", route)]) as u64
}

/// `CODE=count, ...` of `rmq_bridge_target_errors_total` for a route.
fn error_codes(text: &str, route: &str) -> String {
    let route_label = format!("route=\"{route}\"");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("rmq_bridge_target_errors_total{") else {
            continue;
        };
        if !rest.contains(&route_label) {
            continue;
        }
        let code = rest
            .split("code=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?");
        if let Some(n) = rest.rsplit(' ').next() {
            out.push(format!("{code}={n}"));
        }
    }
    out.join(", ")
}

/// Cumulative histogram buckets (upper bound, count) of `route`, ascending.
fn buckets(text: &str, name: &str, route: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let route_label = format!("route=\"{route}\"");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        if !rest.contains(&route_label) {
            continue;
        }
        let Some(le) = rest.split("le=\"").nth(1).and_then(|s| s.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        if let Some(count) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            out.push((le, count));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Quantile of cumulative buckets, interpolated linearly inside the bucket
/// (as Prometheus' histogram_quantile): bucket resolution, not exact.
fn bucket_quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in b {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = count - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

fn exact_quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

struct Drain {
    forwarded: u64,
    elapsed: Duration,
    first_forward: Option<Duration>,
    peak_hwm: u64,
    last_rss: u64,
    max_threads: u64,
    cpu: CpuShares,
    errors: u64,
    codes: String,
    other: u64,
    capped: bool,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.forwarded as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn steady_rate(&self) -> Option<f64> {
        let first = self.first_forward?;
        let span = self.elapsed.checked_sub(first)?.as_secs_f64();
        (span > 0.0).then(|| self.forwarded as f64 / span)
    }
}

/// Watches a running bridge until `route` forwarded `want` messages (or
/// `cap` passed since spawn), sampling memory and progress every `every`.
async fn watch_drain(
    bridge: &mut Bridge,
    watched: &Watched,
    route: &str,
    want: u64,
    cap: Duration,
    every: Duration,
    label: &str,
) -> anyhow::Result<Drain> {
    let cpu = CpuWindow::start(watched);
    let mut peak_hwm = 0;
    let mut last_rss = 0;
    let mut max_threads = 0;
    let mut first_forward = None;
    let mut last = (0u64, 0u64, 0u64);
    let mut codes = String::new();
    let mut last_print = Instant::now();
    loop {
        if let Some((hwm, rss)) = memory(bridge.pid) {
            peak_hwm = peak_hwm.max(hwm);
            last_rss = rss;
        }
        max_threads = max_threads.max(threads(bridge.pid).unwrap_or(0));
        if let Some(status) = bridge.exited() {
            bail!(
                "the bridge exited ({status}) during {label}; log tail:\n{}",
                bridge.log_tail(40)
            );
        }
        if let Some(text) = bridge.scrape().await {
            last = (
                forwarded(&text, route),
                target_errors(&text, route),
                not_forwarded(&text, route),
            );
            codes = error_codes(&text, route);
            if last.0 > 0 && first_forward.is_none() {
                first_forward = Some(bridge.spawned.elapsed());
            }
        }
        let elapsed = bridge.spawned.elapsed();
        if last.0 >= want || elapsed >= cap {
            return Ok(Drain {
                forwarded: last.0,
                elapsed,
                first_forward,
                peak_hwm,
                last_rss,
                max_threads,
                cpu: cpu.finish(watched),
                errors: last.1,
                codes,
                other: last.2,
                capped: last.0 < want,
            });
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "  {label}: {} of {want} forwarded after {:.0} s; bridge VmHWM {:.1} MiB, VmRSS {:.1} MiB; load {}",
                last.0,
                elapsed.as_secs_f64(),
                peak_hwm as f64 / MIB,
                last_rss as f64 / MIB,
                load_average()
            );
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------- table

struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, metric: &str, value: String, target: &str, verdict: String) {
        self.rows
            .push([metric.to_string(), value, target.to_string(), verdict]);
    }

    fn render(&self) -> String {
        let header = [
            "metric".to_string(),
            "value".to_string(),
            "target".to_string(),
            "ratio / pass".to_string(),
        ];
        let mut widths = [0usize; 4];
        for r in std::iter::once(&header).chain(&self.rows) {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |r: &[String; 4]| {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&header);
        let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

fn rate(r: f64) -> String {
    format!("{r:.0} msg/s ({:.1} MB/s)", r * body_bytes() as f64 / 1e6)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------- the run

struct Env {
    src: LocalCluster,
    dst: LocalCluster,
    client: RemotingClient,
    dir: tempfile::TempDir,
    /// A private copy of the release binary: a rebuild of `target/release`
    /// during the run (other work on the machine) cannot mix two versions.
    bridge_bin: PathBuf,
    /// The blackhole 5.x endpoint and its address (legs 7), when enabled.
    blackhole: Option<(Blackhole, String)>,
}

impl Env {
    fn config(
        &self,
        checkpoints: &str,
        metrics: &str,
        params: &Params,
        routes: &[RouteSpec],
    ) -> anyhow::Result<String> {
        self.config_with(checkpoints, metrics, params, routes, &[])
    }

    /// Like `config`, with `[pipeline]` keys in `overrides` replacing the
    /// same keys of `RMQ_BENCH_PIPELINE`.
    fn config_with(
        &self,
        checkpoints: &str,
        metrics: &str,
        params: &Params,
        routes: &[RouteSpec],
        overrides: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let mut extra = String::from("[pipeline]\n");
        if let Some(w) = params.inflight {
            extra.push_str(&format!("inflight_per_queue = {w}\n"));
        }
        for (k, v) in &params.pipeline_extra {
            if overrides.iter().all(|(o, _)| o != k) {
                extra.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (k, v) in overrides {
            extra.push_str(&format!("{k} = {v}\n"));
        }
        let text = testkit::render_config(
            &self.src,
            &self.dst,
            &self.dir.path().join(checkpoints),
            metrics,
            &extra,
            routes,
        )?;
        let text = text.replacen(
            "[target]\n",
            &format!("[target]\nclients = {}\n", params.clients),
            1,
        );
        Ok(match params.pull_batch {
            Some(b) => text.replacen(
                "[source]\n",
                &format!("[source]\npull_batch_size = {b}\n"),
                1,
            ),
            None => text,
        })
    }
}

fn route(name: &str, topic: &str) -> RouteSpec {
    RouteSpec::new(name, topic, topic, 100).with("start", "\"earliest\"")
}

async fn run(
    env: &Env,
    params: &Params,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let client = &env.client;
    let (src, dst) = (&env.src, &env.dst);
    for topic in [TOPIC, LAT_TOPIC, BACKLOG_TOPIC] {
        testkit::create_topic(client, src, topic, QUEUES, None).await?;
        testkit::create_topic(client, dst, topic, QUEUES, Some("NORMAL")).await?;
    }
    testkit::create_topic(client, dst, RAW_TOPIC, QUEUES, Some("NORMAL")).await?;
    testkit::create_topic(client, dst, BATCH_TOPIC, QUEUES, Some("NORMAL")).await?;
    if params.only_backlog {
        return backlog_leg(env, params, table).await;
    }
    let endpoint = dst
        .proxy_endpoint
        .clone()
        .ok_or_else(|| anyhow!("the 5.x cluster has no proxy"))?;

    // ---- preload N
    println!(
        "preloading {} messages into 4.x `{TOPIC}` ...",
        params.messages
    );
    let took = preload(client, &src.broker_addr, TOPIC, "BNCH", params.messages).await?;
    let preload_rate = params.messages as f64 / took.as_secs_f64();
    println!("  {:.1} s, {}", took.as_secs_f64(), rate(preload_rate));
    table.row(
        "preload into 4.x (send_batch 64, 8 queues at once)",
        format!(
            "{} in {:.1} s: {}",
            params.messages,
            took.as_secs_f64(),
            rate(preload_rate)
        ),
        "info",
        String::new(),
    );

    // ---- (1) raw pull
    let pull_batch = params.pull_batch.unwrap_or(32);
    println!("raw pull of `{TOPIC}`, pull_batch_size {pull_batch} ...");
    let watched = Watched::new(src, dst, None);
    let pull = raw_pull(src, &watched, pull_batch, params.messages).await?;
    pull.report(
        table,
        &format!(
            "(1) raw pull 4.x, our source alone (pull_batch_size {pull_batch}, {QUEUES} queues)"
        ),
        "    CPU during raw pull",
    );

    // ---- (7) the bridge's own ceiling, into the blackhole
    if let Some((bh, addr)) = &env.blackhole {
        blackhole_legs(env, params, bh, addr, &pull, table, notes).await?;
    }
    if params.only_blackhole {
        return Ok(());
    }

    // ---- (2) raw send
    let mut publishers = Vec::new();
    for _ in 0..params.clients {
        // Each with its own client id, as the bridge's `target.clients`.
        let mut grpc = GrpcClientConfig::new(vec![endpoint.clone()]);
        grpc.request_timeout = Duration::from_secs(10);
        publishers.push(
            Publisher::connect(grpc)
                .await
                .map_err(|e| anyhow!("connecting to the 5.x proxy {endpoint}: {e}"))?,
        );
    }
    let publisher = publishers[0].clone();
    publisher
        .accepted_types(RAW_TOPIC)
        .await
        .map_err(|e| anyhow!("route of {RAW_TOPIC}: {e}"))?;
    let mut single: Option<Leg> = None;
    for (round, &concurrency) in params.send_concurrency.iter().enumerate() {
        println!(
            "raw send of {} messages into 5.x `{RAW_TOPIC}`, {concurrency} single sends in flight ...",
            params.send_messages
        );
        let leg = raw_send(
            &publishers,
            &watched,
            RAW_TOPIC,
            &format!("RAS{}", round % 10),
            params.send_messages,
            1,
            concurrency,
        )
        .await?;
        leg.report(
            table,
            &format!(
                "(2) raw send 5.x, our Publisher alone ({} clients), send() per message",
                params.clients
            ),
            "    CPU during raw send (single)",
        );
        let better = match &single {
            Some(best) => leg.rate() > best.rate(),
            None => true,
        };
        if better {
            single = Some(leg);
        }
    }
    let single = single.ok_or_else(|| anyhow!("no raw send concurrency given"))?;
    let mut best_send = (single.rate(), "send() per message".to_string());
    if params.send_batch > 1 {
        println!(
            "raw send of {} messages into 5.x `{BATCH_TOPIC}`, send_batch of {} with {} in flight ...",
            params.send_messages, params.send_batch, params.send_batch_concurrency
        );
        let batched = raw_send(
            &publishers,
            &watched,
            BATCH_TOPIC,
            "RAWB",
            params.send_messages,
            params.send_batch,
            params.send_batch_concurrency,
        )
        .await?;
        batched.report(
            table,
            &format!(
                "(2b) raw send 5.x, our Publisher alone, send_batch() of {}",
                params.send_batch
            ),
            "    CPU during raw send (batched)",
        );
        // What the 5.x side made of the batches: one stored message per sent
        // message, each with its own id and body? Only then does the rate count.
        // The broker dispatches stored messages to their consume queue a
        // moment after it answered: read until all are there or 15 s passed.
        let deadline = Instant::now() + Duration::from_secs(15);
        let stored = loop {
            let stored = testkit::read_back(client, dst, BATCH_TOPIC).await?;
            if stored.len() >= params.send_messages || Instant::now() >= deadline {
                break stored;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let ids: std::collections::HashSet<&str> = stored.iter().map(|r| r.message_id()).collect();
        let intact = stored.len() == params.send_messages
            && ids.len() == params.send_messages
            && stored.iter().all(|r| r.body.len() == body_bytes());
        let verdict = format!(
            "5.x stored {} records, {} distinct ids, {} bodies of {} B, for {} sent: {}",
            stored.len(),
            ids.len(),
            stored
                .iter()
                .filter(|r| r.body.len() == body_bytes())
                .count(),
            body_bytes(),
            params.send_messages,
            if intact {
                "intact"
            } else {
                "NOT INTACT, rate not counted as a send rate"
            }
        );
        println!("  {verdict}");
        table.row(
            "    batched fidelity (read back over Remoting)",
            verdict,
            "",
            String::new(),
        );
        if intact && batched.rate() > best_send.0 {
            best_send = (
                batched.rate(),
                format!("send_batch() of {}", params.send_batch),
            );
        }
    }
    for p in &publishers {
        p.shutdown().await;
    }
    drop(publisher);
    drop(publishers);
    if params.direct_messages > 0 {
        println!(
            "reference: {} single-message Remoting sends straight to the 5.x broker, 64 in flight ...",
            params.direct_messages
        );
        let direct = direct_send(
            client,
            &dst.broker_addr,
            &watched,
            params.direct_messages,
            64,
        )
        .await?;
        direct.report(
            table,
            "(2c) reference: 5.x broker direct over Remoting, no proxy, 1 per request",
            "    CPU during direct send",
        );
    }
    let raw_size = testkit::topic_size(client, dst, RAW_TOPIC).await?;
    let raw_expected = params.send_messages as i64 * params.send_concurrency.len() as i64
        + params.direct_messages as i64;
    if raw_size != raw_expected {
        notes.push(format!(
            "5.x `{RAW_TOPIC}` holds {raw_size} messages, {raw_expected} were sent"
        ));
    }

    // ---- (3) bridged drain of N
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let config = env.dir.path().join("bridge.toml");
    testkit::write_config(
        &config,
        &env.config(
            "checkpoints",
            &metrics_addr,
            params,
            &[route("bench", TOPIC), route("bench_lat", LAT_TOPIC)],
        )?,
    )?;
    let log = env.dir.path().join("bridge.log");
    println!(
        "bridged drain of {} messages `{TOPIC}` -> `{TOPIC}` ...",
        params.messages
    );
    let mut bridge = Bridge::start(&env.bridge_bin, &config, &log, &metrics_addr)?;
    let watched = Watched::new(src, dst, Some(bridge.pid));
    let drain = watch_drain(
        &mut bridge,
        &watched,
        "bench",
        params.messages as u64,
        params.drain_cap,
        Duration::from_millis(100),
        "bridged drain",
    )
    .await?;
    let landed = testkit::topic_size(client, dst, TOPIC).await?;
    println!(
        "  {} forwarded in {:.2} s: {}; 5.x topic holds {landed}; CPU {}",
        drain.forwarded,
        drain.elapsed.as_secs_f64(),
        rate(drain.rate()),
        drain.cpu.summary()
    );
    let raw_min = pull.rate().min(best_send.0);
    let ratio = drain.rate() / raw_min;
    table.row(
        &format!("(3) bridged {TOPIC} -> {TOPIC}, spawn to all N forwarded"),
        format!(
            "{} in {:.2} s: {}{}",
            drain.forwarded,
            drain.elapsed.as_secs_f64(),
            rate(drain.rate()),
            if drain.capped {
                " (CAPPED, partial)"
            } else {
                ""
            }
        ),
        "",
        format!(
            "5.x topic holds {landed}; {} send errors [{}], {} not forwarded",
            drain.errors, drain.codes, drain.other
        ),
    );
    if let Some(steady) = drain.steady_rate() {
        table.row(
            "    bridged, first forward to last (startup excluded)",
            rate(steady),
            "info",
            format!(
                "first forward {} after spawn",
                ms(drain.first_forward.unwrap_or_default())
            ),
        );
    }
    table.row(
        "    bridged / min(raw pull, raw send best)",
        format!(
            "{:.2} (min = {} of {})",
            ratio,
            rate(raw_min),
            if pull.rate() <= best_send.0 {
                "raw pull".to_string()
            } else {
                format!("raw send, {}", best_send.1)
            }
        ),
        ">= 0.90",
        pass(ratio >= 0.9 && !drain.capped).to_string(),
    );
    if best_send.0 > single.rate() {
        let single_min = pull.rate().min(single.rate());
        table.row(
            "    bridged / min(raw pull, raw send per message)",
            format!("{:.2}", drain.rate() / single_min),
            "info",
            "the bridge sends one message per call".into(),
        );
    }
    table.row(
        "    CPU during bridged drain",
        drain.cpu.summary(),
        "",
        String::new(),
    );
    table.row(
        "    CPU time per forwarded message",
        cpu_per_message(&drain.cpu, drain.forwarded),
        "info",
        String::new(),
    );
    table.row(
        "    bridge peak RSS (VmHWM) during this drain",
        format!("{:.1} MiB", drain.peak_hwm as f64 / MIB),
        "info",
        format!("{} threads", drain.max_threads),
    );
    if landed < drain.forwarded as i64 {
        notes.push(format!(
            "5.x `{TOPIC}` holds {landed} messages but the bridge counted {} forwarded",
            drain.forwarded
        ));
    }

    // ---- (4) latency at about half the bridged rate
    let lat_rate = params
        .lat_rate
        .unwrap_or(drain.rate() / 2.0)
        .max(QUEUES as f64);
    println!(
        "latency run: {lat_rate:.0} msg/s into 4.x `{LAT_TOPIC}` for {} s ...",
        params.lat_secs
    );
    let (produced, produce_secs) =
        paced_produce(client, &src.broker_addr, lat_rate, params.lat_secs).await?;
    let achieved = produced as f64 / produce_secs;
    let deadline = Instant::now() + Duration::from_secs(120);
    let text = loop {
        let text = bridge.scrape().await.unwrap_or_default();
        if forwarded(&text, "bench_lat") >= produced as u64 {
            break text;
        }
        if Instant::now() > deadline {
            bail!(
                "latency run: {} of {produced} forwarded after 120 s; bridge log:\n{}",
                forwarded(&text, "bench_lat"),
                bridge.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let b = buckets(&text, LATENCY, "bench_lat");
    let fmt_q = |q: Option<f64>| q.map_or("?".into(), |v| format!("{:.1} ms", v * 1000.0));
    let (p50, p99) = (bucket_quantile(&b, 0.5), bucket_quantile(&b, 0.99));
    table.row(
        "(4) added latency p50 / p99, bridge histogram (4.x store -> 5.x ack)",
        format!("{} / {}", fmt_q(p50), fmt_q(p99)),
        "info",
        format!(
            "at {achieved:.0} msg/s for {produce_secs:.1} s ({produced} messages); bucket resolution, linear within a bucket"
        ),
    );
    match exact_latency(client, src, dst).await {
        Ok(mut lat) => {
            lat.sort_unstable();
            let q = |p| exact_quantile(&lat, p).map_or("?".into(), |v| format!("{v} ms"));
            table.row(
                "    exact, 5.x store time - 4.x store time per message",
                format!("{} / {} (max {})", q(0.5), q(0.99), q(1.0)),
                "info",
                format!(
                    "{} messages joined by message id (ms clock resolution)",
                    lat.len()
                ),
            );
        }
        Err(e) => notes.push(format!("exact latency from read-back failed: {e:#}")),
    }

    // ---- (5) restart to first forward
    let (stop_time, clean) = bridge.terminate().await;
    if !clean {
        notes.push(format!(
            "the bridge did not exit cleanly on SIGTERM (after {})",
            ms(stop_time)
        ));
    }
    println!(
        "restart: bridge stopped in {}; preloading {} more messages ...",
        ms(stop_time),
        params.restart_messages
    );
    preload(
        client,
        &src.broker_addr,
        TOPIC,
        "RSTR",
        params.restart_messages,
    )
    .await?;
    let mut bridge = Bridge::start(&env.bridge_bin, &config, &log, &metrics_addr)?;
    let mut metrics_up = None;
    let mut startup_rss = None;
    let mut first = None;
    let deadline = Duration::from_secs(120);
    while first.is_none() {
        if let Some(status) = bridge.exited() {
            bail!(
                "the restarted bridge exited ({status}); log:\n{}",
                bridge.log_tail(40)
            );
        }
        if let Some(text) = bridge.scrape().await {
            if metrics_up.is_none() {
                metrics_up = Some(bridge.spawned.elapsed());
                startup_rss = memory(bridge.pid).map(|m| m.1);
            }
            if forwarded(&text, "bench") > 0 {
                first = Some(bridge.spawned.elapsed());
            }
        }
        if bridge.spawned.elapsed() > deadline {
            bail!(
                "no message forwarded 120 s after restart; log:\n{}",
                bridge.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.unwrap_or_default();
    let watched = Watched::new(src, dst, Some(bridge.pid));
    let rest = watch_drain(
        &mut bridge,
        &watched,
        "bench",
        params.restart_messages as u64,
        Duration::from_secs(600),
        Duration::from_millis(50),
        "restart drain",
    )
    .await?;
    let (stop2, clean2) = bridge.terminate().await;
    if !clean2 {
        notes.push("the restarted bridge did not exit cleanly on SIGTERM".into());
    }
    let total_landed = testkit::topic_size(client, dst, TOPIC).await?;
    let expected_total = (params.messages + params.restart_messages) as i64;
    table.row(
        "(5) restart: process spawn to first forwarded message",
        ms(first),
        "<= 1 s",
        format!(
            "{} (metrics up after {}, VmRSS then {}; polled every 20 ms)",
            pass(first <= Duration::from_secs(1)),
            metrics_up.map_or("?".into(), ms),
            startup_rss.map_or("?".into(), |r| format!("{:.1} MiB", r as f64 / MIB))
        ),
    );
    table.row(
        "    restart: spawn to all restart messages forwarded",
        format!("{} in {:.2} s", rest.forwarded, rest.elapsed.as_secs_f64()),
        "info",
        format!(
            "SIGTERM to exit {} and {}; 5.x `{TOPIC}` holds {total_landed} of {expected_total}",
            ms(stop_time),
            ms(stop2)
        ),
    );
    if total_landed != expected_total {
        notes.push(format!(
            "after the restart 5.x `{TOPIC}` holds {total_landed} messages, {expected_total} expected (duplicates or loss)"
        ));
    }

    backlog_leg(env, params, table).await
}

/// `perf record` attached to a running bridge (RMQ_BENCH_PERF).
struct Perf(Option<Child>);

impl Perf {
    fn attach(params: &Params, pid: u32, leg: &str) -> Perf {
        let Some(dir) = &params.perf_dir else {
            return Perf(None);
        };
        let _ = std::fs::create_dir_all(dir);
        let out = dir.join(format!("{leg}.data"));
        let child = Command::new("perf")
            .arg("record")
            .args(params.perf_args.split_whitespace())
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                println!("  perf record of the bridge into {}", out.display());
                Perf(Some(c))
            }
            Err(e) => {
                eprintln!("  perf record could not start: {e}");
                Perf(None)
            }
        }
    }

    /// Stops the recording (SIGINT) and waits for perf to write its file.
    fn finish(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// `2 cores (1.50 bridge ...)` style CPU of the blackhole's threads.
fn bh_cores(before: f64, wall: f64) -> f64 {
    (threads_cpu_seconds(BH_THREADS) - before) / wall.max(1e-3)
}

fn tally_verdict(t: &TopicTally, expected: u64) -> String {
    format!(
        "blackhole: {t}; {}",
        if t.intact(expected) {
            "intact (none lost, none duplicated)"
        } else {
            "NOT INTACT"
        }
    )
}

/// Legs (7): raw send into the blackhole (single, packed), then the bridge
/// draining the preloaded 4.x topic into it (single, packed).
async fn blackhole_legs(
    env: &Env,
    params: &Params,
    bh: &Blackhole,
    addr: &str,
    pull: &Leg,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (src, dst) = (&env.src, &env.dst);
    let watched = Watched::new(src, dst, None);
    let mut publishers = Vec::new();
    for _ in 0..params.clients {
        let grpc = GrpcClientConfig::new(vec![addr.to_string()]);
        publishers.push(
            Publisher::connect(grpc)
                .await
                .map_err(|e| anyhow!("connecting to the blackhole {addr}: {e}"))?,
        );
    }
    let concurrency = params.send_concurrency.first().copied().unwrap_or(256);
    let batch = params.send_batch.max(1);
    let mut raw = Vec::new();
    for (topic, per_call, in_flight, label) in [
        (BH_RAW, 1, concurrency, "single"),
        (BH_RAW_BATCH, batch, params.send_batch_concurrency, "packed"),
    ] {
        if per_call == 1 && label == "packed" {
            continue;
        }
        println!(
            "raw send of {} messages into the blackhole `{topic}`, {per_call} per call, {in_flight} in flight ...",
            params.send_messages
        );
        let bh_before = threads_cpu_seconds(BH_THREADS);
        let leg = raw_send(
            &publishers,
            &watched,
            topic,
            if per_call == 1 { "BHRS" } else { "BHRB" },
            params.send_messages,
            per_call,
            in_flight,
        )
        .await?;
        let wall = leg.cpu.wall;
        let bh_load = bh_cores(bh_before, wall);
        let driver = leg.cpu.get("bench driver").unwrap_or(0.0);
        let publisher_us = (driver - bh_load).max(0.0) * wall / leg.messages.max(1) as f64 * 1e6;
        let bh_us = bh_load * wall / leg.messages.max(1) as f64 * 1e6;
        leg.report(
            table,
            &format!(
                "(7{}) raw send into the blackhole, our Publisher alone, {}",
                if per_call == 1 { "a" } else { "b" },
                if per_call == 1 {
                    "send() per message".to_string()
                } else {
                    format!("send_batch() of {per_call}")
                }
            ),
            "    CPU during raw send into the blackhole",
        );
        let tally = bh.tally(topic);
        table.row(
            "    publisher CPU per message (driver minus blackhole threads)",
            format!("{publisher_us:.1} µs"),
            "info",
            format!("blackhole threads {bh_us:.1} µs per message ({bh_load:.2} cores)"),
        );
        table.row(
            "    what arrived",
            tally_verdict(&tally, leg.messages),
            "",
            String::new(),
        );
        if !tally.intact(leg.messages) {
            notes.push(format!("raw send into the blackhole `{topic}`: {tally}"));
        }
        raw.push(leg.rate());
    }
    for p in &publishers {
        p.shutdown().await;
    }
    drop(publishers);

    for (topic, send_batch, label) in [
        (BH_BRIDGED, 1, "single"),
        (BH_BRIDGED_BATCH, batch, "packed"),
    ] {
        if send_batch == 1 && label == "packed" {
            continue;
        }
        let raw_send_rate = if send_batch == 1 {
            raw[0]
        } else {
            *raw.last().unwrap_or(&raw[0])
        };
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let name = format!("bh_{label}");
        let config = env.dir.path().join(format!("{name}.toml"));
        let text = env.config_with(
            &format!("checkpoints-{name}"),
            &metrics_addr,
            params,
            &[RouteSpec::new(&name, TOPIC, topic, 100).with("start", "\"earliest\"")],
            &[("send_batch_size", send_batch.to_string())],
        )?;
        let proxy = dst.proxy_endpoint.clone().unwrap_or_default();
        let text = text.replacen(
            &format!("endpoint = \"{proxy}\""),
            &format!("endpoint = \"{addr}\""),
            1,
        );
        testkit::write_config(&config, &text)?;
        println!(
            "bridged drain of {} messages 4.x `{TOPIC}` -> blackhole `{topic}`, send_batch_size {send_batch} ...",
            params.messages
        );
        let log = env.dir.path().join(format!("{name}.log"));
        let mut bridge = Bridge::start(&env.bridge_bin, &config, &log, &metrics_addr)?;
        let perf = Perf::attach(params, bridge.pid, &name);
        let watched = Watched::new(src, dst, Some(bridge.pid));
        let bh_before = threads_cpu_seconds(BH_THREADS);
        let drain = watch_drain(
            &mut bridge,
            &watched,
            &name,
            params.messages as u64,
            params.drain_cap,
            Duration::from_millis(100),
            "bridged drain into the blackhole",
        )
        .await;
        perf.finish();
        let drain = drain?;
        let bh_load = bh_cores(bh_before, drain.cpu.wall);
        let (stop, clean) = bridge.terminate().await;
        if !clean {
            notes.push(format!(
                "the bridge of leg {name} did not exit cleanly on SIGTERM ({})",
                ms(stop)
            ));
        }
        let tally = bh.tally(topic);
        let bridge_us = drain.cpu.get("bridge").unwrap_or(0.0) * drain.cpu.wall
            / drain.forwarded.max(1) as f64
            * 1e6;
        let raw_min = pull.rate().min(raw_send_rate);
        let ratio = drain.rate() / raw_min;
        println!(
            "  {} forwarded in {:.2} s: {}; bridge {bridge_us:.1} µs/msg; CPU {}",
            drain.forwarded,
            drain.elapsed.as_secs_f64(),
            rate(drain.rate()),
            drain.cpu.summary()
        );
        let letter = if send_batch == 1 { "c" } else { "d" };
        table.row(
            &format!(
                "(7{letter}) bridged 4.x `{TOPIC}` -> blackhole, send_batch_size {send_batch}, spawn to all N"
            ),
            format!(
                "{} in {:.2} s: {}{}",
                drain.forwarded,
                drain.elapsed.as_secs_f64(),
                rate(drain.rate()),
                if drain.capped { " (CAPPED, partial)" } else { "" }
            ),
            "",
            format!(
                "{} send errors [{}], {} not forwarded",
                drain.errors, drain.codes, drain.other
            ),
        );
        if let Some(steady) = drain.steady_rate() {
            table.row(
                "    first forward to last (startup excluded)",
                rate(steady),
                "info",
                format!(
                    "first forward {} after spawn",
                    ms(drain.first_forward.unwrap_or_default())
                ),
            );
        }
        let target_us = if send_batch == 1 { 30.0 } else { 4.0 };
        table.row(
            "    bridge CPU per forwarded message",
            format!("{bridge_us:.1} µs"),
            &format!("<= {target_us:.0} µs"),
            format!(
                "{} (bridge {:.2} cores, blackhole threads {bh_load:.2} cores)",
                pass(bridge_us <= target_us),
                drain.cpu.get("bridge").unwrap_or(0.0)
            ),
        );
        table.row(
            "    bridged / min(raw pull, raw send into the blackhole)",
            format!(
                "{ratio:.2} (min = {} of {})",
                rate(raw_min),
                if pull.rate() <= raw_send_rate {
                    "raw pull"
                } else {
                    "raw send into the blackhole"
                }
            ),
            ">= 0.90",
            pass(ratio >= 0.9 && !drain.capped).to_string(),
        );
        table.row(
            "    CPU during the drain",
            drain.cpu.summary(),
            "",
            String::new(),
        );
        table.row(
            "    bridge peak RSS (VmHWM) during this drain",
            format!("{:.1} MiB", drain.peak_hwm as f64 / MIB),
            "info",
            format!("{} threads", drain.max_threads),
        );
        table.row(
            "    what arrived",
            tally_verdict(&tally, params.messages as u64),
            "",
            String::new(),
        );
        if !tally.intact(params.messages as u64) {
            notes.push(format!("bridged into the blackhole `{topic}`: {tally}"));
        }
    }
    Ok(())
}

/// Leg (6): a fresh bridge drains a preloaded backlog while its memory is sampled.
async fn backlog_leg(env: &Env, params: &Params, table: &mut Table) -> anyhow::Result<()> {
    let (client, src, dst) = (&env.client, &env.src, &env.dst);
    if params.backlog == 0 {
        table.row(
            "(6) backlog RSS",
            "skipped (RMQ_BENCH_BACKLOG=0)".into(),
            "<= 64 MiB",
            String::new(),
        );
        return Ok(());
    }
    println!(
        "preloading a backlog of {} messages into 4.x `{BACKLOG_TOPIC}` ...",
        params.backlog
    );
    let took = preload(
        client,
        &src.broker_addr,
        BACKLOG_TOPIC,
        "BKLG",
        params.backlog,
    )
    .await?;
    println!(
        "  {:.1} s: {}",
        took.as_secs_f64(),
        rate(params.backlog as f64 / took.as_secs_f64())
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let config = env.dir.path().join("backlog.toml");
    testkit::write_config(
        &config,
        &env.config(
            "checkpoints-backlog",
            &metrics_addr,
            params,
            &[route("backlog", BACKLOG_TOPIC)],
        )?,
    )?;
    println!(
        "bridge draining the backlog (RSS sampled every 200 ms, cap {} s) ...",
        params.backlog_cap.as_secs()
    );
    let mut bridge = Bridge::start(
        &env.bridge_bin,
        &config,
        &env.dir.path().join("backlog.log"),
        &metrics_addr,
    )?;
    let watched = Watched::new(src, dst, Some(bridge.pid));
    let backlog = watch_drain(
        &mut bridge,
        &watched,
        "backlog",
        params.backlog as u64,
        params.backlog_cap,
        Duration::from_millis(200),
        "backlog drain",
    )
    .await?;
    let (stop_backlog, _) = bridge.terminate().await;
    let landed = testkit::topic_size(client, dst, BACKLOG_TOPIC).await?;
    table.row(
        &format!(
            "(6) backlog of {}: peak RSS (VmHWM) of the bridge",
            params.backlog
        ),
        format!(
            "{:.1} MiB (VmRSS at end {:.1} MiB, {} threads)",
            backlog.peak_hwm as f64 / MIB,
            backlog.last_rss as f64 / MIB,
            backlog.max_threads
        ),
        "<= 64 MiB",
        format!(
            "{}{}",
            pass(backlog.peak_hwm as f64 <= 64.0 * MIB),
            if backlog.capped {
                format!(" (PARTIAL: capped at {} s)", params.backlog_cap.as_secs())
            } else {
                String::new()
            }
        ),
    );
    table.row(
        "    backlog drain",
        format!(
            "{} of {} in {:.1} s: {}",
            backlog.forwarded,
            params.backlog,
            backlog.elapsed.as_secs_f64(),
            rate(backlog.rate())
        ),
        "info",
        format!(
            "preload {:.1} s; 5.x topic holds {landed} after SIGTERM (exit in {}); {} send errors [{}]",
            took.as_secs_f64(),
            ms(stop_backlog),
            backlog.errors,
            backlog.codes
        ),
    );
    table.row(
        "    CPU during backlog drain",
        backlog.cpu.summary(),
        "",
        String::new(),
    );
    Ok(())
}

/// Produces into 4.x `bench_lat` at `rate` msg/s for `secs`: each queue
/// sends, every 10 ms, what it owes as one small batch. Returns (messages,
/// seconds taken).
async fn paced_produce(
    client: &RemotingClient,
    broker: &str,
    rate: f64,
    secs: f64,
) -> anyhow::Result<(usize, f64)> {
    let per_queue = rate / QUEUES as f64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for q in 0..QUEUES as usize {
        let client = client.clone();
        let broker = broker.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64().min(secs);
                let owed = (per_queue * t) as usize;
                if owed > sent {
                    let n = (owed - sent).min(preload_batch());
                    let request = SendBatchRequest {
                        producer_group: "e2e_bench_lat".into(),
                        topic: LAT_TOPIC.into(),
                        queue_id: q as i32,
                        entries: batch_entries("LATC", q, sent..sent + n),
                        born_timestamp_ms: now_ms(),
                    };
                    client
                        .send_batch(&broker, &request)
                        .await
                        .with_context(|| format!("paced send to {LAT_TOPIC} queue {q}"))?;
                    sent += n;
                }
                if t >= secs && sent >= owed {
                    return anyhow::Ok(sent);
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("paced producer")??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Per message: 5.x store time minus 4.x store time (ms), joined by message id.
async fn exact_latency(
    client: &RemotingClient,
    src: &LocalCluster,
    dst: &LocalCluster,
) -> anyhow::Result<Vec<i64>> {
    let source: HashMap<String, i64> = testkit::read_back(client, src, LAT_TOPIC)
        .await?
        .into_iter()
        .map(|r| (r.message_id().to_string(), r.store_timestamp_ms))
        .collect();
    let landed = testkit::read_back(client, dst, LAT_TOPIC).await?;
    let out: Vec<i64> = landed
        .iter()
        .filter_map(|r| source.get(r.message_id()).map(|s| r.store_timestamp_ms - s))
        .collect();
    if out.len() != source.len() {
        bail!(
            "joined {} of {} messages ({} read back from 5.x)",
            out.len(),
            source.len(),
            landed.len()
        );
    }
    Ok(out)
}

/// Copies the bridge logs next to the table (the work dir is temporary).
fn keep_logs(env: &Env, table: &Path) {
    let Some(dir) = table.parent().map(|d| d.join("bench-e2e-logs")) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    for name in [
        "bridge.log",
        "backlog.log",
        "bridge.toml",
        "backlog.toml",
        "bh_single.log",
        "bh_single.toml",
        "bh_packed.log",
        "bh_packed.toml",
    ] {
        let from = env.dir.path().join(name);
        if from.exists() {
            let _ = std::fs::copy(&from, dir.join(name));
        }
    }
    println!("bridge logs and configs copied to {}", dir.display());
}

fn table_path() -> PathBuf {
    rmq_bridge::dev::machine::target_dir().join("bench-e2e.txt")
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let params = Params::from_env()?;
    let started = Instant::now();
    let load_before = load_average();
    let mut header = String::new();
    let _ = writeln!(
        header,
        "rmq-bridge end-to-end benchmark (benches/e2e.rs), Apache RocketMQ 4.9.7 and 5.5.0 on loopback"
    );
    let _ = writeln!(
        header,
        "machine: {} cores ({}), load average before {load_before}",
        nproc(),
        cpu_model()
    );
    let _ = writeln!(
        header,
        "bridge: {} built from {} (release profile)",
        std::env::var("RMQ_BENCH_BRIDGE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rmq-bridge").to_string()),
        git_revision()
    );
    let _ = writeln!(header, "parameters: {}", params.describe());
    print!("{header}");

    println!("starting the 4.x and 5.x peers ...");
    let src = testkit::start_source_cluster("e2e-src")?;
    let dst = testkit::start_target_cluster("e2e-dst")?;
    let dir = tempfile::tempdir().context("tempdir")?;
    let bridge_bin = dir.path().join("rmq-bridge");
    // RMQ_BENCH_BRIDGE_BIN: another build of the daemon (an A/B comparison
    // of the bridged legs on the same machine state).
    let built = std::env::var_os("RMQ_BENCH_BRIDGE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rmq-bridge").into());
    std::fs::copy(&built, &bridge_bin)
        .with_context(|| format!("copying the rmq-bridge binary {}", built.display()))?;
    // The blackhole gets its own threads (named, so their CPU is counted
    // apart from the driver's) and outlives the driver's runtime.
    let bh_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(BH_THREADS)
        .enable_all()
        .build()?;
    let blackhole = if params.blackhole {
        let bh = Blackhole::new(BlackholeConfig {
            queues: QUEUES,
            service_time: params.bh_service,
            ..Default::default()
        });
        for t in [BH_RAW, BH_RAW_BATCH, BH_BRIDGED, BH_BRIDGED_BATCH] {
            bh.add_topic(t, &[TopicMessageType::Normal]);
        }
        let addr = bh_runtime
            .block_on(bh.start("127.0.0.1:0"))
            .context("starting the blackhole")?;
        Some((bh, addr.to_string()))
    } else {
        None
    };
    let env = Env {
        src,
        dst,
        client: testkit::client(),
        dir,
        bridge_bin,
        blackhole,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut table = Table { rows: Vec::new() };
    let mut notes = Vec::new();
    let result = runtime.block_on(run(&env, &params, &mut table, &mut notes));
    if let Err(e) = &result {
        notes.push(format!("RUN FAILED: {e:#}"));
        eprintln!("4.x broker log:\n{}", env.src.log_tail(Peer::Broker, 20));
        eprintln!("5.x proxy log:\n{}", env.dst.log_tail(Peer::Proxy, 20));
    }
    let _ = writeln!(
        header,
        "finished in {:.0} s; load average after {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    let mut out = header;
    out.push('\n');
    out.push_str(&table.render());
    for n in &notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(
        out,
        "CPU figures are cores used on average over the window (utime+stime from /proc); \
         `other processes` is whatever else ran on the machine meanwhile."
    );
    println!("\n{out}");
    let path = table_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &out) {
        Ok(()) => println!("table written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    keep_logs(&env, &path);
    drop(runtime);
    drop(env);
    drop(bh_runtime);
    result
}
