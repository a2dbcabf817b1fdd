//! Fuzzes the whole 4.x input surface through the real client code, not the
//! decoders alone: an in-process fake name server and fake broker answer the
//! real [`RemotingClient`] / [`NameServers`] / [`TopicSource`] requests with
//! mutated copies of valid answers (route JSON, JSON and binary headers,
//! `extFields` of the wrong type, PULL bodies whose records carry mutated
//! timestamps, sizes, flags and compressed or batched bodies, byte flips,
//! truncations, huge length prefixes, server requests mixed in), and every
//! decoded record is formatted the way `peek` prints it.
//!
//! Asserted for every input: no panic (in the caller or in the connection's
//! reader task), an `Ok` or a typed error within a bounded time, and no
//! single allocation above [`ALLOC_LIMIT`] (a 2 GiB length prefix must not
//! allocate 2 GiB). Deterministic: case `i` derives from `RMQ_FUZZ_SEED`
//! (default below) and `i`; `RMQ_FUZZ_CASES` sets how many run (default
//! 20,000, a few seconds). Run with `--nocapture` to see the tally.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::codes::{request, response};
use super::error::FrameError;
use super::frame::{self, MAX_FRAME_LEN};
use super::header::{RemotingCommand, FLAG_RESPONSE};
use super::message::{encode_batch_entry, encode_record, sys_flag, MessageRecord};
use super::properties::Properties;
use super::{NameServers, PullRequest, RemotingClient, RemotingClientConfig};
use crate::source::{PullOutcome, SourceSettings, TopicSource};

// ---------------------------------------------------------------------------
// Largest single allocation, per thread, while a case runs.

/// No single allocation of a case may exceed this: frames are capped at
/// 16 MiB and the inputs are a few KiB.
const ALLOC_LIMIT: usize = 32 * 1024 * 1024;

struct LargestAllocation;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: forwards every call to `System` unchanged; only records sizes in
// const-initialised thread locals (no allocation, no destructor).
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

// ---------------------------------------------------------------------------
// Deterministic randomness (splitmix64).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// True with probability 1/n.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ b.wrapping_mul(0xA24B_AED4_963E_E407)).next()
}

// ---------------------------------------------------------------------------
// Interesting values.

const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

fn interesting_i64(rng: &mut Rng) -> i64 {
    let random = rng.next() as i64;
    rng.pick(&[
        0,
        1,
        -1,
        i64::MAX,
        i64::MIN,
        i64::MAX - 1,
        i64::MIN + 1,
        MAX_RFC3339_MS,
        MAX_RFC3339_MS + 1,
        253_402_300_800_000 * 2,
        1_700_000_000_000,
        -62_135_596_800_000, // year 1
        i64::from(i32::MAX),
        i64::from(i32::MIN),
        random,
    ])
}

fn interesting_i32(rng: &mut Rng, near: usize) -> i32 {
    let near = i32::try_from(near).unwrap_or(i32::MAX);
    let random = rng.next() as i32;
    rng.pick(&[
        0,
        1,
        -1,
        4,
        i32::MAX,
        i32::MIN,
        0x7FFF_FFFF,
        1 << 30,
        16 << 20,
        (16 << 20) + 1,
        near.saturating_sub(1),
        near.saturating_add(1),
        near.saturating_mul(2),
        random,
    ])
}

fn interesting_text(rng: &mut Rng) -> String {
    match rng.below(16) {
        0 => String::new(),
        1 => "abc".into(),
        2 => "-1".into(),
        3 => "99999999999999999999".into(),
        4 => "-9223372036854775808".into(),
        5 => "9223372036854775807".into(),
        6 => " 7 ".into(),
        7 => "1e3".into(),
        8 => "0x10".into(),
        9 => "+3".into(),
        10 => "true".into(),
        11 => "\u{1}\u{2}\u{0}".into(),
        12 => "é\u{FFFD}😀".into(),
        13 => "x".repeat(rng.below(5000)),
        14 => "1.5".into(),
        _ => (rng.next() as i64).to_string(),
    }
}

