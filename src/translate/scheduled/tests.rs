use std::time::Duration;

use crate::grpc::{MessageKind, TopicMessageType};
use crate::translate::test_support::RecordBuilder;
use crate::translate::{SourceContext, TranslateOptions, Untranslatable};

use super::*;

const STORE_MS: i64 = 1_700_000_000_000;

fn scheduled(real_topic: &str) -> RecordBuilder {
    RecordBuilder::new()
        .uniq_key("UNIQ-1")
        .prop("REAL_TOPIC", real_topic)
        .prop("REAL_QID", "2")
        .prop("DELAY", "4")
        .prop("TAGS", "paid")
        .prop("color", "red")
        .store_timestamp(STORE_MS)
}

#[test]
fn default_table_is_the_4x_one() {
    let levels = DelayLevels::default();
    assert_eq!(levels.len(), 18);
    assert_eq!(levels.delay(1), Some(Duration::from_secs(1)));
    assert_eq!(levels.delay(4), Some(Duration::from_secs(30)));
    assert_eq!(levels.delay(5), Some(Duration::from_secs(60)));
    assert_eq!(levels.delay(17), Some(Duration::from_secs(3_600)));
    assert_eq!(levels.delay(18), Some(Duration::from_secs(7_200)));
    assert_eq!(levels.delay(0), None);
    assert_eq!(levels.delay(19), None);
    assert_eq!(levels.delay(-1), None);
    assert_eq!(levels.to_string(), DEFAULT_DELAY_LEVELS);
}

#[test]
fn bad_table_entries_are_named() {
    let bad = DelayLevels::parse("1s 5x 10 2d 0s -1m m").expect_err("bad table");
    let named: Vec<(usize, &str)> = bad.iter().map(|b| (b.level, b.entry.as_str())).collect();
    assert_eq!(
        named,
        vec![(2, "5x"), (3, "10"), (5, "0s"), (6, "-1m"), (7, "m")]
    );
    assert!(bad[0].to_string().contains("level 2 `5x`"), "{}", bad[0]);
    assert_eq!(DelayLevels::parse("  ").expect_err("empty")[0].level, 0);
    let ok = DelayLevels::parse("2s 1d").expect("valid");
    assert_eq!(ok.delay(2), Some(Duration::from_secs(86_400)));
}

#[test]
fn deadline_is_store_time_plus_the_level_delay_of_the_queue() {
    let levels = DelayLevels::parse("1s 5s 10s 30s 1m 2m").expect("table");
    // Queue 4 holds level 5 (1 minute).
    let record = scheduled("orders").build();
    let now = STORE_MS + 1_000;
    let decision = decide_pending(&record, 4, "orders", &TagFilter::parse("*"), &levels, now);
    assert_eq!(
        decision,
        PendingDecision::Pending {
            deadline_ms: STORE_MS + 60_000,
            real_queue_id: 2
        }
    );
    // The level comes from the queue, not from a DELAY property.
    let decision = decide_pending(&record, 5, "orders", &TagFilter::parse("*"), &levels, now);
    assert_eq!(
        decision,
        PendingDecision::Pending {
            deadline_ms: STORE_MS + 120_000,
            real_queue_id: 2
        }
    );
}

#[test]
fn due_soon_other_topics_filtered_tags_and_unknown_levels() {
    let levels = DelayLevels::parse("1s 5s 10s 30s 1m").expect("table");
    let record = scheduled("orders").build();
    let all = TagFilter::parse("*");
    // Level 5 = 60 s: due within PENDING_MIN_LEAD of the deadline.
    let deadline = STORE_MS + 60_000;
    let lead = PENDING_MIN_LEAD.as_millis() as i64;
    assert_eq!(
        decide_pending(&record, 4, "orders", &all, &levels, deadline - lead + 1),
        PendingDecision::Due {
            deadline_ms: deadline
        }
    );
    assert!(matches!(
        decide_pending(&record, 4, "orders", &all, &levels, deadline - lead),
        PendingDecision::Pending { .. }
    ));
    assert_eq!(
        decide_pending(&record, 4, "payments", &all, &levels, STORE_MS),
        PendingDecision::NotOurs
    );
    let retry = scheduled("%RETRY%group").build();
    assert_eq!(
        decide_pending(&retry, 4, "orders", &all, &levels, STORE_MS),
        PendingDecision::NotOurs
    );
    let paid_only = TagFilter::parse("shipped || paid");
    assert!(matches!(
        decide_pending(&record, 4, "orders", &paid_only, &levels, STORE_MS),
        PendingDecision::Pending { .. }
    ));
    assert_eq!(
        decide_pending(
            &record,
            4,
            "orders",
            &TagFilter::parse("shipped"),
            &levels,
            STORE_MS
        ),
        PendingDecision::NotOurs
    );
    assert_eq!(
        decide_pending(&record, 5, "orders", &all, &levels, STORE_MS),
        PendingDecision::UnknownLevel {
            level: 6,
            table_len: 5
        }
    );
}

