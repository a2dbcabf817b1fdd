//! Raw send rate of the 5.x `Publisher` alone against a real 5.x peer
//! (SPEC.md section 7): name server + broker + `rocketmq-proxy-rust --mode
//! cluster` on loopback, a NORMAL topic with 8 queues, 1 KiB bodies. No 4.x
//! side, no translation, no checkpoints: only our gRPC client and the peer.
//!
//! Two measurements, each on its own topic:
//! - `send`: N messages, C concurrent senders, one SendMessage each;
//! - `send_batch`: the same N messages in batches of 32 (one SendMessage per
//!   batch), C concurrent senders.
//!
//! A retriable error is retried (as the pipeline does) and counted; a
//! permanent one aborts the run. After each run the topic size on the broker
//! is checked against N.
//!
//! Run: `cargo bench --bench send_rate`
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RMQ_BENCH_MESSAGES` | 100000 | messages per measurement |
//! | `RMQ_BENCH_CONCURRENCY` | 64 | concurrent senders |
//! | `RMQ_BENCH_BATCH` | 32 | messages per `send_batch` (0: skip the batch run) |
//! | `RMQ_BENCH_PUBLISHERS` | 1 | `Publisher`s (client ids) the senders are spread over |
//!
//! Everything runs on the same cores, so the figures include the peers'
//! CPU time. The CPU time of each process during each run is printed
//! (from `/proc/<pid>/stat`) with the load average, to show where the time
//! goes: on a 2-core machine the proxy and broker, not our client, set the
//! pace.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use bytes::Bytes;

use rmq_bridge::dev::cluster::{ClusterOptions, LocalCluster, Peer};
use rmq_bridge::dev::testkit::{self, env_num};
use rmq_bridge::grpc::{GrpcClientConfig, MessageKind, OutgoingMessage, PublishError, Publisher};

const QUEUES: i32 = 8;
const BODY_BYTES: usize = 1024;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 32 upper-case hex digits, unique in this process (UNIQ_KEY shape).
fn message_id(seq: u64) -> String {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now_ms() as u64);
    format!("{:08X}{:012X}{:012X}", std::process::id(), epoch, seq)
}

fn message(topic: &str, seq: u64, body: &Bytes) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.to_owned(),
        message_id: message_id(seq),
        body: body.clone(),
        tag: Some("bench".into()),
        keys: vec![format!("k{seq}")],
        user_properties: Default::default(),
        born_timestamp_ms: now_ms(),
        born_host: "127.0.0.1".into(),
        kind: MessageKind::Normal,
    }
}

/// user + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy and total jiffies of the whole machine (`/proc/stat` line `cpu`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU used by each process of interest between `start` and `finish`.
struct CpuProbe {
    pids: Vec<(&'static str, u32)>,
    start: Vec<Option<u64>>,
    machine: Option<(u64, u64)>,
    at: Instant,
}

impl CpuProbe {
    fn start(cluster: &LocalCluster) -> Self {
        let mut pids = vec![("rmq-bridge bench (us)", std::process::id())];
        for (name, peer) in [
            ("rocketmq-proxy-rust", Peer::Proxy),
            ("rocketmq-broker-rust", Peer::Broker),
            ("rocketmq-namesrv-rust", Peer::NameServer),
        ] {
            if let Some(pid) = cluster.pid(peer) {
                pids.push((name, pid));
            }
        }
        let start = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
        CpuProbe {
            pids,
            start,
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    fn report(&self) -> String {
        let hz = clock_ticks_per_sec();
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let mut parts = Vec::new();
        for ((name, pid), before) in self.pids.iter().zip(&self.start) {
            if let (Some(b), Some(a)) = (before, cpu_ticks(*pid)) {
                let pct = (a - b) as f64 / hz / wall * 100.0;
                parts.push(format!("{name} {pct:.0}%"));
            }
        }
        if let (Some((busy0, total0)), Some((busy1, total1))) = (self.machine, machine_ticks()) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pct =
                (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * 100.0 * cores as f64;
            parts.push(format!("whole machine {pct:.0}% of {}%", cores * 100));
        }
        format!("CPU (100% = one core): {}", parts.join(", "))
    }
}

#[derive(Default)]
struct Counters {
    retries: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn note(&self, e: &PublishError) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }
}

async fn with_retry<T, F, Fut>(counters: &Counters, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PublishError>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() => bail!("permanent error: {e}"),
            Err(e) if Instant::now() > deadline => bail!("still failing after 120 s: {e}"),
            Err(e) => {
                counters.note(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct RunResult {
    elapsed: Duration,
    retries: u64,
    last_error: Option<String>,
}

/// `n` messages to `topic`, `concurrency` senders, `batch` messages per
/// SendMessage (1: `send`, more: `send_batch`).
async fn run(
    publishers: &[Publisher],
    topic: &str,
    n: usize,
    concurrency: usize,
    batch: usize,
    first_seq: u64,
) -> anyhow::Result<RunResult> {
    let body = Bytes::from(
        (0..BODY_BYTES)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect::<Vec<u8>>(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let publisher = publishers[task % publishers.len()].clone();
        let next = Arc::clone(&next);
        let counters = Arc::clone(&counters);
        let body = body.clone();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    return anyhow::Ok(());
                }
                let to = (from + batch).min(n);
                let messages: Vec<OutgoingMessage> = (from..to)
                    .map(|i| message(&topic, first_seq + i as u64, &body))
                    .collect();
                if messages.len() == 1 {
                    with_retry(&counters, || publisher.send(&messages[0])).await?;
                } else {
                    let receipts =
                        with_retry(&counters, || publisher.send_batch(&messages)).await?;
                    if receipts.len() != messages.len() {
                        bail!(
                            "{} receipts for {} messages",
                            receipts.len(),
                            messages.len()
                        );
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("sender task: {e}"))??;
    }
    let elapsed = started.elapsed();
    let last_error = counters.last_error.lock().ok().and_then(|l| l.clone());
    Ok(RunResult {
        elapsed,
        retries: counters.retries.load(Ordering::Relaxed),
        last_error,
    })
}

fn print_result(label: &str, n: usize, r: &RunResult, cpu: &str, load_before: &str) {
    let secs = r.elapsed.as_secs_f64();
    let rate = n as f64 / secs;
    let mb = rate * BODY_BYTES as f64 / 1_000_000.0;
    println!("{label}: {n} messages in {secs:.2} s = {rate:.0} messages/s, {mb:.2} MB/s of bodies");
    println!("    {cpu}");
    println!("    load average before {load_before}, after {}", loadavg());
    if r.retries > 0 {
        println!(
            "    {} retriable errors retried; last: {}",
            r.retries,
            r.last_error.as_deref().unwrap_or("?")
        );
    }
}

async fn landed(cluster: &LocalCluster, topic: &str, expected: usize) -> anyhow::Result<()> {
    let client = testkit::client();
    let size = testkit::topic_size(&client, cluster, topic).await?;
    println!("    broker holds {size} messages in {topic} (expected {expected})");
    if size < expected as i64 {
        bail!("only {size} of {expected} messages landed in {topic}");
    }
    Ok(())
}

async fn bench() -> anyhow::Result<()> {
    let n = env_num("RMQ_BENCH_MESSAGES")?.unwrap_or(100_000usize);
    let concurrency = env_num("RMQ_BENCH_CONCURRENCY")?.unwrap_or(64usize).max(1);
    let batch = env_num("RMQ_BENCH_BATCH")?.unwrap_or(32usize);
    let publisher_count = env_num("RMQ_BENCH_PUBLISHERS")?.unwrap_or(1usize).max(1);
    println!(
        "send_rate: {n} messages of {BODY_BYTES} B, {concurrency} concurrent senders over {publisher_count} \
         publisher(s), batch {batch}, {} cores, load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg()
    );
    let cluster = tokio::task::spawn_blocking(|| {
        LocalCluster::start(ClusterOptions::new("bench-send").with_proxy(true))
    })
    .await?
    .map_err(|e| anyhow!("starting the 5.x peers: {e}"))?;
    let endpoint = cluster
        .proxy_endpoint
        .clone()
        .ok_or_else(|| anyhow!("no proxy endpoint"))?;
    println!(
        "5.x peers: name server {}, broker {}, proxy {endpoint}",
        cluster.namesrv_addr, cluster.broker_addr
    );
    let client = testkit::client();
    for topic in ["send_rate_single", "send_rate_batch", "send_rate_warmup"] {
        testkit::create_topic(&client, &cluster, topic, QUEUES, Some("NORMAL")).await?;
    }
    let mut publishers = Vec::with_capacity(publisher_count);
    for _ in 0..publisher_count {
        // Each with its own client id (GrpcClientConfig::new makes a fresh one).
        publishers.push(
            Publisher::connect(GrpcClientConfig::new(vec![endpoint.clone()]))
                .await
                .map_err(|e| anyhow!("{e}"))?,
        );
    }

    // Warm-up: routes, channels, the proxy's producer for our client.
    run(
        &publishers,
        "send_rate_warmup",
        500,
        concurrency,
        1,
        10_000_000_000,
    )
    .await?;

    let load = loadavg();
    let cpu = CpuProbe::start(&cluster);
    let single = run(&publishers, "send_rate_single", n, concurrency, 1, 0).await?;
    print_result(
        "send (1 message per SendMessage)",
        n,
        &single,
        &cpu.report(),
        &load,
    );
    landed(&cluster, "send_rate_single", n).await?;

    if batch > 1 {
        let load = loadavg();
        let cpu = CpuProbe::start(&cluster);
        match run(
            &publishers,
            "send_rate_batch",
            n,
            concurrency,
            batch,
            n as u64,
        )
        .await
        {
            Ok(r) => {
                print_result(
                    &format!("send_batch ({batch} per SendMessage)"),
                    n,
                    &r,
                    &cpu.report(),
                    &load,
                );
                landed(&cluster, "send_rate_batch", n).await?;
            }
            Err(e) => println!(
                "send_batch ({batch} per SendMessage): the proxy did not take batches: {e:#}"
            ),
        }
    }
    for p in &publishers {
        p.shutdown().await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}
