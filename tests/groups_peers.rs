//! `rmq-bridge groups translate` against the real peers (issue 19): a 4.x
//! group that consumed part of a bridged topic moves to 5.x exactly, is
//! refused while live, names what a cutover below 100 % never forwarded,
//! and a 5.x group's positions translate back to 4.x offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rmq_bridge::dev::chaos::BridgeProcess;
use rmq_bridge::dev::cluster::{free_port, LocalCluster};
use rmq_bridge::dev::testkit::{self, RouteSpec, Sample};
use rmq_bridge::grpc::{GrpcClientConfig, Publisher};
use rmq_bridge::remoting::{HeartbeatData, MessageRecord, RemotingClient};

const QUEUES: i32 = 4;
const PER_QUEUE: usize = 50;

fn cli(args: &[&str]) -> (bool, String) {
    testkit::run_cli(std::path::Path::new(env!("CARGO_BIN_EXE_rmq-bridge")), args)
}

async fn read(client: &RemotingClient, cluster: &LocalCluster, topic: &str) -> Vec<MessageRecord> {
    testkit::read_back(client, cluster, topic)
        .await
        .expect("read back")
}

async fn wait_for(client: &RemotingClient, cluster: &LocalCluster, topic: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while read(client, cluster, topic).await.len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} in {topic}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The message ids a real 5.x consumer of `group` receives on `topic`
/// through the proxy (gRPC ReceiveMessage, acked), until `expected` arrived
/// and then every queue answered empty; fails on a duplicate.
async fn receive_as_5x_group(
    cluster: &LocalCluster,
    topic: &str,
    group: &str,
    expected: usize,
) -> BTreeSet<String> {
    let endpoint = cluster.proxy_endpoint.clone().expect("a 5.x proxy");
    let consumer = Publisher::connect(GrpcClientConfig::new(vec![endpoint]))
        .await
        .expect("connect to the 5.x proxy");
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut empty_in_a_row = 0;
    // Receives go round-robin over the queues: QUEUES empty answers in a
    // row once everything arrived mean every queue is drained.
    while empty_in_a_row < QUEUES as usize && Instant::now() < deadline {
        let batch = consumer
            .receive(topic, group, 32, Duration::from_secs(60))
            .await
            .expect("receive as the moved group");
        if batch.is_empty() {
            if ids.len() >= expected {
                empty_in_a_row += 1;
            }
            continue;
        }
        empty_in_a_row = 0;
        consumer.ack(topic, group, &batch).await.expect("ack");
        for m in batch {
            assert!(
                ids.insert(m.message_id.clone()),
                "{} received twice",
                m.message_id
            );
        }
    }
    consumer.shutdown().await;
    ids
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("json report")).expect("json")
}

