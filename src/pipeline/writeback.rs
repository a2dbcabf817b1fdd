//! Write-back of a route's progress to a 4.x consumer group
//! (`commit_as_group`), and the interlock that keeps it safe.
//!
//! Owns: the decision whether progress may be committed as the group (the
//! pure [`decide`] over every broker's answer), the refusal log, the
//! `rmq_bridge_commit_refused{route}` gauge, and the offset updates.
//! Must not touch: checkpoints (it is handed the durable offsets), the
//! route's queues and workers, the 5.x side.
//!
//! Fail closed. Progress is committed only when every broker of the topic
//! answered and none reports a live consumer of the group other than the
//! bridge itself. A broker that times out, cannot be reached, or answers
//! anything other than a consumer list or the "no consumer for this group"
//! of Java brokers leaves the answer unknown, and unknown refuses: writing
//! offsets under a live 4.x consumer makes it skip or repeat messages.
//!
//! That a checkpoint is a safe thing to write is only half the config's
//! part: `crate::config` accepts `commit_as_group` only on routes that
//! forward every message (100%, every tag, every environment) now. History
//! from before the route reached 100 % may hold messages that stayed on 4.x
//! only, which the group's 4.x consumers must still process: below the
//! journal's `held_until` the group's offset is never moved past its own
//! (see [`commit_offset`]), so the write-back never erases that evidence.

use std::fmt;

use crate::checkpoint::{now_ms, SourceQueue};
use crate::metrics as m;
use crate::remoting::cmd::consumer::LiveConsumers;
use crate::source::TopicSource;

/// How often a continuing refusal is logged again.
const REFUSAL_LOG_INTERVAL_MS: i64 = 60_000;

/// Whether the route's progress may be written to the group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBackDecision {
    Commit,
    Refuse(Refusal),
}

/// Why progress was not written to the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The topic's route names no broker, so nobody can say who consumes.
    NoBroker,
    /// These 4.x clients consume as the group (reported by `brokers`).
    LiveConsumers {
        consumers: Vec<String>,
        brokers: Vec<String>,
    },
    /// No broker reported a live consumer, but these brokers did not give
    /// a usable answer: `(broker, why)`.
    Unknown { brokers: Vec<(String, String)> },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoBroker => f.write_str(
                "no 4.x broker of the source topic is known, so nothing confirms that the \
                 group has no live consumers; write-back starts once the route has found its brokers",
            ),
            Refusal::LiveConsumers { consumers, brokers } => write!(
                f,
                "the group still has {} live 4.x consumer(s): {} (reported by {}); they would \
                 fight the bridge over the group's offsets. Stop those consumers, or remove \
                 commit_as_group from the route",
                consumers.len(),
                consumers.join(", "),
                brokers.join(", ")
            ),
            Refusal::Unknown { brokers } => {
                f.write_str("cannot confirm that the group has no live 4.x consumers: ")?;
                for (i, (broker, why)) in brokers.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "broker {broker}: {why}")?;
                }
                f.write_str(
                    ". Make every broker of the topic reachable; write-back resumes by itself \
                     once all of them answer",
                )
            }
        }
    }
}

/// Decides from every broker's answer about the group. The bridge's own
/// client id does not count (it shows up if the bridge heartbeats under
/// this very group). Live consumers win over unknown answers in the
/// reason, because they are the one an operator can act on at once.
pub fn decide(answers: &[(String, LiveConsumers)], own_client_id: &str) -> WriteBackDecision {
    if answers.is_empty() {
        return WriteBackDecision::Refuse(Refusal::NoBroker);
    }
    let mut consumers: Vec<String> = Vec::new();
    let mut reporting: Vec<String> = Vec::new();
    let mut unknown: Vec<(String, String)> = Vec::new();
    for (broker, answer) in answers {
        match answer {
            LiveConsumers::None => {}
            LiveConsumers::Some(ids) => {
                let others: Vec<&String> = ids.iter().filter(|id| *id != own_client_id).collect();
                if !others.is_empty() {
                    consumers.extend(others.into_iter().cloned());
                    reporting.push(broker.clone());
                }
            }
            LiveConsumers::Unknown(e) => unknown.push((broker.clone(), e.to_string())),
        }
    }
    if !consumers.is_empty() {
        consumers.sort();
        consumers.dedup();
        reporting.sort();
        reporting.dedup();
        return WriteBackDecision::Refuse(Refusal::LiveConsumers {
            consumers,
            brokers: reporting,
        });
    }
    if !unknown.is_empty() {
        return WriteBackDecision::Refuse(Refusal::Unknown { brokers: unknown });
    }
    WriteBackDecision::Commit
}

