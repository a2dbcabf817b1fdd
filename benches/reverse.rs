//! The reverse direction's end-to-end benchmark (issue 17): 5.x -> 4.x over
//! Remoting on both sides, against the real peers on loopback.
//!
//! In one run, on one preloaded 5.x backlog of `RMQ_BENCH_REVERSE_MESSAGES`
//! (default 50,000) 1 KiB NORMAL messages over 8 queues:
//! - raw 5.x pull: our Remoting puller reading the backlog, no bridge;
//! - raw 4.x send: SEND_MESSAGE_V2 into a 4.x topic, 16 in flight;
//! - bridged: the daemon (this build, release profile) with one reverse
//!   route draining the backlog into 4.x, from its first landed message to
//!   the last; its CPU time per message (utime + stime from /proc).
//!
//! Prints the rates and ratio = bridged / min(raw pull, raw send).
//! Run: `cargo bench --bench reverse` (after `. scripts/peer-tmpdir.sh`).
//! `RMQ_BENCH_BRIDGE_BIN` runs another daemon binary (or a wrapper) in the
//! bridged leg.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use rmq_bridge::dev::chaos::BridgeProcess;
use rmq_bridge::dev::cluster::{free_port, LocalCluster};
use rmq_bridge::dev::machine::{cpu_model, cpu_time, git_revision, nproc, peak_rss_kib};
use rmq_bridge::dev::testkit::{self, RouteSpec};
use rmq_bridge::remoting::{NameServers, RemotingClient, SendRequest};
use rmq_bridge::source::{PullOutcome, SourceSettings, TopicSource};
use tokio::sync::watch;

const TOPIC: &str = "rev_bench";
const RAW_TOPIC: &str = "rev_bench_raw";
const QUEUES: i32 = 8;
const LANES: usize = 16;

