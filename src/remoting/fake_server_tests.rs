//! In-process fake Remoting servers (tokio `TcpListener`) exercising the
//! client end to end: correlation by opaque with out-of-order answers,
//! timeouts, server-initiated requests, connection loss, reconnect and
//! backoff, and a few typed calls. Tests against the real peers live in
//! `tests/`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::codes::{request, response};
use super::error::{FrameError, RemotingError};
use super::frame::{self, MAX_FRAME_LEN};
use super::header::{RemotingCommand, SerializeType, FLAG_RESPONSE};
use super::message::{encode_record, MessageRecord};
use super::properties::Properties;
use super::{
    AclCredentials, Connection, PullRequest, PullStatus, RemotingClient, RemotingClientConfig,
};

async fn read_cmd(s: &mut TcpStream, buf: &mut BytesMut) -> Option<RemotingCommand> {
    loop {
        match frame::parse(buf, MAX_FRAME_LEN) {
            Ok(c) => return Some(c),
            Err(FrameError::Incomplete) => {}
            Err(_) => return None,
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn write_cmd(s: &mut TcpStream, cmd: &RemotingCommand, kind: SerializeType) {
    let mut out = BytesMut::new();
    frame::encode(cmd, kind, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
}

fn reply(req: &RemotingCommand, code: i32) -> RemotingCommand {
    RemotingCommand::response_to(req, code, None)
}

fn config() -> RemotingClientConfig {
    RemotingClientConfig {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        credentials: None,
        client_id: "test@1".into(),
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[tokio::test]
async fn out_of_order_responses_reach_their_requests() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let a = read_cmd(&mut s, &mut buf).await.unwrap();
        let b = read_cmd(&mut s, &mut buf).await.unwrap();
        // Answer the second first, one with a binary header.
        for (req, kind) in [(b, SerializeType::RocketMq), (a, SerializeType::Json)] {
            let echo = req.ext("n").unwrap_or("").to_string();
            write_cmd(&mut s, &reply(&req, 0).with_ext("n", echo), kind).await;
        }
        let _ = read_cmd(&mut s, &mut buf).await;
    });
    let client = RemotingClient::new(config());
    let t = Duration::from_secs(2);
    let (ra, rb) = tokio::join!(
        client.invoke(&addr, RemotingCommand::request(30).with_ext("n", "a"), t),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client
                .invoke(&addr, RemotingCommand::request(30).with_ext("n", "b"), t)
                .await
        }
    );
    assert_eq!(ra.unwrap().ext("n"), Some("a"));
    assert_eq!(rb.unwrap().ext("n"), Some("b"));
}

#[tokio::test]
async fn timeout_then_late_answer_is_ignored() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let first = read_cmd(&mut s, &mut buf).await.unwrap();
        let second = read_cmd(&mut s, &mut buf).await.unwrap();
        // Late answer to the first, then the second.
        write_cmd(&mut s, &reply(&first, 0), SerializeType::Json).await;
        write_cmd(
            &mut s,
            &reply(&second, 0).with_ext("offset", 5),
            SerializeType::Json,
        )
        .await;
        let _ = read_cmd(&mut s, &mut buf).await;
    });
    // On one connection (the client would replace it after the timeout).
    let conn = Connection::connect(&addr, Duration::from_secs(1), None)
        .await
        .unwrap();
    let err = conn
        .request(RemotingCommand::request(30), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemotingError::Timeout { code: 30, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("GET_MAX_OFFSET"));
    let ok = conn
        .request(RemotingCommand::request(30), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(ok.ext("offset"), Some("5"));
}

/// A blackholed master: the server accepts, reads and never answers. After
/// one request times out the client must not keep using that connection
/// (every later pull would cost the full timeout again): the next request
/// opens a fresh connection, which here is answered.
#[tokio::test]
async fn request_timeout_retires_the_connection() {
    let (l, addr) = listener().await;
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    tokio::spawn(async move {
        let mut silent = Vec::new();
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                // Blackhole: keep the socket open, read, never reply.
                silent.push(tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    while read_cmd(&mut s, &mut buf).await.is_some() {}
                }));
                continue;
            }
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(req) = read_cmd(&mut s, &mut buf).await {
                    write_cmd(&mut s, &reply(&req, 0), SerializeType::Json).await;
                }
            });
        }
    });
    let client = RemotingClient::new(config());
    let err = client
        .invoke(
            &addr,
            RemotingCommand::request(30),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemotingError::Timeout { .. }), "{err}");
    let started = std::time::Instant::now();
    let ok = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(2))
        .await;
    assert!(ok.is_ok(), "second request after a timeout: {ok:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(accepts.load(Ordering::SeqCst), 2, "a fresh connection");
}

