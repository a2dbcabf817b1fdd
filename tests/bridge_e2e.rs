//! End-to-end tests of the bridge daemon (`rmq-bridge run`) between a real
//! 4.x cluster and a real 5.x cluster (Apache RocketMQ 4.9.7 and 5.5.0 on loopback).
//! What landed in 5.x is read back from the 5.x broker over Remoting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rmq_bridge::dev::chaos::{scrape, BridgeProcess};
use rmq_bridge::dev::cluster::{free_port, LocalCluster};
use rmq_bridge::dev::testkit::{self, metric, RouteSpec, Sample};
use rmq_bridge::remoting::{HeartbeatData, MessageRecord, RemotingClient};

const ENV_TAG: &str = "__microservice_tag__";

fn start_bridge(config: &Path, log: &Path) -> BridgeProcess {
    BridgeProcess::start(Path::new(env!("CARGO_BIN_EXE_rmq-bridge")), config, log)
}

async fn wait_metric(addr: &str, what: &str, f: impl Fn(&str) -> bool) {
    let addr = addr.to_string();
    testkit::eventually(what, Duration::from_secs(90), || {
        let text = scrape(&addr);
        let ok = f(&text);
        async move { ok.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nlast metrics:\n{}", scrape(&addr)));
}

fn decided(text: &str, route: &str) -> f64 {
    ["forwarded", "skipped", "filtered", "quarantined"]
        .iter()
        .map(|o| {
            metric(
                text,
                "rmq_bridge_messages_total",
                &[("route", route), ("outcome", o)],
            )
        })
        .sum()
}

fn bucket(key: &str) -> u32 {
    // Computed here independently of the bridge: CRC-32/IEEE of the UTF-8 key.
    crc32fast::hash(key.as_bytes()) % 100
}

async fn landed_ids(client: &RemotingClient, cluster: &LocalCluster, topic: &str) -> Vec<String> {
    testkit::read_back(client, cluster, topic)
        .await
        .expect("read back 5.x topic")
        .iter()
        .map(|r| r.message_id().to_string())
        .collect()
}

async fn wait_landed(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    n: usize,
) -> Vec<MessageRecord> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = testkit::read_back(client, cluster, topic)
            .await
            .expect("read back");
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages landed in 5.x topic {topic}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Pair {
    source: LocalCluster,
    target: LocalCluster,
    client: RemotingClient,
    dir: tempfile::TempDir,
    metrics: String,
}

async fn pair(name: &str, topics: &[(&str, i32, &str)]) -> Pair {
    let source = testkit::start_source_cluster(&format!("{name}-src")).expect("4.x peers");
    let target = testkit::start_target_cluster(&format!("{name}-dst")).expect("5.x peers");
    let client = testkit::client();
    for (topic, queues, kind) in topics {
        testkit::create_topic(&client, &source, topic, *queues, None)
            .await
            .expect("4.x topic");
        testkit::create_topic(&client, &target, topic, *queues, Some(kind))
            .await
            .expect("5.x topic");
    }
    Pair {
        source,
        target,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        metrics: format!("127.0.0.1:{}", free_port().expect("port")),
    }
}

impl Pair {
    fn config(&self, extra: &str, routes: &[RouteSpec]) -> String {
        testkit::render_config(
            &self.source,
            &self.target,
            &self.dir.path().join("checkpoints"),
            &self.metrics,
            extra,
            routes,
        )
        .expect("render config")
    }
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("bridge.toml")
    }
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("bridge.log")
    }
}

fn sample(queue: i32, id: &str, key: &str, body: &str) -> Sample {
    Sample {
        queue_id: queue,
        body: body.as_bytes().to_vec(),
        tag: Some("TagA".into()),
        keys: vec![key.to_string()],
        uniq_key: Some(id.to_string()),
        ..Default::default()
    }
}

/// Fidelity for all four types, the environment filter, cutover 0 -> 30 ->
/// 100 while running (with an invalid edit in between), the journal in
/// `status`, and a clean SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fidelity_environment_filter_and_phased_cutover() {
    let p = pair(
        "e2e-cut",
        &[
            ("fid_normal", 4, "NORMAL"),
            ("fid_fifo", 4, "FIFO"),
            ("fid_delay", 4, "DELAY"),
            ("fid_tx", 4, "TRANSACTION"),
            ("env_topic", 4, "NORMAL"),
            ("cut_topic", 4, "NORMAL"),
        ],
    )
    .await;

    // --- traffic before the bridge starts
    let mut expected: BTreeMap<String, Sample> = BTreeMap::new();
    for i in 0..12 {
        let id = format!("FIDN{i:028}");
        let mut s = sample(
            i % 4,
            &id,
            &format!("key-{i}"),
            &format!("normal body {i} ✓"),
        );
        s.keys.push(format!("second-{i}"));
        s.properties = vec![
            (ENV_TAG.into(), "gray".into()),
            ("biz_order".into(), format!("{i}")),
        ];
        if i == 0 {
            s.body = vec![b'z'; 100_000];
            s.compress_over = Some(4096);
        }
        testkit::produce(&p.client, &p.source, "fid_normal", &s)
            .await
            .unwrap();
        expected.insert(id, s);
    }
    for i in 0..24 {
        let id = format!("FIDF{i:028}");
        let order = i % 3;
        let mut s = sample(
            order,
            &id,
            &format!("order-{order}"),
            &format!("{order}:{i}"),
        );
        s.properties = vec![("__SHARDINGKEY".into(), format!("order-{order}"))];
        testkit::produce(&p.client, &p.source, "fid_fifo", &s)
            .await
            .unwrap();
        expected.insert(id, s);
    }
    for i in 0..8 {
        let id = format!("FIDD{i:028}");
        let mut s = sample(i % 4, &id, &format!("delay-{i}"), &format!("delayed {i}"));
        s.properties = vec![("DELAY".into(), "1".into())];
        testkit::produce(&p.client, &p.source, "fid_delay", &s)
            .await
            .unwrap();
        expected.insert(id, s);
    }
    for i in 0..8 {
        let id = format!("FIDT{i:028}");
        let mut s = sample(i % 4, &id, &format!("tx-{i}"), &format!("payment {i}"));
        s.sys_flag = 4;
        s.properties = vec![
            ("TRAN_MSG".into(), "true".into()),
            ("PGROUP".into(), "e2e_tx_group".into()),
        ];
        let sent = testkit::produce(&p.client, &p.source, "fid_tx", &s)
            .await
            .unwrap();
        p.client
            .end_transaction(&p.source.broker_addr, "e2e_tx_group", &sent, &id, true)
            .await
            .unwrap();
        expected.insert(id, s);
    }
    // Environment: plain gray, JSON gray, untagged.
    let mut env_gray = BTreeSet::new();
    for i in 0..30 {
        let id = format!("ENV{i:029}");
        let mut s = sample(i % 4, &id, &format!("env-{i}"), "env");
        match i % 3 {
            0 => s.properties = vec![(ENV_TAG.into(), "gray".into())],
            1 => s.properties = vec![(ENV_TAG.into(), r#"[{"name":"gray"}]"#.into())],
            _ => {}
        }
        if i % 3 != 2 {
            env_gray.insert(id.clone());
        }
        testkit::produce(&p.client, &p.source, "env_topic", &s)
            .await
            .unwrap();
    }

    let mut routes = vec![
        RouteSpec::new("fid_normal", "fid_normal", "fid_normal", 100),
        RouteSpec::new("fid_fifo", "fid_fifo", "fid_fifo", 100),
        RouteSpec::new("fid_delay", "fid_delay", "fid_delay", 100),
        RouteSpec::new("fid_tx", "fid_tx", "fid_tx", 100),
        RouteSpec::new("env", "env_topic", "env_topic", 100).with("environments", r#"["gray"]"#),
        RouteSpec::new("cut", "cut_topic", "cut_topic", 0),
    ];
    let cfg = p.config("", &routes);
    testkit::write_config(&p.config_path(), &cfg).unwrap();
    let mut bridge = start_bridge(&p.config_path(), &p.log_path());

    // --- fidelity of every field, every type
    for (topic, prefix) in [
        ("fid_normal", "FIDN"),
        ("fid_fifo", "FIDF"),
        ("fid_delay", "FIDD"),
        ("fid_tx", "FIDT"),
    ] {
        let want: Vec<(&String, &Sample)> = expected
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .collect();
        let records = wait_landed(&p.client, &p.target, topic, want.len()).await;
        let by_id: BTreeMap<&str, &MessageRecord> =
            records.iter().map(|r| (r.message_id(), r)).collect();
        assert_eq!(
            by_id.len(),
            want.len(),
            "{topic}: duplicates or strays: {:?}",
            by_id.keys()
        );
        for (id, s) in want {
            let r = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{topic}: {id} missing in 5.x"));
            assert_eq!(r.body.as_ref(), s.body.as_slice(), "{topic} {id}: body");
            assert_eq!(r.tag(), s.tag.as_deref(), "{topic} {id}: tag");
            assert_eq!(
                r.keys(),
                s.keys.iter().map(String::as_str).collect::<Vec<_>>(),
                "{topic} {id}: keys"
            );
            for (k, v) in &s.properties {
                let reserved =
                    ["DELAY", "TRAN_MSG", "PGROUP", "__SHARDINGKEY"].contains(&k.as_str());
                if !reserved {
                    assert_eq!(
                        r.properties.get(k),
                        Some(v.as_str()),
                        "{topic} {id}: user property {k}"
                    );
                }
            }
            // 4.x system properties must not leak in as user properties.
            // (A 5.x proxy may set its own PGROUP for transactional sends.)
            assert_ne!(
                r.properties.get("PGROUP"),
                Some("e2e_tx_group"),
                "{topic} {id}: 4.x PGROUP leaked"
            );
            // A 5.x broker's timer re-puts a due DELAY message with its own
            // REAL_TOPIC / REAL_QID and TIMER_* properties (TimerMessageStore,
            // seen on 5.5.0): those are the broker's. Without a timer stamp a
            // REAL_TOPIC can only be the 4.x schedule topic's, leaked.
            let timer_stamped = r.properties.iter().any(|(k, _)| k.starts_with("TIMER_"));
            if !timer_stamped {
                assert_eq!(
                    r.properties.get("REAL_TOPIC"),
                    None,
                    "{topic} {id}: REAL_TOPIC leaked; properties {:?}",
                    r.properties
                );
            }
        }
        if topic == "fid_fifo" {
            // Per sharding key: one 5.x queue, original order.
            let mut seen: BTreeMap<String, (i32, i64)> = BTreeMap::new();
            let mut sorted = records.clone();
            sorted.sort_by_key(|r| (r.queue_id, r.queue_offset));
            let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
            for r in &sorted {
                let body = String::from_utf8_lossy(&r.body).to_string();
                let (order, seq) = body.split_once(':').expect("fifo body");
                let seq: i64 = seq.parse().unwrap();
                let q = seen
                    .entry(order.to_string())
                    .or_insert((r.queue_id, r.queue_offset));
                assert_eq!(
                    q.0, r.queue_id,
                    "group {order} spread over several 5.x queues"
                );
                if let Some(prev) = last_seq.insert(order.to_string(), seq) {
                    assert!(seq > prev, "group {order} reordered: {seq} after {prev}");
                }
            }
        }
    }

    // --- environment filter: gray (plain or JSON) forwarded, untagged filtered
    let env_records = wait_landed(&p.client, &p.target, "env_topic", env_gray.len()).await;
    let landed: BTreeSet<String> = env_records
        .iter()
        .map(|r| r.message_id().to_string())
        .collect();
    assert_eq!(
        landed, env_gray,
        "environment filter forwarded the wrong set"
    );
    wait_metric(&p.metrics, "env route decided everything", |t| {
        decided(t, "env") >= 30.0
    })
    .await;
    let text = scrape(&p.metrics);
    assert_eq!(
        metric(
            &text,
            "rmq_bridge_messages_total",
            &[("route", "env"), ("outcome", "filtered")]
        ),
        10.0
    );

    // --- cutover: 0% is a dry run
    let produce_batch = |label: &'static str, n: usize| {
        let client = p.client.clone();
        let source = &p.source;
        async move {
            let mut keys = Vec::new();
            for i in 0..n {
                let key = format!("cut-{label}-{i}");
                let id = format!("CUT{label}{i:027}");
                testkit::produce(
                    &client,
                    source,
                    "cut_topic",
                    &sample((i % 4) as i32, &id, &key, label),
                )
                .await
                .unwrap();
                keys.push((id, key));
            }
            keys
        }
    };
    let batch_a = produce_batch("A", 60).await;
    wait_metric(&p.metrics, "0% decided batch A", |t| {
        decided(t, "cut") >= 60.0
    })
    .await;
    let text = scrape(&p.metrics);
    assert_eq!(
        metric(
            &text,
            "rmq_bridge_messages_total",
            &[("route", "cut"), ("outcome", "skipped")]
        ),
        60.0
    );
    assert_eq!(
        metric(
            &text,
            "rmq_bridge_messages_total",
            &[("route", "cut"), ("outcome", "would_fail")]
        ),
        0.0
    );
    assert!(
        landed_ids(&p.client, &p.target, "cut_topic")
            .await
            .is_empty(),
        "0% must forward nothing"
    );
    // Positions advance at 0% too: lag drops to zero once checkpoints are written.
    wait_metric(&p.metrics, "lag of the 0% route reaches zero", |t| {
        metric(t, "rmq_bridge_source_lag_messages", &[("route", "cut")]) == 0.0
    })
    .await;

    // --- 30%, picked up from the file without a restart
    routes[5].cutover_percent = 30;
    testkit::write_config(&p.config_path(), &p.config("", &routes)).unwrap();
    wait_metric(&p.metrics, "cutover 30 applied", |t| {
        metric(t, "rmq_bridge_cutover_percent", &[("route", "cut")]) == 30.0
    })
    .await;
    let batch_b = produce_batch("B", 120).await;
    wait_metric(&p.metrics, "30% decided batch B", |t| {
        decided(t, "cut") >= 180.0
    })
    .await;

    // --- an invalid edit is rejected and 30% keeps running
    let invalid = p
        .config("", &routes)
        .replace("cutover_percent = 30", "cutover_percent = 130");
    testkit::write_config(&p.config_path(), &invalid).unwrap();
    bridge.sighup();
    wait_metric(&p.metrics, "invalid reload counted", |t| {
        metric(
            t,
            "rmq_bridge_config_reloads_total",
            &[("result", "invalid")],
        ) >= 1.0
    })
    .await;
    let batch_c = produce_batch("C", 60).await;
    wait_metric(&p.metrics, "still-30% decided batch C", |t| {
        decided(t, "cut") >= 240.0
    })
    .await;
    assert_eq!(
        metric(
            &scrape(&p.metrics),
            "rmq_bridge_cutover_percent",
            &[("route", "cut")]
        ),
        30.0
    );
    assert!(
        bridge.log_text().contains("routes[5].cutover_percent"),
        "rejection must name the key"
    );

    // --- 100%
    routes[5].cutover_percent = 100;
    testkit::write_config(&p.config_path(), &p.config("", &routes)).unwrap();
    wait_metric(&p.metrics, "cutover 100 applied", |t| {
        metric(t, "rmq_bridge_cutover_percent", &[("route", "cut")]) == 100.0
    })
    .await;
    let batch_d = produce_batch("D", 60).await;
    wait_metric(&p.metrics, "100% decided batch D", |t| {
        decided(t, "cut") >= 300.0
    })
    .await;

    let mut want: BTreeSet<String> = BTreeSet::new();
    for (id, key) in batch_b.iter().chain(batch_c.iter()) {
        if bucket(key) < 30 {
            want.insert(id.clone());
        }
    }
    want.extend(batch_d.iter().map(|(id, _)| id.clone()));
    assert!(batch_a.iter().all(|(id, _)| !want.contains(id)));
    let records = wait_landed(&p.client, &p.target, "cut_topic", want.len()).await;
    let got: BTreeSet<String> = records.iter().map(|r| r.message_id().to_string()).collect();
    assert_eq!(records.len(), got.len(), "duplicates in cut_topic");
    assert_eq!(
        got, want,
        "forwarded set must be exactly the buckets below the percent at each step"
    );
    assert!(!want.is_empty() && want.len() < 300);

    // --- status works while the daemon runs and shows the journal
    let status = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["status", "-c"])
        .arg(p.config_path())
        .output()
        .expect("status");
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        status_text.contains("0% -> 30%"),
        "journal missing 0->30:\n{status_text}"
    );
    assert!(
        status_text.contains("30% -> 100%"),
        "journal missing 30->100:\n{status_text}"
    );
    assert!(
        status_text.contains("took effect on"),
        "per-queue effect offsets missing:\n{status_text}"
    );

    assert!(bridge.terminate(), "SIGTERM must drain and exit 0");
    assert!(bridge.log_text().contains("checkpoints written"));
}

