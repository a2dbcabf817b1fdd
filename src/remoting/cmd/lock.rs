//! Queue locks of a consumer group on a broker: LOCK_BATCH_MQ and
//! UNLOCK_BATCH_MQ, the requests Java's orderly push consumer uses so that
//! one client at a time consumes a queue (issue 18). The bodies mirror
//! Java's `LockBatchRequestBody` / `UnlockBatchRequestBody` JSON; the
//! answer's `lockOKMQSet` lists the queues the client holds after the call
//! (those it asked for and got, or already held).
//!
//! A broker keeps a lock for its `rebalanceLockMaxLiveTime` (60 s by
//! default) unless renewed; it does not fence pulls or offset commits by
//! lock, so a holder must stop on its own before the lock can have
//! expired there.

use serde::{Deserialize, Serialize};

use crate::remoting::codes::request;
use crate::remoting::error::{DecodeError, Result};
use crate::remoting::header::RemotingCommand;
use crate::remoting::RemotingClient;

/// Java's `MessageQueue` as it appears in these bodies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody<'a> {
    consumer_group: &'a str,
    client_id: &'a str,
    /// Always true: the bridge asks each broker for its own queues (a
    /// broker would otherwise forward the request to its slaves too).
    only_this_broker: bool,
    mq_set: &'a [LockQueue],
}

fn body(group: &str, client_id: &str, queues: &[LockQueue]) -> Result<Vec<u8>> {
    serde_json::to_vec(&BatchBody {
        consumer_group: group,
        client_id,
        only_this_broker: true,
        mq_set: queues,
    })
    .map_err(|e| {
        DecodeError::InvalidJson {
            what: "lock request",
            reason: e.to_string(),
        }
        .into()
    })
}

pub fn build_lock(group: &str, client_id: &str, queues: &[LockQueue]) -> Result<RemotingCommand> {
    Ok(RemotingCommand::request(request::LOCK_BATCH_MQ).with_body(body(group, client_id, queues)?))
}

pub fn build_unlock(group: &str, client_id: &str, queues: &[LockQueue]) -> Result<RemotingCommand> {
    Ok(RemotingCommand::request(request::UNLOCK_BATCH_MQ)
        .with_body(body(group, client_id, queues)?))
}

/// The queues a LOCK_BATCH_MQ answer says the client holds, sorted.
pub fn parse_locked(body: &[u8]) -> Result<Vec<LockQueue>> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "lockOKMQSet", default)]
        locked: Vec<LockQueue>,
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut locked = serde_json::from_slice::<Answer>(body)
        .map_err(|e| DecodeError::InvalidJson {
            what: "lock answer",
            reason: e.to_string(),
        })?
        .locked;
    locked.sort();
    locked.dedup();
    Ok(locked)
}

impl RemotingClient {
    /// Asks `broker` to lock `queues` for `client_id` of `group` (or to
    /// renew them); returns the queues the client holds now.
    pub async fn lock_queues(
        &self,
        broker: &str,
        group: &str,
        client_id: &str,
        queues: &[LockQueue],
    ) -> Result<Vec<LockQueue>> {
        let cmd = build_lock(group, client_id, queues)?;
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        let resp = super::expect_success(broker, resp)?;
        parse_locked(&resp.body)
    }

    /// Releases `queues` held by `client_id` of `group` on `broker`.
    pub async fn unlock_queues(
        &self,
        broker: &str,
        group: &str,
        client_id: &str,
        queues: &[LockQueue],
    ) -> Result<()> {
        let cmd = build_unlock(group, client_id, queues)?;
        let resp = self.invoke(broker, cmd, self.request_timeout()).await?;
        super::expect_success(broker, resp).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i32) -> LockQueue {
        LockQueue {
            topic: "orders".into(),
            broker_name: "broker-a".into(),
            queue_id: id,
        }
    }

    #[test]
    fn request_bodies_use_java_names() {
        let cmd = build_lock("bridge", "10.0.0.1@b1", &[q(0), q(3)]).expect("build");
        assert_eq!(cmd.code, request::LOCK_BATCH_MQ);
        let json: serde_json::Value = serde_json::from_slice(&cmd.body).expect("json");
        assert_eq!(json["consumerGroup"], "bridge");
        assert_eq!(json["clientId"], "10.0.0.1@b1");
        assert_eq!(json["onlyThisBroker"], true);
        assert_eq!(json["mqSet"][1]["brokerName"], "broker-a");
        assert_eq!(json["mqSet"][1]["queueId"], 3);
        let cmd = build_unlock("bridge", "c", &[q(1)]).expect("build");
        assert_eq!(cmd.code, request::UNLOCK_BATCH_MQ);
    }

    #[test]
    fn the_answer_lists_the_queues_held() {
        let body = br#"{"lockOKMQSet":[{"topic":"orders","brokerName":"broker-a","queueId":3},
            {"topic":"orders","brokerName":"broker-a","queueId":0}]}"#;
        assert_eq!(parse_locked(body).expect("parse"), vec![q(0), q(3)]);
        assert_eq!(parse_locked(b"{}").expect("none"), vec![]);
        assert_eq!(parse_locked(b"").expect("empty"), vec![]);
        assert!(parse_locked(b"{\"lockOKMQSet\":3}").is_err());
    }
}
