//! PULL_MESSAGE: read a batch of records from one queue, with optional long
//! polling (the broker holds the request up to `suspend_timeout` when there
//! is nothing new). A body is decoded record by record: a record that
//! cannot be decoded comes back raw in [`PullResult::undecodable`] instead
//! of failing the records around it.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::remoting::codes::{request, response};
use crate::remoting::error::Result;
use crate::remoting::header::RemotingCommand;
use crate::remoting::message::{
    decode_pull_body, stored_tag, MessageRecord, UndecodableRecord, DEFAULT_MAX_BODY_BYTES,
};
use crate::remoting::RemotingClient;

/// `PullSysFlag` bits.
pub mod pull_flag {
    pub const COMMIT_OFFSET: i32 = 0x1;
    pub const SUSPEND: i32 = 0x1 << 1;
    pub const SUBSCRIPTION: i32 = 0x1 << 2;
    pub const CLASS_FILTER: i32 = 0x1 << 3;
    pub const LITE_PULL: i32 = 0x1 << 4;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub consumer_group: String,
    pub topic: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub max_msg_nums: u32,
    /// `*` or `tagA || tagB`.
    pub sub_expression: String,
    /// `TAG` (SQL92 needs broker support the bridge does not rely on).
    pub expression_type: String,
    pub sub_version: i64,
    /// Long-polling time; zero disables suspension.
    pub suspend_timeout: Duration,
    /// Also commit this consumer offset on the broker (FLAG_COMMIT_OFFSET).
    pub commit_offset: Option<i64>,
}

impl PullRequest {
    pub fn new(consumer_group: &str, topic: &str, queue_id: i32, queue_offset: i64) -> Self {
        PullRequest {
            consumer_group: consumer_group.to_string(),
            topic: topic.to_string(),
            queue_id,
            queue_offset,
            max_msg_nums: 32,
            sub_expression: "*".to_string(),
            expression_type: "TAG".to_string(),
            sub_version: 0,
            suspend_timeout: Duration::ZERO,
            commit_offset: None,
        }
    }

    pub fn sys_flag(&self) -> i32 {
        let mut flag = pull_flag::SUBSCRIPTION;
        if self.commit_offset.is_some() {
            flag |= pull_flag::COMMIT_OFFSET;
        }
        if !self.suspend_timeout.is_zero() {
            flag |= pull_flag::SUSPEND;
        }
        flag
    }

    /// Tags of a TAG expression; empty for `*` (everything).
    pub fn tags(&self) -> BTreeSet<String> {
        parse_tags(&self.sub_expression)
    }

    pub fn to_command(&self) -> RemotingCommand {
        RemotingCommand::request(request::PULL_MESSAGE)
            .with_ext("consumerGroup", &self.consumer_group)
            .with_ext("topic", &self.topic)
            .with_ext("queueId", self.queue_id)
            .with_ext("queueOffset", self.queue_offset)
            .with_ext("maxMsgNums", self.max_msg_nums)
            .with_ext("sysFlag", self.sys_flag())
            .with_ext("commitOffset", self.commit_offset.unwrap_or(0))
            .with_ext("suspendTimeoutMillis", self.suspend_timeout.as_millis())
            .with_ext("subscription", &self.sub_expression)
            .with_ext("subVersion", self.sub_version)
            .with_ext("expressionType", &self.expression_type)
    }
}

