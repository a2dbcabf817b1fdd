//! Queue offsets: GET_MAX_OFFSET, GET_MIN_OFFSET, SEARCH_OFFSET_BY_TIMESTAMP,
//! and consumer-group offsets: QUERY_CONSUMER_OFFSET, UPDATE_CONSUMER_OFFSET.

use crate::remoting::codes::{request, response};
use crate::remoting::error::Result;
use crate::remoting::header::RemotingCommand;
use crate::remoting::RemotingClient;

pub fn build_max_offset(topic: &str, queue_id: i32) -> RemotingCommand {
    RemotingCommand::request(request::GET_MAX_OFFSET)
        .with_ext("topic", topic)
        .with_ext("queueId", queue_id)
}

pub fn build_min_offset(topic: &str, queue_id: i32) -> RemotingCommand {
    RemotingCommand::request(request::GET_MIN_OFFSET)
        .with_ext("topic", topic)
        .with_ext("queueId", queue_id)
}

/// First offset whose store time is at or after `timestamp_ms`
/// (boundary LOWER, the Java default).
pub fn build_search_offset(topic: &str, queue_id: i32, timestamp_ms: i64) -> RemotingCommand {
    RemotingCommand::request(request::SEARCH_OFFSET_BY_TIMESTAMP)
        .with_ext("topic", topic)
        .with_ext("queueId", queue_id)
        .with_ext("timestamp", timestamp_ms)
        .with_ext("boundaryType", "LOWER")
}

/// `setZeroIfNotFound=false` so that "no committed offset" is reported as
/// QUERY_NOT_FOUND rather than a made-up 0 (4.x brokers ignore the field).
pub fn build_query_consumer_offset(group: &str, topic: &str, queue_id: i32) -> RemotingCommand {
    RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with_ext("consumerGroup", group)
        .with_ext("topic", topic)
        .with_ext("queueId", queue_id)
        .with_ext("setZeroIfNotFound", false)
}

pub fn build_update_consumer_offset(
    group: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
) -> RemotingCommand {
    RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with_ext("consumerGroup", group)
        .with_ext("topic", topic)
        .with_ext("queueId", queue_id)
        .with_ext("commitOffset", offset)
}

/// The `offset` response header of a SUCCESS answer.
pub fn parse_offset_response(addr: &str, resp: RemotingCommand) -> Result<i64> {
    let resp = super::expect_success(addr, resp)?;
    Ok(resp.ext_i64_required("offset")?)
}

/// QUERY_NOT_FOUND is `None`.
pub fn parse_query_consumer_offset(addr: &str, resp: RemotingCommand) -> Result<Option<i64>> {
    if resp.code == response::QUERY_NOT_FOUND {
        return Ok(None);
    }
    parse_offset_response(addr, resp).map(Some)
}

impl RemotingClient {
    pub async fn get_max_offset(&self, broker: &str, topic: &str, queue_id: i32) -> Result<i64> {
        let resp = self
            .invoke(
                broker,
                build_max_offset(topic, queue_id),
                self.request_timeout(),
            )
            .await?;
        parse_offset_response(broker, resp)
    }

    pub async fn get_min_offset(&self, broker: &str, topic: &str, queue_id: i32) -> Result<i64> {
        let resp = self
            .invoke(
                broker,
                build_min_offset(topic, queue_id),
                self.request_timeout(),
            )
            .await?;
        parse_offset_response(broker, resp)
    }

    pub async fn search_offset_by_timestamp(
        &self,
        broker: &str,
        topic: &str,
        queue_id: i32,
        timestamp_ms: i64,
    ) -> Result<i64> {
        let cmd = build_search_offset(topic, queue_id, timestamp_ms);
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        parse_offset_response(broker, resp)
    }

    /// The committed offset of `group` on a queue; `None` if it has none.
    pub async fn query_consumer_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<Option<i64>> {
        let cmd = build_query_consumer_offset(group, topic, queue_id);
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        parse_query_consumer_offset(broker, resp)
    }

    /// Commits `offset` for `group` (a synchronous request, unlike the
    /// oneway Java clients use, so failures are seen).
    pub async fn update_consumer_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: i64,
    ) -> Result<()> {
        let cmd = build_update_consumer_offset(group, topic, queue_id, offset);
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        super::expect_success(broker, resp).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(code: i32) -> RemotingCommand {
        let mut r = RemotingCommand::request(code);
        r.flag = 1;
        r
    }

    #[test]
    fn builds_and_parses() {
        let c = build_update_consumer_offset("g", "t", 2, 77);
        assert_eq!(c.code, 15);
        assert_eq!(c.ext("commitOffset"), Some("77"));
        assert_eq!(build_search_offset("t", 1, 5).ext("timestamp"), Some("5"));
        assert_eq!(
            parse_offset_response("b:1", resp(0).with_ext("offset", 42)).unwrap(),
            42
        );
        assert!(
            parse_offset_response("b:1", resp(0)).is_err(),
            "offset missing"
        );
        assert_eq!(parse_query_consumer_offset("b:1", resp(22)).unwrap(), None);
        assert_eq!(
            parse_query_consumer_offset("b:1", resp(0).with_ext("offset", 9)).unwrap(),
            Some(9)
        );
        assert!(parse_query_consumer_offset("b:1", resp(17)).is_err());
    }
}
