//! Pending scheduled messages (issue 11) against the real peers: a 4.x
//! cluster whose broker holds delay-level messages in `SCHEDULE_TOPIC_XXXX`
//! and a 5.x cluster with a DELAY target topic, the bridge as a child
//! process.
//!
//! The 4.x broker's level table is shortened (`messageDelayLevel`, a store
//! key the peer honours like Java) so that levels 5 and 6 wait 40 s and
//! 1 min, and the bridge's `[source] delay_levels` says the same. Checked:
//! - facts about the peer: the schedule topic is routed by the name server,
//!   its queue is level - 1, `REAL_TOPIC` / `REAL_QID` name the real topic
//!   and queue, and the broker moves each message into the real topic when
//!   store time + delay has come, with the same `UNIQ_KEY`;
//! - `check --online` refuses `scheduled = "forward"` into a non-DELAY
//!   target;
//! - pending messages are forwarded long before they are due, and only
//!   those of the route's source topic;
//! - after a SIGKILL and restart of the bridge, the broker's later copies
//!   are skipped: each message lands in 5.x exactly once, as DELAY with its
//!   original deadline, every field intact (also a message without
//!   `UNIQ_KEY`, and one already due when the bridge started).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rmq_bridge::checkpoint::now_ms;
use rmq_bridge::dev::chaos::{scrape, BridgeProcess};
use rmq_bridge::dev::cluster::{free_port, ClusterOptions, LocalCluster};
use rmq_bridge::dev::testkit::{self, metric, RouteSpec, Sample};
use rmq_bridge::remoting::{names, MessageRecord};

/// The 4.x broker's (and the bridge's) level table in this test.
const LEVELS: &str = "1s 5s 10s 20s 40s 1m";
const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";

fn start_bridge(config: &Path, log: &Path) -> BridgeProcess {
    BridgeProcess::start(Path::new(env!("CARGO_BIN_EXE_rmq-bridge")), config, log)
}

fn messages(text: &str, route: &str, outcome: &str) -> f64 {
    metric(
        text,
        "rmq_bridge_messages_total",
        &[("route", route), ("outcome", outcome)],
    )
}

/// `rmq-bridge check --online -c config`: (success, stdout + stderr).
fn check_online(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["check", "--online", "-c"])
        .arg(config)
        .output()
        .expect("run rmq-bridge check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn start(options: ClusterOptions) -> LocalCluster {
    match tokio::task::spawn_blocking(move || LocalCluster::start(options)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => panic!("the test peers did not start: {e}"),
        Err(e) => panic!("cluster start task failed: {e}"),
    }
}

/// The delivery time a 5.x broker kept on a due DELAY message: Java keeps
/// `TIMER_DELIVER_MS`; rocketmq-broker 1.0.0 writes `TIMER_DELIVERY_TOKEN`
/// (`F:1:<UNIQ_KEY>:<deliver ms>:0`) instead.
fn stored_delivery_ms(rec: &MessageRecord) -> Option<i64> {
    if let Some(ms) = rec.properties.get(names::TIMER_DELIVER_MS) {
        return ms.parse().ok();
    }
    let token = rec.properties.get("TIMER_DELIVERY_TOKEN")?;
    token.split(':').nth(3)?.parse().ok()
}

fn by_uniq(records: &[MessageRecord]) -> BTreeMap<String, Vec<&MessageRecord>> {
    let mut out: BTreeMap<String, Vec<&MessageRecord>> = BTreeMap::new();
    for r in records {
        out.entry(r.message_id().to_string()).or_default().push(r);
    }
    out
}

