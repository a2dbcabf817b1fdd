//! Both directions against the real peers (issue 17): a 5.x -> 4.x route
//! beside a 4.x -> 5.x route on the same topic names, with the daemon as a
//! process. What landed is read back over Remoting from each cluster's
//! broker; 5.x traffic is produced with our gRPC publisher, as a 5.x
//! producer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rmq_bridge::dev::chaos::{scrape, BridgeProcess};
use rmq_bridge::dev::cluster::{free_port, ClusterOptions, LocalCluster, Peer};
use rmq_bridge::dev::testkit::{self, metric, RouteSpec, Sample};
use rmq_bridge::grpc::{GrpcClientConfig, MessageKind, OutgoingMessage, Publisher};
use rmq_bridge::remoting::{MessageRecord, RemotingClient, TopicConfig};

const ENV_TAG: &str = "__microservice_tag__";

struct Estate {
    four: LocalCluster,
    five: LocalCluster,
    client: RemotingClient,
    dir: tempfile::TempDir,
    metrics: String,
}

async fn estate(name: &str, topics: &[(&str, i32, i32, &str)]) -> Estate {
    let four = testkit::start_source_cluster(&format!("{name}-4x")).expect("4.x peers");
    let five = testkit::start_target_cluster(&format!("{name}-5x")).expect("5.x peers");
    let client = testkit::client();
    for (topic, four_queues, five_queues, kind) in topics {
        testkit::create_topic(&client, &four, topic, *four_queues, None)
            .await
            .expect("4.x topic");
        testkit::create_topic(&client, &five, topic, *five_queues, Some(kind))
            .await
            .expect("5.x topic");
    }
    Estate {
        four,
        five,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        metrics: format!("127.0.0.1:{}", free_port().expect("port")),
    }
}

impl Estate {
    /// Writes the config (with `[target] namesrv_addr`, which reverse
    /// routes read 5.x through) and starts the daemon.
    fn start(&self, routes: &[RouteSpec]) -> BridgeProcess {
        self.write(routes, "");
        BridgeProcess::start(
            Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
            &self.dir.path().join("bridge.toml"),
            &self.log(),
        )
    }

    /// Writes the config file (a running daemon picks it up within 2 s).
    fn write(&self, routes: &[RouteSpec], extra: &str) {
        testkit::write_bridge_config(
            &self.four,
            &self.five,
            self.dir.path(),
            &self.metrics,
            extra,
            routes,
        )
        .expect("write config");
    }

