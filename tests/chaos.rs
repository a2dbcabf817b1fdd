//! Faults through the whole bridge against the real peers (issue 10): the
//! bridge (`rmq-bridge run`, a child process) between a 4.x and a 5.x
//! cluster of rocketmq-rust peers, faults injected mid-stream by
//! `rmq_bridge::dev::chaos`, and what landed read back from the 5.x broker
//! over Remoting. Each test is bounded in time.

use std::path::Path;
use std::time::Duration;

use rmq_bridge::dev::chaos::{Fault, Kind, MixSpec, Rig, Side};
use rmq_bridge::dev::cluster::Peer;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rmq-bridge"))
}

const WINDOW: usize = 128;

/// 20k messages of all four types (FIFO over 64 groups) while the bridge is
/// SIGKILLed 6 times, the 4.x broker, the 5.x proxy and the 5.x broker are
/// each restarted once, and the 5.x broker is then down for 30 s behind a
/// live proxy: every message arrives, none is quarantined, FIFO groups stay
/// in order, duplicates carry the same id and body and stay within the
/// in-flight bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stream_survives_kills_and_peer_restarts() {
    let mut spec = MixSpec::new("chaos", 20_000);
    spec.rate = 250;
    let mut rig = Rig::start("chaos-mix", spec).await.expect("peers");
    let extra = format!("[pipeline]\ninflight_per_queue = {WINDOW}\n");
    rig.write_config(&extra, &rig.routes(), None)
        .expect("config");
    let mut bridge = rig.bridge(bin());
    let producer = rig.produce();

    let down = Duration::from_secs(30);
    let plan = [
        Fault::KillBridge,
        Fault::Restart(Side::Source, Peer::Broker),
        Fault::KillBridge,
        Fault::Restart(Side::Target, Peer::Proxy),
        Fault::KillBridge,
        Fault::Restart(Side::Target, Peer::Broker),
        Fault::KillBridge,
        Fault::Down(Side::Target, Peer::Broker, down),
        Fault::KillBridge,
        Fault::KillBridge,
    ];
    let mut outcomes = Vec::new();
    let mut kills = 0;
    let mut target_faults = 0;
    for fault in plan {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let outcome = rig
            .inject(&mut bridge, fault, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{fault}: {e:#}"));
        eprintln!(
            "chaos: {fault}: back to forwarding after {:?}",
            outcome.recovery
        );
        match fault {
            Fault::KillBridge => kills += 1,
            Fault::Restart(Side::Target, _) | Fault::Down(Side::Target, _, _) => target_faults += 1,
            _ => {}
        }
        outcomes.push(outcome);
    }
    let sent = producer.await.expect("producer");
    let tally = rig
        .settle(&sent, Duration::from_secs(180))
        .await
        .expect("read back");
    eprintln!("chaos mixed stream: {tally}");
    let quarantined = rig.quarantined();
    let summary = rig.scrape();
    assert!(
        bridge.terminate(),
        "the bridge did not exit cleanly on SIGTERM"
    );

    assert!(
        tally.missing_in_source.is_empty(),
        "the producer's messages are not all in 4.x (a test setup problem): {tally}"
    );
    assert!(tally.lost.is_empty(), "messages lost: {tally}");
    assert!(tally.damaged.is_empty(), "damaged copies: {tally}");
    assert!(tally.strays.is_empty(), "strays: {tally}");
    assert!(tally.order_violations.is_empty(), "FIFO order: {tally}");
    assert_eq!(
        quarantined, 0.0,
        "quarantined messages; metrics:\n{summary}"
    );
    // Each crash re-sends at most the admitted-but-not-durable window of
    // every queue; each 5.x fault at most the sends in flight (retried
    // with the same id).
    let queues = Kind::ALL.len() * rig.spec.queues as usize;
    let bound = (kills + target_faults) * queues * WINDOW;
    eprintln!(
        "chaos mixed stream: {} duplicates, bound {bound}",
        tally.duplicates
    );
    assert!(
        tally.duplicates <= bound,
        "{} duplicates exceed the in-flight bound {bound}",
        tally.duplicates
    );
    for o in &outcomes {
        assert!(
            o.recovery.is_some(),
            "the bridge did not forward again within 60 s after {}",
            o.fault
        );
    }
}
