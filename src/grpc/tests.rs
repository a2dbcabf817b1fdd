//! Tests of the publisher against the in-process fake `MessagingService`
//! (`super::fake`). Tests against the real peers live in `tests/`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::fake::*;
use super::metadata;
use super::pb;
use super::*;

#[tokio::test]
async fn headers_present_and_signature_correct() {
    let fake = Fake::default();
    fake.st().accept = vec![pb::MessageType::Normal];
    let addr = start_fake(fake.clone()).await;
    let mut config = GrpcClientConfig::new(vec![addr.to_string()]);
    config.client_id = "bridge@42@0@xyz".into();
    config.namespace = "ns-prod".into();
    config.credentials = Some(GrpcCredentials {
        access_key: "AK123".into(),
        secret_key: "SK456".into(),
        security_token: Some("STS-TOKEN".into()),
    });
    let p = Publisher::connect_with(config, Some(fast_retry()))
        .await
        .expect("connect");
    p.send(&message("orders", "ID-1", MessageKind::Normal))
        .await
        .expect("send");
    p.send(&message("orders", "ID-2", MessageKind::Normal))
        .await
        .expect("send");

    let st = fake.st();
    let sends: Vec<_> = st
        .calls
        .iter()
        .filter(|(n, _)| *n == "SendMessage")
        .collect();
    assert_eq!(sends.len(), 2);
    for (_, m) in &st.calls {
        assert_eq!(header(m, "x-mq-client-id"), "bridge@42@0@xyz");
        assert_eq!(header(m, "x-mq-language"), "JAVA");
        assert_eq!(header(m, "x-mq-protocol"), "v2");
        assert!(!header(m, "x-mq-client-version").is_empty());
        assert_eq!(header(m, "x-mq-namespace"), "ns-prod");
        assert_eq!(header(m, "x-mq-session-token"), "STS-TOKEN");
        let dt = header(m, "x-mq-date-time");
        assert_eq!(dt.len(), 16, "{dt}");
        assert!(dt.as_bytes()[8] == b'T' && dt.ends_with('Z'));
        assert_eq!(
            header(m, "authorization"),
            format!(
                "MQv2-HMAC-SHA1 Credential=AK123, SignedHeaders=x-mq-date-time, Signature={}",
                metadata::signature("SK456", dt)
            )
        );
        assert_eq!(header(m, "x-mq-request-id").len(), 36);
    }
    assert_ne!(
        header(&sends[0].1, "x-mq-request-id"),
        header(&sends[1].1, "x-mq-request-id")
    );
    // Resources carry the namespace too.
    let topic = st.sends[0].messages[0].topic.clone().unwrap_or_default();
    assert_eq!(topic.resource_namespace, "ns-prod");
}

