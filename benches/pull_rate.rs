//! Raw pull rate of the 4.x source against a real 4.x peer (SPEC.md
//! section 7): one name server and one broker on loopback, a topic with 8
//! queues preloaded with N messages of 1 KiB (`send_batch`, 64 per batch,
//! one sender per queue, all queues at once), then every queue pulled
//! concurrently from the earliest offset by `TopicSource::spawn_puller`
//! until all N messages are read. Messages are decoded (as the bridge does)
//! and discarded: this is the source alone, no translation and no 5.x.
//!
//! Run: `cargo bench --bench pull_rate`
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RMQ_BENCH_MESSAGES` | 200000 | messages to preload |
//! | `RMQ_BENCH_PULL_BATCH` | `32,256` | `pull_batch_size` values to measure, in order |
//! | `RMQ_BENCH_ROUNDS` | 1 | measurements per batch size |
//! | `RMQ_BENCH_BROKER_PROPERTIES` | none | `key=value,...` extra keys of the 4.x broker's properties file |
//!
//! The figures depend on the machine and on what else runs on it: the load
//! average is printed next to them. The peer runs on the same cores as the
//! benchmark, so on a small machine the pull rate includes the broker's CPU
//! time per pull as well as ours.
//!
//! Measured on the 2-core dev VM (200000 messages, load average 2.7 to 4.5
//! from other work, so wall-clock rates varied by 2x between rounds; the CPU
//! seconds are the steadier figure):
//!
//! | broker | `pull_batch_size` | msg/pull | rate | CPU broker / source |
//! |---|---|---|---|---|
//! | defaults | 32 | 32 | 68k to 144k msg/s (70 to 148 MB/s) | 1.2 to 1.5 s / 0.5 to 0.6 s |
//! | defaults | 256 | 32 | 86k to 136k msg/s | 1.2 to 1.4 s / 0.6 s |
//! | `maxTransferCountOnMessageInMemory=256`, `maxTransferBytesOnMessageInMemory=1048576` | 256 | 255 | 120k to 153k msg/s | 0.8 to 0.9 s / 0.4 to 0.5 s |
//!
//! The broker caps a pull at `maxTransferCountOnMessageInMemory` (32, as in
//! Java) and 256 KiB, so a larger `pull_batch_size` changes nothing against a
//! default broker; against a tuned one it saves about 40 % of the broker's
//! CPU per message. The broker spends 2 to 3 times the CPU of the source per
//! message (perf, all processes: broker 72 % of samples, the source's
//! threads 27 %, two thirds of that in the kernel's socket path). The
//! source's own top is string work in record decoding (property splitting,
//! UTF-8 checks, strings built from chars), under 4 % of samples together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use tokio::sync::watch;

use rmq_bridge::dev::cluster::{ClusterOptions, LocalCluster, Peer};
use rmq_bridge::dev::testkit::{self, env_num, env_pairs};
use rmq_bridge::remoting::{
    names, BatchEntry, NameServers, Properties, RemotingClient, SendBatchRequest,
};
use rmq_bridge::source::{PullOutcome, SourceSettings, TopicSource};

const TOPIC: &str = "pull_rate";
const QUEUES: i32 = 8;
const BODY_BYTES: usize = 1024;
const SEND_BATCH: usize = 64;
const PREFETCH: usize = 8;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`; utime and stime are the 14th and 15th overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn body(seed: usize) -> Bytes {
    // 1 KiB, varied enough not to be a single repeated byte.
    let mut out = Vec::with_capacity(BODY_BYTES);
    let mut x = seed as u64 | 1;
    while out.len() < BODY_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(BODY_BYTES);
    Bytes::from(out)
}

