//! The 5.x side (`grpc::Publisher`) against a real 5.x cluster: the
//! rocketmq-rust 1.0.0 name server + broker + `rocketmq-proxy-rust --mode
//! cluster` (SPEC.md section 7). What landed is read back from the 5.x
//! broker over Remoting (`testkit::read_back`), the ground truth.
//!
//! - `every_type_lands_intact_and_mismatches_are_permanent`: NORMAL, FIFO,
//!   DELAY, TRANSACTION and a NORMAL batch, every field checked in the
//!   stored record; accepted types learnt from the routes; type mismatches,
//!   bodies above the limit and reserved property names are permanent.
//! - `receive_and_ack_where_the_peer_can`: our ReceiveMessage / AckMessage.
//! - `proxy_restart_mid_stream_loses_nothing`: 300 sequential sends with
//!   retry-on-retriable across a proxy restart; every id lands.
//!
//! Each test starts its own throwaway cluster (three in this file); a
//! missing peer binary fails the test with the launcher's error, never a
//! skip. Where the peer differs from the Java proxy / broker (the contract),
//! the check keeps the part that works and a `PEER DEVIATION` comment gives
//! the evidence; the bridge is never bent to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use rmq_bridge::dev::cluster::{ClusterOptions, LocalCluster, Peer};
use rmq_bridge::dev::testkit;
use rmq_bridge::grpc::{
    is_reserved_property, pb, validate, GrpcClientConfig, MessageKind, OutgoingMessage,
    PublishError, Publisher, ReceivedMessage, TopicMessageType,
};
use rmq_bridge::remoting::{names, MessageRecord, RemotingClient, TransactionType};

/// Properties the peer stores that RocketMQ does not reserve by name:
/// rocketmq-broker 1.0.0 replaces the Java timer properties of a due DELAY
/// message with `TIMER_DELIVERY_TOKEN` (`F:1:<UNIQ_KEY>:<deliver ms>:0`).
const PEER_ADDED: &[&str] = &["TIMER_DELIVERY_TOKEN"];

/// Environment tag of Java microservice frameworks (SPEC 3: kept as a user
/// property like any other).
const ENV_TAG: &str = "__microservice_tag__";

// ---------------------------------------------------------------- helpers

/// Starts a 5.x cluster (name server + broker + proxy) or fails the test with
/// the launcher's error, which names a missing binary and the remedy.
async fn start_target(options: ClusterOptions) -> LocalCluster {
    let options = options.with_proxy(true);
    match tokio::task::spawn_blocking(move || LocalCluster::start(options)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(error)) => panic!("the 5.x test peers did not start: {error}"),
        Err(error) => panic!("cluster start task failed: {error}"),
    }
}

async fn connect(cluster: &LocalCluster) -> Publisher {
    let endpoint = cluster
        .proxy_endpoint
        .clone()
        .expect("a 5.x cluster has a proxy endpoint");
    Publisher::connect(GrpcClientConfig::new(vec![endpoint.clone()]))
        .await
        .unwrap_or_else(|e| panic!("connecting to the 5.x proxy at {endpoint}: {e}"))
}

async fn create_topic(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    queues: i32,
    message_type: &str,
) {
    testkit::create_topic(client, cluster, topic, queues, Some(message_type))
        .await
        .unwrap_or_else(|e| panic!("creating {message_type} topic {topic}: {e:#}"));
}

async fn read_back(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
) -> Vec<MessageRecord> {
    testkit::read_back(client, cluster, topic)
        .await
        .unwrap_or_else(|e| panic!("reading {topic} back from the 5.x broker: {e:#}"))
}

/// [`read_back`] once at least `expected` records are readable, or after
/// 30 s with whatever is readable then (the caller's assertions name what
/// is missing). An accepted send is in the commit log, but the broker
/// dispatches it to its consume queue asynchronously: on a loaded 2-core
/// machine a read right after the receipt can miss the newest records
/// (seen in CI: 1 of 6 NORMAL messages readable 1 s after their receipts).
async fn read_back_at_least(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    expected: usize,
) -> Vec<MessageRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = read_back(client, cluster, topic).await;
        if records.len() >= expected || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh client message id in the shape of a Java `UNIQ_KEY`: 32
/// upper-case hex digits, unique within this process.
fn fresh_id() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:08X}{:016X}{:08X}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic, incompressible bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A message with every field set: our own id, tag, two keys, a user
/// property, the environment tag, a born timestamp and host of "the 4.x
/// producer".
fn full_message(topic: &str, kind: MessageKind, what: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        message_id: fresh_id(),
        body: Bytes::from(format!("{what}: body bytes of {topic}").into_bytes()),
        tag: Some(format!("Tag{}", what.len())),
        keys: vec![format!("order-{what}"), "customer-7".into()],
        user_properties: BTreeMap::from([
            (ENV_TAG.to_string(), "gray".to_string()),
            ("biz_region".to_string(), "eu-west grün".to_string()),
        ]),
        born_timestamp_ms: now_ms() - 60_000,
        born_host: "10.20.30.40".into(),
        kind,
    }
}

