//! Time and peak RSS of `rmq-bridge groups translate` (issue 19) on a
//! topic of `RMQ_BENCH_GROUP_MESSAGES` (default 1,000,000) bridged messages.
//!
//! The bridged topic is laid out as the bridge leaves it, without running
//! the bridge (which would take most of the run): every message is written
//! to the 4.x topic and, with the same `UNIQ_KEY`, to the 5.x topic, in
//! batches of 64: batch b goes to 4.x queue b mod 8 and to 5.x queue
//! (b / 8) mod 8, so every 5.x queue interleaves batches of all 4.x queues,
//! as a proxy choosing queues itself does. The 4.x group has
//! committed half of every queue. Then the release build's `groups
//! translate` runs as a process; its wall time and VmHWM are reported.
//! Run: `. scripts/peer-tmpdir.sh && cargo bench --bench groups_translate`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use rmq_bridge::dev::cluster::{free_port, LocalCluster};
use rmq_bridge::dev::machine::{git_revision, nproc, peak_rss_kib};
use rmq_bridge::dev::testkit::{self, RouteSpec};
use rmq_bridge::remoting::{
    BatchEntry, HeartbeatData, Properties, RemotingClient, SendBatchRequest,
};

const TOPIC: &str = "group_bench";
const QUEUES: i32 = 8;
const LANES: usize = 16;
const BATCH: usize = 64;

/// Batch `b` of [`BATCH`] messages into both clusters (SEND_BATCH_MESSAGE,
/// one queue per batch), 16 batches in flight.
async fn preload(
    client: &RemotingClient,
    four: &LocalCluster,
    five: &LocalCluster,
    total: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..LANES {
        let (client, next) = (client.clone(), next.clone());
        let (a4, a5) = (four.broker_addr.clone(), five.broker_addr.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b * BATCH >= total {
                    return anyhow::Ok(());
                }
                let entries: Vec<BatchEntry> = (b * BATCH..((b + 1) * BATCH).min(total))
                    .map(|i| {
                        let id = format!("GB-{i:010}");
                        let mut properties = Properties::new();
                        properties.insert("UNIQ_KEY", id.clone());
                        BatchEntry {
                            body: Bytes::from(format!("body {id}")),
                            properties,
                            flag: 0,
                        }
                    })
                    .collect();
                let q = b as i32 % QUEUES;
                for (addr, queue) in [(&a4, q), (&a5, (b / QUEUES as usize) as i32 % QUEUES)] {
                    let req = SendBatchRequest {
                        producer_group: "group_bench".into(),
                        topic: TOPIC.into(),
                        queue_id: queue,
                        entries: entries.clone(),
                        born_timestamp_ms: 0,
                    };
                    let mut attempt = 0;
                    while let Err(e) = client.send_batch(addr, &req).await {
                        attempt += 1;
                        if attempt > 20 {
                            bail!("batch {b}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("preload task")??;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = testkit::env_num("RMQ_BENCH_GROUP_MESSAGES")?.unwrap_or(1_000_000);
    println!(
        "groups translate benchmark: {n} messages, {} cores, {}",
        nproc(),
        git_revision()
    );
    let four = testkit::start_source_cluster("gb-4x")?;
    let five = testkit::start_target_cluster("gb-5x")?;
    let client = testkit::client();
    testkit::create_topic(&client, &four, TOPIC, QUEUES, None).await?;
    testkit::create_topic(&client, &five, TOPIC, QUEUES, Some("NORMAL")).await?;
    let started = Instant::now();
    preload(&client, &four, &five, n).await?;
    println!(
        "preloaded {n} into each cluster in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The group existed (its consumers heartbeated) and committed half.
    let hb = HeartbeatData::consumer("bench@1", "bench_group", &[TOPIC.to_string()]);
    client.heartbeat(&four.broker_addr, &hb).await?;
    for q in 0..QUEUES {
        let max = client.get_max_offset(&four.broker_addr, TOPIC, q).await?;
        client
            .update_consumer_offset(&four.broker_addr, "bench_group", TOPIC, q, max / 2)
            .await?;
    }
    client
        .unregister_client(&four.broker_addr, "bench@1", None, Some("bench_group"))
        .await?;

    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let config = testkit::write_bridge_config(
        &four,
        &five,
        dir.path(),
        &metrics,
        "",
        &[RouteSpec::new("bench", TOPIC, TOPIC, 100)],
    )?;
    let json = dir.path().join("report.json");
    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let t0 = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(["groups", "translate", "-c"])
        .arg(&config)
        .args(["--group", "bench_group", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawn groups translate")?;
    let pid = child.id();
    let mut peak = 0u64;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = t0.elapsed();
    if !status.success() {
        bail!("groups translate failed: {status}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    println!(
        "groups translate: {} + {} messages read in {:.1} s ({:.0} msg/s), peak RSS {} MiB, {} to re-deliver, {} held",
        report["from_messages"],
        report["to_messages"],
        wall.as_secs_f64(),
        (2 * n) as f64 / wall.as_secs_f64(),
        peak / 1024,
        report["redeliver"],
        report["held_not_forwarded"]
    );
    Ok(())
}