/// Java's `SubscriptionData` tag parsing: `*` or empty subscribes to all.
pub fn parse_tags(expression: &str) -> BTreeSet<String> {
    let e = expression.trim();
    if e.is_empty() || e == "*" {
        return BTreeSet::new();
    }
    e.split("||")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// Messages returned (after client-side tag filtering, at least one).
    Found,
    /// PULL_NOT_FOUND: nothing new at this offset.
    NoNewMsg,
    /// The broker found messages, but none matched the tags (after the
    /// client-side re-check Java does too); continue at `next_begin_offset`.
    NoMatchedMsg,
    /// PULL_OFFSET_MOVED: the offset is out of range; use `next_begin_offset`.
    OffsetMoved,
    /// PULL_RETRY_IMMEDIATELY (Java reports it as NO_MATCHED_MSG): the
    /// broker filtered the range away; pull again at `next_begin_offset`.
    RetryImmediately,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResult {
    pub status: PullStatus,
    pub next_begin_offset: i64,
    pub min_offset: i64,
    pub max_offset: i64,
    pub suggest_which_broker_id: i64,
    pub messages: Vec<MessageRecord>,
    /// Records of the body that could not be decoded, in body order; those
    /// whose tag is readable and not subscribed are left out like messages.
    pub undecodable: Vec<UndecodableRecord>,
    /// The response remark. Java brokers put the store's `GetMessageStatus`
    /// there (`MESSAGE_WAS_REMOVING`, `NO_MATCHED_MESSAGE`,
    /// `OFFSET_TOO_SMALL`, ...), which tells what a PULL_RETRY_IMMEDIATELY
    /// means: a removed range, a filtered one, or a slave that does not
    /// correct offsets.
    pub store_status: Option<String>,
}

/// Maps a PULL_MESSAGE response to `req`, inflating compressed bodies up to
/// `max_body_bytes`.
///
/// When a record's frame is broken (impossible total size, bad magic code)
/// the rest of the body cannot be walked. After decoded records,
/// `next_begin_offset` then stops after the last of them, so the next pull
/// starts at the broken record; at the start of the body, the rest of the
/// body becomes one undecodable record at its header's queue offset (or
/// the requested one) and `next_begin_offset` moves one past it, so a queue
/// is never stuck on a record it cannot read.
pub fn parse_pull_response(
    addr: &str,
    resp: RemotingCommand,
    req: &PullRequest,
    max_body_bytes: usize,
) -> Result<PullResult> {
    let status = match resp.code {
        response::SUCCESS => PullStatus::Found,
        response::PULL_NOT_FOUND => PullStatus::NoNewMsg,
        response::PULL_RETRY_IMMEDIATELY => PullStatus::RetryImmediately,
        response::PULL_OFFSET_MOVED => PullStatus::OffsetMoved,
        _ => return Err(super::broker_error(addr, &resp)),
    };
    let mut next_begin_offset = resp.ext_i64_required("nextBeginOffset")?;
    let min_offset = resp.ext_i64("minOffset")?.unwrap_or(0);
    let max_offset = resp.ext_i64("maxOffset")?.unwrap_or(0);
    let suggest_which_broker_id = resp.ext_i64("suggestWhichBrokerId")?.unwrap_or(0);
    let offset_delta = resp.ext_i64("offsetDelta")?.unwrap_or(0);
    let mut messages = Vec::new();
    let mut undecodable = Vec::new();
    let mut status = status;
    if status == PullStatus::Found {
        let decoded = decode_pull_body(&resp.body, max_body_bytes);
        messages = decoded.records;
        undecodable = decoded.undecodable;
        if offset_delta != 0 {
            for m in &mut messages {
                m.queue_offset = m.queue_offset.saturating_add(offset_delta);
            }
            for u in &mut undecodable {
                u.queue_offset = u.queue_offset.saturating_add(offset_delta);
            }
        }
        if let Some(broken) = decoded.broken {
            let last = messages
                .iter()
                .map(|m| m.queue_offset)
                .chain(undecodable.iter().map(|u| u.queue_offset))
                .max();
            match last {
                Some(last) => {
                    tracing::warn!(
                        broker = addr, topic = %req.topic, queue_id = req.queue_id,
                        after_offset = last, error = %broken.error,
                        "pull body has a broken record frame; pulling again from the record after the last readable one"
                    );
                    next_begin_offset = next_begin_offset.min(last.saturating_add(1));
                }
                None => {
                    let requested = req.queue_offset;
                    let at = broken
                        .queue_offset
                        .map(|o| o.saturating_add(offset_delta))
                        .filter(|o| *o >= requested && *o < next_begin_offset)
                        .unwrap_or(requested);
                    undecodable.push(UndecodableRecord {
                        queue_offset: at,
                        reason: format!(
                            "cannot frame the stored record: {}; the {} bytes from there to the \
                             end of the pull are kept as this record and the queue moves on \
                             past offset {at}",
                            broken.error,
                            broken.raw.len()
                        ),
                        raw: broken.raw,
                    });
                    next_begin_offset = at.saturating_add(1);
                }
            }
        }
        let tags = req.tags();
        if !tags.is_empty() {
            messages.retain(|m| m.tag().is_some_and(|t| tags.contains(t)));
            undecodable.retain(|u| stored_tag(&u.raw).map_or(true, |t| tags.contains(&t)));
        }
        if messages.is_empty() && undecodable.is_empty() {
            status = PullStatus::NoMatchedMsg;
        }
    }
    Ok(PullResult {
        status,
        next_begin_offset,
        min_offset,
        max_offset,
        suggest_which_broker_id,
        messages,
        undecodable,
        store_status: resp.remark.clone(),
    })
}

impl RemotingClient {
    /// Pulls from one queue of `broker_addr`, inflating compressed bodies up
    /// to [`DEFAULT_MAX_BODY_BYTES`]. The request may take `suspend_timeout`
    /// plus the configured request timeout.
    pub async fn pull_message(&self, broker_addr: &str, req: &PullRequest) -> Result<PullResult> {
        self.pull_message_bounded(broker_addr, req, DEFAULT_MAX_BODY_BYTES)
            .await
    }

    /// [`RemotingClient::pull_message`], inflating no body beyond
    /// `max_body_bytes` (a larger one comes back undecodable).
    pub async fn pull_message_bounded(
        &self,
        broker_addr: &str,
        req: &PullRequest,
        max_body_bytes: usize,
    ) -> Result<PullResult> {
        let timeout = req.suspend_timeout + self.request_timeout();
        let resp = self.invoke(broker_addr, req.to_command(), timeout).await?;
        parse_pull_response(broker_addr, resp, req, max_body_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::error::RemotingError;
    use crate::remoting::message::{encode_record, MessageRecord};
    use crate::remoting::properties::Properties;
    use bytes::{Bytes, BytesMut};

    fn record(offset: i64, tag: &str) -> MessageRecord {
        MessageRecord {
            topic: "t".into(),
            queue_id: 1,
            queue_offset: offset,
            commit_log_offset: offset * 100,
            sys_flag: 0,
            flag: 0,
            body_crc: 0,
            born_timestamp_ms: 1,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_timestamp_ms: 2,
            store_host: "127.0.0.1:10911".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: Bytes::from_static(b"b"),
            properties: [("TAGS", tag)].into_iter().collect::<Properties>(),
            offset_msg_id: String::new(),
        }
    }

    #[test]
    fn request_uses_java_header_names_and_flags() {
        let mut req = PullRequest::new("g", "t", 3, 100);
        req.suspend_timeout = Duration::from_secs(15);
        req.commit_offset = Some(90);
        req.sub_expression = "a || b".into();
        let cmd = req.to_command();
        assert_eq!(cmd.code, 11);
        assert_eq!(cmd.ext("sysFlag"), Some("7"));
        assert_eq!(cmd.ext("commitOffset"), Some("90"));
        assert_eq!(cmd.ext("suspendTimeoutMillis"), Some("15000"));
        assert_eq!(cmd.ext("queueOffset"), Some("100"));
        assert_eq!(cmd.ext("subscription"), Some("a || b"));
        assert_eq!(cmd.ext("expressionType"), Some("TAG"));
        assert_eq!(req.tags().into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(
            PullRequest::new("g", "t", 0, 0).sys_flag(),
            pull_flag::SUBSCRIPTION
        );
    }

    /// Parses `resp` as the answer to a pull of queue 1 from offset 10.
    fn parse(resp: RemotingCommand, expression: &str) -> Result<PullResult> {
        let mut req = PullRequest::new("g", "t", 1, 10);
        req.sub_expression = expression.into();
        parse_pull_response("b:1", resp, &req, DEFAULT_MAX_BODY_BYTES)
    }

    fn found(records: &[MessageRecord]) -> RemotingCommand {
        let mut body = BytesMut::new();
        for r in records {
            body.extend_from_slice(&encode_record(r, false).unwrap());
        }
        let mut resp = RemotingCommand::request(0)
            .with_ext("nextBeginOffset", 12)
            .with_ext("minOffset", 0)
            .with_ext("maxOffset", 12)
            .with_ext("suggestWhichBrokerId", 0)
            .with_body(body.freeze());
        resp.flag = 1;
        resp
    }

    #[test]
    fn maps_statuses_and_filters_tags() {
        let resp = found(&[record(10, "a"), record(11, "c")]);
        let all = parse(resp.clone(), "*").unwrap();
        assert_eq!(all.status, PullStatus::Found);
        assert_eq!(all.messages.len(), 2);
        assert_eq!(all.next_begin_offset, 12);
        let some = parse(resp.clone(), "a||b").unwrap();
        assert_eq!(some.messages.len(), 1);
        let none = parse(resp, "z").unwrap();
        assert_eq!(none.status, PullStatus::NoMatchedMsg);

        for (code, status) in [
            (19, PullStatus::NoNewMsg),
            (20, PullStatus::RetryImmediately),
            (21, PullStatus::OffsetMoved),
        ] {
            let mut r = found(&[]);
            r.code = code;
            let res = parse(r, "*").unwrap();
            assert_eq!(res.status, status);
            assert!(res.messages.is_empty());
        }
        let mut r = found(&[]);
        r.code = 26;
        r.remark = Some("subscription group not exist".into());
        let err = parse(r, "*").unwrap_err();
        assert!(matches!(err, RemotingError::Broker { code: 26, .. }));
        assert!(
            err.to_string().contains("SUBSCRIPTION_GROUP_NOT_EXIST"),
            "{err}"
        );
    }

    #[test]
    fn offset_delta_is_applied() {
        let r = found(&[record(0, "a")]).with_ext("offsetDelta", 500);
        let res = parse(r, "*").unwrap();
        assert_eq!(res.messages[0].queue_offset, 500);
    }

    fn body_of(parts: &[Bytes]) -> Bytes {
        let mut body = BytesMut::new();
        for p in parts {
            body.extend_from_slice(p);
        }
        body.freeze()
    }

    fn with_crc(offset: i64, tag: &str) -> MessageRecord {
        let mut r = record(offset, tag);
        r.body_crc = crc32fast::hash(&r.body) & 0x7FFF_FFFF;
        r
    }

    #[test]
    fn a_corrupt_record_between_good_ones_is_undecodable_and_the_rest_decode() {
        let mut bad = with_crc(11, "a");
        bad.body_crc ^= 1;
        let bad_bytes = encode_record(&bad, false).unwrap();
        let body = body_of(&[
            encode_record(&with_crc(10, "a"), false).unwrap(),
            bad_bytes.clone(),
            encode_record(&with_crc(12, "a"), false).unwrap(),
        ]);
        let r = parse(found(&[]).with_body(body), "*").unwrap();
        assert_eq!(r.status, PullStatus::Found);
        let offsets: Vec<i64> = r.messages.iter().map(|m| m.queue_offset).collect();
        assert_eq!(offsets, vec![10, 12]);
        assert_eq!(r.undecodable.len(), 1);
        assert_eq!(r.undecodable[0].queue_offset, 11);
        assert_eq!(r.undecodable[0].raw, bad_bytes);
        assert!(
            r.undecodable[0].reason.contains("CRC"),
            "{}",
            r.undecodable[0].reason
        );
        assert_eq!(r.next_begin_offset, 12, "the broker's next offset is kept");
    }

    #[test]
    fn undecodable_records_of_other_tags_are_filtered_like_messages() {
        let mut bad = with_crc(11, "other");
        bad.body_crc ^= 1;
        let body = body_of(&[
            encode_record(&with_crc(10, "a"), false).unwrap(),
            encode_record(&bad, false).unwrap(),
        ]);
        let r = parse(found(&[]).with_body(body), "a").unwrap();
        assert_eq!(r.messages.len(), 1);
        assert!(r.undecodable.is_empty());
    }

    #[test]
    fn a_broken_frame_after_records_stops_after_them() {
        let mut broken = BytesMut::from(&encode_record(&with_crc(12, "a"), false).unwrap()[..]);
        broken[4] = 0; // magic code
        let body = body_of(&[
            encode_record(&with_crc(10, "a"), false).unwrap(),
            encode_record(&with_crc(11, "a"), false).unwrap(),
            broken.freeze(),
        ]);
        let r = parse(found(&[]).with_body(body), "*").unwrap();
        assert_eq!(r.messages.len(), 2);
        assert!(r.undecodable.is_empty());
        assert_eq!(
            r.next_begin_offset, 12,
            "the next pull starts at the broken record"
        );
    }

    #[test]
    fn a_broken_frame_at_the_start_is_one_undecodable_record_and_the_queue_moves_on() {
        // Total size larger than the body: the header's offset (11) is used.
        let mut broken = BytesMut::from(&encode_record(&with_crc(11, "a"), false).unwrap()[..]);
        broken[0..4].copy_from_slice(&100_000i32.to_be_bytes());
        let broken = broken.freeze();
        let r = parse(found(&[]).with_body(broken.clone()), "*").unwrap();
        assert_eq!(r.status, PullStatus::Found);
        assert!(r.messages.is_empty());
        assert_eq!(r.undecodable.len(), 1);
        assert_eq!(r.undecodable[0].queue_offset, 11);
        assert_eq!(r.undecodable[0].raw, broken);
        assert!(r.undecodable[0].reason.contains("cannot frame"));
        assert_eq!(r.next_begin_offset, 12);

        // Garbage whose header offset is out of range: the requested offset.
        let r = parse(found(&[]).with_body(Bytes::from_static(&[0xFF; 40])), "*").unwrap();
        assert_eq!(r.undecodable[0].queue_offset, 10);
        assert_eq!(r.next_begin_offset, 11);
    }

    #[test]
    fn lz4_and_zstd_bodies_from_java_producers_decode() {
        use crate::remoting::message::sys_flag;
        let plain = b"5.x producer body ".repeat(50);
        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut lz4, &plain).unwrap();
        let lz4 = lz4.finish().unwrap();
        let zstd = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut parts = Vec::new();
        for (offset, stored, kind) in [
            (10, lz4, sys_flag::COMPRESSION_LZ4_TYPE),
            (11, zstd, sys_flag::COMPRESSION_ZSTD_TYPE),
        ] {
            let mut r = record(offset, "a");
            r.body_crc = crc32fast::hash(&stored) & 0x7FFF_FFFF;
            r.body = Bytes::from(stored);
            r.sys_flag = sys_flag::COMPRESSED | kind;
            parts.push(encode_record(&r, false).unwrap());
        }
        let r = parse(found(&[]).with_body(body_of(&parts)), "*").unwrap();
        assert!(r.undecodable.is_empty(), "{:?}", r.undecodable);
        assert_eq!(r.messages.len(), 2);
        for m in &r.messages {
            assert_eq!(&m.body[..], &plain[..]);
            assert_eq!(m.sys_flag & sys_flag::COMPRESSED, 0);
        }
    }

    #[test]
    fn store_status_is_the_remark() {
        let mut r = found(&[]);
        r.code = 20;
        r.remark = Some("MESSAGE_WAS_REMOVING".into());
        let res = parse(r, "*").unwrap();
        assert_eq!(res.store_status.as_deref(), Some("MESSAGE_WAS_REMOVING"));
    }

    #[test]
    fn offset_delta_applies_to_undecodable_records_too() {
        let mut bad = with_crc(0, "a");
        bad.body_crc ^= 1;
        let r = found(&[])
            .with_body(encode_record(&bad, false).unwrap())
            .with_ext("offsetDelta", 500);
        let res = parse(r, "*").unwrap();
        assert_eq!(res.undecodable[0].queue_offset, 500);
    }
}