/// Sends and fails the test on any error.
async fn send_ok(publisher: &Publisher, message: &OutgoingMessage) {
    let receipt = publisher.send(message).await.unwrap_or_else(|e| {
        panic!(
            "sending {:?} message {} to {}: {e}",
            message.kind.topic_type(),
            message.message_id,
            message.topic
        )
    });
    // The proxy answers with the id we chose (Java: the UNIQ_KEY).
    assert_eq!(
        receipt.message_id, message.message_id,
        "receipt of {}",
        message.topic
    );
}

fn by_id<'a>(records: &'a [MessageRecord], id: &str) -> Vec<&'a MessageRecord> {
    records.iter().filter(|r| r.message_id() == id).collect()
}

/// The one stored record of `sent`, checked field by field against it.
fn check_stored<'a>(records: &'a [MessageRecord], sent: &OutgoingMessage) -> &'a MessageRecord {
    let found = by_id(records, &sent.message_id);
    assert_eq!(
        found.len(),
        1,
        "{} ({:?}) must be stored exactly once in {}; stored ids: {:?}",
        sent.message_id,
        sent.kind,
        sent.topic,
        records
            .iter()
            .map(MessageRecord::message_id)
            .collect::<Vec<_>>()
    );
    check_record(found[0], sent, true);
    found[0]
}

/// Every field of `rec` against `sent`; the id too when `check_id`.
fn check_record(rec: &MessageRecord, sent: &OutgoingMessage, check_id: bool) {
    let what = format!("{} ({:?})", sent.message_id, sent.kind.topic_type());
    if check_id {
        // The id WE chose is the stored UNIQ_KEY, i.e. what a Java consumer sees.
        assert_eq!(
            rec.uniq_key(),
            Some(sent.message_id.as_str()),
            "{what}: UNIQ_KEY"
        );
    }
    assert_eq!(rec.topic, sent.topic, "{what}: topic");
    assert_eq!(rec.body, sent.body, "{what}: body bytes");
    assert_eq!(rec.tag(), sent.tag.as_deref(), "{what}: TAGS");
    assert_eq!(
        rec.keys(),
        sent.keys.iter().map(String::as_str).collect::<Vec<_>>(),
        "{what}: KEYS"
    );
    for (k, v) in &sent.user_properties {
        assert_eq!(
            rec.properties.get(k),
            Some(v.as_str()),
            "{what}: user property {k}"
        );
    }
    // Nothing else than our user properties and names RocketMQ reserves
    // for itself (MSG_REGION, TRACE_ON, CLUSTER, ...) may appear.
    for (k, v) in rec.properties.iter() {
        assert!(
            sent.user_properties.contains_key(k)
                || is_reserved_property(k)
                || PEER_ADDED.contains(&k),
            "{what}: unexpected stored property {k}={v:?}"
        );
    }
    check_born(rec, sent, &what);
}

/// Born timestamp and host, as far as the server keeps them.
///
/// A Java proxy stores the client's values as the properties `BORN_TIMESTAMP`
/// and `__BORNHOST` (`SendMessageActivity.buildMessageProperties`) and uses
/// `BORN_TIMESTAMP` as the record's born timestamp.
///
/// PEER DEVIATION: rocketmq-proxy 1.0.0 ignores
/// `SystemProperties.born_timestamp` / `born_host` on send (they are only
/// read on its receive path, `ingress/grpc/adapter.rs`): the record carries
/// the proxy's own send time and socket address, e.g. born
/// `1795298925674 127.0.0.1:50444` for a message we sent with
/// `1700000000123 10.1.2.3`, and neither property is stored. So when the
/// peer keeps nothing, we check only that the record's values are the
/// proxy's (recent time, loopback), and say so.
fn check_born(rec: &MessageRecord, sent: &OutgoingMessage, what: &str) {
    let stored_ts = rec.properties.get(names::BORN_TIMESTAMP);
    let stored_host = rec.properties.get("__BORNHOST");
    if stored_ts.is_none()
        && stored_host.is_none()
        && rec.born_timestamp_ms != sent.born_timestamp_ms
    {
        assert!(
            (rec.born_timestamp_ms - now_ms()).abs() < 600_000 && rec.born_host.ip().is_loopback(),
            "{what}: born {} {} is neither ours nor the proxy's",
            rec.born_timestamp_ms,
            rec.born_host
        );
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            eprintln!(
                "PEER DEVIATION: born timestamp/host not kept: sent {} {}, stored {} {} and no BORN_TIMESTAMP / __BORNHOST",
                sent.born_timestamp_ms, sent.born_host, rec.born_timestamp_ms, rec.born_host
            )
        });
        return;
    }
    if let Some(ts) = stored_ts {
        assert_eq!(
            ts,
            sent.born_timestamp_ms.to_string(),
            "{what}: BORN_TIMESTAMP"
        );
    }
    if let Some(host) = stored_host {
        assert_eq!(host, sent.born_host, "{what}: __BORNHOST");
    }
}