/// What was produced, as the 4.x broker holds it while pending.
struct Pending {
    sample: Sample,
    level: i32,
    /// Store time in the schedule topic.
    store_ms: i64,
    /// The 5.x message id: `UNIQ_KEY`. The peer (like Java 5.x brokers,
    /// `SendMessageProcessor`) gives a message sent without one a
    /// `UNIQ_KEY` at send time, so the schedule record always has one here;
    /// the fallback key for brokers that do not is unit-tested
    /// (`translate::scheduled`).
    message_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_scheduled_messages_forwarded_early_and_exactly_once() {
    let started = Instant::now();
    let source =
        start(ClusterOptions::new("sched-src").broker_property("messageDelayLevel", LEVELS)).await;
    let target = start(ClusterOptions::new("sched-dst").with_proxy(true)).await;
    let client = testkit::client();
    testkit::create_topic(&client, &source, "sched_src", 2, None)
        .await
        .expect("4.x topic");
    testkit::create_topic(&client, &source, "sched_other", 2, None)
        .await
        .expect("4.x topic");
    testkit::create_topic(&client, &target, "sched_dst", 2, Some("DELAY"))
        .await
        .expect("5.x DELAY topic");
    testkit::create_topic(&client, &target, "sched_normal", 1, Some("NORMAL"))
        .await
        .expect("5.x NORMAL topic");

    // ---- produce: pending at levels 5 (40 s) and 6 (1 min), one without
    // UNIQ_KEY, one for another topic, one due at once (level 1).
    let sample = |i: usize, level: i32, uniq: bool| Sample {
        queue_id: (i % 2) as i32,
        body: format!("scheduled body {i} level {level}").into_bytes(),
        tag: Some(if i % 2 == 0 { "paid" } else { "shipped" }.into()),
        keys: vec![format!("order-{i}"), format!("k{i}")],
        uniq_key: uniq.then(|| format!("SCHED-UNIQ-{i}")),
        properties: vec![
            (names::DELAY.into(), level.to_string()),
            ("color".into(), format!("c{i}")),
        ],
        ..Default::default()
    };
    let mut produced = Vec::new();
    for (i, level, uniq) in [
        (0, 5, true),
        (1, 5, true),
        (2, 6, true),
        (3, 6, true),
        (4, 5, false),
    ] {
        produced.push((sample(i, level, uniq), level));
    }
    for (s, _) in &produced {
        testkit::produce(&client, &source, "sched_src", s)
            .await
            .expect("produce pending");
    }
    let due_now = sample(9, 1, true);
    testkit::produce(&client, &source, "sched_src", &due_now)
        .await
        .expect("produce due");
    testkit::produce(&client, &source, "sched_other", &sample(7, 5, true))
        .await
        .expect("produce other topic");

    // ---- facts about the peer's schedule topic.
    // The broker dispatches a stored message to its consume queue a moment
    // later: read until every pending message shows (or 10 s passed).
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let held = testkit::read_back(&client, &source, SCHEDULE_TOPIC)
            .await
            .expect("the 4.x schedule topic is routed and readable over Remoting");
        let all = produced
            .iter()
            .all(|(s, _)| held.iter().any(|r| *r.body == *s.body));
        if all || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut pending = Vec::new();
    for (s, level) in produced {
        let body = s.body.clone();
        let rec = held
            .iter()
            .find(|r| *r.body == *body)
            .unwrap_or_else(|| panic!("{:?} not held in {SCHEDULE_TOPIC}", s.uniq_key));
        assert_eq!(rec.queue_id, level - 1, "schedule queue = level - 1");
        // A Java broker keeps the producer's UNIQ_KEY and assigns none
        // (the client assigns it): the message sent without one has none.
        assert_eq!(
            rec.uniq_key(),
            s.uniq_key.as_deref(),
            "the broker keeps UNIQ_KEY as sent"
        );
        assert_eq!(rec.properties.get(names::REAL_TOPIC), Some("sched_src"));
        assert_eq!(
            rec.properties.get(names::REAL_QID),
            Some(s.queue_id.to_string().as_str())
        );
        pending.push(Pending {
            level,
            store_ms: rec.store_timestamp_ms,
            message_id: rec.message_id().to_string(),
            sample: s,
        });
    }
    let earliest_deadline = pending
        .iter()
        .map(|p| p.store_ms + 40_000)
        .min()
        .expect("pending messages");

    // ---- the bridge.
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let route =
        RouteSpec::new("sched", "sched_src", "sched_dst", 100).with("scheduled", "\"forward\"");
    let config = testkit::render_config(
        &source,
        &target,
        &dir.path().join("checkpoints"),
        &metrics_addr,
        "",
        &[route],
    )
    .expect("config")
    .replacen(
        "long_poll_ms = 2000\n",
        &format!("long_poll_ms = 2000\ndelay_levels = \"{LEVELS}\"\n"),
        1,
    );
    let config = testkit::write_config(&dir.path().join("bridge.toml"), &config).expect("write");
    // `check --online`: a DELAY target passes, a NORMAL one is named.
    let (ok, out) = check_online(&config);
    assert!(ok, "check --online of the DELAY route failed:\n{out}");
    let text = std::fs::read_to_string(&config).expect("config");
    let normal = dir.path().join("normal.toml");
    std::fs::write(&normal, text.replace("\"sched_dst\"", "\"sched_normal\"")).expect("write");
    let (ok, out) = check_online(&normal);
    assert!(
        !ok && out.contains("needs a DELAY target") && out.contains("sched_normal"),
        "check --online must refuse scheduled = forward into a NORMAL topic:\n{out}"
    );

    let log = dir.path().join("bridge.log");
    let mut bridge = start_bridge(&config, &log);

    // Forwarded from the schedule topic long before anything is due.
    testkit::eventually(
        "the 5 pending messages forwarded from the schedule topic",
        Duration::from_secs(60),
        || async {
            let text = scrape(&metrics_addr);
            (messages(&text, "sched#scheduled", "forwarded") >= 5.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let forwarded_at = now_ms();
    assert!(
        forwarded_at < earliest_deadline - 5_000,
        "forwarded at {forwarded_at}, not well before the first deadline {earliest_deadline}"
    );
    let text = scrape(&metrics_addr);
    assert_eq!(
        messages(&text, "sched#scheduled", "forwarded"),
        5.0,
        "only the source topic's pending messages"
    );
    let in_real_topic = testkit::read_back(&client, &source, "sched_src")
        .await
        .expect("4.x real topic");
    assert!(
        in_real_topic
            .iter()
            .all(|r| r.message_id() == due_now.uniq_key.as_deref().unwrap_or_default()),
        "a pending message reached the real topic already; the test proves nothing"
    );

    // `check --decommission` (read-only, beside the daemon): what 5.x
    // confirmed counts as forwarded; with a delay table that lacks levels 5
    // and 6 the same messages are named, not skipped.
    let scheduled_line = |config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
            .args(["check", "--decommission", "-c"])
            .arg(config)
            .env("RUST_LOG", "rmq_bridge::decommission=debug")
            .output()
            .expect("run rmq-bridge check --decommission");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        text.lines()
            .find(|l| l.contains("topic sched_src") && l.contains(" scheduled "))
            .map(|l| format!("{l}\n(check's log:\n{log})"))
            .unwrap_or_else(|| {
                panic!(
                    "no scheduled line for sched_src:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    // Once the broker moved the message due at once (level 1) into the
    // topic, its delay offset says so and nothing unforwarded is left.
    let due_id = due_now.uniq_key.clone().unwrap_or_default();
    testkit::eventually(
        "the message due at once moved into the real topic",
        Duration::from_secs(30),
        || async {
            let records = testkit::read_back(&client, &source, "sched_src")
                .await
                .ok()?;
            records
                .iter()
                .any(|r| r.message_id() == due_id)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let line = testkit::eventually(
        "the broker's delay offset past the message due at once",
        Duration::from_secs(15),
        || async {
            let line = scheduled_line(&config);
            line.starts_with("GREEN").then_some(line)
        },
    )
    .await
    .unwrap_or_else(|_| scheduled_line(&config));
    assert!(
        line.starts_with("GREEN") && line.contains("(5 forwarded early)"),
        "{line}"
    );
    let short = dir.path().join("short.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &short,
        text.replace(
            &format!("delay_levels = \"{LEVELS}\""),
            "delay_levels = \"1s 5s 10s 20s\"",
        ),
    )
    .expect("write");
    let line = scheduled_line(&short);
    assert!(
        line.starts_with("RED") && line.contains("5 delay message(s) pending at a level"),
        "{line}"
    );

    // SIGKILL once the checkpoints are flushed; what was remembered must
    // survive it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bridge.kill9();
    let bridge = start_bridge(&config, &log);

    // ---- the broker moves them into the real topic (level 6: 1 min).
    let last_deadline = pending
        .iter()
        .map(|p| p.store_ms + if p.level == 5 { 40_000 } else { 60_000 })
        .max()
        .expect("pending");
    let copies = testkit::eventually(
        "the 4.x broker's copies of the pending messages in the real topic",
        Duration::from_secs(((last_deadline - now_ms()).max(0) / 1000 + 40) as u64),
        || async {
            let records = testkit::read_back(&client, &source, "sched_src")
                .await
                .ok()?;
            (records.len() > pending.len()).then_some(records)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for p in &pending {
        let copy = copies
            .iter()
            .find(|r| *r.body == *p.sample.body)
            .expect("copy in the real topic");
        assert!(
            copy.store_timestamp_ms >= p.store_ms + if p.level == 5 { 40_000 } else { 60_000 },
            "the broker delivered {} early",
            p.message_id
        );
        if p.sample.uniq_key.is_some() {
            assert_eq!(copy.message_id(), p.message_id, "UNIQ_KEY kept on the copy");
        } else {
            // Without a UNIQ_KEY a message's id is its offset id, which a
            // Java broker's move into the real topic changes: the bridge must
            // (and does, `forward_key`) know the copy by born time, host and
            // body; the exactly-once check below proves it.
            assert_ne!(
                copy.message_id(),
                p.message_id,
                "a moved copy keeps its offset id?"
            );
        }
    }
    // ---- 5.x holds each exactly once, as DELAY at its original deadline.
    let want = pending.len() + 1;
    let landed = testkit::eventually(
        "every message in the 5.x DELAY topic",
        Duration::from_secs(60),
        || async {
            let records = testkit::read_back(&client, &target, "sched_dst")
                .await
                .ok()?;
            (records.len() >= want).then_some(records)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Let anything that would be a duplicate arrive too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let landed = testkit::read_back(&client, &target, "sched_dst")
        .await
        .unwrap_or(landed);
    let ids = by_uniq(&landed);
    assert_eq!(
        landed.len(),
        want,
        "exactly once each: {:?}",
        ids.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
    );
    for p in &pending {
        let got = ids
            .get(&p.message_id)
            .unwrap_or_else(|| panic!("{} missing in 5.x ({:?})", p.message_id, ids.keys()));
        let got = got[0];
        let delay_ms = if p.level == 5 { 40_000 } else { 60_000 };
        assert_eq!(
            stored_delivery_ms(got),
            Some(p.store_ms + delay_ms),
            "{}: original deadline = 4.x store time + level {} delay",
            p.message_id,
            p.level
        );
        assert_eq!(*got.body, *p.sample.body);
        assert_eq!(got.tag(), p.sample.tag.as_deref());
        assert_eq!(
            got.keys(),
            p.sample.keys.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(
            got.properties.get("color"),
            p.sample.properties[1].1.as_str().into()
        );
        // The 5.x broker's timer re-puts a due DELAY message with its own
        // REAL_TOPIC (the 5.x topic) and REAL_QID (seen on 5.5.0); the 4.x
        // schedule topic's REAL_TOPIC would name the 4.x topic.
        assert_ne!(
            got.properties.get(names::REAL_TOPIC),
            Some("sched_src"),
            "{}: the 4.x REAL_TOPIC leaked",
            p.message_id
        );
        let timer_stamped = got.properties.iter().any(|(k, _)| k.starts_with("TIMER_"));
        let leak_checked: &[&str] =
            if timer_stamped && got.properties.get(names::REAL_TOPIC) == Some("sched_dst") {
                &[names::DELAY]
            } else {
                &[names::REAL_TOPIC, names::REAL_QID, names::DELAY]
            };
        for &reserved in leak_checked {
            assert!(
                !got.properties.contains(reserved),
                "{}: {reserved} leaked",
                p.message_id
            );
        }
    }
    // The restarted bridge read them and skipped each.
    testkit::eventually(
        "the copies skipped as already forwarded",
        Duration::from_secs(60),
        || async {
            let text = scrape(&metrics_addr);
            (messages(&text, "sched", "scheduled_copy_skipped") >= 5.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    assert!(
        ids.contains_key(&due_id),
        "the message due at once came through the topic path"
    );
    assert!(
        !ids.contains_key("SCHED-UNIQ-7"),
        "a pending message of another topic was forwarded"
    );
    // `status` (read-only, while the daemon runs) shows the schedule side.
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["status", "-c"])
        .arg(&config)
        .output()
        .expect("run rmq-bridge status");
    let text = String::from_utf8_lossy(&out.stdout);
    // The 5 entries are forgotten once both paths passed their records and
    // copies (the route's housekeeping), so 0 to 5 are left by now.
    let remembered = text
        .split("scheduled forward: 18 schedule queue checkpoint(s) as route sched#scheduled; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        remembered.is_some_and(|n| n <= 5),
        "status:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(bridge);

    // `reset-route` (daemon stopped) starts the schedule side over too.
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["reset-route", "--route", "sched", "-c"])
        .arg(&config)
        .output()
        .expect("run rmq-bridge reset-route");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("route sched#scheduled: removed 18 schedule-topic checkpoint(s)"),
        "reset-route:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("scheduled_peers took {:?}", started.elapsed());
}
