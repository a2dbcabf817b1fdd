//! Several bridge instances sharing one estate through the 4.x consumer
//! group `[source] consumer_group` (`[instances] coordinate = true`, issue
//! 18), as daemon processes between real 4.x and 5.x peers.
//!
//! Who sent for which queue when comes from each instance's log: a queue is
//! taken with "owning queue" (after the broker granted its lock, before
//! its first send) and given up with "stopped queue" (after its last send
//! settled or was abandoned). A killed instance stops at its kill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rmq_bridge::dev::chaos::{scrape, BridgeProcess};
use rmq_bridge::dev::cluster::{free_port, ClusterOptions, LocalCluster, Peer};
use rmq_bridge::dev::testkit::{self, metric, RouteSpec};
use rmq_bridge::remoting::{RemotingClient, SendRequest};

const QUEUES: i32 = 16;
const STATE_TOPIC: &str = "rmq_bridge_state";
const WINDOW: usize = 64;
/// FIFO groups of the kill test (two per queue).
const FIFO_GROUPS: usize = 32;

struct Estate {
    source: LocalCluster,
    target: LocalCluster,
    client: RemotingClient,
    dir: tempfile::TempDir,
    /// `[source]` keys every instance's config gets besides the defaults.
    source_keys: String,
}

struct Instance {
    name: String,
    dir: PathBuf,
    metrics: String,
    process: Option<BridgeProcess>,
    /// When this run of it was SIGKILLed (its sending ended there).
    killed_at: Vec<f64>,
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Estate {
    async fn new(name: &str, topic: &str, kind: &str) -> Estate {
        let options = ClusterOptions::new(format!("{name}-src"));
        Estate::with_source(options, name, topic, kind).await
    }

    async fn with_source(options: ClusterOptions, name: &str, topic: &str, kind: &str) -> Estate {
        let source = LocalCluster::start(options).expect("4.x peers");
        let target = testkit::start_target_cluster(&format!("{name}-dst")).expect("5.x peers");
        let client = testkit::client();
        testkit::create_topic(&client, &source, topic, QUEUES, None)
            .await
            .expect("4.x topic");
        testkit::create_topic(&client, &target, topic, QUEUES, Some(kind))
            .await
            .expect("5.x topic");
        // Where the instances keep quarantine, journal and queue starts.
        testkit::create_topic(&client, &target, STATE_TOPIC, 2, Some("FIFO"))
            .await
            .expect("5.x estate state topic");
        Estate {
            source,
            target,
            client,
            dir: tempfile::tempdir().expect("tempdir"),
            source_keys: String::new(),
        }
    }

    /// One instance: its own state directory and metrics port, the same
    /// group and routes as every other.
    fn instance(&self, name: &str, topic: &str) -> Instance {
        self.instance_with(name, &[RouteSpec::new(topic, topic, topic, 100)])
    }

    fn instance_with(&self, name: &str, routes: &[RouteSpec]) -> Instance {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("instance dir");
        let metrics = format!("127.0.0.1:{}", free_port().expect("port"));
        let inst = Instance {
            name: name.to_string(),
            dir,
            metrics,
            process: None,
            killed_at: Vec::new(),
        };
        self.configure(&inst, routes);
        inst
    }

    /// (Re)writes an instance's config: a running one reloads it.
    fn configure(&self, inst: &Instance, routes: &[RouteSpec]) {
        let extra = format!(
            "[instances]\ncoordinate = true\n\n[pipeline]\ninflight_per_queue = {WINDOW}\n"
        );
        let path = testkit::write_bridge_config(
            &self.source,
            &self.target,
            &inst.dir,
            &inst.metrics,
            &extra,
            routes,
        )
        .expect("config");
        if !self.source_keys.is_empty() {
            let text = std::fs::read_to_string(&path).expect("config");
            let text = text.replacen(
                "long_poll_ms = 2000\n",
                &format!("long_poll_ms = 2000\n{}", self.source_keys),
                1,
            );
            testkit::write_config(&path, &text).expect("config");
        }
    }
}

impl Estate {
    /// An application's 4.x consumer group, known to the broker (which
    /// refuses offsets of a group it does not know).
    async fn application_group(&self, group: &str) {
        self.client
            .create_subscription_group(&self.source.broker_addr, group)
            .await
            .unwrap_or_else(|e| panic!("create {group}: {e}"));
    }
}

impl Instance {
    fn log(&self) -> PathBuf {
        self.dir.join("bridge.log")
    }
    fn start(&mut self) {
        self.process = Some(BridgeProcess::start(
            Path::new(env!("CARGO_BIN_EXE_rmq-bridge")),
            &self.dir.join("bridge.toml"),
            &self.log(),
        ));
    }
    fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
            self.killed_at.push(now_s());
        }
    }
    fn terminate(&mut self) -> bool {
        self.process.take().map_or(true, |mut p| p.terminate())
    }
    /// Queues this instance owns by its metrics; 0 when it does not answer.
    fn owned(&self, route: &str) -> f64 {
        if self.process.is_none() {
            return 0.0;
        }
        metric(
            &scrape(&self.metrics),
            "rmq_bridge_owned_queues",
            &[("route", route)],
        )
    }
}

/// The owned counts of the running instances once they add up to every
/// queue, each within one of an even split.
async fn wait_even(instances: &[&Instance], route: &str, within: Duration) -> Vec<f64> {
    let running = instances.len();
    testkit::eventually(
        &format!("{running} instances owning all {QUEUES} queues evenly"),
        within,
        || async {
            let owned: Vec<f64> = instances.iter().map(|i| i.owned(route)).collect();
            let total: f64 = owned.iter().sum();
            let even = QUEUES as f64 / running as f64;
            let ok = total == QUEUES as f64 && owned.iter().all(|o| (*o - even).abs() < 1.0);
            ok.then_some(owned)
        },
    )
    .await
    .unwrap_or_else(|e| {
        let owned: Vec<f64> = instances.iter().map(|i| i.owned(route)).collect();
        panic!("{e}; owned now: {owned:?}")
    })
}

/// Waits until every id is in the 5.x topic; returns the copies per id.
async fn landed(estate: &Estate, topic: &str, ids: &[String]) -> BTreeMap<String, usize> {
    landed_on(estate, &estate.target, topic, ids).await
}