/// The message ids a consumer of `group` receives on `topic` of `cluster`
/// when it resumes from the group's committed offsets (every queue to its
/// end; a queue without an offset from its start).
async fn resume_as_group(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    group: &str,
) -> Vec<String> {
    let mut got = Vec::new();
    for q in 0..QUEUES {
        let from = client
            .query_consumer_offset(&cluster.broker_addr, group, topic, q)
            .await
            .expect("group offset")
            .unwrap_or(0);
        got.extend(
            read(client, cluster, topic)
                .await
                .iter()
                .filter(|r| r.queue_id == q && r.queue_offset >= from)
                .map(|r| r.message_id().to_string()),
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moves_to_5x_exactly_and_back_to_4x() {
    let four = testkit::start_source_cluster("groups-4x").expect("4.x peers");
    let five = testkit::start_target_cluster("groups-5x").expect("5.x peers");
    let client = testkit::client();
    for topic in ["orders", "ledger"] {
        testkit::create_topic(&client, &four, topic, QUEUES, None)
            .await
            .expect("4.x topic");
        testkit::create_topic(&client, &five, topic, QUEUES, Some("NORMAL"))
            .await
            .expect("5.x topic");
    }
    for topic in ["orders", "ledger"] {
        for i in 0..(QUEUES as usize * PER_QUEUE) {
            let sample = Sample {
                queue_id: (i % QUEUES as usize) as i32,
                body: format!("{topic} {i}").into_bytes(),
                keys: vec![format!("{topic}-key-{i}")],
                uniq_key: Some(format!("{topic}-{i:04}")),
                ..Default::default()
            };
            testkit::produce(&client, &four, topic, &sample)
                .await
                .expect("4.x send");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{}", free_port().expect("port"));
    let config = testkit::write_bridge_config(
        &four,
        &five,
        dir.path(),
        &metrics,
        "",
        &[
            RouteSpec::new("orders", "orders", "orders", 100),
            // Half the keys only: what the group skips on 4.x and the
            // bridge never forwarded must be named.
            RouteSpec::new("ledger", "ledger", "ledger", 50),
        ],
    )
    .expect("config");
    let cfg = config.to_string_lossy().to_string();
    let mut bridge = BridgeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
        &config,
        &dir.path().join("bridge.log"),
    );
    let total = QUEUES as usize * PER_QUEUE;
    wait_for(&client, &five, "orders", total).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );

    // The 4.x group consumed part of each queue (one all, one nothing).
    let committed = [10i64, 25, PER_QUEUE as i64, 0];
    let four_orders = read(&client, &four, "orders").await;
    let consumed: BTreeSet<String> = four_orders
        .iter()
        .filter(|r| r.queue_offset < committed[r.queue_id as usize])
        .map(|r| r.message_id().to_string())
        .collect();
    // Its consumers were online (which creates the group on the broker)
    // and are still registered when the first apply runs.
    let heartbeat = HeartbeatData::consumer("groups-test@1", "billing", &["orders".to_string()]);
    client
        .heartbeat(&four.broker_addr, &heartbeat)
        .await
        .expect("heartbeat");
    for topic in ["orders", "ledger"] {
        for (q, c) in committed.iter().enumerate() {
            client
                .update_consumer_offset(&four.broker_addr, "billing", topic, q as i32, *c)
                .await
                .expect("commit on 4.x");
        }
    }

    // Refused while the group is live on 4.x (its position still moves).
    let (ok, out) = cli(&[
        "groups",
        "translate",
        "-c",
        &cfg,
        "--group",
        "billing",
        "--route",
        "orders",
        "--apply",
    ]);
    assert!(!ok, "apply while live must be refused:\n{out}");
    assert!(
        out.contains("live consumers on 4.x") && out.contains("groups-test@1"),
        "{out}"
    );
    client
        .unregister_client(&four.broker_addr, "groups-test@1", None, Some("billing"))
        .await
        .expect("unregister");

    // Translate and apply.
    let report_path = dir.path().join("orders.json");
    let (ok, out) = cli(&[
        "groups",
        "translate",
        "-c",
        &cfg,
        "--group",
        "billing",
        "--route",
        "orders",
        "--apply",
        "--json",
        &report_path.to_string_lossy(),
    ]);
    assert!(ok, "translate --apply failed:\n{out}");
    assert!(out.contains("APPLIED"), "{out}");
    let report = json(&report_path);
    assert_eq!(report["held_not_forwarded"], 0, "{report:#}");
    let redeliver = report["redeliver"].as_u64().expect("redeliver");
    // The written positions are on the 5.x brokers.
    for q in report["queues"].as_array().expect("queues") {
        let qid = q["queue_id"].as_i64().expect("qid") as i32;
        let got = client
            .query_consumer_offset(&five.broker_addr, "billing", "orders", qid)
            .await
            .expect("5.x offset");
        assert_eq!(got, q["translated"].as_i64(), "5.x queue {qid}");
    }

    // A 5.x consumer of the group resumes where the group's positions on
    // the 5.x brokers say, and receives what it had not consumed and
    // exactly the reported number of what it had. First as a 4.x-style
    // client of the 5.x cluster (Remoting, from the committed offsets)...
    let got = resume_as_group(&client, &five, "orders", "billing").await;
    let got_set: BTreeSet<&String> = got.iter().collect();
    // ... then as a real 5.x consumer: gRPC ReceiveMessage through the Java
    // proxy, as the group's simple consumer. It gets exactly the same
    // messages: the proxy pops from the translated positions.
    let received = receive_as_5x_group(&five, "orders", "billing", got.len()).await;
    assert_eq!(
        received,
        got.iter().cloned().collect::<BTreeSet<String>>(),
        "a 5.x consumer of the moved group receives what the translated positions say"
    );
    let all: BTreeSet<String> = four_orders
        .iter()
        .map(|r| r.message_id().to_string())
        .collect();
    let skipped: Vec<&String> = all
        .iter()
        .filter(|id| !consumed.contains(*id) && !got_set.contains(id))
        .collect();
    assert!(skipped.is_empty(), "skipped on the move: {skipped:?}");
    let again = got_set.iter().filter(|id| consumed.contains(**id)).count() as u64;
    assert_eq!(again, redeliver, "re-delivered as reported");
    eprintln!(
        "moved group: {} received, {again} re-delivered, {} consumed on 4.x",
        got.len(),
        consumed.len()
    );

    // Below 100 %: what the group has not consumed and the route never
    // forwarded is named.
    let ledger_path = dir.path().join("ledger.json");
    let (ok, out) = cli(&[
        "groups",
        "translate",
        "-c",
        &cfg,
        "--group",
        "billing",
        "--route",
        "ledger",
        "--json",
        &ledger_path.to_string_lossy(),
    ]);
    assert!(ok, "{out}");
    let four_ledger = read(&client, &four, "ledger").await;
    let five_ledger: BTreeSet<String> = read(&client, &five, "ledger")
        .await
        .iter()
        .map(|r| r.message_id().to_string())
        .collect();
    let held = four_ledger
        .iter()
        .filter(|r| r.queue_offset >= committed[r.queue_id as usize])
        .filter(|r| !five_ledger.contains(r.message_id()))
        .count() as u64;
    assert!(held > 0, "a 50 % route holds some");
    assert_eq!(json(&ledger_path)["held_not_forwarded"], held);
    assert!(
        out.contains("WARNING") && out.contains("would never receive them"),
        "{out}"
    );
    // Issue 30, item 8: --apply refuses while the group would never
    // receive messages there, writes nothing; --force applies.
    let ledger_args = |extra: &[&'static str]| {
        let mut a = vec![
            "groups",
            "translate",
            "-c",
            &cfg,
            "--group",
            "billing",
            "--route",
            "ledger",
        ];
        a.extend_from_slice(extra);
        a
    };
    let (ok, out) = cli(&ledger_args(&["--apply"]));
    assert!(!ok, "apply with held messages must be refused:\n{out}");
    assert!(
        out.contains("not applied") && out.contains(&format!("{held} message(s)")),
        "{out}"
    );
    for q in 0..QUEUES {
        let written = client
            .query_consumer_offset(&five.broker_addr, "billing", "ledger", q)
            .await
            .ok()
            .flatten();
        assert_eq!(
            written, None,
            "queue {q}: a refused apply wrote {written:?}"
        );
    }
    let (ok, out) = cli(&ledger_args(&["--apply", "--force"]));
    assert!(ok, "--force applies:\n{out}");

    // The way back: a 5.x group "rollback" at known positions translates
    // to 4.x offsets a 4.x consumer resumes from without a gap.
    let five_orders = read(&client, &five, "orders").await;
    let mut five_max: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &five_orders {
        let e = five_max.entry(r.queue_id).or_default();
        *e = (*e).max(r.queue_offset + 1);
    }
    let five_pos: BTreeMap<i32, i64> = five_max.iter().map(|(q, m)| (*q, m / 2)).collect();
    client
        .create_subscription_group(&five.broker_addr, "rollback")
        .await
        .expect("5.x group");
    for (q, o) in &five_pos {
        client
            .update_consumer_offset(&five.broker_addr, "rollback", "orders", *q, *o)
            .await
            .expect("5.x commit");
    }
    let (ok, out) = cli(&[
        "groups",
        "translate",
        "-c",
        &cfg,
        "--group",
        "rollback",
        "--route",
        "orders",
        "--to",
        "4.x",
        "--apply",
    ]);
    assert!(ok, "{out}");
    let unconsumed_on_5x: BTreeSet<String> = five_orders
        .iter()
        .filter(|r| r.queue_offset >= five_pos[&r.queue_id])
        .map(|r| r.message_id().to_string())
        .collect();
    let mut resumed = BTreeSet::new();
    for q in 0..QUEUES {
        let from = client
            .query_consumer_offset(&four.broker_addr, "rollback", "orders", q)
            .await
            .expect("4.x offset")
            .expect("written");
        for r in four_orders
            .iter()
            .filter(|r| r.queue_id == q && r.queue_offset >= from)
        {
            resumed.insert(r.message_id().to_string());
        }
    }
    let missing: Vec<&String> = unconsumed_on_5x
        .iter()
        .filter(|id| !resumed.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "a 4.x consumer resuming would skip {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_a_group_translated_until_it_moves() {
    let four = testkit::start_source_cluster("keep-4x").expect("4.x peers");
    let five = testkit::start_target_cluster("keep-5x").expect("5.x peers");
    let client = testkit::client();
    testkit::create_topic(&client, &four, "keep", QUEUES, None)
        .await
        .expect("4.x topic");
    testkit::create_topic(&client, &five, "keep", QUEUES, Some("NORMAL"))
        .await
        .expect("5.x topic");
    for i in 0..100 {
        let sample = Sample {
            queue_id: i % QUEUES,
            body: format!("keep {i}").into_bytes(),
            uniq_key: Some(format!("keep-{i:03}")),
            ..Default::default()
        };
        testkit::produce(&client, &four, "keep", &sample)
            .await
            .expect("4.x send");
    }
    // The group still consumes on 4.x: the keeper translates it anyway.
    let hb = HeartbeatData::consumer("keep-test@1", "billing", &["keep".to_string()]);
    client
        .heartbeat(&four.broker_addr, &hb)
        .await
        .expect("heartbeat");
    for (q, c) in [5i64, 10, 15, 20].iter().enumerate() {
        client
            .update_consumer_offset(&four.broker_addr, "billing", "keep", q as i32, *c)
            .await
            .expect("4.x commit");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{}", free_port().expect("port"));
    let config = testkit::write_bridge_config(
        &four,
        &five,
        dir.path(),
        &metrics,
        "",
        &[RouteSpec::new("keep", "keep", "keep", 100).with("keep_translated", "[\"billing\"]")],
    )
    .expect("config");
    let cfg = config.to_string_lossy().to_string();
    let log = dir.path().join("bridge.log");
    let mut bridge =
        BridgeProcess::start(Path::new(env!("CARGO_BIN_EXE_rmq-bridge")), &config, &log);
    wait_for(&client, &five, "keep", 100).await;
    // Within two passes the 5.x positions are the translation of the
    // group's 4.x offsets over everything bridged.
    let report_path = dir.path().join("keep.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, out) = cli(&[
            "groups",
            "translate",
            "-c",
            &cfg,
            "--group",
            "billing",
            "--json",
            &report_path.to_string_lossy(),
        ]);
        assert!(ok, "{out}");
        let report = json(&report_path);
        let kept = report["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .all(|q| q["current"] == q["translated"]);
        if kept {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not keep the translation:\n{out}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let text = rmq_bridge::dev::chaos::scrape(&metrics);
    assert!(
        text.contains("rmq_bridge_group_translation_age_seconds{")
            && text.contains("rmq_bridge_group_redeliver_messages{"),
        "{text}"
    );
    // The group moves: a 5.x consumer of it is live; the keeper stops.
    let hb5 = HeartbeatData::consumer("keep-5x@1", "billing", &["keep".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client
            .heartbeat(&five.broker_addr, &hb5)
            .await
            .expect("5.x heartbeat");
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("it moved, no longer translated") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the keeper did not notice the move"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );
}