    /// `rmq-bridge verify -c CONFIG ARGS --json F`, which must pass: its
    /// output and the JSON report.
    fn verify(&self, args: &[&str]) -> (String, serde_json::Value) {
        testkit::verify_json(
            Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
            &self.dir.path().join("bridge.toml"),
            args,
            &self.dir.path().join("verify.json"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("bridge.log")
    }

    async fn publisher(&self) -> Publisher {
        let endpoint = self.five.proxy_endpoint.clone().expect("5.x proxy");
        Publisher::connect(GrpcClientConfig::new(vec![endpoint]))
            .await
            .expect("connect to the 5.x proxy")
    }

    async fn read(&self, cluster: &LocalCluster, topic: &str) -> Vec<MessageRecord> {
        testkit::read_back(&self.client, cluster, topic)
            .await
            .expect("read back")
    }

    /// Waits until `topic` holds at least `n` messages on `cluster`.
    async fn wait_for(&self, cluster: &LocalCluster, topic: &str, n: usize) -> Vec<MessageRecord> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let records = self.read(cluster, topic).await;
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages in topic {topic} on {}\nbridge log tail:\n{}",
                records.len(),
                cluster.namesrv_addr,
                tail(&self.log())
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn five_message(
    topic: &str,
    id: &str,
    kind: MessageKind,
    props: &[(&str, String)],
) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        message_id: id.into(),
        body: Bytes::from(format!("body of {id} \u{0}\u{1}\u{ff}").into_bytes()),
        tag: Some("TagB".into()),
        keys: vec![format!("key-{id}"), "shared".into()],
        user_properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        // Each message its own born time: a 4.x batch carries one for all.
        born_timestamp_ms: 1_700_000_000_000
            + id.bytes().fold(0i64, |h, b| (h * 31 + b as i64) % 100_000),
        born_host: "10.9.8.7".into(),
        kind,
    }
}

async fn send_5x(publisher: &Publisher, message: &OutgoingMessage) {
    let mut attempts = 0;
    loop {
        match publisher.send(message).await {
            Ok(_) => return,
            Err(e) if attempts < 20 => {
                attempts += 1;
                eprintln!("5.x send of {} failed ({e}); retrying", message.message_id);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("5.x send of {}: {e}", message.message_id),
        }
    }
}

/// How many copies of each id `records` hold.
fn copies(records: &[MessageRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r.message_id().to_string()).or_default() += 1;
    }
    out
}

fn reverse(name: &str, topic: &str) -> RouteSpec {
    RouteSpec::new(name, topic, topic, 100).with("direction", "\"reverse\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_on_the_same_topics_land_exactly_once_and_nothing_loops() {
    let e = estate(
        "both",
        &[
            ("mixed", 4, 4, "NORMAL"),
            ("orders", 8, 4, "FIFO"),
            ("timers", 2, 2, "DELAY"),
        ],
    )
    .await;
    let mut bridge = e.start(&[
        RouteSpec::new("mixed-fwd", "mixed", "mixed", 100),
        reverse("mixed-rev", "mixed"),
        reverse("orders-rev", "orders"),
        reverse("timers-rev", "timers"),
    ]);
    let publisher = e.publisher().await;
    const N: usize = 150;
    // Producers on both sides of the same topic name.
    for i in 0..N {
        let sample = Sample {
            queue_id: (i % 4) as i32,
            body: format!("4x body {i}").into_bytes(),
            tag: Some("TagA".into()),
            keys: vec![format!("k{i}")],
            uniq_key: Some(format!("F4-{i:04}")),
            properties: vec![("seq".into(), i.to_string())],
            ..Default::default()
        };
        testkit::produce(&e.client, &e.four, "mixed", &sample)
            .await
            .expect("4.x send");
    }
    for i in 0..N {
        let mut props = vec![("seq", i.to_string())];
        if i % 3 == 0 {
            props.push((ENV_TAG, "gray".to_string()));
        }
        let m = five_message("mixed", &format!("R5-{i:04}"), MessageKind::Normal, &props);
        send_5x(&publisher, &m).await;
    }
    // FIFO groups produced on 5.x, each in order.
    const GROUPS: usize = 4;
    const PER_GROUP: usize = 30;
    for n in 0..PER_GROUP {
        for g in 0..GROUPS {
            let m = five_message(
                "orders",
                &format!("G{g}-{n:03}"),
                MessageKind::Fifo {
                    group: format!("group-{g}"),
                },
                &[("seq", n.to_string())],
            );
            send_5x(&publisher, &m).await;
        }
    }
    // 5.x timers, due in 3 s: the reverse route sees them when due.
    let due = rmq_bridge::checkpoint::now_ms() + 3_000;
    for i in 0..5 {
        let m = five_message(
            "timers",
            &format!("T-{i}"),
            MessageKind::Delay {
                delivery_timestamp_ms: due,
            },
            &[],
        );
        send_5x(&publisher, &m).await;
    }

    let four_mixed = e.wait_for(&e.four, "mixed", 2 * N).await;
    e.wait_for(&e.five, "mixed", 2 * N).await;
    let four_orders = e.wait_for(&e.four, "orders", GROUPS * PER_GROUP).await;
    let four_timers = e.wait_for(&e.four, "timers", 5).await;
    // Give a loop every chance to show: several long polls of both routes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let four_mixed_after = e.read(&e.four, "mixed").await;
    let five_mixed = e.read(&e.five, "mixed").await;
    assert_eq!(four_mixed_after.len(), 2 * N, "4.x holds each message once");
    assert_eq!(five_mixed.len(), 2 * N, "5.x holds each message once");
    for (side, records) in [("4.x", &four_mixed_after), ("5.x", &five_mixed)] {
        let c = copies(records);
        assert_eq!(c.len(), 2 * N, "{side}: every id");
        assert!(c.values().all(|n| *n == 1), "{side}: an id twice: {c:?}");
    }
    let text = scrape(&e.metrics);
    let loop_skipped = |route: &str| {
        metric(
            &text,
            "rmq_bridge_messages_total",
            &[("route", route), ("outcome", "loop_skipped")],
        )
    };
    assert_eq!(
        loop_skipped("mixed-fwd"),
        N as f64,
        "the 5.x-born copies on 4.x\n{text}"
    );
    assert_eq!(
        loop_skipped("mixed-rev"),
        N as f64,
        "the 4.x-born copies on 5.x\n{text}"
    );

    // Every field of a 5.x-born message as a 4.x consumer reads it.
    let by_id: BTreeMap<&str, &MessageRecord> =
        four_mixed.iter().map(|r| (r.message_id(), r)).collect();
    // The born time as 5.x stored it (a proxy may stamp its own).
    let born_on_5x: BTreeMap<&str, i64> = five_mixed
        .iter()
        .map(|r| (r.message_id(), r.born_timestamp_ms))
        .collect();
    for i in 0..N {
        let id = format!("R5-{i:04}");
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} on 4.x"));
        let want = five_message("mixed", &id, MessageKind::Normal, &[]);
        assert_eq!(r.body, want.body, "{id}: body byte for byte");
        assert_eq!(r.properties.get("UNIQ_KEY"), Some(id.as_str()));
        assert_eq!(r.tag(), Some("TagB"), "{id}: tag");
        assert_eq!(
            r.keys(),
            vec![format!("key-{id}").as_str(), "shared"],
            "{id}: keys"
        );
        assert_eq!(
            r.properties.get("seq"),
            Some(i.to_string().as_str()),
            "{id}: user property"
        );
        let env = (i % 3 == 0).then_some("gray");
        assert_eq!(r.properties.get(ENV_TAG), env, "{id}: environment tag");
        assert_eq!(
            r.properties.get("bridge_origin"),
            Some(format!("5.x#{id}").as_str()),
            "{id}: origin stamp, bound to the message's id"
        );
        assert_eq!(
            Some(&r.born_timestamp_ms),
            born_on_5x.get(id.as_str()),
            "{id}: born time"
        );
    }
    for r in five_mixed
        .iter()
        .filter(|r| r.message_id().starts_with("F4-"))
    {
        assert_eq!(
            r.properties.get("bridge_origin"),
            Some(format!("4.x#{}", r.message_id()).as_str()),
            "{}",
            r.message_id()
        );
    }

    // Each FIFO group on one 4.x queue, in the order it was produced.
    let mut queues: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut seqs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut ordered = four_orders.clone();
    ordered.sort_by_key(|r| (r.queue_id, r.queue_offset));
    for r in &ordered {
        let group = r
            .properties
            .get("__SHARDINGKEY")
            .unwrap_or_else(|| panic!("{}: group kept as the sharding key", r.message_id()))
            .to_string();
        queues.entry(group.clone()).or_default().insert(r.queue_id);
        let seq: usize = r
            .properties
            .get("seq")
            .and_then(|s| s.parse().ok())
            .expect("seq");
        seqs.entry(group).or_default().push(seq);
    }
    assert_eq!(queues.len(), GROUPS);
    for (group, q) in &queues {
        assert_eq!(q.len(), 1, "{group} spread over 4.x queues {q:?}");
    }
    for (group, s) in &seqs {
        assert_eq!(
            s,
            &(0..PER_GROUP).collect::<Vec<_>>(),
            "{group} out of order"
        );
    }

    // Due timers arrive as normal messages, without the 5.x timer fields.
    for r in &four_timers {
        assert!(r.message_id().starts_with("T-"));
        for p in [
            "TIMER_DELIVER_MS",
            "TIMER_DELAY_MS",
            "TIMER_DELAY_SEC",
            "__STARTDELIVERTIME",
            "DELAY",
        ] {
            assert_eq!(
                r.properties.get(p),
                None,
                "{}: {p} left on 4.x",
                r.message_id()
            );
        }
        assert!(
            r.store_timestamp_ms >= due - 1_000,
            "{} stored on 4.x at {} before it was due at {due}",
            r.message_id(),
            r.store_timestamp_ms
        );
    }
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_drill_with_a_sigkill_in_the_reverse_direction_loses_nothing() {
    let e = estate("drill", &[("payments", 4, 4, "NORMAL")]).await;
    let routes = [
        RouteSpec::new("pay-fwd", "payments", "payments", 100),
        reverse("pay-rev", "payments"),
    ];
    let mut bridge = e.start(&routes);
    // 1. Producers on 4.x; consumers already on 5.x through the bridge.
    const ON_4X: usize = 200;
    for i in 0..ON_4X {
        let sample = Sample {
            queue_id: (i % 4) as i32,
            body: format!("payment {i}").into_bytes(),
            uniq_key: Some(format!("P4-{i:05}")),
            ..Default::default()
        };
        testkit::produce(&e.client, &e.four, "payments", &sample)
            .await
            .expect("4.x send");
    }
    e.wait_for(&e.five, "payments", ON_4X).await;

    // 2. Producers move to 5.x, while the bridge is SIGKILLed mid-stream.
    const ON_5X: usize = 1_200;
    let publisher = e.publisher().await;
    let producer = tokio::spawn(async move {
        for i in 0..ON_5X {
            let m = five_message("payments", &format!("P5-{i:05}"), MessageKind::Normal, &[]);
            send_5x(&publisher, &m).await;
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let started = Instant::now();
    loop {
        let landed = e.read(&e.four, "payments").await.len();
        if landed >= ON_4X + ON_5X / 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reverse route stuck at {landed}\n{}",
            tail(&e.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bridge.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.restart();
    producer.await.expect("5.x producer");

    // 3. Consumers move back to 4.x: everything produced on either side is
    // there, and nothing went round in a loop.
    let four = e.wait_for(&e.four, "payments", ON_4X + ON_5X).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let four = {
        let again = e.read(&e.four, "payments").await;
        assert!(again.len() >= four.len());
        again
    };
    let five = e.read(&e.five, "payments").await;
    let (c4, c5) = (copies(&four), copies(&five));
    for i in 0..ON_4X {
        let id = format!("P4-{i:05}");
        assert_eq!(
            c4.get(&id),
            Some(&1),
            "{id} produced on 4.x once, never looped back"
        );
        assert!(c5.contains_key(&id), "{id} missing on 5.x");
    }
    let mut duplicates = 0;
    for i in 0..ON_5X {
        let id = format!("P5-{i:05}");
        let n = *c4
            .get(&id)
            .unwrap_or_else(|| panic!("{id} produced on 5.x is missing on 4.x"));
        duplicates += n - 1;
        assert_eq!(
            c5.get(&id),
            Some(&1),
            "{id} produced on 5.x once, never looped back"
        );
    }
    // At-least-once across a SIGKILL: re-sends are what the checkpoint had
    // not yet made durable, at most the queues' in-flight windows.
    assert!(duplicates <= 4 * 1024, "{duplicates} duplicates");
    eprintln!(
        "rollback drill: {} on 4.x, {duplicates} re-sent after the SIGKILL",
        four.len()
    );
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );

    // 4. verify reconciles the reverse route: 5.x source against 4.x.
    let (out, report) = e.verify(&["--route", "pay-rev"]);
    assert!(out.contains("VERDICT: CLEAN"), "{out}");
    assert_eq!(report["totals"]["found"], ON_5X as u64, "{report:#}");
    assert_eq!(report["totals"]["missing"], 0, "{report:#}");
    assert_eq!(
        report["totals"]["loop_skipped"], ON_4X as u64,
        "the 4.x-born copies on 5.x are never sent back: {report:#}"
    );

    // 5. With the bridge stopped, what 5.x producers write next is lag of
    // the reverse route: 4.x cannot be decommissioned while it waits.
    let publisher = e.publisher().await;
    for i in 0..10 {
        let m = five_message("payments", &format!("LATE-{i}"), MessageKind::Normal, &[]);
        send_5x(&publisher, &m).await;
    }
    let config = e.dir.path().join("bridge.toml");
    let out = cli(&["check", "-c", &config.to_string_lossy(), "--decommission"]);
    assert!(!out.0, "decommission must refuse:\n{}", out.1);
    let red_lag = out
        .1
        .lines()
        .any(|l| l.contains("RED") && l.contains("route pay-rev (reverse)") && l.contains("lag"));
    assert!(red_lag, "no RED lag line for the reverse route:\n{}", out.1);
    assert!(
        out.1
            .contains("10 message(s) produced on 5.x not yet on 4.x"),
        "{}",
        out.1
    );
}

/// `rmq-bridge ARGS` with a 120 s bound: (success, stdout + stderr).
fn cli(args: &[&str]) -> (bool, String) {
    testkit::run_cli(Path::new(env!("CARGO_BIN_EXE_rmq-bridge")), args)
}

fn bucket(key: &str) -> u32 {
    // Computed here independently of the bridge: CRC-32/IEEE of the UTF-8 key.
    crc32fast::hash(key.as_bytes()) % 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_route_is_phased_by_its_cutover_and_packs_batches() {
    let e = estate("phased", &[("phased", 4, 4, "NORMAL")]).await;
    // Packed sends (SEND_BATCH_MESSAGE to 4.x) and a dry run first.
    let extra = "[pipeline]\nsend_batch_size = 16\n";
    let dry =
        [RouteSpec::new("phased-rev", "phased", "phased", 0).with("direction", "\"reverse\"")];
    e.write(&dry, extra);
    let mut bridge = BridgeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
        &e.dir.path().join("bridge.toml"),
        &e.log(),
    );
    let publisher = e.publisher().await;
    for i in 0..200 {
        let m = five_message("phased", &format!("A-{i:03}"), MessageKind::Normal, &[]);
        send_5x(&publisher, &m).await;
    }
    let decided = |text: &str| {
        ["forwarded", "skipped"]
            .iter()
            .map(|o| {
                metric(
                    text,
                    "rmq_bridge_messages_total",
                    &[("route", "phased-rev"), ("outcome", o)],
                )
            })
            .sum::<f64>()
    };
    let wait_decided = |n: f64| {
        let metrics = e.metrics.clone();
        async move {
            testkit::eventually("decided", Duration::from_secs(90), || {
                let text = scrape(&metrics);
                let ok = decided(&text) >= n;
                async move { ok.then_some(()) }
            })
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", scrape(&metrics)));
        }
    };
    wait_decided(200.0).await;
    assert!(
        e.read(&e.four, "phased").await.is_empty(),
        "0 % forwards nothing"
    );
    // Phase to 50 % across a restart (the journal must record it at the
    // start), with a backlog waiting, so pulls of 32 become packed sends.
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );
    let half =
        [RouteSpec::new("phased-rev", "phased", "phased", 50).with("direction", "\"reverse\"")];
    e.write(&half, extra);
    for i in 0..200 {
        let m = five_message("phased", &format!("B-{i:03}"), MessageKind::Normal, &[]);
        send_5x(&publisher, &m).await;
    }
    bridge.restart();
    // The counters start again at 0 in the new process.
    wait_decided(200.0).await;
    let want: BTreeSet<String> = (0..200)
        .map(|i| format!("B-{i:03}"))
        .filter(|id| bucket(&format!("key-{id}")) < 50)
        .collect();
    let landed = e.wait_for(&e.four, "phased", want.len()).await;
    let got: BTreeSet<String> = landed.iter().map(|r| r.message_id().to_string()).collect();
    assert_eq!(
        got, want,
        "exactly the buckets below 50 of the second phase"
    );
    // Each message's own born time through a packed send (a 4.x batch
    // carries one for all of its messages).
    let born_on_5x: BTreeMap<String, i64> = e
        .read(&e.five, "phased")
        .await
        .iter()
        .map(|r| (r.message_id().to_string(), r.born_timestamp_ms))
        .collect();
    for r in &landed {
        assert_eq!(
            Some(&r.born_timestamp_ms),
            born_on_5x.get(r.message_id()),
            "{}: born time through a packed send",
            r.message_id()
        );
        assert_eq!(
            r.tag(),
            Some("TagB"),
            "{}: tag through a packed send",
            r.message_id()
        );
        assert_eq!(
            r.properties.get("bridge_origin"),
            Some(format!("5.x#{}", r.message_id()).as_str())
        );
    }
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );
    // verify judges the reverse route by its journal: the dry run and the
    // held half are skipped, not missing.
    let (_, report) = e.verify(&[]);
    assert_eq!(report["totals"]["found"], want.len() as u64, "{report:#}");
    assert_eq!(
        report["totals"]["skipped"],
        (400 - want.len()) as u64,
        "{report:#}"
    );
    assert_eq!(report["totals"]["missing"], 0, "{report:#}");
}

/// Issue 30, item 5 (a): two deployments bridge the same topic pair and
/// name the clusters differently: A forwards `pair` as prod4 -> cloud5, B
/// reverses it as prod5 -> legacy4. A message born on 4.x reaches 5.x once
/// (A), comes back to 4.x once (B: its stamp names neither of B's
/// clusters), and stops there: its stamp names A's source at an earlier
/// hop. Before, a route only refused a stamp naming its destination, and
/// every hop made a new copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_naming_the_clusters_differently_do_not_loop() {
    const N: usize = 20;
    let e = estate("twodeploy", &[("pair", 4, 4, "NORMAL")]).await;
    let deployment = |name: &str, routes: &[RouteSpec], four: &str, five: &str| {
        let dir = e.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("deployment dir");
        let metrics = format!("127.0.0.1:{}", free_port().expect("port"));
        let path = testkit::write_bridge_config(&e.four, &e.five, &dir, &metrics, "", routes)
            .expect("config");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text
            .replacen(
                "[source]\n",
                &format!("[source]\ncluster_name = \"{four}\"\n"),
                1,
            )
            .replacen(
                "[target]\n",
                &format!("[target]\ncluster_name = \"{five}\"\n"),
                1,
            );
        testkit::write_config(&path, &text).expect("config");
        BridgeProcess::start(
            Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
            &path,
            &dir.join("bridge.log"),
        )
    };
    let mut a = deployment(
        "a",
        &[RouteSpec::new("pair-fwd", "pair", "pair", 100)],
        "prod4",
        "cloud5",
    );
    let mut b = deployment(
        "b",
        &[RouteSpec::new("pair-rev", "pair", "pair", 100).with("direction", "\"reverse\"")],
        "legacy4",
        "prod5",
    );
    for i in 0..N {
        let sample = Sample {
            queue_id: (i % 4) as i32,
            body: format!("pair {i}").into_bytes(),
            uniq_key: Some(format!("PAIR-{i:03}")),
            ..Default::default()
        };
        testkit::produce(&e.client, &e.four, "pair", &sample)
            .await
            .expect("4.x send");
    }
    e.wait_for(&e.five, "pair", N).await;
    e.wait_for(&e.four, "pair", 2 * N).await;
    // Several pulls of both deployments later, nothing more arrived.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let on_5x = copies(&e.read(&e.five, "pair").await);
    let on_4x = copies(&e.read(&e.four, "pair").await);
    assert!(a.terminate_within(Duration::from_secs(30)), "A stops");
    assert!(b.terminate_within(Duration::from_secs(30)), "B stops");
    assert_eq!(on_5x.len(), N, "{on_5x:?}");
    assert!(on_5x.values().all(|n| *n == 1), "copies on 5.x: {on_5x:?}");
    assert_eq!(on_4x.len(), N, "{on_4x:?}");
    assert!(
        on_4x.values().all(|n| *n == 2),
        "copies on 4.x (the original and B's): {on_4x:?}"
    );
}

/// Issue 30, item 6: a 4.x broker leaving a reverse route moves only the
/// FIFO groups whose queue went with it. 4.x has broker-a (5 queues) and
/// broker-b (3 queues); 24 groups of a FIFO stream go from 5.x to 4.x;
/// broker-b stops (it leaves the name server's route); the next messages of
/// every group that was on broker-a land on the same queue as before, and
/// the moved groups stay in order on their new queue. With the group's
/// queue picked as hash modulo the writable queues (8, then 5), most groups
/// on broker-a moved too, while their earlier messages were still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4x_broker_leaving_a_reverse_route_moves_only_its_own_fifo_groups() {
    const GROUPS: usize = 24;
    const PER: usize = 4;
    let topic = "leave";
    let four = LocalCluster::start(ClusterOptions::new("leave-4x").second_broker(true))
        .expect("4.x peers with two brokers");
    let five = testkit::start_target_cluster("leave-5x").expect("5.x peers");
    let client = testkit::client();
    let (b_addr, _) = four.broker_b.clone().expect("second broker");
    for (addr, queues) in [(&four.broker_addr, 5), (&b_addr, 3)] {
        client
            .create_topic(addr, &TopicConfig::new(topic, queues))
            .await
            .expect("4.x topic");
    }
    testkit::eventually("4.x topic on both brokers", Duration::from_secs(30), || {
        let (client, namesrv) = (client.clone(), four.namesrv_addr.clone());
        async move {
            let route = client.get_topic_route(&namesrv, topic).await.ok()??;
            (route.readable_queues().len() == 8).then_some(())
        }
    })
    .await
    .expect("route");
    testkit::create_topic(&client, &five, topic, 4, Some("FIFO"))
        .await
        .expect("5.x topic");
    let mut e = Estate {
        four,
        five,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        metrics: format!("127.0.0.1:{}", free_port().expect("port")),
    };
    let mut bridge =
        e.start(&[RouteSpec::new("leave-rev", topic, topic, 100).with("direction", "\"reverse\"")]);
    let publisher = e.publisher().await;
    let group_of = |id: &str| -> usize {
        let i: usize = id[2..].parse().expect("numbered id");
        i % GROUPS
    };
    for phase in ["A", "B"] {
        if phase == "B" {
            // broker-b leaves: a graceful stop unregisters it.
            e.four.stop_peer(Peer::BrokerB);
            let (client, namesrv) = (e.client.clone(), e.four.namesrv_addr.clone());
            testkit::eventually(
                "broker-b gone from the route",
                Duration::from_secs(60),
                || {
                    let (client, namesrv) = (client.clone(), namesrv.clone());
                    async move {
                        let route = client.get_topic_route(&namesrv, topic).await.ok()??;
                        (route.readable_queues().len() == 5).then_some(())
                    }
                },
            )
            .await
            .expect("broker-b left");
        }
        for i in 0..GROUPS * PER {
            let m = five_message(
                topic,
                &format!("{phase}-{i:04}"),
                MessageKind::Fifo {
                    group: format!("g{}", i % GROUPS),
                },
                &[],
            );
            send_5x(&publisher, &m).await;
        }
    }
    // Phase A as it landed (both brokers), then phase B (broker-a only).
    let deadline = Instant::now() + Duration::from_secs(120);
    let landed = loop {
        let records = e.read(&e.four, topic).await;
        let b_count = records
            .iter()
            .filter(|r| r.message_id().starts_with("B-"))
            .count();
        if b_count >= GROUPS * PER {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "{b_count} of {} phase-B messages on 4.x\n{}",
            GROUPS * PER,
            tail(&e.log())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        bridge.terminate_within(Duration::from_secs(30)),
        "clean stop"
    );
    // Phase A: read while broker-b ran? No: it is gone now; phase A's
    // queues on broker-a are read now, those on broker-b are not.
    let a_port = e
        .four
        .broker_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("broker-a port");
    let mut before: BTreeMap<usize, i32> = BTreeMap::new();
    for r in landed.iter().filter(|r| r.message_id().starts_with("A-")) {
        assert_eq!(r.store_host.port(), a_port, "only broker-a is read now");
        let q = *before.entry(group_of(r.message_id())).or_insert(r.queue_id);
        assert_eq!(q, r.queue_id, "phase A: group in two queues");
    }
    assert!(
        !before.is_empty() && before.len() < GROUPS,
        "some groups were on each broker: {before:?}"
    );
    let mut after: BTreeMap<usize, Vec<(i64, usize, i32)>> = BTreeMap::new();
    for r in landed.iter().filter(|r| r.message_id().starts_with("B-")) {
        let i: usize = r.message_id()[2..].parse().expect("numbered id");
        after
            .entry(i % GROUPS)
            .or_default()
            .push((r.queue_offset, i, r.queue_id));
    }
    let mut stayed = 0;
    for (group, mut records) in after {
        records.sort();
        let queue = records[0].2;
        assert!(
            records.iter().all(|(_, _, q)| *q == queue),
            "g{group}: phase B in several queues"
        );
        let seqs: Vec<usize> = records.iter().map(|(_, i, _)| *i).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "g{group}: phase B out of order on 4.x");
        if let Some(q) = before.get(&group) {
            assert_eq!(
                *q, queue,
                "g{group} was on broker-a queue {q} and moved to {queue} though its queue stayed"
            );
            stayed += 1;
        }
    }
    assert_eq!(stayed, before.len());
}