/// Waits until every id is in `cluster`'s topic; returns the copies per id.
async fn landed_on(
    estate: &Estate,
    cluster: &LocalCluster,
    topic: &str,
    ids: &[String],
) -> BTreeMap<String, usize> {
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let records = testkit::read_back(&estate.client, cluster, topic)
            .await
            .expect("read back 5.x");
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records {
            *copies.entry(r.message_id().to_string()).or_default() += 1;
        }
        let missing = want.iter().filter(|id| !copies.contains_key(**id)).count();
        if missing == 0 {
            return copies;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never reached {topic}",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (queue, instance, from, to) from the instances' logs: when each sent for
/// which queue. An interval still open ends at the instance's kill, or now.
fn ownership_intervals(instances: &[&Instance]) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for inst in instances {
        let text = std::fs::read_to_string(inst.log()).unwrap_or_default();
        let mut open: BTreeMap<String, f64> = BTreeMap::new();
        let mut last_at = 0.0;
        for line in text.lines() {
            let Some(at) = line_time(line) else { continue };
            // A kill between two lines closes what was open at the kill; a
            // new run after a clean stop (its first line) closes what its
            // predecessor left open at the predecessor's last line.
            if !open.is_empty() {
                let killed = inst
                    .killed_at
                    .iter()
                    .copied()
                    .rfind(|k| *k >= last_at && *k <= at);
                let end = killed.or_else(|| {
                    line.contains("serving Prometheus metrics")
                        .then_some(last_at)
                });
                if let Some(end) = end {
                    for (q, from) in std::mem::take(&mut open) {
                        out.push((q, inst.name.clone(), from, end));
                    }
                }
            }
            last_at = at;
            let Some(queue) = field(line, "queue") else {
                continue;
            };
            if line.contains("owning queue") {
                open.insert(queue, at);
            } else if line.contains("stopped queue") {
                if let Some(from) = open.remove(&queue) {
                    out.push((queue, inst.name.clone(), from, at));
                }
            }
        }
        let end = inst
            .killed_at
            .iter()
            .copied()
            .rfind(|k| *k >= last_at)
            .unwrap_or_else(now_s);
        for (q, from) in open {
            out.push((q, inst.name.clone(), from, end));
        }
    }
    out
}

/// The seconds since the epoch of a log line's RFC 3339 timestamp.
fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let t = chrono_like(stamp)?;
    Some(t)
}

/// Parses `2026-12-03T18:49:22.123456Z` without a date crate.
fn chrono_like(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// `name=value` of a human log line.
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.to_string())
}

/// `RMQ_INSTANCES_LOGS=DIR` keeps each instance's log there (the test's
/// own directory goes with it), with the kill times.
fn keep_logs(instances: &[&Instance]) {
    let Ok(dir) = std::env::var("RMQ_INSTANCES_LOGS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    for inst in instances {
        let _ = std::fs::copy(inst.log(), dir.join(format!("{}.log", inst.name)));
        let kills: Vec<String> = inst.killed_at.iter().map(|k| format!("{k:.3}")).collect();
        let _ = std::fs::write(dir.join(format!("{}.kills", inst.name)), kills.join("\n"));
    }
}

/// No two instances sent for one queue at the same moment.
fn assert_exclusive(intervals: &[(String, String, f64, f64)]) {
    let mut by_queue: BTreeMap<&str, Vec<(&str, f64, f64)>> = BTreeMap::new();
    for (q, who, from, to) in intervals {
        by_queue.entry(q).or_default().push((who, *from, *to));
    }
    for (q, mut spans) in by_queue {
        spans.sort_by(|a, b| a.1.total_cmp(&b.1));
        for w in spans.windows(2) {
            assert!(
                w[1].1 >= w[0].2,
                "queue {q}: {} sent from {:.3} to {:.3} while {} started at {:.3}",
                w[0].0,
                w[0].1,
                w[0].2,
                w[1].0,
                w[1].1
            );
        }
    }
}

/// Three instances forward a 16-queue FIFO estate (32 message groups from
/// an orderly 4.x producer). `RMQ_INSTANCES_KILLS` (default 1) SIGKILLs, each of another instance
/// whose state directory is then deleted, restarted fresh once the
/// survivors took its queues. The note's takeover figures come from
/// `RMQ_INSTANCES_KILLS=10 cargo nextest run --test instances_peers three_ --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_estate_and_survive_a_sigkill_with_its_disk() {
    let kills: usize = testkit::env_num("RMQ_INSTANCES_KILLS")
        .expect("RMQ_INSTANCES_KILLS")
        .unwrap_or(1);
    let topic = "estate";
    let estate = Estate::new("inst-kill", topic, "FIFO").await;
    let mut instances = [
        estate.instance("a", topic),
        estate.instance("b", topic),
        estate.instance("c", topic),
    ];
    for inst in instances.iter_mut() {
        inst.start();
    }
    let owned = wait_even(
        &instances.iter().collect::<Vec<_>>(),
        topic,
        Duration::from_secs(90),
    )
    .await;
    eprintln!("three instances own {owned:?} of {QUEUES} queues");

    // A long run of kills streams slower: the read-back at the end stays small.
    let rate: usize = if kills > 1 { 60 } else { 250 };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = produce_until(&estate, topic, "INST", Some(FIFO_GROUPS), rate, stop_rx);
    let (takeovers, moved_total) = sigkill_rounds(&mut instances, topic, kills, "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let ids = producer.await.expect("producer");
    let copies = landed(&estate, topic, &ids).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies = {
        let again = landed(&estate, topic, &ids).await;
        if again.values().sum::<usize>() >= copies.values().sum::<usize>() {
            again
        } else {
            copies
        }
    };
    let strays: Vec<&String> = copies
        .keys()
        .filter(|id| !ids.contains(*id))
        .take(5)
        .collect();
    assert!(strays.is_empty(), "strays in the 5.x topic: {strays:?}");
    assert_fifo_order(&estate, topic, &ids).await;
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    // What a killed instance had admitted beyond its durable checkpoint
    // (the window), plus what its durable position had moved past its last
    // write to the group (a quarter window, or 5 s of a slow queue); the
    // rebalances between kills hand queues over without duplicates.
    let per_queue_rate = rate as f64 / QUEUES as f64;
    let bound = moved_total * (WINDOW + WINDOW / 4 + (per_queue_rate * 5.0) as usize);
    let mut sorted = takeovers.clone();
    sorted.sort();
    eprintln!(
        "instances: {} messages, {kills} SIGKILL(s) moving {moved_total} queues, {duplicates} duplicates (bound {bound}), \
         takeover median {:?} max {:?} (all: {takeovers:?})",
        ids.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound {bound}"
    );
    // A lock lives 60 s on the broker after the killed instance's last
    // renewal; the survivors rebalance every 10 s and on member changes.
    for t in &takeovers {
        assert!(
            *t <= Duration::from_secs(60 + 10 + 15),
            "takeover took {t:?}"
        );
    }
    keep_logs(&instances.iter().collect::<Vec<_>>());
    assert_exclusive(&ownership_intervals(&instances.iter().collect::<Vec<_>>()));
    for inst in instances.iter_mut() {
        assert!(inst.terminate(), "{} stops cleanly", inst.name);
    }
}

