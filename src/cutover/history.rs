//! The cutover rule that was in force at each offset of a source queue,
//! rebuilt from the route's cutover journal (SPEC §5): a "took effect" entry
//! per queue says at which offset the first message was decided under a new
//! percent; the "accepted" entry of the same generation carries the
//! environment list of that change in its note.
//!
//! Owns: turning journal entries into "rule at offset". Must not touch: I/O.
//!
//! What the journal cannot say, and what is assumed instead (reported as a
//! note by `verify`):
//! - before a queue's first journaled change, the percent is that change's
//!   `from_percent`, and the environments are those of the first accepted
//!   change (the journal records only the new list; most changes move the
//!   percent alone);
//! - a config edited while the daemon was stopped leaves no entry: offsets
//!   after the last entry are judged by the last journaled rule, and when
//!   that differs from the current config, `verify` says so.

use crate::checkpoint::{JournalEntry, SourceQueue};
use crate::cutover::{CutoverRule, EnvironmentFilter};

/// Percent and environments from one point of a queue's history on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpan {
    /// First offset decided under this rule.
    pub from_offset: i64,
    pub percent: u8,
    pub environments: Vec<String>,
}

/// A queue's rules in offset order; never empty.
#[derive(Debug, Clone)]
pub struct QueueHistory {
    spans: Vec<RuleSpan>,
    base: CutoverRule,
}

/// The environment list an "accepted" entry's note carries:
/// `accepted; environments ["gray", "baseline"]; queues at ...`.
pub fn environments_in_note(note: &str) -> Option<Vec<String>> {
    let rest = note.split_once("environments ")?.1;
    let end = rest.find(']')?;
    serde_json::from_str(&rest[..=end]).ok()
}

impl QueueHistory {
    /// `current` is the route's rule from the config as it is now (routing
    /// key and environment property never change through the journal).
    pub fn build(journal: &[JournalEntry], queue: &SourceQueue, current: &CutoverRule) -> Self {
        let envs_of = |generation: u64| {
            journal
                .iter()
                .filter(|e| e.queue.is_none() && e.generation == generation)
                .find_map(|e| environments_in_note(&e.note))
        };
        let first_accepted_envs = journal
            .iter()
            .filter(|e| e.queue.is_none())
            .find_map(|e| environments_in_note(&e.note));
        let current_envs = environment_names(&current.environments);
        let mut effects: Vec<&JournalEntry> = journal
            .iter()
            .filter(|e| e.queue.as_ref() == Some(queue) && e.offset.is_some())
            .collect();
        effects.sort_by_key(|e| (e.offset.unwrap_or(0), e.generation));
        let mut spans = Vec::new();
        let initial_envs = first_accepted_envs.unwrap_or_else(|| current_envs.clone());
        match effects.first() {
            Some(first) => spans.push(RuleSpan {
                from_offset: i64::MIN,
                percent: first.from_percent,
                environments: initial_envs,
            }),
            None => spans.push(RuleSpan {
                from_offset: i64::MIN,
                percent: current.percent,
                environments: current_envs,
            }),
        }
        for e in effects {
            let previous = spans
                .last()
                .map(|s| s.environments.clone())
                .unwrap_or_default();
            spans.push(RuleSpan {
                from_offset: e.offset.unwrap_or(0),
                percent: e.to_percent,
                environments: envs_of(e.generation).unwrap_or(previous),
            });
        }
        QueueHistory {
            spans,
            base: current.clone(),
        }
    }

    /// The rule that decided `offset`.
    pub fn rule_at(&self, offset: i64) -> CutoverRule {
        let idx = self.spans.partition_point(|s| s.from_offset <= offset);
        let span = &self.spans[idx.saturating_sub(1)];
        CutoverRule {
            percent: span.percent,
            environments: EnvironmentFilter::from_names(&span.environments),
            ..self.base.clone()
        }
    }

    /// The rule after the last journaled change.
    pub fn last(&self) -> &RuleSpan {
        // `spans` is never empty (built with an initial span).
        &self.spans[self.spans.len() - 1]
    }

    pub fn changes(&self) -> usize {
        self.spans.len() - 1
    }
}

/// The config spelling of an environment filter.
pub fn environment_names(filter: &EnvironmentFilter) -> Vec<String> {
    match filter {
        EnvironmentFilter::All => Vec::new(),
        EnvironmentFilter::Only { tags, .. } => tags.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutover::RoutingKeyMode;

    fn q(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "b".into(),
            queue_id: id,
        }
    }

    fn accepted(generation: u64, from: u8, to: u8, envs: &str) -> JournalEntry {
        JournalEntry {
            route: "r".into(),
            generation,
            from_percent: from,
            to_percent: to,
            changed_at_ms: 0,
            queue: None,
            offset: None,
            note: format!("accepted; environments {envs}; queues at b:0@5"),
        }
    }

    fn effect(generation: u64, from: u8, to: u8, queue: i32, offset: i64) -> JournalEntry {
        JournalEntry {
            queue: Some(q(queue)),
            offset: Some(offset),
            note: "took effect".into(),
            ..accepted(generation, from, to, "[]")
        }
    }

    fn rule(percent: u8, envs: &[&str]) -> CutoverRule {
        CutoverRule {
            percent,
            routing_key: RoutingKeyMode::Auto,
            environments: EnvironmentFilter::from_names(envs),
            environment_property: "env".into(),
        }
    }

    #[test]
    fn notes_carry_the_environment_list() {
        assert_eq!(
            environments_in_note(r#"accepted; environments ["gray", "baseline"]; queues at b:0@5"#),
            Some(vec!["gray".to_string(), "baseline".to_string()])
        );
        assert_eq!(
            environments_in_note("accepted; environments []; queues at "),
            Some(vec![])
        );
        assert_eq!(environments_in_note("took effect"), None);
    }

    #[test]
    fn no_journal_means_the_current_rule_everywhere() {
        let h = QueueHistory::build(&[], &q(0), &rule(40, &["gray"]));
        assert_eq!(h.rule_at(0), rule(40, &["gray"]));
        assert_eq!(h.rule_at(i64::MAX), rule(40, &["gray"]));
        assert_eq!(h.changes(), 0);
    }

    #[test]
    fn each_queue_switches_where_its_change_took_effect() {
        let journal = vec![
            accepted(3, 0, 30, r#"["gray"]"#),
            effect(3, 0, 30, 0, 10),
            effect(3, 0, 30, 1, 4),
            accepted(5, 30, 100, "[]"),
            effect(5, 30, 100, 0, 20),
        ];
        let current = rule(100, &[]);
        let h0 = QueueHistory::build(&journal, &q(0), &current);
        assert_eq!(h0.rule_at(9).percent, 0);
        assert_eq!(h0.rule_at(10), rule(30, &["gray"]));
        assert_eq!(h0.rule_at(19), rule(30, &["gray"]));
        assert_eq!(h0.rule_at(20), rule(100, &[]));
        let h1 = QueueHistory::build(&journal, &q(1), &current);
        assert_eq!(h1.rule_at(3).percent, 0);
        assert_eq!(
            h1.rule_at(1000),
            rule(30, &["gray"]),
            "queue 1 saw no message since gen 5"
        );
        let h2 = QueueHistory::build(&journal, &q(2), &current);
        assert_eq!(h2.rule_at(0), current);
    }
}