/// Where the stored record says it is to be delivered: Java keeps
/// `TIMER_DELIVER_MS`; rocketmq-broker 1.0.0 keeps
/// `TIMER_DELIVERY_TOKEN = F:1:<UNIQ_KEY>:<deliver ms>:0` instead (and `WAIT`).
fn stored_delivery_ms(rec: &MessageRecord) -> Option<i64> {
    if let Some(ms) = rec.properties.get(names::TIMER_DELIVER_MS) {
        return ms.parse().ok();
    }
    let token = rec.properties.get("TIMER_DELIVERY_TOKEN")?;
    let fields: Vec<&str> = token.split(':').collect();
    (fields.get(2) == rec.uniq_key().as_ref())
        .then(|| fields.get(3)?.parse().ok())
        .flatten()
}

fn assert_permanent<T: std::fmt::Debug>(
    result: Result<T, PublishError>,
    what: &str,
) -> PublishError {
    match result {
        Ok(v) => panic!("{what}: expected a permanent error, got {v:?}"),
        Err(e) => {
            assert!(
                e.is_permanent(),
                "{what}: expected a permanent error, got {e:?}"
            );
            e
        }
    }
}

/// A raw SendMessage of one wire message, bypassing our client's local
/// checks, to learn what the server itself answers.
async fn raw_send_code(endpoint: &str, message: pb::Message) -> (pb::Code, String) {
    let mut client =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{endpoint}"))
            .await
            .unwrap_or_else(|e| panic!("raw gRPC connect to {endpoint}: {e}"));
    let mut request = tonic::Request::new(pb::SendMessageRequest {
        messages: vec![message],
    });
    let md = request.metadata_mut();
    for (k, v) in [
        (
            "x-mq-client-id",
            format!("raw-probe@{}", std::process::id()),
        ),
        ("x-mq-language", "JAVA".into()),
        ("x-mq-protocol", "v2".into()),
        ("x-mq-client-version", "5.0.8".into()),
        ("x-mq-request-id", fresh_id()),
    ] {
        md.insert(k, v.parse().expect("ascii header"));
    }
    let response = client
        .send_message(request)
        .await
        .unwrap_or_else(|s| panic!("raw SendMessage failed at the gRPC level: {s}"))
        .into_inner();
    let status = response
        .entries
        .iter()
        .filter_map(|e| e.status.clone())
        .find(|s| s.code != pb::Code::Ok as i32)
        .or(response.status)
        .unwrap_or_default();
    (
        pb::Code::try_from(status.code).unwrap_or(pb::Code::Unspecified),
        status.message,
    )
}