/// `kills` rounds: SIGKILL one instance in turn (its state directory
/// deleted), wait until the survivors own every queue evenly, start it
/// again (but after the last kill). Returns each takeover's time and how
/// many queues the killed instances held in all.
async fn sigkill_rounds(
    instances: &mut [Instance],
    topic: &str,
    kills: usize,
    label: &str,
) -> (Vec<Duration>, usize) {
    let mut takeovers = Vec::new();
    let mut moved_total = 0usize;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let victim = k % instances.len();
        let moved = instances[victim].owned(topic);
        moved_total += moved as usize;
        instances[victim].kill9();
        let killed = Instant::now();
        std::fs::remove_dir_all(instances[victim].dir.join("checkpoints"))
            .expect("delete the killed instance's state directory");
        let survivors: Vec<&Instance> = instances
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, inst)| inst)
            .collect();
        let owned = wait_even(&survivors, topic, Duration::from_secs(150)).await;
        let takeover = killed.elapsed();
        eprintln!(
            "{label}kill {}: {} moved {moved} queues; takeover {takeover:?}; survivors own {owned:?}",
            k + 1,
            instances[victim].name
        );
        takeovers.push(takeover);
        if k + 1 < kills {
            instances[victim].start();
            wait_even(
                &instances.iter().collect::<Vec<_>>(),
                topic,
                Duration::from_secs(90),
            )
            .await;
        }
    }
    (takeovers, moved_total)
}

/// Message i belongs to group i % FIFO_GROUPS as its (i / FIFO_GROUPS)th:
/// in 5.x (queue, offset) order each group stays in one queue and the first
/// copy of each message comes after the first copies of the group's earlier
/// ones (a re-send after a takeover is a duplicate, not a reordering).
async fn assert_fifo_order(estate: &Estate, topic: &str, ids: &[String]) {
    assert_fifo_order_on(estate, &estate.target, topic, ids).await
}

