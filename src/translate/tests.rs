//! Table-driven tests: 4.x records in, 5.x messages (or reasons) out.

use std::collections::BTreeMap;
use std::time::Duration;

use super::test_support::{RecordBuilder, BORN_TIMESTAMP_MS, OFFSET_MSG_ID, STORE_TIMESTAMP_MS};
use super::*;
use crate::grpc::TopicMessageType as T;
use crate::remoting::MessageRecord;

const NOW: i64 = 1_700_000_100_000;
const TOPIC: &str = "orders-v5";
// The fixtures' store time is in the past: a served delay message keeps it
// (no clamp at translation; the send layer clamps for a target that
// refused a past time).
const _: () = assert!(STORE_TIMESTAMP_MS < NOW);

use crate::remoting::message::sys_flag::{
    MULTI_TAGS, TRANSACTION_COMMIT_TYPE as COMMIT, TRANSACTION_PREPARED_TYPE as PREPARED,
    TRANSACTION_ROLLBACK_TYPE as ROLLBACK,
};

fn ctx() -> SourceContext<'static> {
    SourceContext {
        broker_name: "broker-a",
        queue_id: 3,
        now_ms: NOW,
    }
}

fn run(
    record: &MessageRecord,
    types: &[T],
    opts: &TranslateOptions,
) -> Result<OutgoingMessage, Untranslatable> {
    translate(record, TOPIC, types, &ctx(), opts)
}

fn base() -> RecordBuilder {
    RecordBuilder::new().uniq_key("7F00000100002A9F0000000000000001")
}

#[derive(Debug)]
enum Want {
    Kind(MessageKind),
    Mismatch(SourceKind),
    Half(HalfState),
    UnknownTarget,
}

fn fifo(group: &str) -> Want {
    Want::Kind(MessageKind::Fifo {
        group: group.to_string(),
    })
}

fn delay_at(ms: i64) -> Want {
    Want::Kind(MessageKind::Delay {
        delivery_timestamp_ms: ms,
    })
}

const NORMAL: Want = Want::Kind(MessageKind::Normal);
const TRANSACTION: Want = Want::Kind(MessageKind::Transaction);