#[tokio::test]
async fn server_requests_are_answered_and_published() {
    let (l, addr) = listener().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let req = read_cmd(&mut s, &mut buf).await.unwrap();
        let mut notify = RemotingCommand::request(request::NOTIFY_CONSUMER_IDS_CHANGED)
            .with_ext("consumerGroup", "g");
        notify.opaque = 9001;
        let mut running = RemotingCommand::request(request::GET_CONSUMER_RUNNING_INFO);
        running.opaque = 9002;
        let mut oneway = RemotingCommand::request(request::CHECK_TRANSACTION_STATE);
        oneway.opaque = 9003;
        oneway.mark_oneway();
        write_cmd(&mut s, &oneway, SerializeType::Json).await;
        write_cmd(&mut s, &notify, SerializeType::Json).await;
        write_cmd(&mut s, &running, SerializeType::RocketMq).await;
        let a1 = read_cmd(&mut s, &mut buf).await.unwrap();
        let a2 = read_cmd(&mut s, &mut buf).await.unwrap();
        write_cmd(&mut s, &reply(&req, 0), SerializeType::Json).await;
        let _ = tx.send((a1, a2));
        let _ = read_cmd(&mut s, &mut buf).await;
    });
    let client = RemotingClient::new(config());
    let mut events = client.subscribe_server_requests();
    client
        .invoke(&addr, RemotingCommand::request(34), Duration::from_secs(2))
        .await
        .unwrap();
    let (a1, a2) = rx.await.unwrap();
    assert!(a1.is_response() && a2.is_response());
    assert_eq!((a1.opaque, a1.code), (9001, response::SUCCESS));
    assert_eq!(
        (a2.opaque, a2.code),
        (9002, response::REQUEST_CODE_NOT_SUPPORTED)
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.recv().await.unwrap().command.code);
    }
    assert_eq!(seen, vec![39, 40, 307]);
}

#[tokio::test]
async fn connection_loss_fails_pending_requests_promptly_and_reconnects() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        // First connection: read one request and hang up without answering.
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let _ = read_cmd(&mut s, &mut buf).await;
        drop(s);
        // Second connection: answer normally.
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while let Some(req) = read_cmd(&mut s, &mut buf).await {
            write_cmd(&mut s, &reply(&req, 0), SerializeType::Json).await;
        }
    });
    let client = RemotingClient::new(config());
    let started = std::time::Instant::now();
    let err = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemotingError::ConnectionClosed { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let ok = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(ok.flag & FLAG_RESPONSE, FLAG_RESPONSE);
}

#[tokio::test]
async fn dead_address_backs_off() {
    let (l, addr) = listener().await;
    drop(l);
    let client = RemotingClient::new(config());
    let first = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(first, RemotingError::Connect { .. }), "{first}");
    let second = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(second, RemotingError::Backoff { .. }), "{second}");
    let bad = client
        .invoke(
            "nonsense",
            RemotingCommand::request(30),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(bad, RemotingError::InvalidAddress { .. }));
}

