//! The chaos soak (issue 10), outside CI: `scripts/chaos.sh`.
//!
//! A mixed-type stream (NORMAL, FIFO over many groups, DELAY, TRANSACTION)
//! from a real 4.x cluster through the bridge into a real 5.x cluster, while
//! the bridge is SIGKILLed at random moments and every peer is restarted,
//! then one table: produced, arrived, lost, duplicates (and their bound),
//! FIFO order violations, quarantined, time to forward again after each
//! fault (median and max, per kind of fault), peak RSS of the bridge.
//!
//! Knobs (environment): RMQ_CHAOS_MESSAGES (100000), RMQ_CHAOS_KILLS (50),
//! RMQ_CHAOS_PEER_RESTARTS (2 per peer), RMQ_CHAOS_RATE (msg/s, 250),
//! RMQ_CHAOS_SEED (random moments; default: the clock), RMQ_CHAOS_WINDOW
//! (pipeline.inflight_per_queue, 128).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rmq_bridge::dev::chaos::{median_max, Fault, FaultOutcome, Kind, MixSpec, Rig, Side};
use rmq_bridge::dev::cluster::Peer;
use rmq_bridge::dev::testkit::env_num;

/// xorshift64*: enough randomness for fault moments, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn main() -> anyhow::Result<()> {
    let messages: usize = env_num("RMQ_CHAOS_MESSAGES")?.unwrap_or(100_000);
    let kills: usize = env_num("RMQ_CHAOS_KILLS")?.unwrap_or(50);
    let restarts: usize = env_num("RMQ_CHAOS_PEER_RESTARTS")?.unwrap_or(2);
    let rate: u32 = env_num("RMQ_CHAOS_RATE")?.unwrap_or(250);
    let window: usize = env_num("RMQ_CHAOS_WINDOW")?.unwrap_or(128);
    let seed: u64 = env_num("RMQ_CHAOS_SEED")?.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(soak(messages, kills, restarts, rate, window, seed))
}

