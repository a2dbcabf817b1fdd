//! Client registration with brokers: HEART_BEAT, UNREGISTER_CLIENT, and
//! GET_CONSUMER_LIST_BY_GROUP (who else consumes as a group, as a typed
//! [`LiveConsumers`] answer that keeps "none" apart from "unknown").
//!
//! The serde structs mirror Java's `HeartbeatData` JSON field names.

use serde::{Deserialize, Serialize};

use crate::remoting::codes::{request, response};
use crate::remoting::error::{DecodeError, RemotingError, Result};
use crate::remoting::header::RemotingCommand;
use crate::remoting::RemotingClient;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatData {
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(default)]
    pub producer_data_set: Vec<ProducerData>,
    #[serde(default)]
    pub consumer_data_set: Vec<ConsumerData>,
    #[serde(default)]
    pub heartbeat_fingerprint: i32,
    #[serde(rename = "withoutSub", default)]
    pub without_sub: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerData {
    pub group_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumeType {
    #[serde(rename = "CONSUME_ACTIVELY")]
    Actively,
    #[serde(rename = "CONSUME_PASSIVELY")]
    Passively,
    #[serde(rename = "CONSUME_POP")]
    Pop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageModel {
    #[serde(rename = "CLUSTERING")]
    Clustering,
    #[serde(rename = "BROADCASTING")]
    Broadcasting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumeFromWhere {
    #[serde(rename = "CONSUME_FROM_LAST_OFFSET")]
    LastOffset,
    #[serde(rename = "CONSUME_FROM_FIRST_OFFSET")]
    FirstOffset,
    #[serde(rename = "CONSUME_FROM_TIMESTAMP")]
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerData {
    pub group_name: String,
    pub consume_type: ConsumeType,
    pub message_model: MessageModel,
    pub consume_from_where: ConsumeFromWhere,
    pub subscription_data_set: Vec<SubscriptionData>,
    pub unit_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionData {
    pub class_filter_mode: bool,
    pub topic: String,
    pub sub_string: String,
    pub tags_set: Vec<String>,
    /// Java `String.hashCode()` of each tag, see [`java_string_hash`].
    pub code_set: Vec<i32>,
    pub sub_version: i64,
    pub expression_type: String,
}

impl HeartbeatData {
    /// The heartbeat of a pull-style (CONSUME_PASSIVELY, CLUSTERING) consumer
    /// `group` subscribed to every tag of `topics`.
    pub fn consumer(client_id: &str, group: &str, topics: &[String]) -> Self {
        HeartbeatData {
            client_id: client_id.to_string(),
            producer_data_set: Vec::new(),
            consumer_data_set: vec![ConsumerData {
                group_name: group.to_string(),
                consume_type: ConsumeType::Passively,
                message_model: MessageModel::Clustering,
                consume_from_where: ConsumeFromWhere::LastOffset,
                subscription_data_set: topics
                    .iter()
                    .map(|t| SubscriptionData::tag(t, "*", 0))
                    .collect(),
                unit_mode: false,
            }],
            heartbeat_fingerprint: 0,
            without_sub: false,
        }
    }
}

impl SubscriptionData {
    /// A TAG subscription as Java's `FilterAPI.buildSubscriptionData` makes it.
    pub fn tag(topic: &str, sub_expression: &str, sub_version: i64) -> Self {
        let tags: Vec<String> = super::pull::parse_tags(sub_expression)
            .into_iter()
            .collect();
        let code_set = tags.iter().map(|t| java_string_hash(t)).collect();
        let sub_string = if tags.is_empty() {
            "*".to_string()
        } else {
            sub_expression.trim().to_string()
        };
        SubscriptionData {
            class_filter_mode: false,
            topic: topic.to_string(),
            sub_string,
            tags_set: tags,
            code_set,
            sub_version,
            expression_type: "TAG".to_string(),
        }
    }
}

/// Java's `String.hashCode()` (over UTF-16 code units), which brokers use
/// as the tag code in consume queues.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

pub fn build_heartbeat(data: &HeartbeatData) -> Result<RemotingCommand> {
    let body = serde_json::to_vec(data).map_err(|e| DecodeError::InvalidJson {
        what: "heartbeat",
        reason: e.to_string(),
    })?;
    Ok(RemotingCommand::request(request::HEART_BEAT).with_body(body))
}

pub fn build_unregister(
    client_id: &str,
    producer_group: Option<&str>,
    consumer_group: Option<&str>,
) -> RemotingCommand {
    RemotingCommand::request(request::UNREGISTER_CLIENT)
        .with_ext("clientID", client_id)
        .with_ext_opt("producerGroup", producer_group)
        .with_ext_opt("consumerGroup", consumer_group)
}

pub fn build_consumer_list(group: &str) -> RemotingCommand {
    RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP).with_ext("consumerGroup", group)
}

/// The remark prefix of Java's `ConsumerManageProcessor.getConsumerListByGroup`
/// (and of the Rust peer) for a group with no live consumer:
/// SYSTEM_ERROR "no consumer for this group, GROUP".
const NO_CONSUMER_REMARK: &str = "no consumer for this group";

/// One broker's answer to "who consumes as this group?". An answer is
/// either definite (`None`, `Some`) or `Unknown`; callers that act on the
/// absence of consumers must treat `Unknown` as "maybe", never as "none".
#[derive(Debug)]
pub enum LiveConsumers {
    /// The broker knows no live consumer of the group: SUCCESS with an empty
    /// list, or SYSTEM_ERROR "no consumer for this group, G" (how Java
    /// brokers say it).
    None,
    /// Client ids of the group's live consumers.
    Some(Vec<String>),
    /// No usable answer: timeout, connection error, any other response
    /// code or remark, an unreadable body.
    Unknown(RemotingError),
}

impl LiveConsumers {
    /// The client ids, or the error when the answer is unknown.
    pub fn into_result(self) -> Result<Vec<String>> {
        match self {
            LiveConsumers::None => Ok(Vec::new()),
            LiveConsumers::Some(ids) => Ok(ids),
            LiveConsumers::Unknown(e) => Err(e),
        }
    }
}

/// Reads a GET_CONSUMER_LIST_BY_GROUP response.
pub fn parse_consumer_list(addr: &str, resp: RemotingCommand) -> LiveConsumers {
    if resp.code == response::SYSTEM_ERROR
        && resp
            .remark
            .as_deref()
            .is_some_and(|r| r.trim_start().starts_with(NO_CONSUMER_REMARK))
    {
        return LiveConsumers::None;
    }
    let resp = match super::expect_success(addr, resp) {
        Ok(resp) => resp,
        Err(e) => return LiveConsumers::Unknown(e),
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        #[serde(default)]
        consumer_id_list: Option<Vec<String>>,
    }
    if resp.body.is_empty() {
        return LiveConsumers::None;
    }
    match serde_json::from_slice::<Body>(&resp.body) {
        Ok(body) => match body.consumer_id_list.unwrap_or_default() {
            ids if ids.is_empty() => LiveConsumers::None,
            ids => LiveConsumers::Some(ids),
        },
        Err(e) => LiveConsumers::Unknown(
            DecodeError::InvalidJson {
                what: "consumer list",
                reason: e.to_string(),
            }
            .into(),
        ),
    }
}

impl RemotingClient {
    pub async fn heartbeat(&self, broker: &str, data: &HeartbeatData) -> Result<()> {
        let resp = self
            .invoke(broker, build_heartbeat(data)?, self.request_timeout())
            .await?;
        super::expect_success(broker, resp).map(|_| ())
    }

    pub async fn unregister_client(
        &self,
        broker: &str,
        client_id: &str,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) -> Result<()> {
        let cmd = build_unregister(client_id, producer_group, consumer_group);
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        super::expect_success(broker, resp).map(|_| ())
    }

    /// Who consumes as `group` according to `broker`; never an error, an
    /// answer that is not definite is [`LiveConsumers::Unknown`].
    pub async fn live_consumers(&self, broker: &str, group: &str) -> LiveConsumers {
        match self
            .invoke(broker, build_consumer_list(group), self.request_timeout())
            .await
        {
            Ok(resp) => parse_consumer_list(broker, resp),
            Err(e) => LiveConsumers::Unknown(e),
        }
    }

    /// Creates (or replaces) the subscription group `group` on `broker`
    /// with the Java defaults (consume enabled, from min, 1 retry queue,
    /// 16 retries). Brokers refuse offsets of a group they do not know
    /// (SUBSCRIPTION_GROUP_NOT_EXIST): call this only for a missing group.
    pub async fn create_subscription_group(&self, broker: &str, group: &str) -> Result<()> {
        self.put_subscription_group(broker, group, false).await
    }

    /// Creates (or replaces: a put replaces the whole config) `group` on a
    /// 5.x broker with `consumeMessageOrderly` set: a 5.x proxy delivers a
    /// FIFO topic's messages in order, one group at a time, only to a group
    /// that has it (4.x brokers ignore the key).
    pub async fn put_subscription_group(
        &self,
        broker: &str,
        group: &str,
        consume_orderly: bool,
    ) -> Result<()> {
        let body = serde_json::json!({
            "consumeMessageOrderly": consume_orderly,
            "groupName": group,
            "consumeEnable": true,
            "consumeFromMinEnable": true,
            "consumeBroadcastEnable": true,
            "retryQueueNums": 1,
            "retryMaxTimes": 16,
            "brokerId": 0,
            "whichBrokerWhenConsumeSlowly": 1,
            "notifyConsumerIdsChangedEnable": true,
        });
        let cmd = RemotingCommand::request(request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
            .with_body(body.to_string().into_bytes());
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        super::expect_success(broker, resp).map(|_| ())
    }

    /// Client ids of the group's live consumers (empty: none); an error
    /// when the broker's answer is unknown.
    pub async fn get_consumer_list_by_group(
        &self,
        broker: &str,
        group: &str,
    ) -> Result<Vec<String>> {
        self.live_consumers(broker, group).await.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_json_uses_java_names() {
        let data = HeartbeatData {
            client_id: "10.0.0.1@bridge".into(),
            producer_data_set: vec![ProducerData {
                group_name: "CLIENT_INNER_PRODUCER".into(),
            }],
            consumer_data_set: vec![ConsumerData {
                group_name: "g".into(),
                consume_type: ConsumeType::Passively,
                message_model: MessageModel::Clustering,
                consume_from_where: ConsumeFromWhere::LastOffset,
                subscription_data_set: vec![SubscriptionData::tag("t", "a || b", 7)],
                unit_mode: false,
            }],
            heartbeat_fingerprint: 0,
            without_sub: false,
        };
        let json = String::from_utf8(build_heartbeat(&data).unwrap().body.to_vec()).unwrap();
        for needle in [
            r#""clientID":"10.0.0.1@bridge""#,
            r#""producerDataSet":[{"groupName":"CLIENT_INNER_PRODUCER"}]"#,
            r#""consumeType":"CONSUME_PASSIVELY""#,
            r#""messageModel":"CLUSTERING""#,
            r#""consumeFromWhere":"CONSUME_FROM_LAST_OFFSET""#,
            r#""subString":"a || b""#,
            r#""tagsSet":["a","b"]"#,
            r#""codeSet":[97,98]"#,
            r#""expressionType":"TAG""#,
            r#""classFilterMode":false"#,
            r#""unitMode":false"#,
        ] {
            assert!(json.contains(needle), "{needle} not in {json}");
        }
        let back: HeartbeatData = serde_json::from_str(&json).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn consumer_heartbeat_subscribes_all_tags() {
        let hb = HeartbeatData::consumer("id", "g", &["a".to_string(), "b".to_string()]);
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.group_name, "g");
        assert_eq!(c.consume_type, ConsumeType::Passively);
        assert_eq!(c.subscription_data_set.len(), 2);
        assert_eq!(c.subscription_data_set[1].sub_string, "*");
        assert!(c.subscription_data_set[1].tags_set.is_empty());
    }

    #[test]
    fn java_hash() {
        assert_eq!(java_string_hash("TagA"), 2_598_919);
        assert_eq!(java_string_hash(""), 0);
    }

    #[test]
    fn consumer_list_answers_are_typed() {
        let answer = |code: i32, remark: Option<&str>, body: &[u8]| {
            let mut r = RemotingCommand::request(code).with_body(body.to_vec());
            r.remark = remark.map(str::to_string);
            parse_consumer_list("b:1", r)
        };
        // Java's (and the peer's) answer for a group nobody consumes as.
        assert!(matches!(
            answer(
                response::SYSTEM_ERROR,
                Some("no consumer for this group, g"),
                b""
            ),
            LiveConsumers::None
        ));
        assert!(matches!(
            answer(response::SUCCESS, None, br#"{"consumerIdList":[]}"#),
            LiveConsumers::None
        ));
        match answer(
            response::SUCCESS,
            None,
            br#"{"consumerIdList":["a@1","b@2"]}"#,
        ) {
            LiveConsumers::Some(ids) => assert_eq!(ids, vec!["a@1", "b@2"]),
            other => panic!("{other:?}"),
        }
        // Anything else is unknown, not "no consumers".
        for (code, remark, body) in [
            (response::SYSTEM_ERROR, Some("store is busy"), &b""[..]),
            (response::SYSTEM_ERROR, None, &b""[..]),
            (
                response::SYSTEM_BUSY,
                Some("no consumer for this group, g"),
                &b""[..],
            ),
            (response::SUCCESS, None, &b"{not json"[..]),
        ] {
            match answer(code, remark, body) {
                LiveConsumers::Unknown(e) => assert!(!e.to_string().is_empty()),
                other => panic!("{code} {remark:?}: {other:?} must be unknown"),
            }
        }
        assert_eq!(
            answer(response::SYSTEM_BUSY, None, b"")
                .into_result()
                .unwrap_err()
                .response_code(),
            Some(response::SYSTEM_BUSY)
        );
        let unregister = build_unregister("id", None, Some("g"));
        assert_eq!(unregister.ext("clientID"), Some("id"));
        assert_eq!(unregister.ext("producerGroup"), None);
    }
}