async fn assert_fifo_order_on(
    estate: &Estate,
    cluster: &LocalCluster,
    topic: &str,
    ids: &[String],
) {
    let index: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut records = testkit::read_back(&estate.client, cluster, topic)
        .await
        .expect("read back");
    records.sort_by_key(|r| (r.queue_id, r.queue_offset));
    let mut next: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue_of: BTreeMap<usize, i32> = BTreeMap::new();
    for r in &records {
        let Some(&i) = index.get(r.message_id()) else {
            continue;
        };
        let (group, seq) = (i % FIFO_GROUPS, i / FIFO_GROUPS);
        let q = *queue_of.entry(group).or_insert(r.queue_id);
        assert_eq!(
            q, r.queue_id,
            "group g{group} in queues {q} and {}",
            r.queue_id
        );
        let want = next.entry(group).or_insert(0);
        assert!(
            seq <= *want,
            "group g{group}: message {seq} landed (queue {} offset {}) before message {want}",
            r.queue_id,
            r.queue_offset
        );
        if seq == *want {
            *want += 1;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

fn client_id_of(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}@rmq-bridge@{pid}")
}

/// A stream that runs until `stop` turns true; returns its ids.
fn produce_until(
    estate: &Estate,
    topic: &str,
    label: &'static str,
    groups: Option<usize>,
    rate: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    produce_to(&estate.source, topic, label, groups, rate, stop)
}

/// [`produce_until`] to `cluster`'s broker (over Remoting).
fn produce_to(
    cluster: &LocalCluster,
    topic: &str,
    label: &'static str,
    groups: Option<usize>,
    rate: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let broker = cluster.broker_addr.clone();
    let topic = topic.to_string();
    tokio::spawn(async move {
        let mut client = testkit::client();
        let mut ids = Vec::new();
        let started = Instant::now();
        let mut i = 0usize;
        while !*stop.borrow() {
            let id = format!("{label}{i:0width$}", width = 32 - label.len());
            let mut req = SendRequest::new(
                "instances_producer",
                &topic,
                (i as i32) % QUEUES,
                format!("body-{i}").into_bytes(),
            );
            req.properties.insert("UNIQ_KEY", id.clone());
            if let Some(groups) = groups {
                // An orderly 4.x producer: group g always in queue g % QUEUES.
                req.properties
                    .insert("__SHARDINGKEY", format!("g{}", i % groups));
            }
            match client.send_message(&broker, &req).await {
                Ok(_) => {
                    ids.push(id);
                    i += 1;
                }
                Err(e) => {
                    eprintln!("producer retry: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    client = testkit::client();
                    continue;
                }
            }
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        ids
    })
}

/// Scale from one instance to three, pause one longer than its lock and
/// the brokers' member expiry, roll-restart all three, restart the 4.x
/// broker, scale back to one:
/// 0 lost; no two instances send for a queue at once (the logs); the paused
/// one, resumed, sends nothing for the queues it held until it owns them
/// again (the 5.x records, stamped with the instance that sent them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_long_pause_and_a_rolling_restart_keep_one_sender_per_queue() {
    let topic = "scale";
    let mut estate = Estate::new("inst-scale", topic, "NORMAL").await;
    let mut a = estate.instance("a", topic);
    let mut b = estate.instance("b", topic);
    let mut c = estate.instance("c", topic);
    for inst in [&a, &b, &c] {
        // Provenance names the sending instance in each 5.x record.
        let path = inst.dir.join("bridge.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replacen(
            "[pipeline]",
            "[translate]\nprovenance = true\n\n[pipeline]",
            1,
        );
        testkit::write_config(&path, &text).expect("config");
    }
    a.start();
    wait_even(&[&a], topic, Duration::from_secs(60)).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = produce_until(&estate, topic, "SCALE", None, 120, stop_rx);

    // 1 -> 3.
    b.start();
    c.start();
    wait_even(&[&a, &b, &c], topic, Duration::from_secs(90)).await;

    // c paused past its lease (30 s), the broker's lock (60 s) and the
    // broker's expiry of a silent member (about 120 s): a and b take its
    // queues meanwhile.
    let c_pid = c.process.as_ref().and_then(|p| p.pid()).expect("c runs");
    // With the 5.x proxy down, c's sends are retrying when it is paused:
    // resumed, their backoff ends at once, and only the fence keeps them
    // from sending for queues that are no longer c's.
    estate.target.stop_proxy();
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(c_pid, "STOP");
    let paused_at = now_s();
    estate.target.start_proxy().expect("5.x proxy back");
    wait_even(&[&a, &b], topic, Duration::from_secs(200)).await;
    signal(c_pid, "CONT");
    let resumed_at = now_s();
    eprintln!("c paused {:.0} s", resumed_at - paused_at);
    wait_even(&[&a, &b, &c], topic, Duration::from_secs(120)).await;

    // A rolling restart of all three (an upgrade drill).
    for inst in [&mut a, &mut b, &mut c] {
        assert!(inst.terminate(), "{} stops cleanly", inst.name);
        inst.start();
    }
    wait_even(&[&a, &b, &c], topic, Duration::from_secs(120)).await;
    // The 4.x broker restarts: its lock table is empty and its member list
    // fills again heartbeat by heartbeat; nobody may take a queue whose owner
    // still sends under its lease.
    estate.source.restart_broker().expect("4.x broker restart");
    tokio::time::sleep(Duration::from_secs(20)).await;
    wait_even(&[&a, &b, &c], topic, Duration::from_secs(120)).await;
    // 3 -> 1.
    assert!(b.terminate());
    assert!(c.terminate());
    wait_even(&[&a], topic, Duration::from_secs(90)).await;
    let _ = stop_tx.send(true);
    let ids = producer.await.expect("producer");
    let copies = landed(&estate, topic, &ids).await;
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "scale test: {} messages, 0 lost, {duplicates} duplicates",
        ids.len()
    );

    // Who sent what, from the logs; c's runs that held queues across the
    // pause end at the pause (it was frozen), and what it did after the
    // pause is checked from the records below.
    let mut intervals = ownership_intervals(&[&a, &b, &c]);
    let mut held_at_pause = BTreeSet::new();
    for (q, who, from, to) in intervals.iter_mut() {
        if who == "c" && *from < paused_at && *to > paused_at {
            held_at_pause.insert(q.clone());
            *to = paused_at;
        }
    }
    assert!(!held_at_pause.is_empty(), "c held queues when paused");
    assert_exclusive(&intervals);

    // c, resumed, sent nothing for the queues it held before it owned them
    // again (its lease ended during the pause: the fence holds its sends).
    let c_id = client_id_of(c_pid);
    let c_log = std::fs::read_to_string(c.log()).unwrap_or_default();
    let mut reowned: BTreeMap<String, f64> = BTreeMap::new();
    for line in c_log.lines() {
        if !line.contains("owning queue") {
            continue;
        }
        if let (Some(at), Some(q)) = (line_time(line), field(line, "queue")) {
            if at > resumed_at {
                reowned.entry(q).or_insert(at);
            }
        }
    }
    let records = testkit::read_back(&estate.client, &estate.target, topic)
        .await
        .expect("read back 5.x");
    let mut after_resume = 0;
    for r in &records {
        if r.properties.get("bridge_instance") != Some(c_id.as_str()) {
            continue;
        }
        let (Some(broker), Some(qid)) = (
            r.properties.get("bridge_source_broker"),
            r.properties.get("bridge_source_queue"),
        ) else {
            continue;
        };
        let queue = format!("{broker}:{qid}");
        let stored = r.store_timestamp_ms as f64 / 1000.0;
        if !held_at_pause.contains(&queue) || stored <= resumed_at {
            continue;
        }
        after_resume += 1;
        let owns_from = reowned.get(&queue).copied().unwrap_or(f64::MAX);
        assert!(
            stored >= owns_from,
            "c sent {} for {queue} at {stored:.3}, after its resume at {resumed_at:.3} and before it owned the queue again at {owns_from:.3}",
            r.message_id()
        );
    }
    eprintln!("c's records for its former queues after the resume: {after_resume} (all after it owned them again)");
    assert!(a.terminate());
}

fn outcome(inst: &Instance, route: &str, outcome: &str) -> f64 {
    metric(
        &scrape(&inst.metrics),
        "rmq_bridge_messages_total",
        &[("route", route), ("outcome", outcome)],
    )
}

/// Waits until `inst` counted `n` messages of `route` with `outcome`.
async fn wait_outcome(inst: &Instance, route: &str, what: &str, n: usize, within: Duration) {
    testkit::eventually(
        &format!("{} counted {n} {what} of {route}", inst.name),
        within,
        || {
            let counted = outcome(inst, route, what);
            async move { (counted >= n as f64).then_some(()) }
        },
    )
    .await
    .expect("counted");
}

/// Waits until `inst` forwarded or held `n` messages of `route`.
async fn wait_decided(inst: &Instance, route: &str, n: usize) {
    testkit::eventually(
        &format!("{} decided {n} of {route}", inst.name),
        Duration::from_secs(60),
        || {
            let decided = outcome(inst, route, "skipped") + outcome(inst, route, "forwarded");
            async move { (decided >= n as f64).then_some(()) }
        },
    )
    .await
    .expect("decided");
}

/// Waits until `inst` reloaded `route` at `percent`.
async fn wait_percent(inst: &Instance, route: &str, percent: u8) {
    testkit::eventually(
        &format!("{} at {percent} %", inst.name),
        Duration::from_secs(30),
        || {
            let now = metric(
                &scrape(&inst.metrics),
                "rmq_bridge_cutover_percent",
                &[("route", route)],
            );
            async move { (now == percent as f64).then_some(()) }
        },
    )
    .await
    .expect("reload");
}

/// Sends `count` messages `LABELn` to `topic` round-robin over its queues.
async fn send_numbered(
    estate: &Estate,
    topic: &str,
    queues: i32,
    label: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let mut req = SendRequest::new(
            "instances_producer",
            topic,
            (i as i32) % queues,
            format!("body-{i}").into_bytes(),
        );
        req.properties
            .insert("UNIQ_KEY", format!("{label}{i:0width$}", width = 8));
        estate
            .client
            .send_message(&estate.source.broker_addr, &req)
            .await
            .expect("send to 4.x");
    }
}

/// Waits until route `topic` (named as its topic) committed every queue of
/// `topic` to its end on 4.x in its group, and the instance's estate
/// records are all on 5.x.
async fn wait_settled(estate: &Estate, inst: &Instance, topic: &str, queues: i32) {
    let group = rmq_bridge::config::route_position_group("rmq_bridge", topic);
    testkit::eventually(
        &format!("{topic} committed to its end and the estate records shared"),
        Duration::from_secs(60),
        || async {
            for q in 0..queues {
                let broker = &estate.source.broker_addr;
                let max = estate.client.get_max_offset(broker, topic, q).await.ok()?;
                let committed = estate
                    .client
                    .query_consumer_offset(broker, &group, topic, q)
                    .await
                    .ok()??;
                if committed < max {
                    return None;
                }
            }
            let pending = metric(
                &scrape(&inst.metrics),
                "rmq_bridge_state_pending_records",
                &[],
            );
            (pending == 0.0).then_some(())
        },
    )
    .await
    .expect("settled");
}

/// Issue 18, item 4: one instance's state directory is the only copy of
/// nothing. Instance a holds `pay` at 0 %, moves it to 50 %, quarantines
/// two messages of `misc` (a DELAY topic on 5.x refuses plain ones), then
/// dies with its disk. b starts on an empty disk: `verify` from b's side
/// still reads pay from the route's first offset under every edit a made
/// (the route start and the cutover journal come from the 5.x state topic),
/// and `quarantine list` still names what a held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estate_records_survive_the_loss_of_an_instance_disk() {
    let topic = "pay";
    let estate = Estate::new("inst-disk", topic, "NORMAL").await;
    testkit::create_topic(&estate.client, &estate.source, "misc", 1, None)
        .await
        .expect("4.x misc");
    testkit::create_topic(
        &estate.client,
        &estate.target,
        "misc_delay",
        1,
        Some("DELAY"),
    )
    .await
    .expect("5.x misc_delay");
    let routes = |percent| {
        vec![
            RouteSpec::new(topic, topic, topic, percent),
            RouteSpec::new("misc", "misc", "misc_delay", 100),
        ]
    };
    let mut a = estate.instance_with("a", &routes(0));
    a.start();
    wait_even(&[&a], topic, Duration::from_secs(90)).await;
    send_numbered(&estate, topic, QUEUES, "DISKA", 0..60).await;
    send_numbered(&estate, "misc", 1, "MISC", 0..2).await;
    testkit::eventually(
        "a held pay and quarantined misc",
        Duration::from_secs(60),
        || {
            let held =
                outcome(&a, topic, "skipped") >= 60.0 && outcome(&a, "misc", "quarantined") >= 2.0;
            async move { held.then_some(()) }
        },
    )
    .await
    .expect("a's first phase");
    estate.configure(&a, &routes(50));
    wait_percent(&a, topic, 50).await;
    send_numbered(&estate, topic, QUEUES, "DISKB", 60..120).await;
    wait_decided(&a, topic, 120).await;
    wait_settled(&estate, &a, topic, QUEUES).await;
    a.kill9();
    std::fs::remove_dir_all(a.dir.join("checkpoints")).expect("delete a's state directory");

    // b moves pay to 100 % and writes its progress back to the 4.x group
    // pay_app: a's journal (from the state topic) says every queue held
    // messages on 4.x only from offset 0, so the group must not move.
    estate.application_group("pay_app").await;
    let mut b_routes = routes(100);
    b_routes[0] = RouteSpec::new(topic, topic, topic, 100).with("commit_as_group", "\"pay_app\"");
    let mut b = estate.instance_with("b", &b_routes);
    b.start();
    wait_even(&[&b], topic, Duration::from_secs(150)).await;
    send_numbered(&estate, topic, QUEUES, "DISKC", 120..160).await;
    wait_decided(&b, topic, 40).await;
    // Two write-back rounds (every 5 s) after b's queues are at their end.
    tokio::time::sleep(Duration::from_secs(12)).await;
    keep_logs(&[&a, &b]);
    for q in 0..QUEUES {
        let written = estate
            .client
            .query_consumer_offset(&estate.source.broker_addr, "pay_app", topic, q)
            .await
            .expect("query pay_app's offset");
        assert!(
            written.unwrap_or(0) <= 0,
            "queue {q}: pay_app moved to {written:?} past messages a held on 4.x only"
        );
    }
    assert!(b.terminate(), "b stops cleanly");

    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let config = b.dir.join("bridge.toml");
    let (_, report) = testkit::verify_json(
        bin,
        &config,
        &["--route", topic],
        &b.dir.join("verify.json"),
    )
    .unwrap_or_else(|e| panic!("verify from b's side: {e}"));
    let totals = &report["totals"];
    // All 160 read from offset 0 (a's route start), the first 60 held by
    // a's 0 %, the next 60 judged at 50 % and the rest at 100 %: a journal
    // without a's entries would expect some of the first 60 (missing) or
    // start at b's takeover.
    assert_eq!(totals["read"], 160, "{report:#}");
    assert_eq!(totals["missing"], 0, "{report:#}");
    assert_eq!(totals["found"], totals["expected"], "{report:#}");
    let skipped = totals["skipped"].as_u64().unwrap_or(0);
    let expected = totals["expected"].as_u64().unwrap_or(0);
    assert!(skipped >= 60 && expected > 0, "{report:#}");
    assert_eq!(skipped + expected, 160, "{report:#}");

    let config = config.to_string_lossy();
    let (ok, listed) = testkit::run_cli(
        bin,
        &["quarantine", "list", "-c", &config, "--route", "misc"],
    );
    assert!(ok, "quarantine list:\n{listed}");
    for id in ["MISC00000000", "MISC00000001"] {
        assert!(listed.contains(id), "{id} lost with a's disk:\n{listed}");
    }
}

