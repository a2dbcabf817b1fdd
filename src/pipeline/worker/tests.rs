//! The queue worker against the in-process fake 5.x service: send permits
//! bound what is in flight, FIFO groups stay in order with one send each
//! (over several publishers, on a multi-thread runtime), skipped messages
//! need no permit, a stop never checkpoints past an unacknowledged message,
//! poison is told from an outage, and a misconfigured route stalls alone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::handoff;

use super::*;
use crate::checkpoint::CheckpointStore;
use crate::cutover::{CutoverRule, EnvironmentFilter, RoutingKeyMode};
use crate::grpc::fake::{setup, Fake};
use crate::grpc::pb;
use crate::grpc::TopicMessageType;
use crate::pipeline::admit::Admitter;
use crate::pipeline::health::{RouteHealth, TopicHealthMap};
use crate::pipeline::order::OrderLocks;
use crate::pipeline::quarantine::Quarantine;
use crate::pipeline::share::Shares;
use crate::shutdown::Shutdown;
use crate::translate::test_support::RecordBuilder;
use crate::translate::TranslateOptions;

struct Harness {
    fake: Fake,
    store: CheckpointStore,
    progress: Arc<QueueProgress>,
    stop: watch::Sender<bool>,
    batches: handoff::Sender<PulledBatch>,
    worker: tokio::task::JoinHandle<()>,
    health: Arc<RouteHealth>,
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
    let (fake, publisher, config) = setup(&[accept]).await;
    fake.st().hold = hold;
    // Several producer clients, as the daemon runs (target.clients).
    let mut publishers = vec![publisher];
    for i in 1..3 {
        let mut c = config.clone();
        c.client_id = format!("{}-{i}", config.client_id);
        publishers.push(
            crate::grpc::Publisher::connect_single_shot(c)
                .await
                .expect("connect"),
        );
    }
    let pool = crate::pipeline::PublisherPool::new(publishers).expect("publishers");
    let shares = Shares::new(permits, held_kib);
    start_on(
        fake,
        pool,
        shares,
        OrderLocks::new(),
        target,
        percent,
        queue(),
        "r",
        "t",
        1,
        None,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn start_on(
    fake: Fake,
    pool: crate::pipeline::PublisherPool,
    shares: std::sync::Arc<Shares>,
    order: std::sync::Arc<OrderLocks>,
    target: TopicMessageType,
    percent: u8,
    queue: SourceQueue,
    route: &str,
    topic: &str,
    batch_size: usize,
    fence: Option<Arc<crate::pipeline::ownership::Fence>>,
) -> Harness {
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
    let progress = QueueProgress::new(route, queue.clone(), 0);
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
        journaled: crate::checkpoint::JournalRule {
            percent,
            environments: Vec::new(),
            filter: "*".into(),
        },
    };
    let (_rule_tx, rule_rx) = watch::channel(Arc::new(rule));
    let counters = crate::metrics::RouteMessages::new(route);
    let share = shares.route();
    let health = RouteHealth::new(route);
    let sender = Arc::new(Sender {
        route: route.into(),
        publishers: pool.clone(),
        order,
        topic: TopicHealthMap::new().topic("5.x", topic),
        health: health.clone(),
        share: share.clone(),
        quarantine: Quarantine::new(store.clone(), route, counters.quarantined.clone()),
        counters: counters.clone(),
        delay_min_lead: Duration::from_secs(1),
        poison_threshold: 3,
        scheduled: None,
        retry_log: Default::default(),
        delay_clamp: Default::default(),
        fence,
        stop: Shutdown::new(stop_rx),
    });
    let ctx = QueueContext {
        sender,
        admitter: Admitter {
            route: route.into(),
            target_topic: topic.into(),
            share,
            counters,
            max_body_size: 1 << 20,
            copies: None,
            own: None,
        },
        store,
        flusher,
        window: 1024,
        rule: rule_rx,
        drain_timeout: Duration::from_millis(300),
        send_batch_size: batch_size,
    };
    let (batches, rx) = handoff::channel(4);
    let worker = tokio::spawn(run_queue_worker(ctx, queue, progress.clone(), rx));
    Harness {
        fake,
        store: store_handle,
        progress,
        stop,
        batches,
        worker,
        health,
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
    records_range(0, n, groups, body)
}

fn records_range(from: i64, n: i64, groups: &[&str], body: Option<Vec<u8>>) -> PulledBatch {
    let records = (from..n)
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

/// Keeps NORMAL traffic flowing (20 messages every 10 ms from offset `from`)
/// until something is quarantined: poison is only judged while neighbours
/// to the same topic are accepted. Returns the next offset not fed.
async fn feed_until_quarantined(h: &Harness, mut from: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.store.quarantine_list(Some("r")).expect("list").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing quarantined"
        );
        h.batches
            .send(records_range(from, from + 20, &[""], None))
            .await
            .expect("feed");
        from += 20;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    from
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert!(total <= 4, "{total} sends in flight with 4 permits");
    assert!(total >= 2, "permits fill: {total} in flight at most");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // Traffic keeps flowing while ID-0005 is refused again and again:
    // neighbours pass between its refusals, so it is poison.
    let fed = feed_until_quarantined(&h, 0).await;
    wait_durable(&h.progress, fed).await;
    let entries = h.store.quarantine_list(Some("r")).expect("list");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].message_id, "ID-0005");
    assert_eq!(entries[0].offset, 5);
    assert!(
        entries[0]
            .reason
            .contains("while other messages to topic `t` were accepted"),
        "{}",
        entries[0].reason
    );
    assert!(!entries[0].message_json.is_empty(), "kept for replay");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // Every message is refused 4+ times (the threshold is 3) while
    // nothing succeeds.
    let fake = h.fake.clone();
    wait_until("outage refusals", || fake.st().sends.len() >= 4 * 4).await;
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    assert_eq!(h.progress.done(), 0);
    // The outage ends: everything goes through, nothing was lost.
    h.fake.st().refuse_all = None;
    wait_durable(&h.progress, 4).await;
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert!(
        total <= 2,
        "the byte budget, not the 4 permits, bounds sends: {total}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

/// Publishers over one fake, as the daemon builds them.
async fn pool_on(
    fake_config: &crate::grpc::GrpcClientConfig,
    n: usize,
) -> crate::pipeline::PublisherPool {
    let mut publishers = Vec::new();
    for i in 0..n {
        let mut c = fake_config.clone();
        c.client_id = format!("{}-p{i}", fake_config.client_id);
        publishers.push(
            crate::grpc::Publisher::connect_single_shot(c)
                .await
                .expect("connect"),
        );
    }
    crate::pipeline::PublisherPool::new(publishers).expect("publishers")
}

fn queue_n(id: i32) -> SourceQueue {
    SourceQueue {
        broker_name: "broker-a".into(),
        queue_id: id,
    }
}

fn batch_for(queue: SourceQueue, mut batch: PulledBatch) -> PulledBatch {
    batch.queue = queue;
    batch
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_the_checkpoint_below_a_pending_offset_while_later_ones_are_acknowledged() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::ZERO,
    )
    .await;
    // Offset 0 is throttled forever; 1..10 are acknowledged.
    h.fake
        .st()
        .refuse
        .insert("ID-0000".into(), pb::Code::TooManyRequests);
    h.batches.send(records(10, &[""])).await.expect("feed");
    let fake = h.fake.clone();
    wait_until("1..10 acknowledged", || fake.st().acked.len() == 9).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.progress.done(),
        0,
        "0 is pending: the checkpoint stays at 0"
    );
    let _ = h.stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), h.worker)
        .await
        .expect("worker ends")
        .expect("worker");
    assert_eq!(h.progress.done(), 0);
    assert!(
        h.store.quarantine_list(Some("r")).expect("list").is_empty(),
        "throttling never quarantines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_during_an_outage_is_not_quarantined_after_it() {
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
    let fake = h.fake.clone();
    // Each of the 4 messages refused well over the threshold (3).
    wait_until("outage refusals", || fake.st().sends.len() >= 4 * 5).await;
    {
        // The outage ends for everyone but ID-0000, which is refused once
        // more after its neighbours were accepted.
        let mut st = h.fake.st();
        st.refuse_all = None;
        st.refuse_n
            .insert("ID-0000".into(), (pb::Code::InternalError, 1));
    }
    wait_durable(&h.progress, 4).await;
    assert!(
        h.store.quarantine_list(Some("r")).expect("list").is_empty(),
        "a healthy message is not poison because of an outage"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_never_makes_a_message_poison() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::from_millis(5),
    )
    .await;
    h.fake
        .st()
        .refuse_n
        .insert("ID-0002".into(), (pb::Code::TooManyRequests, 6));
    h.batches.send(records(60, &[""])).await.expect("feed");
    wait_durable(&h.progress, 60).await;
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    assert!(h.fake.st().acked.contains(&"ID-0002".to_string()));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_requests_is_an_outage_not_poison() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::ZERO,
    )
    .await;
    // What the rocketmq-rust proxy answers while its broker is down.
    h.fake.st().refuse_all = Some(pb::Code::BadRequest);
    h.batches.send(records(30, &[""])).await.expect("feed");
    let fake = h.fake.clone();
    wait_until("bad requests", || fake.st().sends.len() >= 60).await;
    h.fake.st().refuse_all = None;
    wait_durable(&h.progress, 30).await;
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_route_stalls_alone_and_recovers() {
    let (fake, _p, config) = setup(&[pb::MessageType::Normal]).await;
    fake.st().hold = Duration::from_millis(2);
    let pool = pool_on(&config, 2).await;
    let shares = Shares::new(4, 16 * 1024);
    let order = OrderLocks::new();
    // The broken route's topic is deleted while it runs.
    fake.st()
        .refuse_topics
        .insert("gone".into(), pb::Code::TopicNotFound);
    let bad = start_on(
        fake.clone(),
        pool.clone(),
        shares.clone(),
        order.clone(),
        TopicMessageType::Normal,
        100,
        queue_n(0),
        "bad",
        "gone",
        1,
        None,
    )
    .await;
    let good = start_on(
        fake.clone(),
        pool,
        shares,
        order,
        TopicMessageType::Normal,
        100,
        queue_n(1),
        "good",
        "t",
        1,
        None,
    )
    .await;
    bad.batches
        .send(batch_for(queue_n(0), records(50, &[""])))
        .await
        .expect("feed");
    let health = bad.health.clone();
    wait_until("bad route stalled", || health.stalled().is_some()).await;
    good.batches
        .send(batch_for(queue_n(1), records(200, &[""])))
        .await
        .expect("feed");
    // Before: the broken route held every permit retrying; nothing moved.
    wait_durable(&good.progress, 200).await;
    assert!(bad.health.stalled().unwrap_or_default().contains("gone"));
    assert_eq!(bad.progress.done(), 0);
    fake.st().refuse_topics.clear();
    wait_durable(&bad.progress, 50).await;
    assert!(bad.health.stalled().is_none(), "recovered by itself");
    assert!(bad.store.quarantine_list(None).expect("list").is_empty());
    bad.finish().await;
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_in_two_queues_never_has_two_sends_in_flight() {
    let (fake, _p, config) = setup(&[pb::MessageType::Fifo]).await;
    fake.st().hold = Duration::from_millis(3);
    let pool = pool_on(&config, 3).await;
    let shares = Shares::new(8, 16 * 1024);
    let order = OrderLocks::new();
    let a = start_on(
        fake.clone(),
        pool.clone(),
        shares.clone(),
        order.clone(),
        TopicMessageType::Fifo,
        100,
        queue_n(0),
        "r",
        "t",
        1,
        None,
    )
    .await;
    let b = start_on(
        fake.clone(),
        pool,
        shares,
        order,
        TopicMessageType::Fifo,
        100,
        queue_n(1),
        "r2",
        "t",
        1,
        None,
    )
    .await;
    // The same group in both queues (a queue count change, a failover).
    a.batches
        .send(batch_for(queue_n(0), records(40, &["A"])))
        .await
        .expect("feed");
    b.batches
        .send(batch_for(queue_n(1), records(40, &["A"])))
        .await
        .expect("feed");
    wait_durable(&a.progress, 40).await;
    wait_durable(&b.progress, 40).await;
    assert_eq!(
        fake.st().max_in_flight_per_group,
        1,
        "one send of group A at a time"
    );
    a.finish().await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_packed_batch_meets_the_poison_rule_message_by_message() {
    let (fake, _p, config) = setup(&[pb::MessageType::Normal]).await;
    fake.st().hold = Duration::from_millis(2);
    let pool = pool_on(&config, 2).await;
    let h = start_on(
        fake.clone(),
        pool,
        Shares::new(4, 16 * 1024),
        OrderLocks::new(),
        TopicMessageType::Normal,
        100,
        queue(),
        "r",
        "t",
        4,
        None,
    )
    .await;
    // A batch with ID-0005 in it is refused as a whole.
    h.fake
        .st()
        .refuse
        .insert("ID-0005".into(), pb::Code::InternalError);
    let fed = feed_until_quarantined(&h, 0).await;
    wait_durable(&h.progress, fed).await;
    let entries = h.store.quarantine_list(Some("r")).expect("list");
    assert_eq!(
        entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![5]
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_quarantined_raw_and_the_queue_moves_on() {
    let h = start(
        pb::MessageType::Normal,
        TopicMessageType::Normal,
        100,
        4,
        Duration::ZERO,
    )
    .await;
    let mut batch = records(6, &[""]);
    if let PullOutcome::Records {
        records,
        undecodable,
        ..
    } = &mut batch.outcome
    {
        records.retain(|r| r.queue_offset != 3);
        undecodable.push(UndecodableRecord {
            queue_offset: 3,
            raw: bytes::Bytes::from_static(b"not a record"),
            reason: "body CRC mismatch".into(),
        });
    }
    h.batches.send(batch).await.expect("feed");
    wait_durable(&h.progress, 6).await;
    let entries = h.store.quarantine_list(Some("r")).expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].offset, 3);
    assert!(entries[0].reason.contains("CRC"));
    match crate::pipeline::quarantine::codec::decode_kept(&entries[0].message_json) {
        Ok(crate::pipeline::quarantine::codec::Kept::RawRecord(raw)) => {
            assert_eq!(&raw[..], b"not a record")
        }
        other => panic!("raw record kept: {other:?}"),
    }
    assert_eq!(h.fake.st().acked.len(), 5);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translation_failure_keeps_the_record_for_replay() {
    // Plain messages to a TRANSACTION-only topic cannot be translated.
    let h = start(
        pb::MessageType::Transaction,
        TopicMessageType::Transaction,
        100,
        4,
        Duration::ZERO,
    )
    .await;
    h.batches.send(records(3, &[""])).await.expect("feed");
    wait_durable(&h.progress, 3).await;
    let entries = h.store.quarantine_list(Some("r")).expect("list");
    assert_eq!(entries.len(), 3);
    for e in &entries {
        let kept = crate::pipeline::quarantine::codec::decode_kept(&e.message_json).expect("kept");
        let crate::pipeline::quarantine::codec::Kept::RawRecord(raw) = kept else {
            panic!("raw record kept");
        };
        let (record, _) =
            crate::remoting::message::decode_record(&raw, 0).expect("a decodable record");
        assert_eq!(record.message_id(), e.message_id);
        assert_eq!(record.queue_offset, e.offset);
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_fence_stops_every_send_of_its_queue() {
    use crate::pipeline::ownership::{Fence, Lease};
    let (fake, publisher, _config) = setup(&[pb::MessageType::Normal]).await;
    let pool = crate::pipeline::PublisherPool::new(vec![publisher]).expect("publishers");
    let fence = Arc::new(Fence::new(&Lease::granted(std::time::Instant::now())));
    let h = start_on(
        fake,
        pool,
        Shares::new(4, 16 * 1024),
        OrderLocks::new(),
        TopicMessageType::Normal,
        100,
        queue(),
        "r",
        "t",
        1,
        Some(fence.clone()),
    )
    .await;
    h.batches
        .send(records_range(0, 10, &[""], None))
        .await
        .expect("feed");
    wait_durable(&h.progress, 10).await;
    assert_eq!(h.fake.st().sends.len(), 10, "sent while the lease holds");
    // The lease is lost (another instance may hold the queue now): what
    // is pulled later is admitted but never sent, and never done.
    fence.close();
    h.batches
        .send(records_range(10, 20, &[""], None))
        .await
        .expect("feed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.fake.st().sends.len(),
        10,
        "no send starts once the fence is closed"
    );
    assert_eq!(h.progress.done(), 10, "nothing past the fence is done");
    h.finish().await;
}

/// One DELAY record at offset 0 whose delivery time passed a minute ago.
fn past_delay_record() -> (PulledBatch, i64) {
    let due = crate::checkpoint::now_ms() - 60_000;
    let record = RecordBuilder::new()
        .queue_offset(0)
        .uniq_key("ID-DELAY")
        .prop("__STARTDELIVERTIME", &due.to_string())
        .build();
    let batch = PulledBatch {
        queue: queue(),
        outcome: PullOutcome::Records {
            records: vec![record],
            undecodable: Vec::new(),
            next_offset: 1,
            max_offset: 1,
        },
    };
    (batch, due)
}

/// A worker of a route whose target takes DELAY only.
async fn start_delay() -> Harness {
    start(
        pb::MessageType::Delay,
        TopicMessageType::Delay,
        100,
        4,
        Duration::ZERO,
    )
    .await
}

fn sent_delivery_times(fake: &Fake) -> Vec<i64> {
    fake.st()
        .sends
        .iter()
        .flat_map(|req| req.messages.iter())
        .filter_map(|m| m.system_properties.clone()?.delivery_timestamp)
        .map(|t| crate::grpc::millis_from_timestamp(&t))
        .collect()
}

/// Issue 29: a Java 5.x proxy takes a past delivery time and delivers at
/// once, so a DELAY message goes with its own time; no clamp where no
/// server refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_delay_goes_with_its_own_time() {
    let h = start_delay().await;
    let (batch, due) = past_delay_record();
    h.batches.send(batch).await.expect("feed");
    wait_durable(&h.progress, 1).await;
    assert_eq!(sent_delivery_times(&h.fake), vec![due]);
    h.finish().await;
}

/// A target that refuses a time not in the future (ILLEGAL_DELIVERY_TIME;
/// the rocketmq-rust proxy did): the message is sent again at once,
/// clamped to now + delay_min_lead, and never quarantined; the route's
/// later DELAY sends are clamped from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusing_a_past_time_gets_it_clamped() {
    let h = start_delay().await;
    h.fake
        .st()
        .script
        .push_back(crate::grpc::fake::Script::V2(pb::Code::IllegalDeliveryTime));
    let (batch, due) = past_delay_record();
    let before = crate::checkpoint::now_ms();
    h.batches.send(batch).await.expect("feed");
    wait_durable(&h.progress, 1).await;
    let times = sent_delivery_times(&h.fake);
    assert_eq!(times.len(), 2, "{times:?}");
    assert_eq!(times[0], due, "first sent with its own time");
    assert!(times[1] >= before + 1_000, "then clamped: {times:?}");
    assert!(h.store.quarantine_list(Some("r")).expect("list").is_empty());
    h.finish().await;
}