#[tokio::test]
async fn settings_handshake_heartbeat_and_termination() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    assert_eq!(p.max_body_size(), 1024 * 1024, "learned from the server");
    p.send(&message("orders", "ID-1", MessageKind::Normal))
        .await
        .expect("send");
    {
        let st = fake.st();
        let first = &st.settings[0];
        assert_eq!(first.client_type, Some(pb::ClientType::Producer as i32));
        assert!(first.request_timeout.is_some());
        assert_eq!(
            first.user_agent.as_ref().map(|u| u.language),
            Some(pb::Language::Java as i32)
        );
        // After the first send of a topic the settings list it.
        let last = st.settings.last().cloned().unwrap_or_default();
        match last.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => {
                assert_eq!(p.topics.len(), 1);
                assert_eq!(p.topics[0].name, "orders");
            }
            other => panic!("unexpected pub_sub {other:?}"),
        }
        assert!(st
            .heartbeats
            .iter()
            .any(|h| h.client_type == pb::ClientType::Producer as i32 && h.group.is_none()));
    }
    // A body above the server's limit is refused locally.
    let mut big = message("orders", "ID-BIG", MessageKind::Normal);
    big.body = Bytes::from(vec![b'x'; 1024 * 1024 + 1]);
    let err = p.send(&big).await.unwrap_err();
    assert!(matches!(err, PublishError::BodyTooLarge { .. }) && err.is_permanent());

    p.shutdown().await;
    assert_eq!(fake.st().terminations.len(), 1);
    let err = p
        .send(&message("orders", "ID-2", MessageKind::Normal))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Shutdown { .. }));
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn each_kind_maps_to_the_right_wire_fields() {
    let (fake, p, _) = setup(&ALL).await;
    let kinds = [
        MessageKind::Normal,
        MessageKind::Fifo {
            group: "order-7".into(),
        },
        MessageKind::Delay {
            delivery_timestamp_ms: 1_900_000_000_000,
        },
        MessageKind::Transaction,
    ];
    for (i, kind) in kinds.iter().enumerate() {
        let r = p
            .send(&message("mixed", &format!("ID-{i}"), kind.clone()))
            .await
            .expect("send");
        assert_eq!(r.message_id, format!("ID-{i}"));
        assert!((0..4).contains(&r.queue_id));
    }
    let st = fake.st();
    assert_eq!(st.sends.len(), 4);
    for (req, kind) in st.sends.iter().zip(kinds.iter()) {
        assert_eq!(req.messages.len(), 1);
        let m = &req.messages[0];
        let sys = m.system_properties.clone().unwrap_or_default();
        assert_eq!(&m.body[..], b"hello");
        assert_eq!(sys.tag.as_deref(), Some("TagA"));
        assert_eq!(sys.keys, vec!["k1".to_string()]);
        assert_eq!(sys.born_host, "10.1.2.3");
        assert_eq!(
            sys.born_timestamp,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000
            })
        );
        assert_eq!(sys.body_encoding, pb::Encoding::Identity as i32);
        assert_eq!(
            sys.body_digest.as_ref().map(|d| d.checksum.as_str()),
            Some("3610A686")
        );
        assert_eq!(
            m.user_properties.get("gray").map(String::as_str),
            Some("true")
        );
        let expected_type = match kind {
            MessageKind::Normal => pb::MessageType::Normal,
            MessageKind::Fifo { .. } => pb::MessageType::Fifo,
            MessageKind::Delay { .. } => pb::MessageType::Delay,
            MessageKind::Transaction => pb::MessageType::Transaction,
        };
        assert_eq!(sys.message_type, expected_type as i32);
        match kind {
            MessageKind::Fifo { group } => {
                assert_eq!(sys.message_group.as_deref(), Some(group.as_str()));
                assert_eq!(
                    sys.queue_id,
                    Some(super::client::fifo_queue_index(group, 4) as i32),
                    "FIFO queue chosen by the Java client's group hash"
                );
            }
            MessageKind::Delay {
                delivery_timestamp_ms,
            } => assert_eq!(
                sys.delivery_timestamp.as_ref().map(|t| t.seconds * 1000),
                Some(*delivery_timestamp_ms)
            ),
            _ => assert!(sys.message_group.is_none() && sys.delivery_timestamp.is_none()),
        }
    }
}

#[tokio::test]
async fn transaction_prepares_then_commits() {
    let (fake, p, _) = setup(&[pb::MessageType::Transaction]).await;
    let mut tx = message("tx-topic", "TX-1", MessageKind::Transaction);
    tx.born_timestamp_ms = crate::checkpoint::now_ms() - 120_000;
    let r = p.send(&tx).await.expect("send");
    assert_eq!(r.transaction_id.as_deref(), Some("tx-TX-1"));
    let st = fake.st();
    let order: Vec<_> = st
        .calls
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n == "SendMessage" || *n == "EndTransaction")
        .collect();
    assert_eq!(order, vec!["SendMessage", "EndTransaction"]);
    let sys = st.sends[0].messages[0]
        .system_properties
        .clone()
        .unwrap_or_default();
    assert_eq!(sys.message_type, pb::MessageType::Transaction as i32);
    // Born two minutes ago: the window covers its age (message.rs).
    let window = sys
        .orphaned_transaction_recovery_duration
        .map_or(0, |d| d.seconds);
    assert!((150..=152).contains(&window), "{window}");
    let end = &st.end_transactions[0];
    assert_eq!(end.resolution, pb::TransactionResolution::Commit as i32);
    assert_eq!(end.source, pb::TransactionSource::SourceClient as i32);
    assert_eq!(end.transaction_id, "tx-TX-1");
    assert_eq!(end.message_id, "TX-1");
    assert_eq!(
        end.topic.as_ref().map(|t| t.name.as_str()),
        Some("tx-topic")
    );
}