/// Exact handoff from a stopped 4.x consumer group, write-back of progress
/// to that group, and the live-consumer interlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_handoff_and_commit_back_interlock() {
    let p = pair(
        "e2e-hand",
        &[("handoff", 4, "NORMAL"), ("mismatch", 2, "TRANSACTION")],
    )
    .await;
    // Plain messages bound for a TRANSACTION-only topic cannot be accepted:
    // they must be quarantined with a reason, not dropped, not blocking.
    for i in 0..5 {
        let id = format!("MISM{i:028}");
        testkit::produce(
            &p.client,
            &p.source,
            "mismatch",
            &sample(i % 2, &id, &id, "m"),
        )
        .await
        .unwrap();
    }
    let group = "legacy_consumers";
    for i in 0..40 {
        let id = format!("HAND{i:028}");
        testkit::produce(
            &p.client,
            &p.source,
            "handoff",
            &sample(i % 4, &id, &id, "h"),
        )
        .await
        .unwrap();
    }
    // The legacy group's consumer was online (which creates the group on the
    // broker), consumed the first 3 messages of each queue, then stopped.
    let legacy = HeartbeatData::consumer("legacy-host@1", group, &["handoff".to_string()]);
    p.client
        .heartbeat(&p.source.broker_addr, &legacy)
        .await
        .unwrap();
    for q in 0..4 {
        p.client
            .update_consumer_offset(&p.source.broker_addr, group, "handoff", q, 3)
            .await
            .unwrap();
    }
    p.client
        .unregister_client(&p.source.broker_addr, "legacy-host@1", None, Some(group))
        .await
        .unwrap();
    assert!(p
        .client
        .get_consumer_list_by_group(&p.source.broker_addr, group)
        .await
        .unwrap()
        .is_empty());
    let routes = vec![
        RouteSpec::new("handoff", "handoff", "handoff", 100)
            .with("start", &format!("\"group:{group}\""))
            .with("commit_as_group", &format!("\"{group}\"")),
        RouteSpec::new("mismatch", "mismatch", "mismatch", 100),
    ];
    testkit::write_config(&p.config_path(), &p.config("", &routes)).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["check", "--online", "-c"])
        .arg(p.config_path())
        .output()
        .expect("check");
    let check_text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check --online failed:\n{check_text}"
    );
    assert!(
        check_text.contains("5.x topic mismatch accepts [Transaction]"),
        "{check_text}"
    );
    let mut bridge = start_bridge(&p.config_path(), &p.log_path());

    let records = wait_landed(&p.client, &p.target, "handoff", 28).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = if records.len() == 28 {
        testkit::read_back(&p.client, &p.target, "handoff")
            .await
            .unwrap()
    } else {
        records
    };
    let ids: BTreeSet<String> = records.iter().map(|r| r.message_id().to_string()).collect();
    assert_eq!(
        records.len(),
        28,
        "exactly the unconsumed messages, no duplicate"
    );
    let source_records = testkit::read_back(&p.client, &p.source, "handoff")
        .await
        .unwrap();
    let want: BTreeSet<String> = source_records
        .iter()
        .filter(|r| r.queue_offset >= 3)
        .map(|r| r.message_id().to_string())
        .collect();
    assert_eq!(ids, want);

    // Write-back: the group now points at the end of each queue.
    testkit::eventually(
        "progress written back to the 4.x group",
        Duration::from_secs(30),
        || {
            let client = p.client.clone();
            let addr = p.source.broker_addr.clone();
            async move {
                for q in 0..4 {
                    let o = client
                        .query_consumer_offset(&addr, group, "handoff", q)
                        .await
                        .ok()??;
                    if o != 10 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await
    .unwrap();

    // A live consumer of the group appears: the bridge keeps forwarding but
    // refuses to commit as the group.
    p.client
        .heartbeat(&p.source.broker_addr, &legacy)
        .await
        .unwrap();
    for i in 40..44 {
        let id = format!("HAND{i:028}");
        testkit::produce(
            &p.client,
            &p.source,
            "handoff",
            &sample(i % 4, &id, &id, "h"),
        )
        .await
        .unwrap();
    }
    wait_landed(&p.client, &p.target, "handoff", 32).await;
    testkit::eventually("interlock logged", Duration::from_secs(30), || {
        let ok = bridge.log_text().contains("refusing to commit progress");
        async move { ok.then_some(()) }
    })
    .await
    .unwrap();
    for q in 0..4 {
        let o = p
            .client
            .query_consumer_offset(&p.source.broker_addr, group, "handoff", q)
            .await
            .unwrap();
        assert_eq!(
            o,
            Some(10),
            "queue {q}: the bridge must not commit while the group has live consumers"
        );
    }
    assert!(bridge.terminate());
}

/// SIGKILL the bridge several times during a stream of 10k messages: every
/// message arrives, and duplicates are only re-sends within the in-flight
/// window, carrying the same message id and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_stream_loses_nothing() {
    const TOTAL: usize = 10_000;
    const WINDOW: usize = 256;
    const QUEUES: i32 = 4;
    const KILLS: usize = 3;
    let p = pair("e2e-kill", &[("stream", QUEUES, "NORMAL")]).await;
    let routes = vec![RouteSpec::new("stream", "stream", "stream", 100)];
    let extra = format!("[pipeline]\ninflight_per_queue = {WINDOW}\n");
    testkit::write_config(&p.config_path(), &p.config(&extra, &routes)).unwrap();

    // Producer: a steady stream over ~15 s.
    let client = p.client.clone();
    let source_broker = p.source.broker_addr.clone();
    let producer = tokio::spawn(async move {
        let mut req_client = client;
        for i in 0..TOTAL {
            let id = format!("KILL{i:028}");
            let mut req = rmq_bridge::remoting::SendRequest::new(
                "kill_producer",
                "stream",
                (i as i32) % QUEUES,
                format!("body-{i}").into_bytes(),
            );
            req.properties.insert("UNIQ_KEY", id);
            req.properties.insert("KEYS", format!("k{i}"));
            loop {
                match req_client.send_message(&source_broker, &req).await {
                    Ok(_) => break,
                    Err(e) => {
                        eprintln!("producer retry: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        req_client = testkit::client();
                    }
                }
            }
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(70)).await;
            }
        }
    });

    let mut bridge = start_bridge(&p.config_path(), &p.log_path());
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(2500 + 700 * k as u64)).await;
        bridge.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        bridge = start_bridge(&p.config_path(), &p.log_path());
    }
    producer.await.unwrap();
    let records = wait_landed(&p.client, &p.target, "stream", TOTAL).await;
    // Let stragglers land before counting duplicates.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = {
        let again = testkit::read_back(&p.client, &p.target, "stream")
            .await
            .unwrap();
        if again.len() >= records.len() {
            again
        } else {
            records
        }
    };
    let mut by_id: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in &records {
        by_id
            .entry(r.message_id().to_string())
            .or_default()
            .push(r.body.to_vec());
    }
    for i in 0..TOTAL {
        let id = format!("KILL{i:028}");
        let bodies = by_id.get(&id).unwrap_or_else(|| panic!("{id} lost"));
        assert!(
            bodies.iter().all(|b| b == format!("body-{i}").as_bytes()),
            "{id}: a duplicate carries another body"
        );
    }
    assert_eq!(by_id.len(), TOTAL, "strays in the 5.x topic");
    let duplicates = records.len() - TOTAL;
    let bound = KILLS * QUEUES as usize * WINDOW;
    eprintln!(
        "sigkill test: {TOTAL} messages, {KILLS} kills, {duplicates} duplicates (bound {bound})"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the in-flight bound {bound}"
    );
    assert!(bridge.terminate());
}