async fn soak(
    messages: usize,
    kills: usize,
    restarts: usize,
    rate: u32,
    window: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("chaos soak: {messages} messages at {rate}/s, {kills} SIGKILLs, {restarts} restarts of every peer, seed {seed}");
    let mut spec = MixSpec::new("soak", messages);
    spec.rate = rate;
    spec.fifo_groups = 256;
    let mut rig = Rig::start("chaos-soak", spec).await?;
    let extra = format!("[pipeline]\ninflight_per_queue = {window}\n");
    rig.write_config(&extra, &rig.routes(), None)?;

    // The faults, shuffled, spread over the production time.
    let mut plan = vec![Fault::KillBridge; kills];
    for _ in 0..restarts {
        plan.push(Fault::Restart(Side::Source, Peer::NameServer));
        plan.push(Fault::Restart(Side::Source, Peer::Broker));
        plan.push(Fault::Restart(Side::Target, Peer::NameServer));
        plan.push(Fault::Restart(Side::Target, Peer::Broker));
        plan.push(Fault::Restart(Side::Target, Peer::Proxy));
    }
    let mut rng = Rng(seed);
    for i in (1..plan.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        plan.swap(i, j);
    }
    let production = Duration::from_secs_f64(messages as f64 / rate.max(1) as f64);
    let mean_gap = production.as_millis() as u64 / (plan.len() as u64 + 1);

    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let mut bridge = rig.bridge(bin);
    let producer = rig.produce();
    let mut outcomes: Vec<FaultOutcome> = Vec::new();
    let mut peak_rss_kib = 0u64;
    let faults_start = Instant::now();
    for (n, fault) in plan.iter().enumerate() {
        // Random moments spread over the production time: fault n is due
        // at a jittered n/(faults+1) of it; a fault running late goes at once.
        let jitter = rng.below(mean_gap + 1) as i64 - (mean_gap / 2) as i64;
        let due_ms = (mean_gap * (n as u64 + 1)) as i64 + jitter;
        let due = faults_start + Duration::from_millis(due_ms.max(0) as u64);
        tokio::time::sleep_until(due.into()).await;
        peak_rss_kib = peak_rss_kib.max(bridge.peak_rss_kib().unwrap_or(0));
        // Once the stream has ended there may be nothing left to forward:
        // wait briefly and do not count it as a recovery.
        let producing = !producer.is_finished();
        let wait = if producing {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(5)
        };
        let outcome = rig.inject(&mut bridge, *fault, wait).await?;
        println!(
            "[{:>4}s] fault {:>2}/{}: {fault}: forwarding again after {}",
            started.elapsed().as_secs(),
            n + 1,
            plan.len(),
            outcome
                .recovery
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .unwrap_or_else(|| {
                    if producing {
                        "(not within 60 s)".into()
                    } else {
                        "(stream already ended)".into()
                    }
                })
        );
        outcomes.push(outcome);
    }
    let sent = producer.await.context("producer")?;
    println!(
        "[{:>4}s] production done; waiting for 5.x to hold everything",
        started.elapsed().as_secs()
    );
    let tally = rig.settle(&sent, Duration::from_secs(600)).await?;
    peak_rss_kib = peak_rss_kib.max(bridge.peak_rss_kib().unwrap_or(0));
    let quarantined = rig.quarantined();
    let clean_exit = bridge.terminate();

    let target_faults = plan
        .iter()
        .filter(|f| matches!(f, Fault::Restart(Side::Target, _)))
        .count();
    let queues = Kind::ALL.len() * rig.spec.queues as usize;
    let bound = (kills + target_faults) * queues * window;
    let mut by_kind: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for o in &outcomes {
        let kind = match o.fault {
            Fault::KillBridge => "SIGKILL bridge".to_string(),
            other => other.to_string(),
        };
        if let Some(d) = o.recovery {
            by_kind.entry(kind).or_default().push(d);
        }
    }
    let all: Vec<Duration> = outcomes.iter().filter_map(|o| o.recovery).collect();
    let fmt = |v: &[Duration]| {
        median_max(v)
            .map(|(m, x)| {
                format!(
                    "median {:.2} s, max {:.2} s (n={})",
                    m.as_secs_f64(),
                    x.as_secs_f64(),
                    v.len()
                )
            })
            .unwrap_or_else(|| "n/a".into())
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nrmq-bridge chaos soak, seed {seed}, {} s",
        started.elapsed().as_secs()
    );
    let _ = writeln!(t, "| figure | value |\n|---|---|");
    let _ = writeln!(t, "| messages produced | {} |", tally.produced);
    let _ = writeln!(t, "| arrived in 5.x | {} |", tally.arrived);
    let _ = writeln!(t, "| lost | {} |", tally.lost.len());
    let _ = writeln!(t, "| duplicates (bound) | {} ({bound} = ({kills} kills + {target_faults} 5.x restarts) x {queues} queues x {window}) |", tally.duplicates);
    let _ = writeln!(
        t,
        "| damaged / strays | {} / {} |",
        tally.damaged.len(),
        tally.strays.len()
    );
    let _ = writeln!(
        t,
        "| FIFO order violations | {} |",
        tally.order_violations.len()
    );
    let _ = writeln!(t, "| quarantined | {quarantined} |");
    let _ = writeln!(
        t,
        "| faults | {} ({kills} SIGKILLs, {} peer restarts) |",
        outcomes.len(),
        outcomes.len() - kills
    );
    let _ = writeln!(t, "| forwarding again after a fault | {} |", fmt(&all));
    for (kind, v) in &by_kind {
        let _ = writeln!(t, "| - {kind} | {} |", fmt(v));
    }
    let _ = writeln!(
        t,
        "| no traffic left to forward after | {} faults |",
        outcomes.iter().filter(|o| o.recovery.is_none()).count()
    );
    let _ = writeln!(
        t,
        "| peak RSS of the bridge | {:.1} MiB |",
        peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(t, "| clean exit on the final SIGTERM | {clean_exit} |");
    print!("{t}");
    if !tally.is_clean() || tally.duplicates > bound || quarantined > 0.0 {
        println!("{tally}");
        anyhow::bail!("the soak found lost, damaged, stray, reordered or quarantined messages");
    }
    Ok(())
}