#[tokio::test]
async fn garbage_from_server_closes_connection_with_protocol_error() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let _ = read_cmd(&mut s, &mut buf).await;
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let client = RemotingClient::new(config());
    let err = client
        .invoke(&addr, RemotingCommand::request(30), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("protocol error"), "{err}");
}

#[tokio::test]
async fn typed_calls_over_the_wire() {
    let (l, addr) = listener().await;
    let creds = AclCredentials::new("ak", "sk");
    let check = creds.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while let Some(req) = read_cmd(&mut s, &mut buf).await {
            // Every request is signed.
            let mut unsigned = req.clone();
            let sig = unsigned.ext_fields.remove("Signature").unwrap();
            assert_eq!(sig, check.signature(&unsigned));
            let resp = match req.code {
                request::GET_ROUTEINFO_BY_TOPIC if req.ext("topic") == Some("missing") => {
                    reply(&req, response::TOPIC_NOT_EXIST)
                }
                request::GET_ROUTEINFO_BY_TOPIC => reply(&req, 0).with_body(
                    &br#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"b","cluster":"c"}],"queueDatas":[{"brokerName":"b","perm":6,"readQueueNums":2,"writeQueueNums":2,"topicSysFlag":0}]}"#[..],
                ),
                request::PULL_MESSAGE => {
                    let offset = req.ext_i64("queueOffset").unwrap().unwrap();
                    let rec = MessageRecord {
                        topic: "t".into(),
                        queue_id: 1,
                        queue_offset: offset,
                        commit_log_offset: 1000,
                        sys_flag: 0,
                        flag: 0,
                        body_crc: crc32fast::hash(b"hi") & 0x7FFF_FFFF,
                        born_timestamp_ms: 1,
                        born_host: "127.0.0.1:5".parse().unwrap(),
                        store_timestamp_ms: 2,
                        store_host: "127.0.0.1:10911".parse().unwrap(),
                        reconsume_times: 0,
                        prepared_transaction_offset: 0,
                        body: bytes::Bytes::from_static(b"hi"),
                        properties: [("UNIQ_KEY", "U")].into_iter().collect::<Properties>(),
                        offset_msg_id: String::new(),
                    };
                    reply(&req, 0)
                        .with_ext("nextBeginOffset", offset + 1)
                        .with_ext("minOffset", 0)
                        .with_ext("maxOffset", offset + 1)
                        .with_ext("suggestWhichBrokerId", 0)
                        .with_body(encode_record(&rec, false).unwrap())
                }
                request::QUERY_CONSUMER_OFFSET => reply(&req, response::QUERY_NOT_FOUND),
                _ => reply(&req, response::SYSTEM_ERROR),
            };
            write_cmd(&mut s, &resp, SerializeType::Json).await;
        }
    });
    let mut cfg = config();
    cfg.credentials = Some(creds);
    let client = RemotingClient::new(cfg);
    let route = client.get_topic_route(&addr, "t").await.unwrap().unwrap();
    assert_eq!(route.master_addr("b"), Some("127.0.0.1:10911"));
    assert_eq!(
        client.get_topic_route(&addr, "missing").await.unwrap(),
        None
    );
    let ns = super::NameServers::parse(&format!("127.0.0.1:1;{addr}")).unwrap();
    assert!(ns.topic_route(&client, "t").await.unwrap().is_some());
    let pulled = client
        .pull_message(&addr, &PullRequest::new("g", "t", 1, 41))
        .await
        .unwrap();
    assert_eq!(pulled.status, PullStatus::Found);
    assert_eq!(pulled.next_begin_offset, 42);
    assert_eq!(pulled.messages[0].message_id(), "U");
    assert_eq!(pulled.messages[0].queue_offset, 41);
    assert_eq!(
        client
            .query_consumer_offset(&addr, "g", "t", 1)
            .await
            .unwrap(),
        None
    );
    let err = client.get_max_offset(&addr, "t", 1).await.unwrap_err();
    assert_eq!(err.response_code(), Some(response::SYSTEM_ERROR));
}