/// Issue 16 item 1: a route with `start = "latest"` is stopped; meanwhile
/// its 4.x topic grows from 2 to 4 queues and producers write into all of
/// them. After the restart every message written during the downtime
/// reaches 5.x, the new queues' included (they start at their earliest
/// offset, not at `latest`), while what preceded the route's first start
/// stays unforwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_added_while_stopped_are_forwarded_from_their_start() {
    // Both topics start with 2 queues; the 4.x one grows to 4 below.
    let p = pair("e2e-grow", &[("grow", 2, "NORMAL")]).await;
    let grow = |queues: i32| testkit::create_topic(&p.client, &p.source, "grow", queues, None);
    let routes = vec![RouteSpec::new("grow", "grow", "grow", 100).with("start", "\"latest\"")];
    testkit::write_config(&p.config_path(), &p.config("", &routes)).unwrap();
    let before = produce_into(&p, "grow", "BF", 2, 6).await;
    // The broker counts a message in its queue's max offset a moment after
    // storing it: wait, so that `latest` lies above every one of them.
    testkit::eventually(
        "4.x max offsets count the 6",
        Duration::from_secs(10),
        || async {
            let n = testkit::topic_size(&p.client, &p.source, "grow")
                .await
                .ok()?;
            (n >= 6).then_some(())
        },
    )
    .await
    .expect("messages in the 4.x queues");

    let mut bridge = start_bridge(&p.config_path(), &p.log_path());
    // Both queues have started at `latest` once their lag series show.
    wait_metric(&p.metrics, "lag series of both 4.x queues", |text| {
        (0..2).all(|q| {
            text.lines().any(|l| {
                l.starts_with("rmq_bridge_source_lag_messages{")
                    && l.contains("route=\"grow\"")
                    && l.contains(&format!("queue=\"{q}\""))
            })
        })
    })
    .await;
    let live = produce_into(&p, "grow", "LV", 2, 6).await;
    wait_landed(&p.client, &p.target, "grow", live.len()).await;
    assert!(bridge.terminate(), "bridge did not stop on SIGTERM");

    // Downtime: the topic grows to 4 queues and producers write into all.
    grow(4).await.expect("4.x topic grown to 4 queues");
    let down = produce_into(&p, "grow", "DN", 4, 20).await;
    let mut bridge = start_bridge(&p.config_path(), &p.log_path());
    let expected = live.len() + down.len();
    let landed = wait_landed(&p.client, &p.target, "grow", expected).await;
    let ids: BTreeSet<String> = landed.iter().map(|r| r.message_id().to_string()).collect();
    for id in live.iter().chain(&down) {
        assert!(ids.contains(id), "{id} never reached 5.x");
    }
    for id in &before {
        assert!(
            !ids.contains(id),
            "{id} preceded the route's first start (start = latest) but was forwarded"
        );
    }
    let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
    assert!(
        log.contains("a queue new to this route"),
        "the bridge did not log where the new queues started"
    );
    assert!(bridge.terminate());
}

/// Produces `n` messages with ids `<label><i>` round-robin over `queues`.
async fn produce_into(p: &Pair, topic: &str, label: &str, queues: i32, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{label}{i:030}");
        let s = sample(i as i32 % queues, &id, &format!("k{i}"), label);
        testkit::produce(&p.client, &p.source, topic, &s)
            .await
            .expect("produce");
        ids.push(id);
    }
    ids
}