/// Writes `progress` (each source queue's durable checkpoint) as the
/// committed offsets of 4.x `group`, if [`decide`] allows it. `logged_at`
/// is the caller's memory of the last refusal log (0: not refusing), so a
/// lasting refusal is logged once a minute and its end once.
/// The offset the group may be given on one queue, or `None` to leave it:
/// the bridge's durable checkpoint, unless the cutover journal says that
/// messages below `held_until` may have stayed on 4.x only and the group
/// has not consumed up to there: writing the checkpoint would then mark
/// as processed messages that went to neither side.
pub fn commit_offset(
    durable: i64,
    held_until: Option<i64>,
    group_offset: Option<i64>,
) -> Option<i64> {
    match held_until {
        None => Some(durable),
        Some(held) if group_offset.unwrap_or(-1) >= held.min(durable) => Some(durable),
        Some(_) => None,
    }
}

pub async fn commit_back(
    source: &TopicSource,
    route: &str,
    group: &str,
    progress: &[(SourceQueue, i64, Option<i64>)],
    logged_at: &mut i64,
) {
    if progress.is_empty() {
        return;
    }
    let brokers = source.all_broker_addrs();
    let answers: Vec<(String, LiveConsumers)> =
        futures::future::join_all(brokers.into_iter().map(|addr| async move {
            let answer = source.client().live_consumers(&addr, group).await;
            (addr, answer)
        }))
        .await;
    let refused = metrics::gauge!(m::COMMIT_REFUSED, "route" => route.to_string());
    match decide(&answers, &super::client_id()) {
        WriteBackDecision::Refuse(why) => {
            refused.set(1.0);
            let now = now_ms();
            if now - *logged_at >= REFUSAL_LOG_INTERVAL_MS {
                *logged_at = now;
                tracing::error!(route, group, reason = %why,
                    "refusing to commit progress as 4.x group `{group}` (commit_as_group of route `{route}`): {why}");
            }
        }
        WriteBackDecision::Commit => {
            refused.set(0.0);
            if *logged_at != 0 {
                *logged_at = 0;
                tracing::info!(route, group, "every 4.x broker confirms group `{group}` has no live consumers; writing progress back again");
            }
            for (queue, durable, held_until) in progress {
                let Ok(addr) = source.master_addr(queue) else {
                    continue;
                };
                let group_offset = match held_until {
                    None => None,
                    Some(_) => match source.group_offset(queue, group).await {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::warn!(route, group, %queue, error = %e, "cannot read the 4.x group's offset; not writing progress back for this queue");
                            continue;
                        }
                    },
                };
                let Some(offset) = commit_offset(*durable, *held_until, group_offset) else {
                    if *logged_at == 0 {
                        tracing::warn!(route, group, %queue, group_offset = group_offset.unwrap_or(-1),
                            held_until = held_until.unwrap_or(-1),
                            "not moving 4.x group `{group}` past its offset: the route held messages below {} on 4.x only \
                             (cutover below 100 % or limited environments) and the group has not consumed them; \
                             `check --decommission` names them", held_until.unwrap_or(-1));
                    }
                    continue;
                };
                let offset = &offset;
                if let Err(e) = source
                    .client()
                    .update_consumer_offset(&addr, group, source.topic(), queue.queue_id, *offset)
                    .await
                {
                    tracing::warn!(route, group, %queue, error = %e, "cannot write progress back to the 4.x group");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Issue 16 item 4: the route ran at 50 % up to offset 5,000 while the
    /// group lagged at 1,000; now at 100 % its checkpoint may not become
    /// the group's offset, until the group consumed up to 5,000 itself.
    #[test]
    fn never_commits_past_what_the_route_held_on_4x_only() {
        assert_eq!(commit_offset(6_000, None, None), Some(6_000));
        assert_eq!(commit_offset(6_000, Some(5_000), Some(1_000)), None);
        assert_eq!(commit_offset(6_000, Some(5_000), None), None);
        assert_eq!(commit_offset(6_000, Some(5_000), Some(5_000)), Some(6_000));
        // Still partial (held_until = MAX): up to what the bridge took
        // only once the group itself is there.
        assert_eq!(commit_offset(6_000, Some(i64::MAX), Some(2_000)), None);
        assert_eq!(
            commit_offset(6_000, Some(i64::MAX), Some(6_000)),
            Some(6_000)
        );
    }

    use super::*;
    use crate::remoting::codes::{request, response};
    use crate::remoting::error::RemotingError;

    const OWN: &str = "host@rmq-bridge@7";

    fn none(broker: &str) -> (String, LiveConsumers) {
        (broker.to_string(), LiveConsumers::None)
    }

    fn some(broker: &str, ids: &[&str]) -> (String, LiveConsumers) {
        let ids = ids.iter().map(|s| s.to_string()).collect();
        (broker.to_string(), LiveConsumers::Some(ids))
    }

    fn timeout(broker: &str) -> (String, LiveConsumers) {
        let e = RemotingError::Timeout {
            addr: broker.to_string(),
            code: request::GET_CONSUMER_LIST_BY_GROUP,
            after: Duration::from_secs(5),
        };
        (broker.to_string(), LiveConsumers::Unknown(e))
    }

    fn busy(broker: &str) -> (String, LiveConsumers) {
        let e = RemotingError::Broker {
            addr: broker.to_string(),
            code: response::SYSTEM_BUSY,
            remark: Some("too many requests".into()),
        };
        (broker.to_string(), LiveConsumers::Unknown(e))
    }

    #[test]
    fn commits_only_when_every_broker_says_nobody_else_consumes() {
        assert_eq!(
            decide(&[none("a:10911"), none("b:10911")], OWN),
            WriteBackDecision::Commit
        );
        // The bridge's own heartbeat under the group does not count.
        assert_eq!(
            decide(&[some("a:10911", &[OWN]), none("b:10911")], OWN),
            WriteBackDecision::Commit
        );
    }

    #[test]
    fn an_unknown_answer_refuses() {
        // The old loop skipped a failed query and committed: fail open.
        for answers in [
            vec![none("a:10911"), timeout("b:10911")],
            vec![busy("a:10911")],
            vec![timeout("a:10911"), busy("b:10911")],
        ] {
            let WriteBackDecision::Refuse(Refusal::Unknown { brokers }) = decide(&answers, OWN)
            else {
                panic!("{answers:?} must refuse as unknown");
            };
            assert!(!brokers.is_empty());
            assert!(brokers
                .iter()
                .all(|(b, why)| !b.is_empty() && !why.is_empty()));
        }
        let why = decide(&[none("a:10911"), timeout("b:10911")], OWN);
        let WriteBackDecision::Refuse(why) = why else {
            panic!()
        };
        let text = why.to_string();
        assert!(text.contains("b:10911"), "{text}");
        assert!(!text.contains("a:10911"), "only the unknown broker: {text}");
        assert!(text.contains("timed out"), "{text}");
        assert!(text.contains("reachable"), "says what to do: {text}");
    }

    #[test]
    fn live_consumers_refuse_and_are_named() {
        let answers = [
            some("a:10911", &["legacy@1", OWN]),
            some("b:10911", &["legacy@1", "legacy@2"]),
            none("c:10911"),
            timeout("d:10911"),
        ];
        let decision = decide(&answers, OWN);
        assert_eq!(
            decision,
            WriteBackDecision::Refuse(Refusal::LiveConsumers {
                consumers: vec!["legacy@1".into(), "legacy@2".into()],
                brokers: vec!["a:10911".into(), "b:10911".into()],
            })
        );
        let WriteBackDecision::Refuse(why) = decision else {
            panic!()
        };
        let text = why.to_string();
        assert!(
            text.contains("2 live 4.x consumer(s): legacy@1, legacy@2"),
            "{text}"
        );
        assert!(text.contains("Stop those consumers"), "{text}");
    }

    #[test]
    fn no_broker_refuses() {
        assert_eq!(
            decide(&[], OWN),
            WriteBackDecision::Refuse(Refusal::NoBroker)
        );
    }
}