/// Issue 18, item 4, the schedule side: instance a forwards the messages
/// pending in the 4.x schedule topic early, then dies with its disk. b,
/// on an empty disk, takes the schedule queues over from the positions a
/// shared (not from their start), forwards what is pending since, and
/// skips the broker's copies of everything either instance forwarded (a's
/// confirmations come from the 5.x state topic): every message once in
/// 5.x, none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_side_survives_the_loss_of_an_instance_disk() {
    // Level 4: 30 s, level 5: 2 min (a's messages are due after b took
    // over the topic queues, so b meets their copies).
    const LEVELS: &str = "1s 5s 10s 30s 2m";
    const EACH: usize = 8;
    let topic = "sched";
    let options =
        ClusterOptions::new("inst-sched-src").broker_property("messageDelayLevel", LEVELS);
    let mut estate = Estate::with_source(options, "inst-sched", topic, "DELAY").await;
    estate.source_keys = format!("delay_levels = \"{LEVELS}\"\n");
    let route = RouteSpec::new(topic, topic, topic, 100).with("scheduled", "\"forward\"");
    let side = format!("{topic}#scheduled");
    let send_delayed = |label: &'static str, level: i32| {
        let estate = &estate;
        async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let id = format!("{label}{i:08}");
                let mut req = SendRequest::new(
                    "instances_producer",
                    topic,
                    i as i32 % QUEUES,
                    format!("body-{id}").into_bytes(),
                );
                req.properties.insert("UNIQ_KEY", id.clone());
                req.properties.insert("DELAY", level.to_string());
                estate
                    .client
                    .send_message(&estate.source.broker_addr, &req)
                    .await
                    .expect("send to 4.x");
                ids.push(id);
            }
            ids
        }
    };
    // Pending before any instance runs: the schedule topic is routed.
    let mut ids = send_delayed("SCHEDA", 5).await;
    let mut a = estate.instance_with("a", std::slice::from_ref(&route));
    a.start();
    wait_outcome(&a, &side, "forwarded", EACH, Duration::from_secs(90)).await;
    // The position (written at least every 5 s) and the confirmations on 5.x.
    tokio::time::sleep(Duration::from_secs(7)).await;
    testkit::eventually("a's estate records shared", Duration::from_secs(30), || {
        let pending = metric(&scrape(&a.metrics), "rmq_bridge_state_pending_records", &[]);
        async move { (pending == 0.0).then_some(()) }
    })
    .await
    .expect("a's records");
    a.kill9();
    std::fs::remove_dir_all(a.dir.join("checkpoints")).expect("delete a's state directory");

    let mut b = estate.instance_with("b", std::slice::from_ref(&route));
    b.start();
    wait_even(&[&b], topic, Duration::from_secs(150)).await;
    testkit::eventually(
        "b owns the schedule queues",
        Duration::from_secs(60),
        || {
            let owned = b.owned(&side);
            async move { (owned >= 1.0).then_some(()) }
        },
    )
    .await
    .expect("b's schedule side");
    ids.extend(send_delayed("SCHEDB", 4).await);
    wait_outcome(&b, &side, "forwarded", EACH, Duration::from_secs(60)).await;
    // Every copy came due and met b's topic path, which skipped it.
    let total = ids.len() as f64;
    testkit::eventually("b met every copy", Duration::from_secs(180), || {
        let skipped = outcome(&b, topic, "scheduled_copy_skipped");
        let taken = outcome(&b, topic, "forwarded");
        async move { (skipped + taken >= total).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| {
        keep_logs(&[&a, &b]);
        panic!("{e}")
    });
    keep_logs(&[&a, &b]);
    let log = std::fs::read_to_string(b.log()).unwrap_or_default();
    // A copy forwarded again goes as DELAY clamped to the earliest time
    // 5.x accepts: let it arrive before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let landed = landed(&estate, topic, &ids).await;
    assert!(b.terminate(), "b stops cleanly");

    // b re-sent nothing a had sent: one copy of each in 5.x.
    let twice: Vec<_> = landed.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "not exactly once in 5.x: {twice:?}");
    // b took the level-5 queue over from a's position, not from its start.
    let took_over: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("owning queue") && l.contains(&format!("route={side}")))
        .filter(|l| field(l, "queue").is_some_and(|q| q.ends_with(":4")))
        .collect();
    assert!(
        !took_over.is_empty()
            && took_over
                .iter()
                .all(|l| field(l, "offset").as_deref() == Some(&EACH.to_string())),
        "b's takeover of the level-5 schedule queue:\n{took_over:#?}"
    );
}