fn raw_message(topic: &str, message_type: pb::MessageType, group: Option<&str>) -> pb::Message {
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: topic.into(),
        }),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: fresh_id(),
            message_type: message_type as i32,
            message_group: group.map(Into::into),
            body_encoding: pb::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: b"raw probe".to_vec().into(),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_lands_intact_and_mismatches_are_permanent() {
    // The broker stores at most 1 MiB while the proxy announces 4 MiB:
    // lets a body pass our local check and be refused by the server.
    const BROKER_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    let cluster = start_target(
        ClusterOptions::new("tp-types")
            .broker_property("maxMessageSize", BROKER_MAX_MESSAGE_SIZE.to_string()),
    )
    .await;
    let client = testkit::client();
    let topics = [
        ("types_normal", "NORMAL", TopicMessageType::Normal),
        ("types_fifo", "FIFO", TopicMessageType::Fifo),
        ("types_delay", "DELAY", TopicMessageType::Delay),
        ("types_tx", "TRANSACTION", TopicMessageType::Transaction),
    ];
    for (topic, kind, _) in topics {
        create_topic(&client, &cluster, topic, 4, kind).await;
    }
    let publisher = connect(&cluster).await;

    // accepted_types() learns each topic's type from its route.
    for (topic, _, expected) in topics {
        let accepted = publisher
            .accepted_types(topic)
            .await
            .unwrap_or_else(|e| panic!("route of {topic}: {e}"));
        assert_eq!(accepted, vec![expected], "accepted types of {topic}");
    }

    // ---- NORMAL: one full message, one binary body without tag or keys,
    // and a packed batch.
    let normal = full_message("types_normal", MessageKind::Normal, "normal");
    send_ok(&publisher, &normal).await;
    let mut bare = full_message("types_normal", MessageKind::Normal, "bare");
    bare.body = Bytes::from(vec![0u8, 1, 2, 0xFF, 0xFE, b'\n', 0, 0x80]);
    bare.tag = None;
    bare.keys.clear();
    bare.user_properties.clear();
    send_ok(&publisher, &bare).await;
    let batch: Vec<OutgoingMessage> = (0..4)
        .map(|i| full_message("types_normal", MessageKind::Normal, &format!("batch-{i}")))
        .collect();
    let receipts = publisher
        .send_batch(&batch)
        .await
        .unwrap_or_else(|e| panic!("NORMAL batch of 4: {e}"));
    assert_eq!(
        receipts
            .iter()
            .map(|r| r.message_id.as_str())
            .collect::<Vec<_>>(),
        batch
            .iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        "batch receipts carry our ids, in order"
    );

    // ---- FIFO: two groups, three messages each, interleaved.
    let fifo: Vec<OutgoingMessage> = (0..6)
        .map(|i| {
            let group = format!("order-{}", i % 2);
            full_message(
                "types_fifo",
                MessageKind::Fifo { group },
                &format!("fifo-{i}"),
            )
        })
        .collect();
    for m in &fifo {
        send_ok(&publisher, m).await;
    }

    // ---- TRANSACTION: prepare + COMMIT inside send().
    let tx = full_message("types_tx", MessageKind::Transaction, "tx");
    let receipt = publisher
        .send(&tx)
        .await
        .unwrap_or_else(|e| panic!("TRANSACTION send: {e}"));
    assert_eq!(receipt.message_id, tx.message_id);
    assert!(
        receipt.transaction_id.is_some(),
        "a committed transaction has an id: {receipt:?}"
    );

    // ---- DELAY: due in 3 s; it reaches the real topic only when due.
    let delivery_ms = now_ms() + 3_000;
    let delay = full_message(
        "types_delay",
        MessageKind::Delay {
            delivery_timestamp_ms: delivery_ms,
        },
        "delay",
    );
    send_ok(&publisher, &delay).await;
    let early = read_back(&client, &cluster, "types_delay").await;
    // Timer wheels deliver up to one tick (Java: 1 s) early; only a read
    // done well before that says something.
    if now_ms() < delivery_ms - 1_500 {
        assert!(
            by_id(&early, &delay.message_id).is_empty(),
            "the DELAY message is visible in its topic before it is due"
        );
    }

    // ---- read back and check every field.
    let normals = read_back_at_least(&client, &cluster, "types_normal", 2 + batch.len()).await;
    check_stored(&normals, &normal);
    let stored_bare = check_stored(&normals, &bare);
    assert!(stored_bare.tag().is_none() && stored_bare.keys().is_empty());
    // A packed batch (one SendMessage, several NORMAL messages): the Java
    // proxy (5.5.0) stores each message with its own UNIQ_KEY and every
    // field (the rocketmq-rust 1.0.0 proxy re-id'd the whole batch).
    for m in &batch {
        check_stored(&normals, m);
    }
    assert_eq!(
        normals.len(),
        2 + batch.len(),
        "nothing else in the NORMAL topic"
    );
    for rec in &normals {
        assert!(
            !rec.properties.contains(names::SHARDING_KEY),
            "a NORMAL message has no message group"
        );
    }

    let fifos = read_back_at_least(&client, &cluster, "types_fifo", fifo.len()).await;
    let mut placement: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for m in &fifo {
        let rec = check_stored(&fifos, m);
        let MessageKind::Fifo { group } = &m.kind else {
            unreachable!()
        };
        // Java proxies store the message group as the sharding key; so does the peer.
        assert_eq!(
            rec.properties.get(names::SHARDING_KEY),
            Some(group.as_str()),
            "{}: message group stored as __SHARDINGKEY",
            m.message_id
        );
        placement
            .entry(group.clone())
            .or_default()
            .push((rec.queue_id, rec.queue_offset));
    }
    for (group, at) in &placement {
        // Per-group order: one queue, offsets in send order.
        assert!(
            at.iter().all(|(q, _)| *q == at[0].0),
            "group {group} spread over queues: {at:?}"
        );
        assert!(
            at.windows(2).all(|w| w[0].1 < w[1].1),
            "group {group} stored out of send order: {at:?}"
        );
    }

    // The Java proxy forwards a COMMIT to its broker one-way: on a loaded
    // machine it can be lost, and the broker's check-back (answered by the
    // publisher's telemetry session) commits the message later.
    let tx_deadline = Instant::now() + Duration::from_secs(150);
    let txs = loop {
        let txs = read_back_at_least(&client, &cluster, "types_tx", 1).await;
        if !txs.is_empty() || Instant::now() >= tx_deadline {
            break txs;
        }
    };
    let stored_tx = check_stored(&txs, &tx);
    // Committed: the record's sysFlag says COMMIT, and the Java broker
    // (5.5.0) keeps TRAN_MSG=true and PGROUP on the committed message
    // (EndTransactionProcessor rebuilds it from the half message's properties).
    assert_eq!(
        stored_tx.transaction_type(),
        TransactionType::Commit,
        "sysFlag {}",
        stored_tx.sys_flag
    );
    assert_eq!(
        stored_tx.properties.get(names::TRAN_MSG),
        Some("true"),
        "TRAN_MSG of a committed message"
    );
    assert!(
        stored_tx.properties.contains(names::PGROUP),
        "committed message without PGROUP"
    );
    assert_eq!(
        txs.len(),
        1,
        "only the committed message is in the topic (no half message)"
    );

    let due = testkit::eventually(
        "the DELAY message in its topic",
        Duration::from_secs(40),
        || async {
            let records = testkit::read_back(&client, &cluster, "types_delay")
                .await
                .ok()?;
            (!by_id(&records, &delay.message_id).is_empty()).then_some(records)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let stored_delay = check_stored(&due, &delay);
    assert!(
        stored_delay.store_timestamp_ms >= delivery_ms - 1_000,
        "DELAY message stored in its topic at {} although due at {delivery_ms}",
        stored_delay.store_timestamp_ms
    );
    assert_eq!(
        stored_delay_ms_or_panic(stored_delay),
        delivery_ms,
        "stored delivery time of the DELAY message"
    );

    // ---- permanent rejections (c).
    // Type mismatches: our client refuses them before any round trip, with
    // the accepted types learnt from the route...
    let mismatches = [
        ("types_fifo", MessageKind::Normal),
        ("types_normal", MessageKind::Fifo { group: "g".into() }),
        (
            "types_normal",
            MessageKind::Delay {
                delivery_timestamp_ms: now_ms() + 60_000,
            },
        ),
        ("types_normal", MessageKind::Transaction),
        ("types_tx", MessageKind::Normal),
        ("types_delay", MessageKind::Fifo { group: "g".into() }),
    ];
    for (topic, kind) in mismatches {
        let m = full_message(topic, kind.clone(), "mismatch");
        let what = format!("{:?} message to {topic}", kind.topic_type());
        let accepted = publisher.accepted_types(topic).await.expect("route");
        let e = assert_permanent(validate(&m, &accepted, publisher.max_body_size()), &what);
        assert!(
            matches!(e, PublishError::TypeMismatch { .. }),
            "{what}: {e:?}"
        );
        let e = assert_permanent(publisher.send(&m).await, &what);
        assert!(
            matches!(e, PublishError::TypeMismatch { .. }),
            "{what}: {e:?}"
        );
        assert_eq!(e.code_label(), "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE");
    }
    // ...and the server agrees: sent raw, bypassing our check, the proxy
    // answers MESSAGE_PROPERTY_CONFLICT_WITH_TYPE (a permanent code for us).
    let endpoint = cluster.proxy_endpoint.clone().expect("proxy");
    for (topic, message_type, group) in [
        ("types_fifo", pb::MessageType::Normal, None),
        ("types_normal", pb::MessageType::Fifo, Some("g")),
    ] {
        let (code, text) = raw_send_code(&endpoint, raw_message(topic, message_type, group)).await;
        assert_eq!(
            code,
            pb::Code::MessagePropertyConflictWithType,
            "raw {message_type:?} message to {topic}: {text}"
        );
    }

    // A body above the announced limit (4 MiB, the Java default): refused
    // locally as BodyTooLarge.
    let max = publisher.max_body_size();
    let mut huge = full_message("types_normal", MessageKind::Normal, "huge");
    huge.body = Bytes::from(vec![b'x'; max + 1]);
    let e = assert_permanent(publisher.send(&huge).await, "body of max + 1 bytes");
    assert!(
        matches!(e, PublishError::BodyTooLarge { size, .. } if size == max + 1),
        "{e:?}"
    );
    // A body under the announced limit but above the broker's (1 MiB here)
    // passes our check and is refused by the server. Incompressible,
    // because the proxy compresses bodies above 4 KiB before they reach the
    // broker.
    // NOT PERMANENT, on the peer and on Java alike: the broker answers
    // MESSAGE_ILLEGAL and the proxy turns it into an internal error (peer:
    // INTERNAL_ERROR 50000 "Broker operation failed"; Java
    // `ResponseBuilder.buildCode` maps every unlisted broker code to
    // INTERNAL_SERVER_ERROR), which is retriable. Only a proxy limit at or below the broker's makes such a
    // message a permanent BodyTooLarge; deployments must keep it so.
    let mut big = full_message("types_normal", MessageKind::Normal, "big");
    big.body = Bytes::from(noise(BROKER_MAX_MESSAGE_SIZE + 64 * 1024, 7));
    assert!(big.body.len() < max);
    match publisher.send(&big).await {
        Ok(receipt) => {
            panic!("a body above the broker's max message size was accepted: {receipt:?}")
        }
        Err(e) => eprintln!(
            "body of {} bytes, above the broker's {BROKER_MAX_MESSAGE_SIZE}: permanent={} {e}",
            big.body.len(),
            e.is_permanent()
        ),
    }

    // Reserved names and control characters as user properties.
    for (name, value) in [
        (names::UNIQ_KEY, "x"),
        (names::TIMER_DELIVER_MS, "1"),
        ("__RMQ.TRANSIENT.foo", "x"),
        ("ok_name", "line\nbreak"),
    ] {
        let mut m = full_message("types_normal", MessageKind::Normal, "reserved");
        m.user_properties.insert(name.into(), value.into());
        let what = format!("user property {name}={value:?}");
        let e = assert_permanent(publisher.send(&m).await, &what);
        assert_eq!(
            e.code_label(),
            "ILLEGAL_MESSAGE_PROPERTY_KEY",
            "{what}: {e}"
        );
    }
    // PEER DEVIATION: sent raw, the peer refuses a reserved user property
    // with MESSAGE_PROPERTY_CONFLICT_WITH_TYPE ("Message property conflicts
    // with message type"); Java answers ILLEGAL_MESSAGE_PROPERTY_KEY. Both
    // are permanent.
    let mut probe = raw_message("types_normal", pb::MessageType::Normal, None);
    probe
        .user_properties
        .insert(names::UNIQ_KEY.into(), "x".into());
    let (code, text) = raw_send_code(&endpoint, probe).await;
    assert!(
        matches!(
            code,
            pb::Code::IllegalMessagePropertyKey | pb::Code::MessagePropertyConflictWithType
        ),
        "raw reserved user property: {code:?} {text}"
    );

    // None of the refused messages landed anywhere.
    for (topic, _, _) in topics {
        let expected = match topic {
            "types_normal" => normals.len(),
            "types_fifo" => fifo.len(),
            "types_delay" => 1,
            _ => 1,
        };
        let records = read_back_at_least(&client, &cluster, topic, expected).await;
        assert_eq!(records.len(), expected, "{topic} after the refused sends");
    }
    publisher.shutdown().await;
}

fn stored_delay_ms_or_panic(rec: &MessageRecord) -> i64 {
    stored_delivery_ms(rec).unwrap_or_else(|| {
        panic!(
            "the due DELAY message keeps no delivery time (TIMER_DELIVER_MS or TIMER_DELIVERY_TOKEN): {:?}",
            rec.properties.iter().collect::<Vec<_>>()
        )
    })
}

/// Receives until `want` messages arrived (or 30 s pass) and acks them.
async fn receive_n(
    publisher: &Publisher,
    topic: &str,
    group: &str,
    want: usize,
) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let batch = publisher
            .receive(topic, group, want - got.len(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("receive from {topic} as {group}: {e}"));
        publisher
            .ack(topic, group, &batch)
            .await
            .unwrap_or_else(|e| panic!("ack on {topic} as {group}: {e}"));
        got.extend(batch);
    }
    assert_eq!(got.len(), want, "{topic} as {group}: {got:?}");
    got
}

/// Every field a 5.x consumer sees, against what was sent.
fn check_received(m: &ReceivedMessage, sent: &OutgoingMessage, kind: TopicMessageType) {
    let what = format!("{} received from {}", sent.message_id, sent.topic);
    assert_eq!(m.topic, sent.topic, "{what}: topic");
    assert_eq!(m.message_id, sent.message_id, "{what}: message id");
    assert_eq!(m.body, sent.body, "{what}: body");
    assert_eq!(m.tag, sent.tag, "{what}: tag");
    assert_eq!(m.keys, sent.keys, "{what}: keys");
    // The 5.5.0 proxy hands a FIFO message's group to a consumer twice: as
    // `message_group` and as a user property `__SHARDINGKEY` (how it stores
    // the group); a producer that sent straight to 5.x gets the same.
    let mut expected = sent.user_properties.clone();
    if let MessageKind::Fifo { group } = &sent.kind {
        expected.insert("__SHARDINGKEY".to_string(), group.clone());
    }
    // A committed transactional message reaches a consumer with three
    // properties the 5.5.0 proxy and broker add on their own (the proxy's
    // transaction id and check immunity, the broker's check count).
    let mut received = m.user_properties.clone();
    if matches!(sent.kind, MessageKind::Transaction) {
        for key in [
            "__transactionId__",
            "CHECK_IMMUNITY_TIME_IN_SECONDS",
            "TRANSACTION_CHECK_TIMES",
        ] {
            received.remove(key);
        }
    }
    assert_eq!(
        received, expected,
        "{what}: user properties, environment tag included"
    );
    assert_eq!(
        m.born_timestamp_ms,
        Some(sent.born_timestamp_ms),
        "{what}: born time"
    );
    assert_eq!(m.message_type, Some(kind), "{what}: type");
    assert!(!m.receipt_handle.is_empty(), "{what}: receipt handle");
}

/// A real 5.x consumer (gRPC ReceiveMessage through the Java proxy) gets
/// every type with every field and the id we chose; FIFO in order for a
/// group with `consumeMessageOrderly`; an empty queue answers empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5x_consumer_receives_every_type_intact() {
    let cluster = start_target(ClusterOptions::new("tp-recv")).await;
    let client = testkit::client();
    // One queue each, so every receive looks at the queue we sent to.
    for (topic, kind) in [
        ("recv_normal", "NORMAL"),
        ("recv_fifo", "FIFO"),
        ("recv_delay", "DELAY"),
        ("recv_tx", "TRANSACTION"),
    ] {
        create_topic(&client, &cluster, topic, 1, kind).await;
    }
    let publisher = connect(&cluster).await;

    // NORMAL: one, then an empty queue, then a batch of two.
    let sent = full_message("recv_normal", MessageKind::Normal, "recv-0");
    send_ok(&publisher, &sent).await;
    let got = receive_n(&publisher, "recv_normal", "tp_recv_group", 1).await;
    check_received(&got[0], &sent, TopicMessageType::Normal);
    let empty = publisher
        .receive("recv_normal", "tp_recv_group", 1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("receive on an empty queue: {e}"));
    assert!(
        empty.is_empty(),
        "everything was acked, yet received {empty:?}"
    );
    let pair: Vec<OutgoingMessage> = (0..2)
        .map(|i| full_message("recv_normal", MessageKind::Normal, &format!("pair-{i}")))
        .collect();
    for m in &pair {
        send_ok(&publisher, m).await;
    }
    let got = publisher
        .receive("recv_normal", "tp_recv_group", 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("receive of two: {e}"));
    assert_eq!(
        got.len(),
        2,
        "one receive returns both ready messages: {got:?}"
    );
    publisher
        .ack("recv_normal", "tp_recv_group", &got)
        .await
        .expect("ack of two");

    // FIFO: an orderly group receives one message group in send order.
    let broker = cluster.broker_addr.clone();
    client
        .put_subscription_group(&broker, "tp_recv_fifo", true)
        .await
        .unwrap_or_else(|e| panic!("orderly group on {broker}: {e}"));
    let fifo: Vec<OutgoingMessage> = (0..4)
        .map(|i| {
            full_message(
                "recv_fifo",
                MessageKind::Fifo {
                    group: "order-42".into(),
                },
                &format!("fifo-{i}"),
            )
        })
        .collect();
    for m in &fifo {
        send_ok(&publisher, m).await;
    }
    let got = receive_n(&publisher, "recv_fifo", "tp_recv_fifo", fifo.len()).await;
    for (m, sent) in got.iter().zip(&fifo) {
        check_received(m, sent, TopicMessageType::Fifo);
        assert_eq!(m.message_group.as_deref(), Some("order-42"));
    }

    // DELAY: delivered once due, with its delivery time.
    let due_ms = now_ms() + 3_000;
    let delayed = full_message(
        "recv_delay",
        MessageKind::Delay {
            delivery_timestamp_ms: due_ms,
        },
        "delay",
    );
    send_ok(&publisher, &delayed).await;
    let got = receive_n(&publisher, "recv_delay", "tp_recv_group", 1).await;
    check_received(&got[0], &delayed, TopicMessageType::Delay);
    assert_eq!(got[0].delivery_timestamp_ms, Some(due_ms), "delivery time");
    assert!(
        now_ms() >= due_ms,
        "a DELAY message was delivered before it was due"
    );

    // DELAY with a delivery time in the past: the Java proxy (5.5.0) takes
    // it as it is and the broker delivers it at once, keeping the time.
    let past_ms = now_ms() - 60_000;
    let overdue = full_message(
        "recv_delay",
        MessageKind::Delay {
            delivery_timestamp_ms: past_ms,
        },
        "overdue",
    );
    let sent_at = Instant::now();
    send_ok(&publisher, &overdue).await;
    let got = receive_n(&publisher, "recv_delay", "tp_recv_group", 1).await;
    check_received(&got[0], &overdue, TopicMessageType::Delay);
    assert_eq!(
        got[0].delivery_timestamp_ms,
        Some(past_ms),
        "past delivery time kept"
    );
    assert!(
        sent_at.elapsed() < Duration::from_secs(20),
        "an overdue DELAY message took {:?} to be delivered",
        sent_at.elapsed()
    );

    // TRANSACTION: the committed message, once.
    let tx = full_message("recv_tx", MessageKind::Transaction, "tx");
    send_ok(&publisher, &tx).await;
    let got = receive_n(&publisher, "recv_tx", "tp_recv_group", 1).await;
    check_received(&got[0], &tx, TopicMessageType::Transaction);
    publisher.shutdown().await;
}