fn interesting_json(rng: &mut Rng) -> Value {
    match rng.below(18) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(false),
        3 => json!(0),
        4 => json!(-1),
        5 => json!(i64::MAX),
        6 => json!(u64::MAX),
        7 => json!(i64::MIN),
        8 => json!(1e308),
        9 => json!(-0.5),
        10 => json!([]),
        11 => json!({}),
        12 => json!([1, "a", null]),
        13 => json!({"a": 1, "0": "x"}),
        14 => {
            // Deeper than serde_json's recursion limit.
            let mut v = json!(1);
            for _ in 0..200 {
                v = json!([v]);
            }
            v
        }
        15 => json!(i64::from(i32::MAX) + 1),
        _ => Value::String(interesting_text(rng)),
    }
}

// ---------------------------------------------------------------------------
// Mutators.

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Replaces, removes or adds at one node of `v` chosen uniformly.
fn mutate_json(v: &mut Value, rng: &mut Rng) {
    fn walk(v: &mut Value, target: &mut usize, rng: &mut Rng) -> bool {
        if *target == 0 {
            match (rng.below(4), &mut *v) {
                (0, Value::Object(o)) if !o.is_empty() => {
                    let keys: Vec<String> = o.keys().cloned().collect();
                    let k = rng.pick(&keys);
                    o.remove(&k);
                }
                (1, Value::Object(o)) => {
                    let key = rng.pick(&[
                        "code",
                        "opaque",
                        "flag",
                        "extFields",
                        "0",
                        "-1",
                        "brokerAddrs",
                        "x",
                    ]);
                    o.insert(key.to_string(), interesting_json(rng));
                }
                (2, Value::Array(a)) => {
                    let copy = a.first().cloned().unwrap_or(Value::Null);
                    for _ in 0..rng.below(50) {
                        a.push(copy.clone());
                    }
                }
                _ => *v = interesting_json(rng),
            }
            return true;
        }
        *target -= 1;
        match v {
            Value::Array(a) => a.iter_mut().any(|c| walk(c, target, rng)),
            Value::Object(o) => o.values_mut().any(|c| walk(c, target, rng)),
            _ => false,
        }
    }
    let mut target = rng.below(count_nodes(v));
    walk(v, &mut target, rng);
}

