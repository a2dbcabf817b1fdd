//! Whole-queue reads straight from a broker: the `[min, max)` of a queue
//! and every record in a range, in offset order. Used where a tool reads
//! what a topic holds (`check --decommission`, `groups translate`, the
//! estate state topic), not by the forwarding pullers.

use std::time::Duration;

use anyhow::anyhow;

use crate::remoting::{MessageRecord, PullRequest, PullStatus, RemotingClient};

/// Pulls bodies up to this size; larger records are counted all the same.
const MAX_BODY: usize = 64 * 1024 * 1024;

const READER_GROUP: &str = "rmq_bridge_decommission";

/// `[min, max)` of a queue on a broker; a topic the broker does not have
/// answers 0..0 (Java) or an error (taken as empty, with the reason).
pub async fn queue_range(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
    queue_id: i32,
) -> anyhow::Result<(i64, i64)> {
    let max = client
        .get_max_offset(broker, topic, queue_id)
        .await
        .map_err(|e| anyhow!("{topic} queue {queue_id} on {broker}: {e}"))?;
    if max <= 0 {
        return Ok((0, 0));
    }
    let min = client
        .get_min_offset(broker, topic, queue_id)
        .await
        .map_err(|e| anyhow!("{topic} queue {queue_id} on {broker}: {e}"))?;
    Ok((min.clamp(0, max), max))
}

/// Calls `f` with every record of `topic` queue `queue_id` on `broker` in
/// `[from, to)`, in offset order. Returns how many offsets were skipped
/// (removed by retention while reading).
pub async fn scan_queue(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
    queue_id: i32,
    from: i64,
    to: i64,
    mut f: impl FnMut(&MessageRecord),
) -> anyhow::Result<i64> {
    let mut offset = from;
    let mut skipped = 0;
    while offset < to {
        let request = PullRequest {
            consumer_group: READER_GROUP.into(),
            topic: topic.into(),
            queue_id,
            queue_offset: offset,
            max_msg_nums: 32,
            sub_expression: "*".into(),
            expression_type: "TAG".into(),
            sub_version: 0,
            suspend_timeout: Duration::from_millis(0),
            commit_offset: None,
        };
        let result = client
            .pull_message_bounded(broker, &request, MAX_BODY)
            .await
            .map_err(|e| {
                // Keeps the RemotingError for callers that tell answers apart.
                anyhow::Error::new(e).context(format!(
                    "reading {topic} queue {queue_id} on {broker} at {offset}"
                ))
            })?;
        let next = result.next_begin_offset;
        match result.status {
            PullStatus::Found => {
                for r in result.messages.iter().filter(|r| r.queue_offset < to) {
                    f(r);
                }
            }
            PullStatus::NoNewMsg => break,
            PullStatus::OffsetMoved | PullStatus::NoMatchedMsg | PullStatus::RetryImmediately => {
                if next > offset {
                    skipped += next.min(to) - offset;
                }
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(skipped)
}
