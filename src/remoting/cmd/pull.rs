//! PULL_MESSAGE: read a batch of records from one queue, with optional long
//! polling (the broker holds the request up to `suspend_timeout` when there
//! is nothing new).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::remoting::codes::{request, response};
use crate::remoting::error::Result;
use crate::remoting::header::RemotingCommand;
use crate::remoting::message::{decode_records, MessageRecord};
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
}

/// Maps a PULL_MESSAGE response; `tags` as from [`parse_tags`].
pub fn parse_pull_response(
    addr: &str,
    resp: RemotingCommand,
    tags: &BTreeSet<String>,
) -> Result<PullResult> {
    let status = match resp.code {
        response::SUCCESS => PullStatus::Found,
        response::PULL_NOT_FOUND => PullStatus::NoNewMsg,
        response::PULL_RETRY_IMMEDIATELY => PullStatus::RetryImmediately,
        response::PULL_OFFSET_MOVED => PullStatus::OffsetMoved,
        _ => return Err(super::broker_error(addr, &resp)),
    };
    let next_begin_offset = resp.ext_i64_required("nextBeginOffset")?;
    let min_offset = resp.ext_i64("minOffset")?.unwrap_or(0);
    let max_offset = resp.ext_i64("maxOffset")?.unwrap_or(0);
    let suggest_which_broker_id = resp.ext_i64("suggestWhichBrokerId")?.unwrap_or(0);
    let offset_delta = resp.ext_i64("offsetDelta")?;
    let mut messages = Vec::new();
    let mut status = status;
    if status == PullStatus::Found {
        messages = decode_records(&resp.body)?;
        if let Some(delta) = offset_delta {
            for m in &mut messages {
                m.queue_offset = m.queue_offset.saturating_add(delta);
            }
        }
        if !tags.is_empty() {
            messages.retain(|m| m.tag().is_some_and(|t| tags.contains(t)));
        }
        if messages.is_empty() {
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
    })
}

impl RemotingClient {
    /// Pulls from one queue of `broker_addr`. The request may take
    /// `suspend_timeout` plus the configured request timeout.
    pub async fn pull_message(&self, broker_addr: &str, req: &PullRequest) -> Result<PullResult> {
        let timeout = req.suspend_timeout + self.request_timeout();
        let resp = self.invoke(broker_addr, req.to_command(), timeout).await?;
        parse_pull_response(broker_addr, resp, &req.tags())
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
        let all = parse_pull_response("b:1", resp.clone(), &BTreeSet::new()).unwrap();
        assert_eq!(all.status, PullStatus::Found);
        assert_eq!(all.messages.len(), 2);
        assert_eq!(all.next_begin_offset, 12);
        let some = parse_pull_response("b:1", resp.clone(), &parse_tags("a||b")).unwrap();
        assert_eq!(some.messages.len(), 1);
        let none = parse_pull_response("b:1", resp, &parse_tags("z")).unwrap();
        assert_eq!(none.status, PullStatus::NoMatchedMsg);

        for (code, status) in [
            (19, PullStatus::NoNewMsg),
            (20, PullStatus::RetryImmediately),
            (21, PullStatus::OffsetMoved),
        ] {
            let mut r = found(&[]);
            r.code = code;
            let res = parse_pull_response("b:1", r, &BTreeSet::new()).unwrap();
            assert_eq!(res.status, status);
            assert!(res.messages.is_empty());
        }
        let mut r = found(&[]);
        r.code = 26;
        r.remark = Some("subscription group not exist".into());
        let err = parse_pull_response("b:1", r, &BTreeSet::new()).unwrap_err();
        assert!(matches!(err, RemotingError::Broker { code: 26, .. }));
        assert!(
            err.to_string().contains("SUBSCRIPTION_GROUP_NOT_EXIST"),
            "{err}"
        );
    }

    #[test]
    fn offset_delta_is_applied() {
        let r = found(&[record(0, "a")]).with_ext("offsetDelta", 500);
        let res = parse_pull_response("b:1", r, &BTreeSet::new()).unwrap();
        assert_eq!(res.messages[0].queue_offset, 500);
    }
}