/// Issue 18, item 4 and SPEC 4's write-back: `commit_as_group` under
/// coordinate judges a queue's history by every instance's cutover journal
/// as it is now, not by this instance's own (nor by what the state topic
/// held when it started). b starts at 100 % writing progress back to the
/// 4.x group pay_app; a's config is then edited to 50 % (a rolling config
/// push reaches a first) and a holds half of its queues' messages on 4.x
/// only. a dies; b takes a's queues over past those messages and must not
/// move pay_app past them: a rollback to 4.x consumers would skip what
/// 5.x never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_writes_back_no_further_than_what_another_instance_held() {
    let topic = "pay";
    let estate = Estate::new("inst-wb", topic, "NORMAL").await;
    let at = |percent| vec![RouteSpec::new(topic, topic, topic, percent)];
    let writing_back =
        vec![RouteSpec::new(topic, topic, topic, 100).with("commit_as_group", "\"pay_app\"")];
    estate.application_group("pay_app").await;
    let mut a = estate.instance_with("a", &at(100));
    let mut b = estate.instance_with("b", &writing_back);
    a.start();
    b.start();
    wait_even(&[&a, &b], topic, Duration::from_secs(150)).await;
    estate.configure(&a, &at(50));
    wait_percent(&a, topic, 50).await;
    const PER_QUEUE: usize = 4;
    let count = QUEUES as usize * PER_QUEUE;
    send_numbered(&estate, topic, QUEUES, "WB", 0..count).await;
    testkit::eventually(
        "a and b decided every message",
        Duration::from_secs(60),
        || {
            let decided: f64 = [&a, &b]
                .iter()
                .map(|i| outcome(i, topic, "skipped") + outcome(i, topic, "forwarded"))
                .sum();
            async move { (decided >= count as f64).then_some(()) }
        },
    )
    .await
    .expect("decided");
    // a's positions (past what it held) in the group, its journal on 5.x.
    wait_settled(&estate, &a, topic, QUEUES).await;
    a.kill9();
    wait_even(&[&b], topic, Duration::from_secs(150)).await;
    // Two write-back rounds (every 5 s) with every queue at its end.
    tokio::time::sleep(Duration::from_secs(12)).await;
    keep_logs(&[&a, &b]);
    let a_queues: BTreeSet<i32> = ownership_intervals(&[&a])
        .into_iter()
        .filter(|(_, _, _, to)| a.killed_at.iter().any(|k| (k - to).abs() < 1.0))
        .filter_map(|(q, _, _, _)| q.rsplit(':').next()?.parse().ok())
        .collect();
    assert_eq!(
        a_queues.len(),
        QUEUES as usize / 2,
        "a's queues at its kill"
    );
    let mut held_by_a = 0;
    for q in 0..QUEUES {
        let written = estate
            .client
            .query_consumer_offset(&estate.source.broker_addr, "pay_app", topic, q)
            .await
            .expect("query pay_app's offset");
        if !a_queues.contains(&q) {
            // b's own queues, at 100 % all along: written to their end (the
            // write-back runs at all).
            assert_eq!(written, Some(PER_QUEUE as i64), "b's queue {q}");
            continue;
        }
        // Message i went to queue i % QUEUES at offset i / QUEUES; a held it
        // on 4.x only when its bucket was 50 or more.
        let first_held = (0..PER_QUEUE).find(|k| {
            let i = q as usize + k * QUEUES as usize;
            rmq_bridge::cutover::bucket(&format!("WB{i:08}")) >= 50
        });
        let Some(first_held) = first_held else {
            continue;
        };
        held_by_a += 1;
        assert!(
            written.unwrap_or(0) <= first_held as i64,
            "queue {q}: pay_app moved to {written:?} past offset {first_held}, which a held on 4.x only"
        );
    }
    assert!(held_by_a > 0, "a held nothing; the test proves nothing");
    assert!(b.terminate(), "b stops cleanly");
}

/// Issue 30, item 1: two routes reading one topic each keep a position of
/// their own. `pay` forwards 100 messages alone; `audit` is added on the
/// same topic and must start at its own start (earliest), not at `pay`'s
/// position; `late` waits for its 5.x topic while the others forward 100
/// more, and after a restart and the topic's creation it must forward all
/// 200 from where it stood, not from the others' position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_on_one_topic_each_keep_their_own_position() {
    let topic = "pay";
    let estate = Estate::new("inst-tworoutes", topic, "NORMAL").await;
    testkit::create_topic(
        &estate.client,
        &estate.target,
        "audit",
        QUEUES,
        Some("NORMAL"),
    )
    .await
    .expect("5.x audit");
    let pay = RouteSpec::new(topic, topic, topic, 100);
    let mut a = estate.instance_with("a", std::slice::from_ref(&pay));
    a.start();
    wait_even(&[&a], topic, Duration::from_secs(90)).await;
    let first: Vec<String> = (0..100).map(|i| format!("TWOA{i:08}")).collect();
    send_numbered(&estate, topic, QUEUES, "TWOA", 0..100).await;
    wait_outcome(&a, topic, "forwarded", 100, Duration::from_secs(60)).await;
    wait_settled(&estate, &a, topic, QUEUES).await;

    // A route added on the topic: its own start, not pay's position.
    let all = [
        pay.clone(),
        RouteSpec::new("audit", topic, "audit", 100),
        RouteSpec::new("late", topic, "late", 100),
    ];
    estate.configure(&a, &all);
    wait_even(&[&a], "audit", Duration::from_secs(90)).await;
    wait_even(&[&a], "late", Duration::from_secs(60)).await;
    let second: Vec<String> = (100..200).map(|i| format!("TWOB{i:08}")).collect();
    send_numbered(&estate, topic, QUEUES, "TWOB", 100..200).await;
    let both: Vec<String> = first.iter().chain(&second).cloned().collect();
    let copies = landed(&estate, "audit", &both).await;
    assert_eq!(copies.len(), 200, "audit got every message of the topic");
    landed(&estate, topic, &both).await;
    // Let pay's positions (and whatever late may have written) reach 4.x.
    wait_settled(&estate, &a, topic, QUEUES).await;
    assert!(a.terminate(), "a stops cleanly");

    // late's topic appears; after the restart it forwards from its own
    // position (offset 0 of every queue).
    testkit::create_topic(
        &estate.client,
        &estate.target,
        "late",
        QUEUES,
        Some("NORMAL"),
    )
    .await
    .expect("5.x late");
    a.start();
    let copies = landed(&estate, "late", &both).await;
    keep_logs(&[&a]);
    assert_eq!(copies.len(), 200, "late got every message of the topic");
    assert!(a.terminate(), "a stops cleanly");
}