#[tokio::test]
async fn retriable_failures_are_retried() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    fake.st().script = VecDeque::from([
        Script::Grpc(tonic::Code::Unavailable),
        Script::V2(pb::Code::TooManyRequests),
    ]);
    p.send(&message("orders", "ID-1", MessageKind::Normal))
        .await
        .expect("third attempt succeeds");
    assert_eq!(fake.st().sends.len(), 3);

    // Exhausted retries: a retriable, not permanent, error.
    fake.st().script = VecDeque::from([
        Script::V2(pb::Code::MasterPersistenceTimeout),
        Script::V2(pb::Code::ProxyTimeout),
        Script::V2(pb::Code::HaNotAvailable),
    ]);
    let err = p
        .send(&message("orders", "ID-2", MessageKind::Normal))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Retriable { attempts: 3, .. }),
        "{err}"
    );
    assert!(!err.is_permanent());
    assert!(err.to_string().contains("ID-2") && err.to_string().contains("orders"));
}

#[tokio::test]
async fn permanent_rejection_is_not_retried() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    fake.st().script = VecDeque::from([Script::V2(pb::Code::MessagePropertyConflictWithType)]);
    let err = p
        .send(&message("orders", "ID-1", MessageKind::Normal))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.code_label(), "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE");
    assert_eq!(fake.st().sends.len(), 1);

    fake.st().script = VecDeque::from([Script::V2(pb::Code::TopicNotFound)]);
    let err = p
        .send(&message("orders", "ID-2", MessageKind::Normal))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::TopicNotFound { .. }));
    assert!(
        !err.is_permanent(),
        "a missing topic is waited for, not quarantined"
    );
}

#[tokio::test]
async fn accepted_types_come_from_the_route() {
    let (fake, p, _) = setup(&[pb::MessageType::Fifo]).await;
    assert_eq!(
        p.accepted_types("fifo-topic").await.expect("route"),
        vec![TopicMessageType::Fifo]
    );
    let queries = fake.st().route_queries;
    // Cached: no second QueryRoute.
    p.accepted_types("fifo-topic").await.expect("route");
    assert_eq!(fake.st().route_queries, queries);
    // A NORMAL message is refused locally, nothing is sent.
    let err = p
        .send(&message("fifo-topic", "ID-1", MessageKind::Normal))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::TypeMismatch { .. }) && err.is_permanent());
    assert!(err.to_string().contains("FIFO"));
    assert!(fake.st().sends.is_empty());
    // The dry-run check reports the same.
    assert!(p
        .check(&message("fifo-topic", "ID-1", MessageKind::Normal))
        .await
        .is_err());
}

#[tokio::test]
async fn batch_of_normal_messages_is_one_request() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    let batch: Vec<_> = (0..3)
        .map(|i| message("orders", &format!("ID-{i}"), MessageKind::Normal))
        .collect();
    let receipts = p.send_batch(&batch).await.expect("batch");
    assert_eq!(receipts.len(), 3);
    assert_eq!(receipts[2].message_id, "ID-2");
    let st = fake.st();
    assert_eq!(st.sends.len(), 1);
    assert_eq!(st.sends[0].messages.len(), 3);
}

#[tokio::test]
async fn receive_and_ack_use_a_consumer_session() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    let got = p
        .receive("orders", "verifier", 8, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "RECEIVED-1");
    assert_eq!(got[0].receipt_handle, "handle-1");
    p.ack("orders", "verifier", &got).await.expect("ack");
    let st = fake.st();
    assert!(st
        .settings
        .iter()
        .any(|s| s.client_type == Some(pb::ClientType::SimpleConsumer as i32)));
    let (_, m) = st
        .calls
        .iter()
        .find(|(n, _)| *n == "ReceiveMessage")
        .expect("receive call");
    assert_ne!(header(m, "x-mq-client-id"), "test-host@1@0@abc");
}

