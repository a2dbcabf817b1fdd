//! Reads of a 4.x broker that `check --decommission` needs beyond what the
//! bridge itself uses: whole system-topic queues (the schedule topic, the
//! transaction half and op topics) read straight from a broker, the
//! consumer groups of a topic, and the oldest message of a queue range.
//!
//! Owns: these requests and their pull loops. Must not touch: judging
//! (green / red), the checkpoint store.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;

use crate::remoting::{RemotingClient, RemotingCommand};

/// Java `RequestCode.QUERY_TOPIC_CONSUME_BY_WHO`: the groups online on a
/// topic or holding committed offsets for it.
const QUERY_TOPIC_CONSUME_BY_WHO: i32 = 300;

/// Java `RequestCode.GET_ALL_DELAY_OFFSET`: how far the broker's schedule
/// service has moved each delay level's queue into the real topics.
const GET_ALL_DELAY_OFFSET: i32 = 45;

pub use crate::remoting::scan::{queue_range, scan_queue};

/// Store time of the record at `offset` (the oldest of a backlog).
pub async fn store_time_at(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
) -> Option<i64> {
    let mut found = None;
    let _ = scan_queue(client, broker, topic, queue_id, offset, offset + 1, |r| {
        found = Some(r.store_timestamp_ms)
    })
    .await;
    found
}

/// The consumer groups a broker knows for `topic` (online, or holding
/// committed offsets).
pub async fn groups_of_topic(
    client: &RemotingClient,
    broker: &str,
    topic: &str,
) -> anyhow::Result<Vec<String>> {
    let cmd = RemotingCommand::request(QUERY_TOPIC_CONSUME_BY_WHO).with_ext("topic", topic);
    let resp = client
        .invoke(broker, cmd, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow!("asking {broker} who consumes {topic}: {e}"))?;
    if resp.code != 0 {
        return Err(anyhow!(
            "asking {broker} who consumes {topic}: code {} {}",
            resp.code,
            resp.remark.clone().unwrap_or_default()
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| anyhow!("asking {broker} who consumes {topic}: unreadable answer: {e}"))?;
    Ok(value["groupList"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Per delay level: the schedule-queue offset below which `broker` has
/// moved every message into its real topic (the broker's
/// `delayOffset.json`; a level it has not started is absent: nothing moved).
pub async fn delay_offsets(
    client: &RemotingClient,
    broker: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let resp = client
        .invoke(
            broker,
            RemotingCommand::request(GET_ALL_DELAY_OFFSET),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| anyhow!("asking {broker} how far it delivered delay messages: {e}"))?;
    if resp.code != 0 {
        return Err(anyhow!(
            "asking {broker} how far it delivered delay messages: code {} {}",
            resp.code,
            resp.remark.clone().unwrap_or_default()
        ));
    }
    parse_delay_offsets(&resp.body).ok_or_else(|| {
        anyhow!(
            "asking {broker} how far it delivered delay messages: unreadable answer {:?}",
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
        )
    })
}

/// Reads `{"offsetTable":{1:5,2:0}}`: Java's fastjson writes the level
/// keys unquoted, rocketmq-rust quotes them; other fields are ignored.
pub fn parse_delay_offsets(body: &[u8]) -> Option<BTreeMap<i32, i64>> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"offsetTable\"")? + "\"offsetTable\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let inner = rest.strip_prefix('{')?;
    let inner = &inner[..inner.find('}')?];
    let mut table = BTreeMap::new();
    for pair in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(':')?;
        let level = k.trim().trim_matches('"').parse::<i32>().ok()?;
        let offset = v.trim().trim_matches('"').parse::<i64>().ok()?;
        table.insert(level, offset);
    }
    Some(table)
}

/// Offsets a transaction op-topic record resolves: its body lists half
/// queue offsets separated by `,` (Java 4.x writes one offset, 5.x and
/// rocketmq-rust a list ending in `,`).
pub fn op_offsets(body: &[u8]) -> impl Iterator<Item = i64> + '_ {
    std::str::from_utf8(body)
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse::<i64>().ok())
}

#[cfg(test)]
mod tests {
    use super::{op_offsets, parse_delay_offsets};

    #[test]
    fn delay_offsets_of_java_and_of_the_rust_broker() {
        let java = parse_delay_offsets(b"{\n\t\"offsetTable\":{1:5,2:0,18:12}\n}").expect("java");
        assert_eq!(
            java.into_iter().collect::<Vec<_>>(),
            vec![(1, 5), (2, 0), (18, 12)]
        );
        let rust = parse_delay_offsets(br#"{"dataVersion":{"counter":3},"offsetTable":{"4":7}}"#)
            .expect("rust");
        assert_eq!(rust.into_iter().collect::<Vec<_>>(), vec![(4, 7)]);
        assert_eq!(
            parse_delay_offsets(br#"{"offsetTable":{}}"#).map(|t| t.len()),
            Some(0)
        );
        assert_eq!(parse_delay_offsets(b"{}"), None);
        assert_eq!(parse_delay_offsets(br#"{"offsetTable":{"a":1}}"#), None);
    }

    #[test]
    fn op_bodies_list_half_offsets() {
        assert_eq!(op_offsets(b"17").collect::<Vec<_>>(), vec![17]);
        assert_eq!(op_offsets(b"3,4,9,").collect::<Vec<_>>(), vec![3, 4, 9]);
        assert_eq!(op_offsets(b"").count(), 0);
    }
}