/// Preloads `per_queue[q]` messages into each queue, all queues at once.
async fn preload(client: &RemotingClient, broker: &str, per_queue: &[usize]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (q, &count) in per_queue.iter().enumerate() {
        let client = client.clone();
        let broker = broker.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < count {
                let n = SEND_BATCH.min(count - sent);
                let entries = (sent..sent + n)
                    .map(|i| {
                        let mut properties = Properties::new();
                        properties.insert(names::TAGS, "bench");
                        properties.insert(names::KEYS, format!("key-{q}-{i}"));
                        properties.insert(names::UNIQ_KEY, format!("BENCH{q:02}{i:020}"));
                        BatchEntry {
                            body: body(q * 1_000_000 + i),
                            properties,
                            flag: 0,
                        }
                    })
                    .collect();
                let request = SendBatchRequest {
                    producer_group: "pull_rate_bench".into(),
                    topic: TOPIC.into(),
                    queue_id: q as i32,
                    entries,
                    born_timestamp_ms: now_ms(),
                };
                client
                    .send_batch(&broker, &request)
                    .await
                    .with_context(|| format!("batch send to queue {q} after {sent} messages"))?;
                sent += n;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("preload task")??;
    }
    Ok(())
}

struct Measurement {
    messages: u64,
    body_bytes: u64,
    elapsed: Duration,
    pulls: u64,
    broker_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

/// Pulls every queue from its min offset to its max offset concurrently.
async fn measure(
    cluster: &LocalCluster,
    pull_batch_size: u32,
    per_queue: &[i64],
) -> anyhow::Result<Measurement> {
    let source = TopicSource::new(
        testkit::client(),
        NameServers::parse(&cluster.namesrv_addr)?,
        SourceSettings {
            topic: TOPIC.into(),
            filter: "*".into(),
            consumer_group: "pull_rate_bench".into(),
            pull_batch_size,
            long_poll: Duration::from_secs(2),
        },
    );
    let queues = source.refresh_route().await?;
    // Connect before the clock starts.
    let _ = source.max_offset(&queues[0]).await?;
    let body_bytes = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let pulls = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker_pid = cluster.pid(Peer::Broker);
    let broker_cpu_before = broker_pid.and_then(cpu_seconds);
    let own_cpu_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for queue in queues {
        let want = per_queue[queue.queue_id as usize];
        let mut rx = source.spawn_puller(queue.clone(), 0, PREFETCH, stop_rx.clone());
        let (body_bytes, messages, pulls) = (body_bytes.clone(), messages.clone(), pulls.clone());
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
                        let bytes: usize = records.iter().map(|r| r.body.len()).sum();
                        body_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        messages.fetch_add(records.len() as u64, Ordering::Relaxed);
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
    for task in tasks {
        task.await.context("pull task")??;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let broker_cpu = match (broker_cpu_before, broker_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let own_cpu = match (own_cpu_before, cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Measurement {
        messages: messages.load(Ordering::Relaxed),
        body_bytes: body_bytes.load(Ordering::Relaxed),
        elapsed,
        pulls: pulls.load(Ordering::Relaxed),
        broker_cpu,
        own_cpu,
    })
}

fn fmt_cpu(cpu: Option<f64>) -> String {
    cpu.map(|c| format!("{c:.1} s"))
        .unwrap_or_else(|| "?".into())
}

async fn run(cluster: &LocalCluster) -> anyhow::Result<()> {
    let total = env_num("RMQ_BENCH_MESSAGES")?.unwrap_or(200_000usize);
    let rounds = env_num("RMQ_BENCH_ROUNDS")?.unwrap_or(1usize).max(1);
    let batch_sizes: Vec<u32> = std::env::var("RMQ_BENCH_PULL_BATCH")
        .unwrap_or_else(|_| "32,256".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("RMQ_BENCH_PULL_BATCH: `{s}`"))
        })
        .collect::<anyhow::Result<_>>()?;

    let client = testkit::client();
    testkit::create_topic(&client, cluster, TOPIC, QUEUES, None).await?;
    let per_queue: Vec<usize> = (0..QUEUES as usize)
        .map(|q| total / QUEUES as usize + usize::from(q < total % QUEUES as usize))
        .collect();

    println!(
        "preloading {total} messages of {BODY_BYTES} B into {QUEUES} queues ({SEND_BATCH} per batch send); load average {}",
        load_average()
    );
    let started = Instant::now();
    preload(&client, &cluster.broker_addr, &per_queue).await?;
    let took = started.elapsed();
    println!(
        "preload (raw 4.x batch send): {total} messages in {:.2} s = {:.0} msg/s, {:.1} MB/s of bodies",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        (total * BODY_BYTES) as f64 / took.as_secs_f64() / 1e6
    );

    // What the broker holds, per queue.
    let source = TopicSource::new(
        client.clone(),
        NameServers::parse(&cluster.namesrv_addr)?,
        SourceSettings {
            topic: TOPIC.into(),
            filter: "*".into(),
            consumer_group: "pull_rate_bench".into(),
            pull_batch_size: 32,
            long_poll: Duration::from_secs(1),
        },
    );
    let mut stored = vec![0i64; QUEUES as usize];
    for queue in source.refresh_route().await? {
        stored[queue.queue_id as usize] = source.max_offset(&queue).await?;
    }
    let stored_total: i64 = stored.iter().sum();
    if stored_total != total as i64 {
        bail!("the broker holds {stored_total} messages, {total} were sent: {stored:?}");
    }

    for &batch in &batch_sizes {
        for round in 1..=rounds {
            let load = load_average();
            let m = measure(cluster, batch, &stored).await?;
            if m.messages != total as u64 {
                bail!("read {} messages, {total} were stored", m.messages);
            }
            let secs = m.elapsed.as_secs_f64();
            println!(
                "pull_batch_size {batch:>4} round {round}: {} messages in {secs:.2} s = {:.0} msg/s, {:.1} MB/s of bodies; \
                 {} pulls ({:.1} msg/pull); CPU: broker {}, bench {}; load average before {load}",
                m.messages,
                m.messages as f64 / secs,
                m.body_bytes as f64 / secs / 1e6,
                m.pulls,
                m.messages as f64 / m.pulls.max(1) as f64,
                fmt_cpu(m.broker_cpu),
                fmt_cpu(m.own_cpu),
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!(
        "pull_rate: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut options = ClusterOptions::new("pullrate");
    for (k, v) in env_pairs("RMQ_BENCH_BROKER_PROPERTIES")? {
        options = options.broker_property(k, v);
    }
    let cluster =
        LocalCluster::start(options).map_err(|e| anyhow!("starting the 4.x peers: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&cluster));
    if result.is_err() {
        eprintln!("broker log:\n{}", cluster.log_tail(Peer::Broker, 40));
    }
    drop(cluster);
    result
}