#[tokio::test]
async fn a_single_shot_publisher_starts_while_5x_is_down_and_works_once_it_is_up() {
    // A port with nothing listening (yet).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut config = GrpcClientConfig::new(vec![addr.to_string()]);
    config.client_id = "test-host@1@0@late".into();
    config.request_timeout = Duration::from_millis(300);
    // The strict connect fails fast, as `check --online` wants.
    assert!(Publisher::connect(config.clone()).await.is_err());
    // The daemon's publisher comes up anyway and keeps trying.
    let p = tokio::time::timeout(
        Duration::from_secs(5),
        Publisher::connect_single_shot(config),
    )
    .await
    .expect("returns within the timeout")
    .expect("stays up while 5.x is down");
    assert!(p.accepted_types("t").await.is_err(), "nothing answers yet");
    let fake = super::fake::Fake::default();
    fake.st().accept = vec![pb::MessageType::Normal];
    super::fake::start_fake_on(fake, &addr.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(types) = p.accepted_types("t").await {
            assert_eq!(types, vec![TopicMessageType::Normal]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "5.x came up but the publisher never reached it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A check-back of a half message whose COMMIT was answered OK (then lost
/// between proxy and broker) commits it; one whose COMMIT failed (the
/// pipeline re-sends the message) rolls it back.
#[tokio::test]
async fn orphan_check_backs_commit_what_was_committed_and_roll_back_what_failed() {
    let (fake, p, _) = setup(&[pb::MessageType::Transaction]).await;
    p.send(&message("tx-topic", "TX-OK", MessageKind::Transaction))
        .await
        .expect("committed");
    fake.st().refuse_end_transaction = Some(tonic::Code::Unavailable);
    assert!(p
        .send(&message("tx-topic", "TX-FAIL", MessageKind::Transaction))
        .await
        .is_err());
    fake.st().refuse_end_transaction = None;
    let telemetry = fake.st().telemetry.clone().expect("telemetry stream open");
    for id in ["TX-OK", "TX-FAIL", "TX-UNKNOWN"] {
        let check = pb::TelemetryCommand {
            status: None,
            command: Some(
                pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                    pb::RecoverOrphanedTransactionCommand {
                        message: Some(pb::Message {
                            topic: Some(pb::Resource {
                                name: "tx-topic".into(),
                                ..Default::default()
                            }),
                            system_properties: Some(pb::SystemProperties {
                                message_id: id.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        transaction_id: format!("tx-{id}"),
                    },
                ),
            ),
        };
        telemetry.send(Ok(check)).await.expect("push check-back");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let checks = loop {
        let checks: Vec<(String, i32)> = fake
            .st()
            .end_transactions
            .iter()
            .filter(|e| e.source == pb::TransactionSource::SourceServerCheck as i32)
            .map(|e| (e.message_id.clone(), e.resolution))
            .collect();
        if checks.len() == 3 || std::time::Instant::now() > deadline {
            break checks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resolution = |id: &str| checks.iter().find(|(m, _)| m == id).map(|(_, r)| *r);
    let commit = Some(pb::TransactionResolution::Commit as i32);
    let rollback = Some(pb::TransactionResolution::Rollback as i32);
    assert_eq!(resolution("TX-OK"), commit, "{checks:?}");
    assert_eq!(resolution("TX-FAIL"), rollback, "{checks:?}");
    assert_eq!(resolution("TX-UNKNOWN"), commit, "{checks:?}");
}

/// An answer that does not positively acknowledge the message sent (no
/// status, CODE_UNSPECIFIED, another message's id, a wrong number of
/// entries) is a failure the pipeline may count as a refusal, never an
/// acceptance.
#[tokio::test]
async fn an_answer_that_does_not_acknowledge_the_message_is_not_accepted() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    for (i, mangle) in [
        Mangle::NoStatus,
        Mangle::EntryWithoutStatus,
        Mangle::EntryUnspecified,
        Mangle::OtherMessageId,
        Mangle::ExtraEntry,
    ]
    .into_iter()
    .enumerate()
    {
        // Every attempt (fast_retry makes three) gets the spoilt answer.
        fake.st().script = VecDeque::from(vec![Script::Mangle(mangle); 3]);
        let id = format!("ID-{i}");
        let sent = p.send(&message("orders", &id, MessageKind::Normal)).await;
        let err = match sent {
            Ok(receipt) => panic!("{mangle:?} was taken as accepted: {receipt:?}"),
            Err(err) => err,
        };
        assert_eq!(err.disposition(), Disposition::Suspect, "{mangle:?}: {err}");
        assert!(err.to_string().contains(&id), "{err}");
        assert!(fake.st().script.is_empty(), "{mangle:?} was retried");
    }
    // A later good answer is accepted.
    p.send(&message("orders", "ID-ok", MessageKind::Normal))
        .await
        .expect("a conforming answer");
}

#[tokio::test]
async fn a_packed_answer_naming_other_messages_is_not_accepted() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    let batch = [
        message("orders", "B-1", MessageKind::Normal),
        message("orders", "B-2", MessageKind::Normal),
    ];
    for mangle in [Mangle::OtherMessageId, Mangle::EntryWithoutStatus] {
        fake.st().script = VecDeque::from(vec![Script::Mangle(mangle); 3]);
        let err = p.send_batch(&batch).await.unwrap_err();
        assert_eq!(err.disposition(), Disposition::Suspect, "{mangle:?}: {err}");
    }
}

/// A gRPC status that refuses this one request (RESOURCE_EXHAUSTED for an
/// oversized message) must reach the poison rule; an outage must not.
#[tokio::test]
async fn a_grpc_refusal_of_the_request_is_suspect_and_an_outage_transient() {
    let (fake, p, _) = setup(&[pb::MessageType::Normal]).await;
    for (code, want) in [
        (tonic::Code::ResourceExhausted, Disposition::Suspect),
        (tonic::Code::InvalidArgument, Disposition::Suspect),
        (tonic::Code::Unavailable, Disposition::Transient),
        (tonic::Code::DeadlineExceeded, Disposition::Transient),
    ] {
        fake.st().script = VecDeque::from(vec![Script::Grpc(code); 3]);
        let err = p
            .send(&message("orders", "ID-1", MessageKind::Normal))
            .await
            .unwrap_err();
        assert_eq!(err.disposition(), want, "{code:?}: {err}");
        assert!(err.to_string().contains("ID-1"), "{err}");
    }
}

/// A Java proxy declares no message type (UNSPECIFIED) for a topic while it
/// cannot read the topic's config from its broker (a broker restart): that
/// answer is asked again, never kept as the topic's types (chaos run of
/// 2026-12-07: 448 NORMAL messages quarantined as "no accepted type").
#[tokio::test]
async fn a_route_without_declared_types_is_asked_again() {
    let (fake, p, _) = setup(&[]).await;
    assert!(p.accepted_types("orders").await.expect("route").is_empty());
    let queries = fake.st().route_queries;
    assert!(p.accepted_types("orders").await.expect("route").is_empty());
    assert!(
        fake.st().route_queries > queries,
        "an undeclared type must not be cached"
    );
    fake.st().accept = vec![pb::MessageType::Normal];
    assert_eq!(
        p.accepted_types("orders").await.expect("route"),
        vec![TopicMessageType::Normal]
    );
}

/// A restarted bridge that has nothing left to send to a transactional
/// topic must still be the topic's producer at the proxy: the 5.x broker's
/// check-back of a half message finds its producer by the topic (Java
/// proxy: "check transaction failed, channel is empty"), and a half message
/// nobody answers is dropped after 15 checks.
#[tokio::test]
async fn a_declared_topic_is_announced_without_a_send() {
    let (fake, p, _) = setup(&[pb::MessageType::Transaction]).await;
    let heartbeats = fake.st().heartbeats.len();
    p.declare_topic("payments");
    let announced = |st: &State| {
        st.settings.iter().any(|s| match &s.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => {
                p.topics.iter().any(|t| t.name == "payments")
            }
            _ => false,
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !announced(&fake.st()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the settings never listed the declared topic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fake.st().sends.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fake.st().heartbeats.len() == heartbeats {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat after the declaration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