/// Every kind of 4.x record against every kind of 5.x target.
#[test]
fn message_type_table() {
    let plain = base().prop("TAGS", "TagA").build();
    let ordered = base().prop("__SHARDINGKEY", "order-7").build();
    // A delay-level message after the 4.x schedule service moved it into the
    // real topic: DELAY cleared, REAL_TOPIC / REAL_QID kept, time unknown.
    let delay_served = base()
        .prop("REAL_TOPIC", "orders")
        .prop("REAL_QID", "3")
        .build();
    let delay_served_future_store = base()
        .prop("REAL_TOPIC", "orders")
        .store_timestamp(NOW + 10_000)
        .build();
    let delay_level = base().prop("DELAY", "3").build();
    let delay_level_zero = base().prop("DELAY", "0").build();
    let timer_future = base()
        .prop("TIMER_DELIVER_MS", &(NOW + 60_000).to_string())
        .build();
    let start_past = base()
        .prop("__STARTDELIVERTIME", &(NOW - 5_000).to_string())
        .build();
    let start_inside_clamp = base()
        .prop("__STARTDELIVERTIME", &(NOW + 500).to_string())
        .build();
    let timer_unparsable = base().prop("TIMER_DELIVER_MS", "soon").build();
    let timer_relative = base().prop("TIMER_DELAY_SEC", "30").build();
    // As a Java (and rocketmq-rust) broker writes a committed message:
    // sysFlag COMMIT, TRAN_MSG cleared, PGROUP kept.
    let committed = base().sys_flag(COMMIT).prop("PGROUP", "pg-orders").build();
    let committed_multi_tags = base().sys_flag(COMMIT | MULTI_TAGS).build();
    let committed_pgroup_only = base().prop("PGROUP", "pg-orders").build();
    let committed_ordered = base()
        .sys_flag(COMMIT)
        .prop("PGROUP", "pg")
        .prop("__SHARDINGKEY", "order-7")
        .build();
    let ordered_delay = base()
        .prop("__SHARDINGKEY", "order-7")
        .prop("REAL_TOPIC", "orders")
        .build();
    let prepared = base()
        .sys_flag(PREPARED)
        .prop("TRAN_MSG", "true")
        .prop("PGROUP", "pg")
        .build();
    let rolled_back = base().sys_flag(ROLLBACK).prop("PGROUP", "pg").build();
    let tran_msg_without_flag = base().prop("TRAN_MSG", "true").prop("PGROUP", "pg").build();
    let tran_msg_committed = base().sys_flag(COMMIT).prop("TRAN_MSG", "true").build();

    let mixed = &[T::Normal, T::Fifo, T::Delay, T::Transaction][..];
    let rows: &[(&str, &MessageRecord, &[T], Want)] = &[
        // plain
        ("plain->N", &plain, &[T::Normal], NORMAL),
        (
            "plain->F uses source queue",
            &plain,
            &[T::Fifo],
            fifo("broker-a:3"),
        ),
        (
            "plain->D",
            &plain,
            &[T::Delay],
            Want::Mismatch(SourceKind::Plain),
        ),
        (
            "plain->T",
            &plain,
            &[T::Transaction],
            Want::Mismatch(SourceKind::Plain),
        ),
        ("plain->mixed", &plain, mixed, NORMAL),
        ("plain->N+F", &plain, &[T::Normal, T::Fifo], NORMAL),
        ("plain->none", &plain, &[], Want::UnknownTarget),
        // ordered
        ("ordered->N", &ordered, &[T::Normal], NORMAL),
        ("ordered->F", &ordered, &[T::Fifo], fifo("order-7")),
        (
            "ordered->D",
            &ordered,
            &[T::Delay],
            Want::Mismatch(SourceKind::Ordered),
        ),
        (
            "ordered->T",
            &ordered,
            &[T::Transaction],
            Want::Mismatch(SourceKind::Ordered),
        ),
        ("ordered->mixed", &ordered, mixed, fifo("order-7")),
        (
            "ordered->N+F",
            &ordered,
            &[T::Normal, T::Fifo],
            fifo("order-7"),
        ),
        // delay / scheduled
        ("served->N", &delay_served, &[T::Normal], NORMAL),
        (
            "served->D keeps the past store time",
            &delay_served,
            &[T::Delay],
            delay_at(STORE_TIMESTAMP_MS),
        ),
        ("served->F", &delay_served, &[T::Fifo], fifo("broker-a:3")),
        (
            "served->T",
            &delay_served,
            &[T::Transaction],
            Want::Mismatch(SourceKind::Delayed),
        ),
        (
            "served->mixed",
            &delay_served,
            mixed,
            delay_at(STORE_TIMESTAMP_MS),
        ),
        (
            "served, future store time->D",
            &delay_served_future_store,
            &[T::Delay],
            delay_at(NOW + 10_000),
        ),
        (
            "level->D",
            &delay_level,
            &[T::Delay],
            delay_at(STORE_TIMESTAMP_MS),
        ),
        ("level->N", &delay_level, &[T::Normal], NORMAL),
        (
            "level 0 is no delay->D",
            &delay_level_zero,
            &[T::Delay],
            Want::Mismatch(SourceKind::Plain),
        ),
        (
            "timer future->D",
            &timer_future,
            &[T::Delay],
            delay_at(NOW + 60_000),
        ),
        ("timer future->N", &timer_future, &[T::Normal], NORMAL),
        (
            "start past->D",
            &start_past,
            &[T::Delay],
            delay_at(NOW - 5_000),
        ),
        (
            "start soon->D",
            &start_inside_clamp,
            &[T::Delay],
            delay_at(NOW + 500),
        ),
        (
            "timer unparsable->D",
            &timer_unparsable,
            &[T::Delay],
            delay_at(STORE_TIMESTAMP_MS),
        ),
        (
            "timer relative->D",
            &timer_relative,
            &[T::Delay],
            delay_at(STORE_TIMESTAMP_MS),
        ),
        // committed transactions
        ("committed->T", &committed, &[T::Transaction], TRANSACTION),
        ("committed->N", &committed, &[T::Normal], NORMAL),
        ("committed->F", &committed, &[T::Fifo], fifo("broker-a:3")),
        (
            "committed->D",
            &committed,
            &[T::Delay],
            Want::Mismatch(SourceKind::Transaction),
        ),
        ("committed->mixed", &committed, mixed, TRANSACTION),
        (
            "committed+multi-tags flag->T",
            &committed_multi_tags,
            &[T::Transaction],
            TRANSACTION,
        ),
        (
            "committed by PGROUP->T",
            &committed_pgroup_only,
            &[T::Transaction],
            TRANSACTION,
        ),
        (
            "committed by PGROUP->N",
            &committed_pgroup_only,
            &[T::Normal],
            NORMAL,
        ),
        (
            "committed ordered->T",
            &committed_ordered,
            &[T::Transaction],
            TRANSACTION,
        ),
        (
            "committed ordered->F",
            &committed_ordered,
            &[T::Fifo],
            fifo("order-7"),
        ),
        (
            "committed, TRAN_MSG kept->T",
            &tran_msg_committed,
            &[T::Transaction],
            TRANSACTION,
        ),
        (
            "ordered delay->F",
            &ordered_delay,
            &[T::Fifo],
            fifo("order-7"),
        ),
        (
            "ordered delay->D",
            &ordered_delay,
            &[T::Delay],
            delay_at(STORE_TIMESTAMP_MS),
        ),
        // half messages: never forwarded, whatever the target
        (
            "prepared->N",
            &prepared,
            &[T::Normal],
            Want::Half(HalfState::Prepared),
        ),
        (
            "prepared->T",
            &prepared,
            &[T::Transaction],
            Want::Half(HalfState::Prepared),
        ),
        (
            "prepared->none",
            &prepared,
            &[],
            Want::Half(HalfState::Prepared),
        ),
        (
            "rolled back->T",
            &rolled_back,
            &[T::Transaction],
            Want::Half(HalfState::RolledBack),
        ),
        (
            "rolled back->N",
            &rolled_back,
            &[T::Normal],
            Want::Half(HalfState::RolledBack),
        ),
        (
            "TRAN_MSG without commit->N",
            &tran_msg_without_flag,
            &[T::Normal],
            Want::Half(HalfState::Prepared),
        ),
        (
            "TRAN_MSG without commit->T",
            &tran_msg_without_flag,
            &[T::Transaction],
            Want::Half(HalfState::Prepared),
        ),
    ];

    let opts = TranslateOptions::default();
    for (name, record, types, want) in rows {
        let got = run(record, types, &opts);
        match (&got, want) {
            (Ok(msg), Want::Kind(kind)) => assert_eq!(&msg.kind, kind, "{name}"),
            (
                Err(Untranslatable::TypeMismatch { kind, accepted, .. }),
                Want::Mismatch(want_kind),
            ) => {
                assert_eq!(kind, want_kind, "{name}");
                assert_eq!(*accepted, AcceptedTypes::from_route(types), "{name}");
            }
            (Err(Untranslatable::HalfTransaction { state, .. }), Want::Half(want_state)) => {
                assert_eq!(state, want_state, "{name}")
            }
            (Err(Untranslatable::UnknownTargetType { .. }), Want::UnknownTarget) => {}
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
        if let Err(e) = &got {
            assert_eq!(e.topic(), TOPIC, "{name}");
        }
    }
}

#[test]
fn fifo_group_from_source_queue_ignores_sharding_key() {
    let opts = TranslateOptions {
        fifo_group_from: FifoGroupSource::SourceQueue,
        ..TranslateOptions::default()
    };
    let ordered = base().prop("__SHARDINGKEY", "order-7").build();
    let blank_key = base().prop("__SHARDINGKEY", "  ").build();
    for record in [&ordered, &blank_key] {
        let msg = run(record, &[T::Fifo], &opts).unwrap();
        assert_eq!(
            msg.kind,
            MessageKind::Fifo {
                group: "broker-a:3".into()
            }
        );
    }
    // a blank sharding key is no sharding key, whatever the option
    let msg = run(&blank_key, &[T::Fifo], &TranslateOptions::default()).unwrap();
    assert_eq!(
        msg.kind,
        MessageKind::Fifo {
            group: "broker-a:3".into()
        }
    );
    assert_eq!(
        run(
            &blank_key,
            &[T::Normal, T::Fifo],
            &TranslateOptions::default()
        )
        .unwrap()
        .kind,
        MessageKind::Normal
    );
}

/// A past delivery time is kept (Java 5.x takes it and delivers at once);
/// clamping is the send layer's, and only for a target that refused one.
#[test]
fn delay_keeps_a_past_time_and_the_clamp_is_pure() {
    let served = base().prop("REAL_TOPIC", "orders").build();
    let msg = run(&served, &[T::Delay], &TranslateOptions::default()).unwrap();
    let MessageKind::Delay {
        delivery_timestamp_ms,
    } = msg.kind
    else {
        panic!("not DELAY: {:?}", msg.kind);
    };
    assert!(delivery_timestamp_ms < NOW, "{delivery_timestamp_ms}");
    assert_eq!(
        clamp_delivery(NOW + 9_000, NOW, Duration::from_secs(5)),
        NOW + 9_000
    );
    assert_eq!(
        clamp_delivery(NOW + 5_000, NOW, Duration::from_secs(5)),
        NOW + 5_000
    );
    assert_eq!(
        clamp_delivery(NOW + 4_999, NOW, Duration::from_secs(5)),
        NOW + 5_000
    );
    assert_eq!(clamp_delivery(NOW - 60_000, NOW, Duration::ZERO), NOW);
    assert_eq!(clamp_delivery(0, NOW, Duration::MAX), i64::MAX);
}

/// Every system property a 4.x record may carry, with a plausible value.
const SYSTEM_PROPERTIES: &[(&str, &str)] = &[
    ("TAGS", "TagA"),
    ("KEYS", " k1  k2 "),
    ("UNIQ_KEY", "7F00000100002A9F0000000000000009"),
    ("WAIT", "true"),
    ("DELAY", "0"),
    ("__SHARDINGKEY", ""),
    ("TRAN_MSG", "false"),
    ("PGROUP", ""),
    ("MIN_OFFSET", "0"),
    ("MAX_OFFSET", "100"),
    ("RETRY_TOPIC", "orders"),
    ("RECONSUME_TIME", "2"),
    ("MAX_RECONSUME_TIMES", "16"),
    ("CONSUME_START_TIME", "1700000000000"),
    ("TRAN_PREPARED_QUEUE_OFFSET", "5"),
    ("TRANSACTION_CHECK_TIMES", "1"),
    ("CHECK_IMMUNITY_TIME_IN_SECONDS", "60"),
    ("__transactionId__", "tx-1"),
    ("ORIGIN_MESSAGE_ID", "0A00000100002A9F0000000000000001"),
    ("CLUSTER", "DefaultCluster"),
    ("MSG_REGION", "DefaultRegion"),
    ("TRACE_ON", "true"),
    ("TRACE_CONTEXT", "00-abc-def-01"),
    ("INSTANCE_ID", "MQ_INST_1"),
    ("CORRECTION_FLAG", "1"),
    ("__BORNHOST", "10.0.0.7:51234"),
    ("BORN_TIMESTAMP", "1700000000000"),
    ("EXTEND_UNIQ_INFO", "x"),
    ("INNER_NUM", "1"),
    ("INNER_BASE", "0"),
    ("DUP_INFO", "x"),
    ("CORRELATION_ID", "c-1"),
    ("REPLY_TO_CLIENT", "client-1"),
    ("TTL", "3000"),
    ("MSG_TYPE", "reply"),
    ("TIMER_ENQUEUE_MS", "1"),
    ("TIMER_OUT_MS", "1"),
    ("TIMER_ROLL_TIMES", "0"),
    ("DLQ_ORIGIN_TOPIC", "orders"),
    ("__CRC32#", "123"),
    ("__RMQ.TRANSIENT.TOPIC_SYS_FLAG", "0"),
];

#[test]
fn fidelity_of_fields_and_properties() {
    let body: &[u8] = &[0x00, 0xff, 0xfe, b'{', 0x80, 0x01, b'}'];
    let mut builder = RecordBuilder::new().body(body).born_host("10.0.0.7:51234");
    for (name, value) in SYSTEM_PROPERTIES {
        builder = builder.prop(name, value);
    }
    let record = builder
        .prop("env", r#"[{"name":"gray"}]"#)
        .prop("orderId", "o-1")
        .prop("tags", "lower-case is a user property")
        .prop("中文", "值")
        .build();

    let msg = run(&record, &[T::Normal], &TranslateOptions::default()).unwrap();

    assert_eq!(msg.topic, TOPIC);
    assert_eq!(&msg.body[..], body, "body byte-identical");
    assert_eq!(msg.tag.as_deref(), Some("TagA"));
    assert_eq!(msg.keys, vec!["k1".to_string(), "k2".to_string()]);
    assert_eq!(msg.message_id, "7F00000100002A9F0000000000000009");
    assert_eq!(msg.born_timestamp_ms, BORN_TIMESTAMP_MS);
    assert_eq!(msg.born_host, "10.0.0.7", "IP without the ephemeral port");
    assert_eq!(msg.kind, MessageKind::Normal);

    let want: BTreeMap<String, String> = [
        ("env", r#"[{"name":"gray"}]"#),
        ("orderId", "o-1"),
        ("tags", "lower-case is a user property"),
        ("中文", "值"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        msg.user_properties, want,
        "user properties only, env tag verbatim"
    );
    for (name, _) in SYSTEM_PROPERTIES {
        assert!(is_reserved_property(name), "{name} must be reserved");
    }
}

#[test]
fn message_id_falls_back_to_offset_msg_id() {
    let record = RecordBuilder::new().build();
    let msg = run(&record, &[T::Normal], &TranslateOptions::default()).unwrap();
    assert_eq!(msg.message_id, OFFSET_MSG_ID);

    let record = RecordBuilder::new()
        .uniq_key("AC11000100002A9F0000000000000777")
        .build();
    let msg = run(&record, &[T::Normal], &TranslateOptions::default()).unwrap();
    assert_eq!(msg.message_id, "AC11000100002A9F0000000000000777");
}

#[test]
fn absent_tag_keys_and_ipv6_born_host() {
    let record = base()
        .prop("TAGS", "")
        .prop("KEYS", "   ")
        .born_host("[2001:db8::7]:40000")
        .build();
    let msg = run(&record, &[T::Normal], &TranslateOptions::default()).unwrap();
    assert_eq!(msg.tag, None);
    assert!(msg.keys.is_empty());
    assert_eq!(msg.born_host, "2001:db8::7");
    assert!(msg.user_properties.is_empty());
}

#[test]
fn provenance_off_by_default_and_on_when_named() {
    let record = base()
        .prop("env", "gray")
        .prop("bridge_source_queue", "user value, overridden")
        .queue_offset(12_345)
        .build();

    let off = run(&record, &[T::Normal], &TranslateOptions::default()).unwrap();
    assert_eq!(off.user_properties.len(), 2);
    assert_eq!(
        off.user_properties["bridge_source_queue"],
        "user value, overridden"
    );

    let on = TranslateOptions {
        provenance: Some(ProvenanceNames::default()),
        source_cluster: "legacy-4x".into(),
        ..TranslateOptions::default()
    };
    let msg = run(&record, &[T::Normal], &on).unwrap();
    let want: BTreeMap<String, String> = [
        ("env", "gray"),
        ("bridge_source_cluster", "legacy-4x"),
        ("bridge_source_broker", "broker-a"),
        ("bridge_source_queue", "3"),
        ("bridge_source_offset", "12345"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(msg.user_properties, want);

    let custom = TranslateOptions {
        provenance: Some(ProvenanceNames {
            cluster: "src_cluster".into(),
            broker: "src_broker".into(),
            queue: "src_queue".into(),
            offset: "src_offset".into(),
            instance: "src_instance".into(),
        }),
        source_cluster: "c1".into(),
        ..TranslateOptions::default()
    };
    let msg = run(&record, &[T::Normal], &custom).unwrap();
    assert_eq!(msg.user_properties["src_cluster"], "c1");
    assert_eq!(msg.user_properties["src_broker"], "broker-a");
    assert_eq!(msg.user_properties["src_queue"], "3");
    assert_eq!(msg.user_properties["src_offset"], "12345");
    assert_eq!(msg.user_properties.len(), 6);

    // Instances sharing the estate also name the one that forwarded it.
    let shared = TranslateOptions {
        instance: "host-b@rmq-bridge@42".into(),
        ..custom
    };
    let msg = run(&record, &[T::Normal], &shared).unwrap();
    assert_eq!(msg.user_properties["src_instance"], "host-b@rmq-bridge@42");
    assert_eq!(msg.user_properties.len(), 7);
}

#[test]
fn provenance_and_properties_do_not_depend_on_kind() {
    let on = TranslateOptions {
        provenance: Some(ProvenanceNames::default()),
        source_cluster: "c".into(),
        ..TranslateOptions::default()
    };
    let record = base()
        .sys_flag(COMMIT)
        .prop("PGROUP", "pg")
        .prop("env", "gray")
        .build();
    let msg = run(&record, &[T::Transaction], &on).unwrap();
    assert_eq!(msg.kind, MessageKind::Transaction);
    assert_eq!(
        msg.user_properties.get("env").map(String::as_str),
        Some("gray")
    );
    assert!(!msg.user_properties.contains_key("PGROUP"));
    assert_eq!(msg.user_properties.len(), 5);
}

#[test]
fn source_kind_classification() {
    let table: &[(MessageRecord, Result<SourceKind, HalfState>)] = &[
        (base().build(), Ok(SourceKind::Plain)),
        (
            base().prop("__SHARDINGKEY", "k").build(),
            Ok(SourceKind::Ordered),
        ),
        (
            base().prop("REAL_TOPIC", "t").build(),
            Ok(SourceKind::Delayed),
        ),
        (base().sys_flag(COMMIT).build(), Ok(SourceKind::Transaction)),
        (base().sys_flag(PREPARED).build(), Err(HalfState::Prepared)),
        (
            base().sys_flag(ROLLBACK).build(),
            Err(HalfState::RolledBack),
        ),
        (
            base().prop("TRAN_MSG", "TRUE").build(),
            Err(HalfState::Prepared),
        ),
        (
            base().prop("TRAN_MSG", "false").build(),
            Ok(SourceKind::Plain),
        ),
    ];
    for (i, (record, want)) in table.iter().enumerate() {
        assert_eq!(source_kind(record), *want, "row {i}");
    }
}

#[test]
fn reasons_name_the_topic_and_the_remedy() {
    fn msg_of(types: &[T]) -> Untranslatable {
        run(&base().build(), types, &TranslateOptions::default()).unwrap_err()
    }

    let e = msg_of(&[T::Transaction]);
    assert_eq!(e.reason_code(), "type_mismatch");
    let text = e.to_string();
    assert!(text.contains("`orders-v5`"), "{text}");
    assert!(text.contains("accepts TRANSACTION only"), "{text}");
    assert!(text.contains("a plain (normal) message"), "{text}");
    assert!(text.contains("NORMAL"), "{text}");

    let e = msg_of(&[T::Delay]);
    let text = e.to_string();
    assert!(text.contains("accepts DELAY only"), "{text}");
    assert!(text.contains("Only delay/scheduled"), "{text}");

    let e = msg_of(&[]);
    assert_eq!(e.reason_code(), "unknown_target_type");
    let text = e.to_string();
    assert!(
        text.contains("`orders-v5`") && text.contains("message.type="),
        "{text}"
    );

    let half = base().sys_flag(PREPARED).build();
    let e = run(&half, &[T::Normal], &TranslateOptions::default()).unwrap_err();
    assert_eq!(e.reason_code(), "half_transaction");
    let text = e.to_string();
    assert!(
        text.contains("prepared (uncommitted)") && text.contains("never forwarded"),
        "{text}"
    );
    assert!(
        text.contains("7F00000100002A9F0000000000000001"),
        "names the message: {text}"
    );
}

#[test]
fn accepted_types_display() {
    assert_eq!(
        AcceptedTypes::from_route(&[]).to_string(),
        "no message type"
    );
    assert_eq!(
        AcceptedTypes::from_route(&[T::Transaction, T::Normal]).to_string(),
        "NORMAL, TRANSACTION"
    );
    assert!(AcceptedTypes::from_route(&[]).is_empty());
    assert!(!AcceptedTypes::from_route(&[T::Fifo]).is_empty());
}

#[test]
fn environment_of_reads_the_configured_property() {
    let table: &[(&str, Option<&str>)] = &[
        ("gray", Some("gray")),
        (r#"{"name":"gray"}"#, Some("gray")),
        (r#"[{"name":"gray"}]"#, Some("gray")),
        ("", None),
        ("[]", None),
    ];
    for (value, want) in table {
        let record = base().prop("x-env", value).build();
        assert_eq!(
            environment_of(&record, "x-env").as_deref(),
            *want,
            "{value:?}"
        );
        assert_eq!(environment_of(&record, "env"), None, "other property name");
    }
}

#[test]
fn the_origin_stamp_is_added_kept_and_recognised_in_both_directions() {
    use crate::translate::origin::OriginStamp;
    let stamp = |source: &str, destination: &str| TranslateOptions {
        origin: Some(OriginStamp {
            property: "bridge_origin".into(),
            source: source.into(),
            destination: destination.into(),
        }),
        ..TranslateOptions::default()
    };
    let (forward, reverse) = (stamp("4.x", "5.x"), stamp("5.x", "4.x"));
    // Born on 4.x: forwarded with the stamp, never sent back.
    let born = base().prop("env", "gray").build();
    assert!(!looped(&born, &forward));
    let on_5x = run(&born, &[T::Normal], &forward).unwrap();
    // The stamp is bound to the message's own id (origin.rs).
    assert_eq!(
        on_5x.user_properties["bridge_origin"],
        format!("4.x#{}", born.message_id())
    );
    assert_eq!(on_5x.user_properties["env"], "gray");
    let seen_on_5x = base()
        .prop("env", "gray")
        .prop("bridge_origin", &on_5x.user_properties["bridge_origin"])
        .build();
    assert!(
        looped(&seen_on_5x, &reverse),
        "4.x -> 5.x -> 4.x is refused"
    );
    // A new message (new id) that copied those user properties is not.
    let copy = base()
        .uniq_key("7F00000100002A9F00000000000000FF")
        .prop("bridge_origin", &on_5x.user_properties["bridge_origin"])
        .build();
    assert!(!looped(&copy, &reverse), "a copy is not a loop");
    // Born on 5.x: sent to 4.x stamped, and the forward route skips it.
    let on_4x = run(&born, &[T::Normal, T::Fifo], &reverse).unwrap();
    assert_eq!(
        on_4x.user_properties["bridge_origin"],
        format!("5.x#{}", born.message_id())
    );
    let seen_on_4x = base().prop("bridge_origin", "5.x").build();
    assert!(
        looped(&seen_on_4x, &forward),
        "5.x -> 4.x -> 5.x is refused"
    );
    // Without loop prevention nothing is stamped or skipped.
    let off = TranslateOptions::default();
    assert!(!looped(&seen_on_4x, &off));
    assert!(!run(&born, &[T::Normal], &off)
        .unwrap()
        .user_properties
        .contains_key("bridge_origin"));
}

#[test]
fn a_5x_timer_or_transaction_read_back_goes_to_4x_as_normal_without_timer_fields() {
    // A due 5.x timer message as a Remoting pull of the 5.x topic sees it.
    let timer = base()
        .prop("TIMER_DELIVER_MS", "1700000000000")
        .prop("seq", "1")
        .build();
    let msg = run(&timer, &[T::Normal, T::Fifo], &TranslateOptions::default()).unwrap();
    assert_eq!(msg.kind, MessageKind::Normal);
    assert!(!msg.user_properties.contains_key("TIMER_DELIVER_MS"));
    assert_eq!(msg.user_properties["seq"], "1");
    let committed = base().sys_flag(COMMIT).prop("PGROUP", "pg").build();
    let msg = run(
        &committed,
        &[T::Normal, T::Fifo],
        &TranslateOptions::default(),
    )
    .unwrap();
    assert_eq!(msg.kind, MessageKind::Normal);
    // A 5.x FIFO message keeps its group.
    let fifo = base().prop("__SHARDINGKEY", "order-7").build();
    let msg = run(&fifo, &[T::Normal, T::Fifo], &TranslateOptions::default()).unwrap();
    assert_eq!(
        msg.kind,
        MessageKind::Fifo {
            group: "order-7".into()
        }
    );
}
