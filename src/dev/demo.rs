//! Quick start (`rmq-bridge demo`): local 4.x and 5.x Apache RocketMQ
//! clusters on loopback, sample traffic of every message type, the bridge
//! between them, and its progress until lag is zero; then a read-back of what
//! landed in 5.x, `verify`, and the decommission report.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config;
use crate::dev::cluster::{ClusterOptions, LocalCluster};
use crate::dev::testkit::{self, RouteSpec, Sample};
use crate::pipeline::Bridge;
use crate::remoting::RemotingClient;

/// (4.x topic, 5.x topic, 5.x message type)
const TOPICS: [(&str, &str, &str); 4] = [
    ("demo_orders", "demo_orders", "NORMAL"),
    ("demo_ordered", "demo_ordered", "FIFO"),
    (DELAY_TOPIC, DELAY_TOPIC, "DELAY"),
    ("demo_payments", "demo_payments", "TRANSACTION"),
];

/// The 4.x topic of the DELAY route (its messages pass the schedule topic).
const DELAY_TOPIC: &str = "demo_delayed";

/// Transactional producers' group (kept as PGROUP on committed messages).
pub const DEMO_TX_GROUP: &str = "demo_tx_producer";

/// Produces `n` sample messages of the given flavour into a 4.x topic.
pub async fn produce_samples(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    flavour: &str,
    n: usize,
) -> anyhow::Result<()> {
    for i in 0..n {
        let mut s = Sample {
            queue_id: (i % 4) as i32,
            body: format!("{flavour} message {i} from the 4.x side").into_bytes(),
            tag: Some(if i % 2 == 0 { "TagA" } else { "TagB" }.into()),
            keys: vec![format!("{flavour}-key-{i}")],
            properties: vec![(
                "__microservice_tag__".into(),
                if i % 3 == 0 {
                    "gray".into()
                } else {
                    String::new()
                },
            )],
            ..Default::default()
        };
        s.properties.retain(|(_, v)| !v.is_empty());
        match flavour {
            "FIFO" => {
                let order = i % 8;
                s.queue_id = (order % 4) as i32;
                s.properties
                    .push(("__SHARDINGKEY".into(), format!("order-{order}")));
            }
            "DELAY" => s.properties.push(("DELAY".into(), "1".into())),
            "TRANSACTION" => {
                s.sys_flag = 4; // prepared; committed below
                s.properties.push(("TRAN_MSG".into(), "true".into()));
                s.properties.push(("PGROUP".into(), DEMO_TX_GROUP.into()));
            }
            _ => {}
        }
        let sent = testkit::produce(client, cluster, topic, &s).await?;
        if flavour == "TRANSACTION" {
            let msg_id = sent.transaction_id.clone().unwrap_or_default();
            client
                .end_transaction(&cluster.broker_addr, DEMO_TX_GROUP, &sent, &msg_id, true)
                .await?;
        }
    }
    Ok(())
}