/// Byte-level damage to `b`: flips, overwrites, truncation, junk, a 32-bit
/// field set to an interesting value, a slice repeated or removed.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    let len = b.len();
    match rng.below(8) {
        0 if len > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(len);
                b[i] = rng.pick(&[0, 0xFF, 0x7F, 0x80, b'"', b'{', b'}', b':', b',', 1, 2]);
            }
        }
        2 => b.truncate(rng.below(len + 1)),
        3 => {
            let n = 1 + rng.below(64);
            let junk = rng.bytes(n);
            b.extend_from_slice(&junk);
        }
        4 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = interesting_i32(rng, len - i);
            b[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = start + rng.below(len - start + 1);
            let piece = b[start..end].to_vec();
            b.splice(end..end, piece);
        }
        6 if len > 0 => {
            let start = rng.below(len);
            let end = start + rng.below(len - start + 1);
            b.drain(start..end);
        }
        _ => {
            if len > 0 {
                let i = rng.below(len);
                b.insert(i, rng.next() as u8);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Valid answers, then damaged.

fn assemble(kind: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(8 + header.len() + body.len());
    out.put_u32((4 + header.len() + body.len()) as u32);
    out.put_u32((u32::from(kind) << 24) | (header.len() as u32 & 0x00FF_FFFF));
    out.put_slice(header);
    out.put_slice(body);
    out.to_vec()
}

fn seed_record(rng: &mut Rng, offset: i64) -> (MessageRecord, bool) {
    let mut props: Properties = [
        ("TAGS", "tagA"),
        ("KEYS", "k1 k2"),
        ("UNIQ_KEY", "7F000001000118B4AAC20000"),
        ("env", "gray"),
    ]
    .into_iter()
    .collect();
    if rng.one_in(4) {
        props.insert(interesting_text(rng), interesting_text(rng));
    }
    if rng.one_in(8) {
        props = Properties::decode(&interesting_text(rng));
    }
    let mut body: Vec<u8> = match rng.below(4) {
        0 => b"hello".to_vec(),
        1 => Vec::new(),
        2 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        _ => interesting_text(rng).into_bytes(),
    };
    let mut sys = 0;
    match rng.below(8) {
        0 => {
            // zlib, as a 4.x producer compresses.
            use std::io::Write;
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = z.write_all(&body.repeat(1 + rng.below(100)));
            body = z.finish().unwrap_or_default();
            sys |= sys_flag::COMPRESSED | (rng.below(8) as i32) << 8;
        }
        1 => {
            // A client batch stored as one record (INNER_BATCH + NEED_UNWRAP).
            let mut inner = BytesMut::new();
            for _ in 0..1 + rng.below(3) {
                let _ = encode_batch_entry(rng.next() as i32, &body, &props, &mut inner);
            }
            body = inner.to_vec();
            if rng.one_in(2) {
                mutate_bytes(&mut body, rng);
            }
            sys |= sys_flag::INNER_BATCH | sys_flag::NEED_UNWRAP;
        }
        2 => sys = rng.next() as i32,
        3 => {
            sys |= rng.pick(&[
                sys_flag::TRANSACTION_PREPARED_TYPE,
                sys_flag::TRANSACTION_COMMIT_TYPE,
                sys_flag::TRANSACTION_ROLLBACK_TYPE,
            ])
        }
        _ => {}
    }
    let crc = match rng.below(6) {
        0 => 0,
        1 => rng.next() as u32,
        2 => crc32fast::hash(&body),
        _ => crc32fast::hash(&body) & 0x7FFF_FFFF,
    };
    let v6 = |rng: &mut Rng, v4: &str, v6: &str| -> std::net::SocketAddr {
        let s = if rng.one_in(4) { v6 } else { v4 };
        s.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 1).into())
    };
    let born_host = v6(rng, "10.0.0.7:50000", "[fe80::1]:50000");
    let store_host = v6(rng, "127.0.0.1:10911", "[::1]:10911");
    let topic = match rng.below(8) {
        0 => String::new(),
        1 => "t".repeat(255),
        _ => "orders".into(),
    };
    let record = MessageRecord {
        topic,
        queue_id: if rng.one_in(8) { rng.next() as i32 } else { 1 },
        queue_offset: if rng.one_in(8) {
            interesting_i64(rng)
        } else {
            offset
        },
        commit_log_offset: if rng.one_in(8) {
            interesting_i64(rng)
        } else {
            offset * 100
        },
        sys_flag: sys,
        flag: rng.next() as i32,
        body_crc: crc,
        born_timestamp_ms: if rng.one_in(3) {
            interesting_i64(rng)
        } else {
            1_700_000_000_000
        },
        born_host,
        store_timestamp_ms: if rng.one_in(3) {
            interesting_i64(rng)
        } else {
            1_700_000_000_005
        },
        store_host,
        reconsume_times: if rng.one_in(8) { rng.next() as i32 } else { 0 },
        prepared_transaction_offset: if rng.one_in(8) {
            interesting_i64(rng)
        } else {
            0
        },
        body: Bytes::from(body),
        properties: props,
        offset_msg_id: String::new(),
    };
    (record, rng.one_in(3))
}

/// Byte offsets of the 32-bit size fields of a record with IPv4 hosts:
/// total size, body length.
const RECORD_SIZE_FIELDS: [usize; 2] = [0, 84];

