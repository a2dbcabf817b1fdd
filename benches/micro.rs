//! Micro benchmarks of the hot path: frame decode, message record decode,
//! translation, cutover decision and checkpoint writes.
//! Run: `cargo bench --bench micro`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use rmq_bridge::checkpoint::{CheckpointStore, SourceQueue};
use rmq_bridge::cutover::{self, CutoverRule, EnvironmentFilter, RoutingKeyMode};
use rmq_bridge::grpc::TopicMessageType;
use rmq_bridge::remoting::frame;
use rmq_bridge::remoting::header::SerializeType;
use rmq_bridge::remoting::message::{decode_records, encode_record};
use rmq_bridge::remoting::{MessageRecord, Properties, RemotingCommand};
use rmq_bridge::translate::{self, SourceContext, TranslateOptions};

fn sample_record(offset: i64) -> MessageRecord {
    let mut properties = Properties::new();
    properties.insert("TAGS", "TagA");
    properties.insert("KEYS", "order-1 order-2");
    properties.insert("UNIQ_KEY", format!("7F0000010001{offset:020X}"));
    properties.insert("__microservice_tag__", "gray");
    properties.insert("biz", "payments");
    let body = Bytes::from(vec![b'x'; 1024]);
    MessageRecord {
        topic: "orders".into(),
        queue_id: 1,
        queue_offset: offset,
        commit_log_offset: offset * 1200,
        sys_flag: 0,
        flag: 0,
        body_crc: crc32fast::hash(&body),
        born_timestamp_ms: 1_700_000_000_000,
        born_host: "10.0.0.1:50000".parse().unwrap(),
        store_timestamp_ms: 1_700_000_000_001,
        store_host: "10.0.0.2:10911".parse().unwrap(),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body,
        properties,
        offset_msg_id: String::new(),
    }
}

fn pull_body(n: i64) -> Bytes {
    let mut buf = BytesMut::new();
    for i in 0..n {
        buf.extend_from_slice(&encode_record(&sample_record(i), false).unwrap());
    }
    buf.freeze()
}

fn bench_frames(c: &mut Criterion) {
    let body = pull_body(32);
    let mut cmd = RemotingCommand::request(11);
    cmd = cmd
        .with_ext("nextBeginOffset", 32)
        .with_ext("minOffset", 0)
        .with_ext("maxOffset", 1000)
        .with_body(body.clone());
    let mut encoded = BytesMut::new();
    frame::encode(&cmd, SerializeType::Json, &mut encoded).unwrap();
    let encoded = encoded.freeze();
    let mut g = c.benchmark_group("remoting");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("frame_parse_32x1KiB", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&encoded[..]);
            black_box(frame::parse(&mut buf, 64 << 20).unwrap());
        })
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("decode_records_32x1KiB", |b| {
        b.iter(|| black_box(decode_records(&body).unwrap()))
    });
    g.finish();
}

fn bench_translate(c: &mut Criterion) {
    let record = sample_record(7);
    let types = [TopicMessageType::Normal];
    let opts = TranslateOptions::default();
    let ctx = SourceContext {
        broker_name: "broker-a",
        queue_id: 1,
        now_ms: 1_700_000_000_100,
    };
    let rule = CutoverRule {
        percent: 50,
        routing_key: RoutingKeyMode::Auto,
        environments: EnvironmentFilter::from_names(&["gray".to_string()]),
        environment_property: "__microservice_tag__".into(),
    };
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("translate_normal_1KiB", |b| {
        b.iter(|| black_box(translate::translate(&record, "orders", &types, &ctx, &opts).unwrap()))
    });
    g.bench_function("cutover_decide", |b| {
        b.iter(|| black_box(cutover::decide(&record, &rule, "broker-a", 1)))
    });
    g.finish();
}

fn bench_checkpoints(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), false).unwrap();
    let synced_dir = tempfile::tempdir().unwrap();
    let synced = CheckpointStore::open(synced_dir.path(), true).unwrap();
    let updates: Vec<(String, SourceQueue, i64)> = (0..16)
        .map(|q| {
            (
                "orders".to_string(),
                SourceQueue {
                    broker_name: "broker-a".into(),
                    queue_id: q,
                },
                1000,
            )
        })
        .collect();
    let mut g = c.benchmark_group("checkpoint");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(updates.len() as u64));
    g.bench_function("advance_16_queues_nosync", |b| {
        b.iter(|| store.advance(black_box(&updates)).unwrap())
    });
    g.bench_function("advance_16_queues_fsync", |b| {
        b.iter(|| synced.advance(black_box(&updates)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_frames, bench_translate, bench_checkpoints);
criterion_main!(benches);