/// Outcome of the sending task of the restart test.
struct StreamReport {
    ids: Vec<String>,
    /// Ids that saw at least one retriable error, with how many.
    retried: BTreeMap<String, u32>,
    /// First few distinct error texts.
    errors: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_restart_mid_stream_loses_nothing() {
    const TOTAL: usize = 300;
    const RESTART_AT: usize = 100;
    const HOLD_AT: usize = 200;
    let mut cluster = start_target(ClusterOptions::new("tp-restart")).await;
    let client = testkit::client();
    create_topic(&client, &cluster, "restart_normal", 4, "NORMAL").await;
    let publisher = connect(&cluster).await;

    let progress = Arc::new(AtomicUsize::new(0));
    // The sender waits at HOLD_AT until the restart is over, so the stream
    // surely spans it: messages RESTART_AT..HOLD_AT go out while the proxy
    // stops and starts, the rest to the new proxy.
    let (restarted_tx, restarted_rx) = watch::channel(false);
    let sender = {
        let publisher = publisher.clone();
        let progress = Arc::clone(&progress);
        let mut restarted = restarted_rx;
        tokio::spawn(async move {
            let mut report = StreamReport {
                ids: Vec::with_capacity(TOTAL),
                retried: BTreeMap::new(),
                errors: BTreeSet::new(),
            };
            for i in 0..TOTAL {
                if i == HOLD_AT {
                    let _ = restarted.wait_for(|done| *done).await;
                }
                let m = full_message(
                    "restart_normal",
                    MessageKind::Normal,
                    &format!("stream-{i}"),
                );
                let deadline = Instant::now() + Duration::from_secs(90);
                // Like the pipeline: retry a retriable error until it works.
                loop {
                    match publisher.send(&m).await {
                        Ok(_) => break,
                        Err(e) if e.is_permanent() => {
                            panic!("message {i} refused permanently: {e}")
                        }
                        Err(e) => {
                            *report.retried.entry(m.message_id.clone()).or_default() += 1;
                            if report.errors.len() < 6 {
                                report.errors.insert(format!("{}: {e}", e.code_label()));
                            }
                            assert!(
                                Instant::now() < deadline,
                                "message {i} still failing after 90 s: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                report.ids.push(m.message_id);
                progress.store(i + 1, Ordering::Relaxed);
                // Paced, so that the restart falls into the stream.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            report
        })
    };

    testkit::eventually(
        "the stream to reach the restart point",
        Duration::from_secs(60),
        || {
            let p = progress.load(Ordering::Relaxed);
            async move { (p >= RESTART_AT).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let pid_before = cluster.pid(Peer::Proxy);
    let at_restart = progress.load(Ordering::Relaxed);
    let started = Instant::now();
    // PEER DEVIATION: on SIGTERM the 1.0.0 proxy logs `state="stopping"`
    // and then neither answers nor exits while our client's telemetry
    // stream is open (its own ROCKETMQ_SHUTDOWN_TIMEOUT_SECONDS=10 is not
    // honoured): requests time out ("Cancelled: Timeout expired") until
    // devcluster SIGKILLs it after its 15 s grace, so the restart takes
    // about 15 s. A stop after our client left is immediate.
    cluster = tokio::task::spawn_blocking(move || {
        cluster
            .restart_proxy()
            .unwrap_or_else(|e| panic!("restarting the proxy: {e}"));
        cluster
    })
    .await
    .expect("restart task");
    let restart_took = started.elapsed();
    let after_restart = progress.load(Ordering::Relaxed);
    assert_ne!(
        cluster.pid(Peer::Proxy),
        pid_before,
        "the proxy process was replaced"
    );
    restarted_tx.send_replace(true);

    let report = tokio::time::timeout(Duration::from_secs(240), sender)
        .await
        .expect("the stream finished within 4 minutes")
        .expect("sender task");
    assert_eq!(report.ids.len(), TOTAL);

    let stored = read_back_at_least(&client, &cluster, "restart_normal", TOTAL).await;
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for rec in &stored {
        *copies.entry(rec.message_id()).or_default() += 1;
    }
    let missing: Vec<&String> = report
        .ids
        .iter()
        .filter(|id| !copies.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} ids never landed: {missing:?}",
        missing.len()
    );
    let duplicated: Vec<(&str, usize)> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    for (id, n) in &duplicated {
        assert!(
            report.retried.contains_key(*id),
            "{id} stored {n} times although its send never failed"
        );
    }
    assert_eq!(
        stored.len(),
        copies.len() + duplicated.iter().map(|(_, n)| n - 1).sum::<usize>()
    );
    assert!(
        stored
            .iter()
            .all(|r| report.ids.iter().any(|id| id == r.message_id())),
        "a stored message that we did not send"
    );
    eprintln!(
        "proxy restart at message {at_restart} (restart took {restart_took:?}, stream at {after_restart} when it \
         was back): {TOTAL} ids sent, all stored; {} ids retried ({} retries), {} stored twice or more; errors seen: {:?}",
        report.retried.len(),
        report.retried.values().sum::<u32>(),
        duplicated.len(),
        report.errors
    );
    publisher.shutdown().await;
}

/// A TRANSACTION message forwarded from a 4.x backlog keeps its 4.x born
/// time, and a Java 5.x broker counts the half message's recovery window
/// from it: with a fixed 30 s window, the COMMIT of every message older
/// than 30 s was refused ("Message commit fail [producer end] ... wait
/// check"; the proxy forwards the COMMIT one way and answers OK) and the
/// message depended on a check-back. Here no check-back can help (the
/// producer is gone right after its COMMIT): messages born 10 minutes and
/// 2 hours ago (past the proxy's 1-hour maximum window) must both be
/// committed by their COMMIT alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_transaction_is_committed_without_a_check_back() {
    let cluster = start_target(ClusterOptions::new("tp-txage")).await;
    let client = testkit::client();
    create_topic(&client, &cluster, "aged_tx", 2, "TRANSACTION").await;
    let publisher = connect(&cluster).await;
    let mut sent = Vec::new();
    for (what, age_ms) in [("ten-minutes", 600_000), ("two-hours", 7_200_000)] {
        let mut m = full_message("aged_tx", MessageKind::Transaction, what);
        m.born_timestamp_ms = now_ms() - age_ms;
        send_ok(&publisher, &m).await;
        sent.push(m);
    }
    publisher.shutdown().await;
    let records = read_back_at_least(&client, &cluster, "aged_tx", sent.len()).await;
    for m in &sent {
        let rec = check_stored(&records, m);
        check_born(rec, m, "aged transaction");
    }
}
