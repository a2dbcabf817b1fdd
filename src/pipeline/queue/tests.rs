//! The queue worker against the in-process fake 5.x service: send permits
//! bound what is in flight, FIFO groups stay in order with one send each,
//! skipped messages need no permit, and a stop never checkpoints past an
//! unacknowledged message.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::*;
use crate::cutover::{CutoverRule, EnvironmentFilter, RoutingKeyMode};
use crate::grpc::fake::{setup, Fake};
use crate::grpc::pb;
use crate::grpc::TopicMessageType;
use crate::translate::test_support::RecordBuilder;
use crate::translate::TranslateOptions;

struct Harness {
    fake: Fake,
    store: CheckpointStore,
    progress: Arc<QueueProgress>,
    stop: watch::Sender<bool>,
    batches: mpsc::Sender<PulledBatch>,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// (sends received, most sends in flight at once) seen by the fake.
    fn sends_and_peak(&self) -> (usize, usize) {
        let st = self.fake.st();
        (st.sends.len(), st.max_total_in_flight)
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        self.worker.await.expect("worker");
    }
}

fn queue() -> SourceQueue {
    SourceQueue {
        broker_name: "broker-a".into(),
        queue_id: 3,
    }
}

async fn start(
    accept: pb::MessageType,
    target: TopicMessageType,
    percent: u8,
    permits: usize,
    hold: Duration,
) -> Harness {
    start_with_budget(accept, target, percent, permits, hold, 16 * 1024).await
}

async fn start_with_budget(
    accept: pb::MessageType,
    target: TopicMessageType,
    percent: u8,
    permits: usize,
    hold: Duration,
    held_kib: u32,
) -> Harness {
    let (fake, publisher, _) = setup(&[accept]).await;
    fake.st().hold = hold;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path(), false).expect("open store");
    let store_handle = store.clone();
    let flusher = CheckpointFlusher::new(store.clone());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(
        flusher
            .clone()
            .run(Duration::from_millis(5), stop_rx.clone()),
    );
    let progress = QueueProgress::new("r", queue(), 0);
    flusher.register(progress.clone());
    let rule = RouteRule {
        generation: 0,
        cutover: CutoverRule {
            percent,
            routing_key: RoutingKeyMode::Auto,
            environments: EnvironmentFilter::All,
            environment_property: "__microservice_tag__".into(),
        },
        target_types: vec![target],
        translate: TranslateOptions::default(),
    };
    let (_rule_tx, rule_rx) = watch::channel(Arc::new(rule));
    let ctx = QueueContext {
        route: "r".into(),
        target_topic: "t".into(),
        publishers: crate::pipeline::PublisherPool::new(vec![publisher]).expect("one publisher"),
        store,
        flusher,
        window: 1024,
        rule: rule_rx,
        stop: stop_rx,
        drain_timeout: Duration::from_millis(300),
        delay_min_lead: Duration::from_secs(1),
        send_batch_size: 1,
        send_permits: Arc::new(Semaphore::new(permits)),
        send_successes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        quarantine_after_failures: 3,
        held_kib: Arc::new(Semaphore::new(held_kib as usize)),
        held_kib_total: held_kib,
        counters: crate::metrics::RouteMessages::new("r"),
    };
    let (batches, rx) = mpsc::channel(4);
    let worker = tokio::spawn(run_queue_worker(ctx, queue(), progress.clone(), rx));
    Harness {
        fake,
        store: store_handle,
        progress,
        stop,
        batches,
        worker,
        _dir: dir,
    }
}

/// Offsets 0..n; message i belongs to group `groups[i % groups.len()]`.
fn records(n: i64, groups: &[&str]) -> PulledBatch {
    records_of(n, groups, None)
}

/// Like [`records`], with `body_kib` KiB bodies.
fn big_records(n: i64, groups: &[&str], body_kib: usize) -> PulledBatch {
    records_of(n, groups, Some(vec![b'x'; body_kib * 1024]))
}

fn records_of(n: i64, groups: &[&str], body: Option<Vec<u8>>) -> PulledBatch {
    let records = (0..n)
        .map(|i| {
            let builder = RecordBuilder::new()
                .queue_offset(i)
                .uniq_key(&format!("ID-{i:04}"))
                .prop("__SHARDINGKEY", groups[i as usize % groups.len()]);
            match &body {
                Some(body) => builder.body(body),
                None => builder,
            }
            .build()
        })
        .collect();
    PulledBatch {
        queue: queue(),
        outcome: PullOutcome::Records {
            records,
            undecodable: Vec::new(),
            next_offset: n,
            max_offset: n,
        },
    }
}

async fn wait_durable(progress: &QueueProgress, offset: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while progress.durable() < offset {
        assert!(
            tokio::time::Instant::now() < deadline,
            "durable checkpoint stuck at {} (want {offset})",
            progress.durable()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sent_ids(fake: &Fake) -> Vec<(String, String)> {
    fake.st()
        .sends
        .iter()
        .flat_map(|req| req.messages.iter())
        .map(|m| {
            let sys = m.system_properties.clone().unwrap_or_default();
            (sys.message_group.unwrap_or_default(), sys.message_id)
        })
        .collect()
}

#[tokio::test]
async fn fifo_groups_keep_order_and_sends_stay_within_permits() {
    let groups = ["A", "B", "C", "D", "E", "F"];
    let h = start(
        pb::MessageType::Fifo,
        TopicMessageType::Fifo,
        100,
        3,
        Duration::from_millis(5),
    )
    .await;
    h.batches.send(records(60, &groups)).await.expect("feed");
    wait_durable(&h.progress, 60).await;

    let sent = sent_ids(&h.fake);
    assert_eq!(sent.len(), 60, "every message sent exactly once");
    for group in groups {
        let ids: Vec<&str> = sent
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, id)| id.as_str())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "group {group} kept its 4.x order");
        assert_eq!(ids.len(), 10);
    }
    let (per_group, total) = {
        let st = h.fake.st();
        (st.max_in_flight_per_group, st.max_total_in_flight)
    };
    assert_eq!(per_group, 1, "one send per group at a time");
    assert!(total <= 3, "{total} sends in flight with 3 permits");
    assert!(total >= 2, "groups ran in parallel");
    h.finish().await;
}