pub async fn run(messages_per_type: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("== starting a local 4.x cluster (name server + broker) on loopback");
    // A 4.x broker serves its transaction half topic (which the report
    // reads) from its first transaction check on, 60 s after its start by
    // default: check every second (and check back no message younger than
    // 10 min), so the report at the end can read it.
    let source = LocalCluster::start(
        ClusterOptions::new("demo-src")
            .broker_property("transactionCheckInterval", "1000")
            .broker_property("transactionTimeOut", "600000"),
    )
    .context("starting the 4.x cluster")?;
    println!(
        "   4.x name server {}  broker {}",
        source.namesrv_addr, source.broker_addr
    );
    println!("== starting a local 5.x cluster (name server + broker + gRPC proxy)");
    let target = testkit::start_target_cluster("demo-dst")?;
    println!(
        "   5.x name server {}  broker {}  proxy {}",
        target.namesrv_addr,
        target.broker_addr,
        target.proxy_endpoint.as_deref().unwrap_or("?")
    );
    let client = testkit::client();
    for (src, dst, kind) in TOPICS {
        testkit::create_topic(&client, &source, src, 4, None).await?;
        testkit::create_topic(&client, &target, dst, 4, Some(kind)).await?;
    }
    println!("== producing {messages_per_type} messages of each type into 4.x");
    for (src, _, kind) in TOPICS {
        produce_samples(&client, &source, src, kind, messages_per_type).await?;
        println!("   {src}: {messages_per_type} {kind}-flavoured messages");
    }

    let dir = tempdir_for_demo()?;
    let routes: Vec<RouteSpec> = TOPICS
        .iter()
        .map(|(src, dst, _)| RouteSpec::new(src, src, dst, 100))
        .collect();
    let text = testkit::render_config(
        &source,
        &target,
        &dir.join("checkpoints"),
        "off",
        "",
        &routes,
    )?;
    // `verify` and the report read 5.x back through its name server.
    let text = testkit::with_target_namesrv(&text, &target);
    let path = testkit::write_config(&dir.join("bridge.toml"), &text)?;
    println!("== bridge config: {}", path.display());
    let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg_for_report = cfg.clone();
    let mut bridge = Bridge::connect(cfg).await.context("starting the bridge")?;
    bridge.start_routes();

    // Delayed messages reach the real topic only when due, so wait until
    // every produced message was counted before calling it done.
    let expected = (messages_per_type * TOPICS.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lag = bridge.shared().flusher.lag_by_route();
        let mut landed = 0;
        for (_, dst, _) in TOPICS {
            landed += testkit::topic_size(&client, &target, dst)
                .await
                .unwrap_or(0);
        }
        // DELAY messages wait in the 4.x schedule topic until due: the
        // route's lag does not count them, so say how many are still there.
        let arrived = testkit::topic_size(&client, &source, DELAY_TOPIC)
            .await
            .unwrap_or(0);
        let scheduled_pending = (messages_per_type as i64 - arrived).max(0);
        let total_lag: i64 = lag.values().map(|(l, _)| l).sum();
        let per_route: Vec<String> = lag
            .iter()
            .map(|(r, (l, q))| format!("{r}: lag {l} ({q} queues)"))
            .collect();
        println!(
            "   [{:>5.1}s] landed in 5.x {landed}/{expected}  total lag {total_lag}  still scheduled on 4.x {scheduled_pending}  | {}",
            started.elapsed().as_secs_f64(),
            per_route.join("  ")
        );
        if total_lag == 0 && landed >= expected && lag.len() == TOPICS.len() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "bridge did not catch up in 180 s (landed {landed}/{expected}, lag {total_lag})"
            );
        }
    }
    // Shutting down releases the checkpoint store the report opens.
    bridge.shutdown().await;
    println!("== lag is zero; read back from the 5.x broker over Remoting:");
    for (_, dst, kind) in TOPICS {
        let records = testkit::read_back(&client, &target, dst).await?;
        if let Some(r) = records.first() {
            println!(
                "   {dst} ({kind}): {} messages; first: id {} tag {:?} keys {:?} body {:?}",
                records.len(),
                r.message_id(),
                r.tag(),
                r.keys(),
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    // The playbook's last check before the report: every forwarded message
    // read back from 5.x and compared with its 4.x original. The report's
    // verify lines read the verdict this pass leaves next to the checkpoints.
    println!(
        "== reconciliation (rmq-bridge verify -c {}):",
        path.display()
    );
    let clean = crate::verify::run(&path, crate::verify::VerifyOptions::default())
        .await
        .context("verify")?;
    println!(
        "   verify: {}",
        if clean {
            "clean: every forwarded message found in 5.x, intact"
        } else {
            "NOT clean (table above)"
        }
    );
    println!(
        "== decommission report of the demo estate (rmq-bridge check --decommission -c {}):",
        path.display()
    );
    // The 4.x broker's transaction check passes committed half messages a
    // batch of op records (32) per check: the report waits for it, as an
    // operator re-running it would, and says so.
    let report_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match crate::decommission::run(&cfg_for_report).await {
            Ok(report) if report.reds() > 0 && Instant::now() < report_deadline => {
                println!(
                    "   ({} red line(s); waiting for the 4.x broker's transaction check to pass the \
                     committed half messages, then the report again)",
                    report.reds()
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(report) => {
                for line in report.render().lines() {
                    println!("   {line}");
                }
                break;
            }
            Err(e) => {
                println!("   cannot build the report: {e:#}");
                break;
            }
        }
    }
    println!("== done in {:.1}s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir_for_demo() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("rmq-bridge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