fn pull_body(rng: &mut Rng, offset: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..1 + rng.below(4) {
        let (rec, v2) = seed_record(rng, offset + i as i64);
        let Ok(bytes) = encode_record(&rec, v2) else {
            continue;
        };
        let mut bytes = bytes.to_vec();
        match rng.below(6) {
            0 => mutate_bytes(&mut bytes, rng),
            1 if bytes.len() >= 88 => {
                let at = rng.pick(&RECORD_SIZE_FIELDS);
                let v = interesting_i32(rng, bytes.len() - at);
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 if bytes.len() >= 40 => {
                // sysFlag at 36: host-width and compression bits that lie.
                let v = rng.next() as i32 & 0x7F7;
                bytes[36..40].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
        out.extend_from_slice(&bytes);
    }
    out
}

fn route_body(rng: &mut Rng, broker: &str) -> Vec<u8> {
    let queues = 1 + rng.below(4);
    let text = match rng.below(3) {
        // fastjson before 4.9.4: bare integer keys.
        0 => format!(
            r#"{{"brokerDatas":[{{"brokerAddrs":{{0:"{broker}"}},"brokerName":"b","cluster":"c","enableActingMaster":false}}],"filterServerTable":{{}},"queueDatas":[{{"brokerName":"b","perm":6,"readQueueNums":{queues},"topicSysFlag":0,"writeQueueNums":{queues}}}],"topicQueueMappingByBroker":{{"b":{{"currIdMap":{{-1:0, 3 :2}}}}}}}}"#
        ),
        1 => format!(
            r#"{{"orderTopicConf":"b:{queues}","queueDatas":[{{"brokerName":"b","perm":4,"readQueueNums":{queues}}}],"brokerDatas":[{{"brokerName":"b","cluster":"c","brokerAddrs":{{"0":"{broker}"}}}}]}}"#
        ),
        _ => {
            let mut v = json!({
                "brokerDatas": [{"brokerAddrs": {"0": broker}, "brokerName": "b", "cluster": "c"}],
                "queueDatas": [{"brokerName": "b", "perm": 6, "readQueueNums": queues, "writeQueueNums": queues, "topicSysFlag": 0}],
            });
            for _ in 0..1 + rng.below(3) {
                mutate_json(&mut v, rng);
            }
            v.to_string()
        }
    };
    text.into_bytes()
}

/// A response's code, remark, `extFields` and body.
type Answer = (i32, Option<String>, Vec<(&'static str, String)>, Vec<u8>);

/// The valid answer to `req`: code, `extFields` and body.
fn valid_answer(req: &RemotingCommand, rng: &mut Rng, broker: &str) -> Answer {
    let offset = req.ext_i64("queueOffset").ok().flatten().unwrap_or(0);
    match req.code {
        request::GET_ROUTEINFO_BY_TOPIC => {
            if rng.one_in(10) {
                (
                    response::TOPIC_NOT_EXIST,
                    Some("No topic route info".into()),
                    vec![],
                    vec![],
                )
            } else {
                (response::SUCCESS, None, vec![], route_body(rng, broker))
            }
        }
        request::PULL_MESSAGE => {
            let code = rng.pick(&[
                response::SUCCESS,
                response::SUCCESS,
                response::SUCCESS,
                response::SUCCESS,
                response::PULL_NOT_FOUND,
                response::PULL_OFFSET_MOVED,
                response::PULL_RETRY_IMMEDIATELY,
            ]);
            let mut ext = vec![
                ("nextBeginOffset", (offset + 4).to_string()),
                ("minOffset", "0".to_string()),
                ("maxOffset", (offset + 4).to_string()),
                ("suggestWhichBrokerId", "0".to_string()),
            ];
            if rng.one_in(4) {
                ext.push(("offsetDelta", interesting_i64(rng).to_string()));
            }
            let body = if code == response::SUCCESS {
                pull_body(rng, offset)
            } else {
                Vec::new()
            };
            (code, None, ext, body)
        }
        request::GET_MAX_OFFSET | request::GET_MIN_OFFSET | request::SEARCH_OFFSET_BY_TIMESTAMP => {
            (
                response::SUCCESS,
                None,
                vec![("offset", "42".to_string())],
                vec![],
            )
        }
        request::QUERY_CONSUMER_OFFSET => {
            if rng.one_in(3) {
                (response::QUERY_NOT_FOUND, None, vec![], vec![])
            } else {
                (
                    response::SUCCESS,
                    None,
                    vec![("offset", "7".to_string())],
                    vec![],
                )
            }
        }
        request::GET_CONSUMER_LIST_BY_GROUP => {
            if rng.one_in(4) {
                (
                    response::SYSTEM_ERROR,
                    Some("no consumer for this group, g".into()),
                    vec![],
                    vec![],
                )
            } else {
                let mut v = json!({"consumerIdList": ["10.0.0.1@1", "10.0.0.2@2"]});
                if rng.one_in(2) {
                    mutate_json(&mut v, rng);
                }
                (response::SUCCESS, None, vec![], v.to_string().into_bytes())
            }
        }
        _ => (
            response::SYSTEM_ERROR,
            Some("unexpected request".into()),
            vec![],
            vec![],
        ),
    }
}

/// The bytes the fake server sends in answer to `req`: a valid answer,
/// usually damaged at one or more layers (header JSON or binary, body,
/// whole frame), sometimes with a server request before it.
fn answer_bytes(req: &RemotingCommand, rng: &mut Rng, broker: &str, damage: bool) -> Vec<u8> {
    let (code, remark, ext, mut body) = valid_answer(req, rng, broker);
    let mut opaque = req.opaque;
    let mut flag = FLAG_RESPONSE;
    if damage && rng.one_in(16) {
        opaque = rng.pick(&[opaque.wrapping_add(1), -1, 0, i32::MAX]);
    }
    if damage && rng.one_in(32) {
        flag = rng.next() as i32;
    }
    let binary = rng.one_in(4);
    let header = if binary {
        let mut cmd = RemotingCommand::response_to(req, code, remark);
        cmd.opaque = opaque;
        cmd.flag = flag;
        for (k, v) in &ext {
            cmd.ext_fields.insert((*k).to_string(), v.clone());
        }
        cmd.encode_binary_header().unwrap_or_default()
    } else {
        let ext: BTreeMap<&str, Value> = ext
            .iter()
            .map(|(k, v)| (*k, Value::String(v.clone())))
            .collect();
        let mut v = json!({
            "code": code, "language": "JAVA", "version": 401, "opaque": opaque,
            "flag": flag, "remark": remark, "extFields": ext,
            "serializeTypeCurrentRPC": "JSON",
        });
        if damage && rng.one_in(3) {
            for _ in 0..1 + rng.below(3) {
                mutate_json(&mut v, rng);
            }
        }
        v.to_string().into_bytes()
    };
    let mut header = header;
    if damage && rng.one_in(4) {
        mutate_bytes(&mut header, rng);
    }
    if damage && rng.one_in(4) {
        mutate_bytes(&mut body, rng);
    }
    let mut frame_bytes = assemble(u8::from(binary), &header, &body);
    if damage && rng.one_in(3) {
        match rng.below(5) {
            0 => {
                let v = rng.pick(&[
                    0u32,
                    1,
                    3,
                    4,
                    0x7FFF_FFFF,
                    0xFFFF_FFFF,
                    0x8000_0000,
                    MAX_FRAME_LEN as u32,
                    MAX_FRAME_LEN as u32 + 1,
                    frame_bytes.len() as u32 - 3,
                    frame_bytes.len() as u32 - 5,
                ]);
                frame_bytes[0..4].copy_from_slice(&v.to_be_bytes());
            }
            1 => {
                let kind = rng.pick(&[0u8, 1, 2, 0xFF]);
                let random = rng.next() as u32;
                let hl = rng.pick(&[0u32, 1, 0x00FF_FFFF, header.len() as u32 + 1, random]);
                let word = (u32::from(kind) << 24) | (hl & 0x00FF_FFFF);
                frame_bytes[4..8].copy_from_slice(&word.to_be_bytes());
            }
            _ => {
                for _ in 0..1 + rng.below(3) {
                    mutate_bytes(&mut frame_bytes, rng);
                }
            }
        }
    }
    if damage && rng.one_in(10) {
        // A server-initiated request (maybe damaged) before the answer.
        let mut notify = RemotingCommand::request(rng.pick(&[
            request::NOTIFY_CONSUMER_IDS_CHANGED,
            request::GET_CONSUMER_RUNNING_INFO,
            9999,
        ]))
        .with_ext("consumerGroup", "g");
        notify.opaque = 77;
        let mut pre = BytesMut::new();
        let kind = if rng.one_in(2) {
            super::header::SerializeType::Json
        } else {
            super::header::SerializeType::RocketMq
        };
        let _ = frame::encode(&notify, kind, &mut pre);
        let mut pre = pre.to_vec();
        if rng.one_in(2) {
            mutate_bytes(&mut pre, rng);
        }
        pre.extend_from_slice(&frame_bytes);
        frame_bytes = pre;
    }
    if damage && rng.one_in(20) {
        // The same answer twice (a duplicate for an opaque already served).
        let again = frame_bytes.clone();
        frame_bytes.extend_from_slice(&again);
    }
    frame_bytes
}

// ---------------------------------------------------------------------------
// The fake servers.

#[derive(Default)]
struct CaseState {
    seed: u64,
    /// Damage the name server's answers (the broker's always may be).
    damage_namesrv: bool,
    served: Vec<(String, i32, Vec<u8>)>,
}

async fn read_request(s: &mut TcpStream, buf: &mut BytesMut) -> Option<RemotingCommand> {
    loop {
        match frame::parse(buf, MAX_FRAME_LEN) {
            Ok(c) if !c.is_response() => return Some(c),
            Ok(_) => {}
            Err(FrameError::Incomplete) => {}
            Err(_) => return None,
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Answers one request per connection, then closes its side (so an
/// incomplete answer ends the case at once instead of at the timeout) and
/// drains until the client hangs up.
async fn serve(
    listener: TcpListener,
    role: &'static str,
    broker: String,
    state: Arc<Mutex<CaseState>>,
) {
    let mut conn_no = 0u64;
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        conn_no += 1;
        let state = state.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let Some(req) = read_request(&mut s, &mut buf).await else {
                return;
            };
            let (seed, damage) = {
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                let damage = role == "broker" || st.damage_namesrv;
                (
                    mix(st.seed, conn_no ^ u64::from(req.code as u32) << 32),
                    damage,
                )
            };
            let mut rng = Rng::new(seed);
            let bytes = answer_bytes(&req, &mut rng, &broker, damage);
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .served
                .push((role.to_string(), req.code, bytes.clone()));
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

// ---------------------------------------------------------------------------
// The client side: what the bridge and `peek` do with the answers.

#[derive(Debug, Clone, Copy)]
enum Op {
    NameServerRoute,
    SourceRouteThenPull,
    Pull,
    MaxOffset,
    MinOffset,
    SearchOffset,
    ConsumerOffset,
    ConsumerList,
}

const OPS: [Op; 8] = [
    Op::NameServerRoute,
    Op::SourceRouteThenPull,
    Op::SourceRouteThenPull,
    Op::Pull,
    Op::Pull,
    Op::Pull,
    Op::MaxOffset,
    Op::MinOffset,
];
const RARE_OPS: [Op; 3] = [Op::SearchOffset, Op::ConsumerOffset, Op::ConsumerList];

/// The name of an error variant (`Debug` up to the first delimiter).
fn kind_of(e: &impl std::fmt::Debug) -> String {
    let d = format!("{e:?}");
    d.split([' ', '(', '{']).next().unwrap_or("").to_string()
}

/// Formats records the way `peek` prints them; returns how many.
fn print_records(records: &[MessageRecord]) -> usize {
    for r in records {
        let v = crate::cli::record_json("b", r);
        let _ = v.to_string();
        let _ = format!("{r:?}");
    }
    records.len()
}

/// The variant name of a client error, its text built too (a Display impl
/// can panic as well). A connection whose reader task panicked reports it.
fn classify(e: &super::RemotingError) -> String {
    let text = e.to_string();
    if text.contains("panicked") {
        format!("ReaderPanic: {text}")
    } else if let super::RemotingError::Decode(d) = e {
        format!("Decode::{}", kind_of(d))
    } else if let super::RemotingError::ConnectionClosed { reason, .. } = e {
        format!(
            "ConnectionClosed({})",
            reason.split(':').next().unwrap_or("")
        )
    } else if let super::RemotingError::Frame { source, .. } = e {
        format!("Frame::{}", kind_of(source))
    } else {
        kind_of(e)
    }
}

fn classify_source(e: &crate::source::SourceError) -> String {
    match e {
        crate::source::SourceError::Remoting(inner) => classify(inner),
        other => {
            let _ = other.to_string();
            format!("Source::{}", kind_of(other))
        }
    }
}

/// Runs one operation: `Ok(records formatted)` or the error's variant name.
async fn run_op(op: Op, ns: String, broker: String, tags: bool) -> Result<usize, String> {
    let client = RemotingClient::new(RemotingClientConfig {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        credentials: None,
        client_id: "fuzz@1".into(),
    });
    let e = |e: super::RemotingError| classify(&e);
    match op {
        Op::NameServerRoute => {
            let list = NameServers::parse(&ns).map_err(e)?;
            let route = list.topic_route(&client, "t").await.map_err(e)?;
            if let Some(r) = route {
                let _ = r.readable_queues();
                let _ = r.addrs_master_first("b");
                let _ = format!("{r:?}");
            }
            Ok(0)
        }
        Op::SourceRouteThenPull => {
            let list = NameServers::parse(&ns).map_err(e)?;
            let source = TopicSource::new(
                client,
                list,
                SourceSettings {
                    topic: "t".into(),
                    filter: if tags {
                        "tagA || tagB".into()
                    } else {
                        "*".into()
                    },
                    consumer_group: "g".into(),
                    pull_batch_size: 32,
                    long_poll: Duration::ZERO,
                },
            );
            let queues = source
                .refresh_route()
                .await
                .map_err(|err| classify_source(&err))?;
            let mut printed = 0;
            for q in queues.iter().take(2) {
                // Never follow a damaged route to some other local port.
                let addrs = source.broker_addrs(&q.broker_name);
                if addrs.is_empty() || addrs.iter().any(|a| *a != broker) {
                    continue;
                }
                let pulled = source.pull(q, 41, 32).await;
                let _ = format!("{pulled:?}");
                match pulled {
                    Ok(PullOutcome::Records { records, .. }) => printed += print_records(&records),
                    Ok(other) => {
                        let _ = format!("{other:?}");
                    }
                    Err(err) => return Err(classify_source(&err)),
                }
            }
            Ok(printed)
        }
        Op::Pull => {
            let mut req = PullRequest::new("g", "t", 1, 41);
            if tags {
                req.sub_expression = "tagA || tagB".into();
            }
            let res = client.pull_message(&broker, &req).await.map_err(e)?;
            let _ = format!("{res:?}");
            Ok(print_records(&res.messages))
        }
        Op::MaxOffset => client
            .get_max_offset(&broker, "t", 1)
            .await
            .map(|_| 0)
            .map_err(e),
        Op::MinOffset => client
            .get_min_offset(&broker, "t", 1)
            .await
            .map(|_| 0)
            .map_err(e),
        Op::SearchOffset => client
            .search_offset_by_timestamp(&broker, "t", 1, i64::MAX)
            .await
            .map(|_| 0)
            .map_err(e),
        Op::ConsumerOffset => client
            .query_consumer_offset(&broker, "g", "t", 1)
            .await
            .map(|_| 0)
            .map_err(e),
        Op::ConsumerList => client
            .get_consumer_list_by_group(&broker, "g")
            .await
            .map(|l| l.len())
            .map_err(e),
    }
}

fn hex_prefix(b: &[u8]) -> String {
    let shown = &b[..b.len().min(600)];
    let more = if b.len() > shown.len() { "..." } else { "" };
    format!("{}{more} ({} bytes)", hex::encode(shown), b.len())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| v.parse().ok())
        })
        .unwrap_or(default)
}

#[tokio::test]
async fn fuzz_the_4x_input_surface_through_the_client() {
    let cases = env_u64("RMQ_FUZZ_CASES", 20_000);
    let base_seed = env_u64("RMQ_FUZZ_SEED", 0x5EED_4B1D_6E00_0009);
    let ns_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ns = ns_listener.local_addr().unwrap().to_string();
    let broker = broker_listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(CaseState::default()));
    let ns_task = tokio::spawn(serve(ns_listener, "namesrv", broker.clone(), state.clone()));
    let broker_task = tokio::spawn(serve(
        broker_listener,
        "broker",
        broker.clone(),
        state.clone(),
    ));

    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut records_printed = 0usize;
    let mut frames_served = 0usize;
    let mut largest = 0usize;
    let started = std::time::Instant::now();
    for case in 0..cases {
        let seed = mix(base_seed, case);
        let mut rng = Rng::new(seed);
        let op = if rng.one_in(6) {
            rng.pick(&RARE_OPS)
        } else {
            rng.pick(&OPS)
        };
        {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.seed = seed;
            st.damage_namesrv = !matches!(op, Op::SourceRouteThenPull) || rng.one_in(2);
            st.served.clear();
        }
        WATCHING.with(|w| w.set(true));
        LARGEST.with(|l| l.set(0));
        let tags = rng.one_in(2);
        let task = tokio::spawn(run_op(op, ns.clone(), broker.clone(), tags));
        let outcome = tokio::time::timeout(Duration::from_secs(10), task).await;
        WATCHING.with(|w| w.set(false));
        let peak = LARGEST.with(Cell::get);
        largest = largest.max(peak);
        let served = std::mem::take(&mut state.lock().unwrap_or_else(|e| e.into_inner()).served);
        frames_served += served.len();
        let problem = match outcome {
            Err(_) => Some("no answer within 10 s".to_string()),
            Ok(Err(join)) if join.is_panic() => {
                let payload = join.into_panic();
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                Some(format!("panic: {msg}"))
            }
            Ok(Err(join)) => Some(format!("task failed: {join}")),
            Ok(Ok(Ok(n))) => {
                records_printed += n;
                *tally.entry("Ok".into()).or_default() += 1;
                None
            }
            Ok(Ok(Err(kind))) => {
                let p = if kind.starts_with("ReaderPanic") {
                    Some(kind.clone())
                } else if kind.ends_with("Timeout") {
                    Some("request timed out although the server always answers and closes".into())
                } else {
                    None
                };
                *tally.entry(kind).or_default() += 1;
                p
            }
        };
        let problem = problem
            .or_else(|| (peak > ALLOC_LIMIT).then(|| format!("allocated {peak} bytes at once")));
        if let Some(p) = problem {
            let inputs: Vec<String> = served
                .iter()
                .map(|(role, code, b)| format!("  {role} answer to {code}: {}", hex_prefix(b)))
                .collect();
            failures.push(format!(
                "case {case} (seed {seed:#x}, {op:?}): {p}\n{}",
                inputs.join("\n")
            ));
        }
    }
    ns_task.abort();
    broker_task.abort();
    println!(
        "fuzz: {cases} cases ({frames_served} answers served) in {:.1?}, {records_printed} records printed, \
         largest single allocation {largest} bytes, {} problem(s)",
        started.elapsed(),
        failures.len()
    );
    for (kind, n) in &tally {
        println!("  {n:>7}  {kind}");
    }
    for f in failures.iter().take(20) {
        println!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} fuzz cases failed; first: {}",
        failures.len(),
        failures.first().map(String::as_str).unwrap_or("")
    );
}
