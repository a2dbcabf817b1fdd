//! Test-only builder of 4.x records with realistic defaults, shared by the
//! `translate` and `cutover` tests.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::remoting::{MessageRecord, Properties};

pub const BORN_TIMESTAMP_MS: i64 = 1_700_000_000_000;
pub const STORE_TIMESTAMP_MS: i64 = 1_700_000_000_250;
pub const OFFSET_MSG_ID: &str = "0A00000100002A9F00000000000003E8";

#[derive(Debug, Clone)]
pub struct RecordBuilder {
    record: MessageRecord,
}

impl Default for RecordBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordBuilder {
    pub fn new() -> Self {
        let body = Bytes::from_static(b"hello 4.x");
        Self {
            record: MessageRecord {
                topic: "orders".to_string(),
                queue_id: 3,
                queue_offset: 42,
                commit_log_offset: 1000,
                sys_flag: 0,
                flag: 0,
                body_crc: crc32fast::hash(&body),
                born_timestamp_ms: BORN_TIMESTAMP_MS,
                born_host: addr("10.0.0.7:51234"),
                store_timestamp_ms: STORE_TIMESTAMP_MS,
                store_host: addr("10.0.0.1:10911"),
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                body,
                properties: Properties::new(),
                offset_msg_id: OFFSET_MSG_ID.to_string(),
            },
        }
    }

    pub fn prop(mut self, name: &str, value: &str) -> Self {
        self.record.properties.insert(name, value);
        self
    }

    pub fn uniq_key(self, id: &str) -> Self {
        self.prop("UNIQ_KEY", id)
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.record.body = Bytes::copy_from_slice(body);
        self.record.body_crc = crc32fast::hash(body);
        self
    }

    pub fn sys_flag(mut self, sys_flag: i32) -> Self {
        self.record.sys_flag = sys_flag;
        self
    }

    pub fn offset_msg_id(mut self, id: &str) -> Self {
        self.record.offset_msg_id = id.to_string();
        self
    }

    pub fn born_host(mut self, host: &str) -> Self {
        self.record.born_host = addr(host);
        self
    }

    pub fn store_timestamp(mut self, ms: i64) -> Self {
        self.record.store_timestamp_ms = ms;
        self
    }

    pub fn queue_id(mut self, queue: i32) -> Self {
        self.record.queue_id = queue;
        self
    }

    pub fn queue_offset(mut self, offset: i64) -> Self {
        self.record.queue_offset = offset;
        self
    }

    pub fn build(self) -> MessageRecord {
        self.record
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test socket address")
}