/// The `verify` line of `check --decommission` (status, detail).
fn verify_line(report: &str) -> Option<(String, String)> {
    report
        .lines()
        .filter(|l| l.starts_with("GREEN") || l.starts_with("RED"))
        .find(|l| l.contains(" verify "))
        .map(|l| (l[..5].trim().to_string(), l.to_string()))
}

/// Issue 30, item 2: instance a forwards 100 messages, `verify` finds them
/// clean, a stops; instance b forwards 200 more. The report read with a's
/// config must not call a's verdict coverage of the estate: it judges each
/// queue by the estate's position, which b moved past a's verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_of_one_instance_does_not_cover_another_instances_progress() {
    let topic = "cov";
    let estate = Estate::new("inst-cov", topic, "NORMAL").await;
    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let mut a = estate.instance("a", topic);
    a.start();
    wait_even(&[&a], topic, Duration::from_secs(90)).await;
    send_numbered(&estate, topic, QUEUES, "COVA", 0..100).await;
    wait_outcome(&a, topic, "forwarded", 100, Duration::from_secs(60)).await;
    wait_settled(&estate, &a, topic, QUEUES).await;
    assert!(a.terminate(), "a stops cleanly");
    let a_config = a.dir.join("bridge.toml");
    let (_, verdict) = testkit::verify_json(bin, &a_config, &[], &a.dir.join("verify.json"))
        .unwrap_or_else(|e| panic!("verify from a: {e}"));
    assert_eq!(verdict["totals"]["missing"], 0, "{verdict:#}");
    let a_cfg = a_config.to_string_lossy().to_string();
    let (_, report) = testkit::run_cli(bin, &["check", "-c", &a_cfg, "--decommission"]);
    let line = verify_line(&report).unwrap_or_else(|| panic!("no verify line:\n{report}"));
    assert_eq!(
        line.0, "GREEN",
        "a's own verdict covers a's progress:\n{report}"
    );

    let mut b = estate.instance("b", topic);
    b.start();
    wait_even(&[&b], topic, Duration::from_secs(150)).await;
    send_numbered(&estate, topic, QUEUES, "COVB", 100..300).await;
    wait_outcome(&b, topic, "forwarded", 200, Duration::from_secs(60)).await;
    wait_settled(&estate, &b, topic, QUEUES).await;
    assert!(b.terminate(), "b stops cleanly");

    let (_, report) = testkit::run_cli(bin, &["check", "-c", &a_cfg, "--decommission"]);
    keep_logs(&[&a, &b]);
    let line = verify_line(&report).unwrap_or_else(|| panic!("no verify line:\n{report}"));
    assert_eq!(
        line.0, "RED",
        "a's verdict (100 messages) called coverage after b forwarded 200 more:\n{report}"
    );
    assert!(line.1.contains("stale"), "{report}");
    // A verify run now covers the estate, and the line turns green.
    let (_, verdict) = testkit::verify_json(bin, &a_config, &[], &a.dir.join("verify2.json"))
        .unwrap_or_else(|e| panic!("verify from a: {e}"));
    assert_eq!(verdict["totals"]["found"], 300, "{verdict:#}");
    let (_, report) = testkit::run_cli(bin, &["check", "-c", &a_cfg, "--decommission"]);
    let line = verify_line(&report).unwrap_or_else(|| panic!("no verify line:\n{report}"));
    assert_eq!(line.0, "GREEN", "{report}");
}

/// Issue 30, item 7: instances share reverse routes through the same group
/// on the 5.x brokers. Three instances carry a reverse route of a FIFO
/// stream (32 groups) produced on 5.x; one is SIGKILLed and its state
/// directory deleted (`RMQ_INSTANCES_KILLS` times, default 1): every message
/// reaches 4.x, each group in order in one 4.x queue, no two instances send
/// for a queue at once, and the survivors take the queues over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_reverse_route_and_survive_a_sigkill_with_its_disk() {
    let kills: usize = testkit::env_num("RMQ_INSTANCES_KILLS")
        .expect("RMQ_INSTANCES_KILLS")
        .unwrap_or(1);
    let topic = "rev";
    let estate = Estate::new("inst-rev", topic, "FIFO").await;
    let route = [RouteSpec::new(topic, topic, topic, 100).with("direction", "\"reverse\"")];
    let mut instances = [
        estate.instance_with("a", &route),
        estate.instance_with("b", &route),
        estate.instance_with("c", &route),
    ];
    for inst in instances.iter_mut() {
        inst.start();
    }
    let owned = wait_even(
        &instances.iter().collect::<Vec<_>>(),
        topic,
        Duration::from_secs(90),
    )
    .await;
    eprintln!("three instances own {owned:?} of {QUEUES} 5.x queues");

    let rate: usize = if kills > 1 { 60 } else { 250 };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = produce_to(
        &estate.target,
        topic,
        "REV",
        Some(FIFO_GROUPS),
        rate,
        stop_rx,
    );
    let (takeovers, moved_total) = sigkill_rounds(&mut instances, topic, kills, "reverse ").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let ids = producer.await.expect("producer");
    let copies = landed_on(&estate, &estate.source, topic, &ids).await;
    keep_logs(&instances.iter().collect::<Vec<_>>());
    let strays: Vec<&String> = copies
        .keys()
        .filter(|id| !ids.contains(*id))
        .take(5)
        .collect();
    assert!(strays.is_empty(), "strays in the 4.x topic: {strays:?}");
    assert_fifo_order_on(&estate, &estate.source, topic, &ids).await;
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let per_queue_rate = rate as f64 / QUEUES as f64;
    let bound = moved_total * (WINDOW + WINDOW / 4 + (per_queue_rate * 5.0) as usize);
    let mut sorted = takeovers.clone();
    sorted.sort();
    eprintln!(
        "reverse instances: {} messages, {kills} SIGKILL(s) moving {moved_total} queues, {duplicates} duplicates (bound {bound}), \
         takeover median {:?} max {:?} (all: {takeovers:?})",
        ids.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound {bound}"
    );
    for t in &takeovers {
        assert!(
            *t <= Duration::from_secs(60 + 10 + 15),
            "takeover took {t:?}"
        );
    }
    assert_exclusive(&ownership_intervals(&instances.iter().collect::<Vec<_>>()));
    for inst in instances.iter_mut() {
        assert!(inst.terminate(), "{} stops cleanly", inst.name);
    }
}