#[tokio::test]
async fn normal_sends_use_every_permit_and_no_more() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::from_millis(10),
    )
    .await;
    h.batches.send(records(40, &[""])).await.expect("feed");
    wait_durable(&h.progress, 40).await;
    let (sends, total) = h.sends_and_peak();
    assert_eq!(sends, 40);
    assert_eq!(total, 4, "permits bound and fill the sends");
    h.finish().await;
}

#[tokio::test]
async fn skipped_messages_need_no_send_permit() {
    // No permit at all: a route at 0% must still move its checkpoint.
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        0,
        0,
        Duration::ZERO,
    )
    .await;
    h.batches.send(records(25, &[""])).await.expect("feed");
    wait_durable(&h.progress, 25).await;
    assert!(h.fake.st().sends.is_empty());
    h.finish().await;
}

#[tokio::test]
async fn stop_never_checkpoints_past_an_unacknowledged_message() {
    // Sends hang far beyond the drain timeout; two permits, so messages
    // 2.. wait for a permit (FIFO successors wait for their group).
    let h = start(
        pb::MessageType::Fifo,
        TopicMessageType::Fifo,
        100,
        2,
        Duration::from_secs(30),
    )
    .await;
    h.batches
        .send(records(10, &["A", "B", "C"]))
        .await
        .expect("feed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.fake.st().sends.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "sends started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = h.stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), h.worker)
        .await
        .expect("worker ends within the drain timeout")
        .expect("worker");
    assert_eq!(h.progress.done(), 0, "nothing acknowledged, nothing done");
    assert_eq!(h.fake.st().sends.len(), 2, "no send beyond the permits");
}

#[tokio::test]
async fn a_message_refused_while_others_pass_is_quarantined() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::from_millis(10),
    )
    .await;
    // What a proxy answers for a body over the broker's limit.
    h.fake
        .st()
        .refuse
        .insert("ID-0005".into(), pb::Code::InternalError);
    // 100 messages over 3 free permits at 10 ms each: the others keep
    // succeeding for ~300 ms while ID-0005 is refused 3 times (3 attempts
    // inside the publisher each, then 50 and 100 ms of backoff).
    h.batches.send(records(100, &[""])).await.expect("feed");
    wait_durable(&h.progress, 100).await;
    let entries = h.store.quarantine_list(Some("r")).expect("list");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].message_id, "ID-0005");
    assert_eq!(entries[0].offset, 5);
    assert!(
        entries[0].reason.contains("in a row"),
        "{}",
        entries[0].reason
    );
    assert!(!entries[0].message_json.is_empty(), "kept for replay");
    h.finish().await;
}

#[tokio::test]
async fn an_outage_is_retried_not_quarantined() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::ZERO,
    )
    .await;
    h.fake.st().refuse_all = Some(pb::Code::InternalError);
    h.batches.send(records(4, &[""])).await.expect("feed");
    // Backoff 50+100+200+400 ms: every message is refused 4+ times (the
    // threshold is 3) while nothing succeeds.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(h.fake.st().sends.len() >= 4 * 4);
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    assert_eq!(h.progress.done(), 0);
    // The outage ends: everything goes through, nothing was lost.
    h.fake.st().refuse_all = None;
    wait_durable(&h.progress, 4).await;
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    h.finish().await;
}

#[tokio::test]
async fn held_bytes_budget_bounds_sends_in_flight() {
    // 4 send permits, but 10 KiB of budget and 4 KiB messages (5 KiB
    // each with the allowance): at most 2 messages held at once.
    let h = start_with_budget(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::from_millis(10),
        10,
    )
    .await;
    h.batches
        .send(big_records(30, &[""], 4))
        .await
        .expect("feed");
    wait_durable(&h.progress, 30).await;
    let (sends, total) = h.sends_and_peak();
    assert_eq!(sends, 30);
    assert_eq!(total, 2, "the byte budget, not the 4 permits, bounds sends");
    h.finish().await;
}

#[tokio::test]
async fn fifo_successors_holding_the_budget_do_not_deadlock() {
    // One group: every message after the first waits for its predecessor
    // while holding budget. With a budget of 3 messages the worker must keep
    // starting successors instead of blocking on the budget.
    let h = start_with_budget(
        pb::MessageType::Fifo,
        TopicMessageType::Fifo,
        100,
        8,
        Duration::from_millis(2),
        15,
    )
    .await;
    h.batches
        .send(big_records(40, &["A"], 4))
        .await
        .expect("feed");
    wait_durable(&h.progress, 40).await;
    let ids: Vec<String> = sent_ids(&h.fake).into_iter().map(|(_, id)| id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids.len(), 40);
    assert_eq!(ids, sorted, "group A kept its order");
    h.finish().await;
}