/// `total` 1 KiB messages into `topic` on the cluster's broker, `LANES` in flight.
async fn send_all(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    prefix: &str,
    total: usize,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..LANES {
        let (client, next) = (client.clone(), next.clone());
        let (addr, topic, prefix) = (
            cluster.broker_addr.clone(),
            topic.to_string(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let mut body = format!("{prefix}-{i:09} ").into_bytes();
                body.resize(1024, b'x');
                let mut req =
                    SendRequest::new("rev_bench", &topic, i as i32 % QUEUES, Bytes::from(body));
                req.properties
                    .insert("UNIQ_KEY", format!("{prefix}-{i:09}"));
                req.properties.insert("TAGS", "bench");
                let mut attempt = 0;
                while let Err(e) = client.send_message_v2(&addr, &req).await {
                    attempt += 1;
                    if attempt > 20 {
                        bail!("send {i} to {topic}: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("send task")??;
    }
    Ok(started.elapsed())
}

/// Reads the whole backlog of `TOPIC` from the 5.x broker once.
async fn raw_pull(five: &LocalCluster, expected: usize) -> anyhow::Result<Duration> {
    let source = TopicSource::new(
        testkit::client(),
        NameServers::parse(&five.namesrv_addr)?,
        SourceSettings {
            topic: TOPIC.into(),
            filter: "*".into(),
            consumer_group: "rev_bench_raw_pull".into(),
            pull_batch_size: 32,
            long_poll: Duration::from_secs(2),
        },
    );
    let queues = source.refresh_route().await?;
    let mut ends = Vec::new();
    for q in &queues {
        ends.push(source.max_offset(q).await?);
    }
    let stored: i64 = ends.iter().sum();
    if stored != expected as i64 {
        bail!("5.x topic {TOPIC} holds {stored} messages, {expected} were preloaded");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (queue, want) in queues.into_iter().zip(ends) {
        let mut rx = source.spawn_puller(queue.clone(), 0, 4, stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = 0;
            while next < want {
                let Some(batch) = rx.recv().await else {
                    bail!("puller of {queue} ended at {next} of {want}");
                };
                match batch.outcome {
                    PullOutcome::Records { next_offset, .. }
                    | PullOutcome::Idle { next_offset, .. } => next = next_offset,
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
    let _ = stop_tx.send(true);
    Ok(elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = testkit::env_num("RMQ_BENCH_REVERSE_MESSAGES")?.unwrap_or(50_000);
    println!(
        "reverse benchmark: {n} messages, {} cores ({}), bridge built from {}",
        nproc(),
        cpu_model(),
        git_revision()
    );
    let four = testkit::start_source_cluster("rev-bench-4x")?;
    let five = testkit::start_target_cluster("rev-bench-5x")?;
    let client = testkit::client();
    testkit::create_topic(&client, &five, TOPIC, QUEUES, Some("NORMAL")).await?;
    testkit::create_topic(&client, &four, TOPIC, QUEUES, None).await?;
    testkit::create_topic(&client, &four, RAW_TOPIC, QUEUES, None).await?;

    let preload = send_all(&client, &five, TOPIC, "R5", n).await?;
    println!("preloaded 5.x in {:.1} s", preload.as_secs_f64());
    let pull = raw_pull(&five, n).await?;
    let send = send_all(&client, &four, RAW_TOPIC, "RAW", n).await?;
    let pull_rate = n as f64 / pull.as_secs_f64();
    let send_rate = n as f64 / send.as_secs_f64();

    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let config = testkit::write_bridge_config(
        &four,
        &five,
        dir.path(),
        &metrics,
        "",
        &[RouteSpec::new("rev", TOPIC, TOPIC, 100).with("direction", "\"reverse\"")],
    )?;
    let log = dir.path().join("bridge.log");
    // RMQ_BENCH_BRIDGE_BIN: another daemon binary, or a wrapper running it
    // (scripts/bench-callgrind.sh runs it under callgrind).
    let binary = std::env::var_os("RMQ_BENCH_BRIDGE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rmq-bridge").into());
    let mut bridge = BridgeProcess::start(&binary, &config, &log);
    let pid = bridge.pid().context("bridge pid")?;
    let started = Instant::now();
    let mut first: Option<(Instant, i64, Duration)> = None;
    let done = loop {
        let landed = testkit::topic_size(&client, &four, TOPIC)
            .await
            .unwrap_or(0);
        let now = Instant::now();
        if first.is_none() && landed > 0 {
            first = Some((now, landed, cpu_time(pid).unwrap_or_default()));
        }
        if landed >= n as i64 {
            break now;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {landed} of {n} reached 4.x in 600 s; log {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_end = cpu_time(pid).unwrap_or_default();
    let rss = peak_rss_kib(pid).unwrap_or(0);
    bridge.terminate_within(Duration::from_secs(30));
    let (t0, landed0, cpu0) = first.context("nothing landed")?;
    let moved = n as i64 - landed0;
    let bridged = moved as f64 / done.duration_since(t0).as_secs_f64().max(1e-3);
    let cpu_us = (cpu_end.saturating_sub(cpu0)).as_secs_f64() * 1e6 / moved.max(1) as f64;
    let floor = pull_rate.min(send_rate);
    println!("| leg | msg/s |");
    println!("|---|---|");
    println!("| raw 5.x pull (Remoting, 8 pullers) | {pull_rate:.0} |");
    println!("| raw 4.x send (SEND_MESSAGE_V2, {LANES} in flight) | {send_rate:.0} |");
    println!("| bridged 5.x -> 4.x (reverse route) | {bridged:.0} |");
    println!(
        "ratio bridged / min(pull, send) = {:.2} (goal >= 0.9); bridge CPU {cpu_us:.1} us/msg; peak RSS {} MiB; start to drained {:.1} s",
        bridged / floor,
        rss / 1024,
        done.duration_since(started).as_secs_f64()
    );
    Ok(())
}
