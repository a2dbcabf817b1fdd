//! A route's rule: what its queue workers decide with (cutover, target
//! types, translation options), replaced as a whole on a config change, and
//! the journal entry written where a new rule took effect on a queue.
//!
//! Owns: turning route config into a rule. Must not touch: tasks, sending.

use crate::checkpoint::{now_ms, CheckpointStore, JournalEntry, JournalRule, SourceQueue};
use crate::config::{BridgeConfig, Direction, FifoGroupFrom, RouteConfig};
use crate::cutover::{CutoverRule, EnvironmentFilter};
use crate::grpc::TopicMessageType;
use crate::translate::origin::OriginStamp;
use crate::translate::{FifoGroupSource, ProvenanceNames, TranslateOptions};

/// What the queue workers of a route decide with; replaced on config change.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub generation: u64,
    pub cutover: CutoverRule,
    pub target_types: Vec<TopicMessageType>,
    pub translate: TranslateOptions,
    /// The rule as the cutover journal records it.
    pub journaled: JournalRule,
}

pub fn build_rule(
    generation: u64,
    cfg: &BridgeConfig,
    route: &RouteConfig,
    target_types: Vec<TopicMessageType>,
) -> RouteRule {
    let t = &cfg.translate;
    RouteRule {
        generation,
        cutover: CutoverRule {
            percent: route.cutover_percent,
            routing_key: route.routing_key,
            environments: EnvironmentFilter::from_names(&route.environments),
            environment_property: cfg.environment_property.clone(),
        },
        target_types,
        journaled: JournalRule {
            percent: route.cutover_percent,
            environments: route.environments.clone(),
            filter: route.filter.clone(),
        },
        translate: TranslateOptions {
            fifo_group_from: match t.fifo_group {
                FifoGroupFrom::ShardingKey => FifoGroupSource::ShardingKey,
                FifoGroupFrom::SourceQueue => FifoGroupSource::SourceQueue,
            },
            provenance: t.provenance.then(|| ProvenanceNames {
                cluster: t.provenance_cluster_property.clone(),
                broker: t.provenance_broker_property.clone(),
                queue: t.provenance_queue_property.clone(),
                offset: t.provenance_offset_property.clone(),
                instance: t.provenance_instance_property.clone(),
            }),
            source_cluster: t.source_cluster_name.clone(),
            instance: if cfg.instances.coordinate {
                super::client_id()
            } else {
                String::new()
            },
            origin: t.loop_prevention.then(|| {
                let (four, five) = (t.source_cluster_name.clone(), t.target_cluster_name.clone());
                let (source, destination) = match route.direction {
                    Direction::Forward => (four, five),
                    Direction::Reverse => (five, four),
                };
                OriginStamp {
                    property: t.origin_property.clone(),
                    source,
                    destination,
                }
            }),
        },
    }
}

/// Records that a new rule took effect on `queue` at `offset` (written on a
/// blocking thread; the worker does not wait for it).
pub fn journal_effect(
    store: &CheckpointStore,
    route: &str,
    old: &RouteRule,
    new: &RouteRule,
    queue: &SourceQueue,
    offset: i64,
) {
    if old.journaled == new.journaled {
        return;
    }
    let entry = JournalEntry {
        route: route.to_string(),
        generation: new.generation,
        from_percent: old.cutover.percent,
        to_percent: new.cutover.percent,
        changed_at_ms: now_ms(),
        queue: Some(queue.clone()),
        offset: Some(offset),
        note: "took effect".into(),
        rule: Some(new.journaled.clone()),
    };
    let store = store.clone();
    let route = route.to_string();
    let queue = queue.clone();
    drop(tokio::task::spawn_blocking(move || {
        if let Err(e) = store.journal_append(&entry) {
            tracing::error!(route, %queue, error = %e, "cannot journal cutover change");
        }
    }));
}