/// Issue 30, item 4: under coordinate `reset-route` refuses (it would not
/// make the route start over), and the remedy it names works: with the
/// instance stopped, the route's group moved back on the 4.x brokers and
/// `reset-route --local-only`, the next start sends the topic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_route_under_coordinate_refuses_and_its_remedy_re_sends() {
    let topic = "reset";
    let estate = Estate::new("inst-reset", topic, "NORMAL").await;
    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let mut a = estate.instance("a", topic);
    a.start();
    wait_even(&[&a], topic, Duration::from_secs(90)).await;
    let ids: Vec<String> = (0..50).map(|i| format!("RESET{i:08}")).collect();
    send_numbered(&estate, topic, QUEUES, "RESET", 0..50).await;
    landed(&estate, topic, &ids).await;
    wait_settled(&estate, &a, topic, QUEUES).await;
    assert!(a.terminate(), "a stops cleanly");

    let config = a.dir.join("bridge.toml").to_string_lossy().to_string();
    let (ok, out) = testkit::run_cli(bin, &["reset-route", "-c", &config, "--route", topic]);
    let group = rmq_bridge::config::route_position_group("rmq_bridge", topic);
    assert!(!ok, "reset-route under coordinate must refuse:\n{out}");
    assert!(
        out.contains(&group) && out.contains("--local-only"),
        "{out}"
    );
    // The remedy: the group back to the start on 4.x (what mqadmin
    // resetOffsetByTime writes), then --local-only.
    for q in 0..QUEUES {
        estate
            .client
            .update_consumer_offset(&estate.source.broker_addr, &group, topic, q, 0)
            .await
            .expect("move the route's group back");
    }
    let (ok, out) = testkit::run_cli(
        bin,
        &[
            "reset-route",
            "--local-only",
            "-c",
            &config,
            "--route",
            topic,
        ],
    );
    assert!(ok, "reset-route --local-only:\n{out}");
    a.start();
    testkit::eventually(
        "every message sent a second time",
        Duration::from_secs(120),
        || async {
            let copies = landed(&estate, topic, &ids).await;
            copies.values().all(|n| *n >= 2).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        keep_logs(&[&a]);
        panic!("{e}")
    });
    assert!(a.terminate(), "a stops cleanly");
}

/// Issue 30, item 3: the estate topic's fold does not depend on where a
/// record was stored. 5.x has two brokers; 16 messages are quarantined (a
/// DELAY topic refuses them), their records spread over both brokers'
/// queues of the state topic; the broker read last leaves, so the removals
/// of `quarantine drop` go to the one read first; the other comes back.
/// Read queue by queue, the removals come before the quarantine records
/// stored on the returning broker: the old fold brought those back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5x_broker_restart_between_a_quarantine_and_its_removal_does_not_bring_it_back() {
    let source = LocalCluster::start(ClusterOptions::new("fold-src")).expect("4.x peers");
    let target = LocalCluster::start(
        ClusterOptions::new("fold-dst")
            .with_proxy(true)
            .second_broker(true),
    )
    .expect("5.x peers with two brokers");
    let client = testkit::client();
    testkit::create_topic(&client, &source, "misc", 4, None)
        .await
        .expect("4.x misc");
    testkit::create_topic(&client, &target, "misc_delay", 2, Some("DELAY"))
        .await
        .expect("5.x misc_delay");
    testkit::create_topic(&client, &target, STATE_TOPIC, 2, Some("FIFO"))
        .await
        .expect("5.x state topic on both brokers");
    let mut estate = Estate {
        source,
        target,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
        source_keys: String::new(),
    };
    let mut a = estate.instance_with("a", &[RouteSpec::new("misc", "misc", "misc_delay", 100)]);
    a.start();
    send_numbered(&estate, "misc", 4, "FOLD", 0..16).await;
    wait_outcome(&a, "misc", "quarantined", 16, Duration::from_secs(120)).await;
    testkit::eventually("quarantine records on 5.x", Duration::from_secs(60), || {
        let pending = metric(&scrape(&a.metrics), "rmq_bridge_state_pending_records", &[]);
        async move { (pending == 0.0).then_some(()) }
    })
    .await
    .expect("shared");
    assert!(a.terminate(), "a stops cleanly");

    let (state_client, state_namesrv) = (estate.client.clone(), estate.target.namesrv_addr.clone());
    let state_queues = |n: usize| {
        let (client, namesrv) = (state_client.clone(), state_namesrv.clone());
        async move {
            testkit::eventually(
                &format!("{n} state topic queues routed"),
                Duration::from_secs(90),
                || {
                    let (client, namesrv) = (client.clone(), namesrv.clone());
                    async move {
                        let route = client.get_topic_route(&namesrv, STATE_TOPIC).await.ok()??;
                        (route.readable_queues().len() == n).then_some(())
                    }
                },
            )
            .await
            .expect("route");
        }
    };
    // The removals must go to the broker read first: the one that stays.
    // (The name server lists the brokers in an order of its own.)
    let route = estate
        .client
        .get_topic_route(&estate.target.namesrv_addr, STATE_TOPIC)
        .await
        .expect("state topic route")
        .expect("state topic routed");
    let read_last = route
        .queue_datas
        .last()
        .map(|d| d.broker_name.clone())
        .expect("two brokers");
    let leaving = if read_last == estate.target.broker_name {
        Peer::Broker
    } else {
        Peer::BrokerB
    };
    eprintln!(
        "state topic read order: {:?}; stopping {leaving}",
        route
            .queue_datas
            .iter()
            .map(|d| &d.broker_name)
            .collect::<Vec<_>>()
    );
    estate.target.stop_peer(leaving);
    state_queues(2).await;
    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-bridge"));
    let config = a.dir.join("bridge.toml").to_string_lossy().to_string();
    let (ok, out) = testkit::run_cli(
        bin,
        &[
            "quarantine",
            "drop",
            "-c",
            &config,
            "--route",
            "misc",
            "--all",
        ],
    );
    assert!(ok && out.contains("dropped 16"), "quarantine drop:\n{out}");
    estate.target.start_peer(leaving).expect("broker back");
    state_queues(4).await;
    let (ok, listed) = testkit::run_cli(
        bin,
        &["quarantine", "list", "-c", &config, "--route", "misc"],
    );
    assert!(ok, "quarantine list:\n{listed}");
    let back: Vec<&str> = listed.lines().filter(|l| l.contains("FOLD")).collect();
    assert!(
        back.is_empty(),
        "dropped entries came back after the broker restart:\n{listed}"
    );
}