#[test]
fn the_key_is_shared_by_the_schedule_record_and_the_real_copy() {
    let pending = scheduled("orders").offset_msg_id("AAAA").build();
    // The broker's copy: new offset id, new store time, DELAY cleared.
    let mut copy = pending.clone();
    copy.offset_msg_id = "BBBB".into();
    copy.store_timestamp_ms += 60_000;
    copy.properties = crate::remoting::Properties::new();
    for (k, v) in pending.properties.iter() {
        if k != "DELAY" {
            copy.properties.insert(k, v);
        }
    }
    assert_eq!(forward_key(&pending), "u:UNIQ-1");
    assert_eq!(forward_key(&pending), forward_key(&copy));
    assert!(passed_schedule_topic(&copy));
    assert!(!passed_schedule_topic(&RecordBuilder::new().build()));

    // No UNIQ_KEY: born time, host and body identify it.
    let bare = RecordBuilder::new()
        .prop("REAL_TOPIC", "orders")
        .body(b"x")
        .build();
    let mut bare_copy = bare.clone();
    bare_copy.offset_msg_id = "CCCC".into();
    assert_eq!(forward_key(&bare), forward_key(&bare_copy));
    let other_body = RecordBuilder::new().body(b"y").build();
    assert_ne!(forward_key(&bare), forward_key(&other_body));
}

#[test]
fn pending_translates_to_delay_at_the_original_deadline() {
    let record = scheduled("orders").build();
    let ctx = SourceContext {
        broker_name: "broker-a",
        queue_id: 4,
        now_ms: STORE_MS + 1_000,
    };
    let opts = TranslateOptions::default();
    let deadline = STORE_MS + 60_000;
    let msg = translate_pending(
        &record,
        deadline,
        "orders5",
        &[TopicMessageType::Delay],
        &ctx,
        &opts,
    )
    .expect("translated");
    assert_eq!(
        msg.kind,
        MessageKind::Delay {
            delivery_timestamp_ms: deadline
        }
    );
    assert_eq!(msg.message_id, "UNIQ-1");
    assert_eq!(msg.tag.as_deref(), Some("paid"));
    assert_eq!(msg.body, record.body);
    assert_eq!(msg.born_timestamp_ms, record.born_timestamp_ms);
    // Reserved names never leak as user properties.
    assert_eq!(
        msg.user_properties.keys().cloned().collect::<Vec<_>>(),
        vec!["color".to_string()]
    );

    // A deadline already past is kept: the send layer clamps only for a
    // target that refused a past time (pipeline/send.rs).
    let late = SourceContext {
        now_ms: deadline + 10_000,
        ..ctx
    };
    let msg = translate_pending(
        &record,
        deadline,
        "orders5",
        &[TopicMessageType::Delay],
        &late,
        &opts,
    )
    .expect("translated");
    assert_eq!(
        msg.kind,
        MessageKind::Delay {
            delivery_timestamp_ms: deadline
        }
    );

    // A target that is not DELAY would make it due at once: refused.
    let err = translate_pending(
        &record,
        deadline,
        "orders5",
        &[TopicMessageType::Normal],
        &ctx,
        &opts,
    )
    .expect_err("NORMAL target");
    assert!(matches!(err, Untranslatable::TypeMismatch { .. }), "{err}");
    let err =
        translate_pending(&record, deadline, "orders5", &[], &ctx, &opts).expect_err("untyped");
    assert!(
        matches!(err, Untranslatable::UnknownTargetType { .. }),
        "{err}"
    );
}