/// Journals the rule a route starts with where the journal (`journal`, as
/// read at the route's start) does not already say so: for the route as an
/// accepted change (`at = None`), or where one of its queues starts
/// (`at = Some((queue, offset))`). That is the route's first start, a
/// config edited while the daemon was stopped, or an edit that restarted
/// the route (a key that is not hot-reloaded changed along with the
/// percent). Without it, `verify` would judge the offsets from here on by
/// the last rule journaled before the restart (SPEC section 5: every change
/// is journaled).
pub fn journal_start(
    store: &CheckpointStore,
    route: &str,
    journal: &[JournalEntry],
    rule: &RouteRule,
    at: Option<(&SourceQueue, i64)>,
) {
    let last = last_rule(journal, at.map(|(q, _)| q));
    if last.as_ref() == Some(&rule.journaled) {
        return;
    }
    let new = &rule.journaled;
    let entry = JournalEntry {
        route: route.to_string(),
        generation: rule.generation,
        from_percent: last.map(|r| r.percent).unwrap_or(new.percent),
        to_percent: new.percent,
        changed_at_ms: now_ms(),
        queue: at.map(|(q, _)| q.clone()),
        offset: at.map(|(_, o)| o),
        note: match at {
            None => format!(
                "accepted at start; environments {:?}; filter {}",
                new.environments, new.filter
            ),
            Some(_) => "in force at start".into(),
        },
        rule: Some(new.clone()),
    };
    if let Err(e) = store.journal_append(&entry) {
        tracing::error!(route, queue = ?at.map(|(q, _)| q.to_string()), error = %e,
            "cannot journal the cutover rule the route starts with");
    }
}

/// The rule the journal last recorded: of the route (its last accepted
/// entry) with `queue = None`, else the last "took effect" entry of that
/// queue. Entries of older bridges carry no rule: then the percent, and
/// the environments of the accepted entry of that generation (no filter).
pub fn last_rule(journal: &[JournalEntry], queue: Option<&SourceQueue>) -> Option<JournalRule> {
    let last = journal
        .iter()
        .rev()
        .find(|e| e.queue.as_ref() == queue && e.offset.is_some() == queue.is_some())?;
    if let Some(rule) = &last.rule {
        return Some(rule.clone());
    }
    let environments = journal
        .iter()
        .filter(|e| e.queue.is_none() && e.generation == last.generation)
        .find_map(JournalEntry::note_environments)
        .unwrap_or_default();
    Some(JournalRule {
        percent: last.to_percent,
        environments,
        // Older bridges did not journal the filter; a restart is journaled.
        filter: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::next_generation;
    use crate::cutover::history::QueueHistory;
    use crate::cutover::RoutingKeyMode;

    fn rule(generation: u64, percent: u8, envs: &[&str]) -> RouteRule {
        let environments: Vec<String> = envs.iter().map(|s| s.to_string()).collect();
        RouteRule {
            generation,
            cutover: CutoverRule {
                percent,
                routing_key: RoutingKeyMode::Auto,
                environments: EnvironmentFilter::from_names(&environments),
                environment_property: "env".into(),
            },
            target_types: Vec::new(),
            translate: TranslateOptions::default(),
            journaled: JournalRule {
                percent,
                environments,
                filter: "*".into(),
            },
        }
    }

    /// Issue 16 item 6: a config edited while the daemon was stopped (or
    /// with a key that restarts the route) is journaled where each queue
    /// starts, with a generation above the journal's, so verify judges the
    /// offsets from there on by the new rule.
    #[test]
    fn a_restart_with_an_edited_rule_is_journaled_where_each_queue_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::open(dir.path(), false).expect("store");
        let q0 = SourceQueue {
            broker_name: "b".into(),
            queue_id: 0,
        };
        // Run 1 starts at 30 % for gray and forwards up to offset 40.
        journal_start(&store, "r", &[], &rule(1, 30, &["gray"]), Some((&q0, 0)));
        // Run 2: the config says 100 % for everyone; q0 resumes at 40.
        let journal = store.journal("r").expect("journal");
        let generation = next_generation(&journal);
        assert!(journal.iter().all(|e| e.generation < generation));
        journal_start(
            &store,
            "r",
            &journal,
            &rule(generation, 100, &[]),
            Some((&q0, 40)),
        );
        // Run 3 with the same rule adds nothing.
        let journal = store.journal("r").expect("journal");
        let n = journal.len();
        let same = rule(next_generation(&journal), 100, &[]);
        journal_start(&store, "r", &journal, &same, Some((&q0, 55)));
        let journal = store.journal("r").expect("journal");
        assert_eq!(journal.len(), n, "an unchanged rule was journaled again");

        let h = QueueHistory::build(&journal, &q0, &same.cutover);
        assert_eq!(h.rule_at(39), rule(0, 30, &["gray"]).cutover);
        assert_eq!(h.rule_at(40), same.cutover);
    }
}
