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

use super::{CutoverRule, EnvironmentFilter};
use crate::checkpoint::{JournalEntry, SourceQueue};

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

/// The environment list an "accepted" entry's note carries (entries of
/// bridges before the journal recorded rules as data).
pub fn environments_in_note(note: &str) -> Option<Vec<String>> {
    crate::checkpoint::note_environments(note)
}

impl QueueHistory {
    /// `current` is the route's rule from the config as it is now (routing
    /// key and environment property never change through the journal).
    pub fn build(journal: &[JournalEntry], queue: &SourceQueue, current: &CutoverRule) -> Self {
        // The environments in force from an entry on: its rule; for
        // entries of older bridges, the note of the latest "accepted" entry
        // of its generation written before it (generations restarted at 1
        // with every daemon run then, so an earlier run's entry of the same
        // generation must not be taken).
        let envs_of = |index: usize| -> Option<Vec<String>> {
            let e = &journal[index];
            if let Some(rule) = &e.rule {
                return Some(rule.environments.clone());
            }
            journal[..index]
                .iter()
                .rev()
                .filter(|a| a.queue.is_none() && a.generation == e.generation)
                .find_map(JournalEntry::note_environments)
        };
        let first_accepted_envs =
            journal
                .iter()
                .filter(|e| e.queue.is_none())
                .find_map(|e| match &e.rule {
                    Some(rule) => Some(rule.environments.clone()),
                    None => e.note_environments(),
                });
        let current_envs = environment_names(&current.environments);
        let mut effects: Vec<(usize, &JournalEntry)> = journal
            .iter()
            .enumerate()
            .filter(|(_, e)| e.queue.as_ref() == Some(queue) && e.offset.is_some())
            .collect();
        // Offset order; at one offset, the later entry wins.
        effects.sort_by_key(|(i, e)| (e.offset.unwrap_or(0), *i));
        let mut spans = Vec::new();
        let initial_envs = first_accepted_envs.unwrap_or_else(|| current_envs.clone());
        match effects.first().map(|(_, e)| e) {
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
        for (index, e) in effects {
            let previous = spans
                .last()
                .map(|s| s.environments.clone())
                .unwrap_or_default();
            let from_offset = e.offset.unwrap_or(0);
            let span = RuleSpan {
                from_offset,
                percent: e.rule.as_ref().map(|r| r.percent).unwrap_or(e.to_percent),
                environments: envs_of(index).unwrap_or(previous),
            };
            // A later entry at the same offset replaces the earlier one.
            match spans.last_mut() {
                Some(last) if last.from_offset == from_offset => *last = span,
                _ => spans.push(span),
            }
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

    /// The offset below which some message of the queue may have been held
    /// on 4.x only (a rule below 100 % or limited to some environments
    /// decided it): the start of the first span after the last such rule;
    /// `i64::MAX` while such a rule is in force; `None` when every rule
    /// forwarded everything. A 4.x group whose committed offset is below it
    /// may not have processed what the bridge did not forward.
    pub fn held_until(&self) -> Option<i64> {
        let forwards_all = |s: &RuleSpan| s.percent >= 100 && s.environments.is_empty();
        let last_partial = self.spans.iter().rposition(|s| !forwards_all(s))?;
        Some(
            self.spans
                .get(last_partial + 1)
                .map(|s| s.from_offset)
                .unwrap_or(i64::MAX),
        )
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
            rule: None,
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

    /// Issue 16 item 6: day 1, generation 3 sets 30 % for `gray`; restart;
    /// day 2, generation 3 (counting restarted) sets 100 % for every
    /// environment. Day 2's offsets are judged by day 2's rule.
    #[test]
    fn a_generation_reused_by_a_later_run_does_not_take_the_earlier_environments() {
        // As bridges before typed rules wrote it: environments in notes only.
        let old_style = vec![
            accepted(3, 0, 30, r#"["gray"]"#),
            effect(3, 0, 30, 0, 10),
            accepted(3, 30, 100, "[]"),
            effect(3, 30, 100, 0, 50),
        ];
        let h = QueueHistory::build(&old_style, &q(0), &rule(100, &[]));
        assert_eq!(h.rule_at(10), rule(30, &["gray"]));
        assert_eq!(
            h.rule_at(50),
            rule(100, &[]),
            "day 2 judged by day 1's environments"
        );

        // As this bridge writes it: every entry carries its rule.
        let with_rule = |mut e: JournalEntry, percent: u8, envs: &[&str]| {
            e.rule = Some(crate::checkpoint::JournalRule {
                percent,
                environments: envs.iter().map(|s| s.to_string()).collect(),
                filter: "*".into(),
            });
            e
        };
        let typed = vec![
            with_rule(effect(3, 0, 30, 0, 10), 30, &["gray"]),
            with_rule(effect(4, 30, 100, 0, 50), 100, &[]),
        ];
        let h = QueueHistory::build(&typed, &q(0), &rule(100, &[]));
        assert_eq!(h.rule_at(49), rule(30, &["gray"]));
        assert_eq!(h.rule_at(50), rule(100, &[]));
    }

    #[test]
    fn generations_continue_above_the_journal() {
        assert_eq!(crate::checkpoint::next_generation(&[]), 1);
        let journal = vec![accepted(3, 0, 30, "[]"), effect(7, 30, 100, 0, 5)];
        assert_eq!(crate::checkpoint::next_generation(&journal), 8);
    }

    #[test]
    fn held_until_is_where_the_last_partial_rule_ended() {
        let current = rule(100, &[]);
        assert_eq!(QueueHistory::build(&[], &q(0), &current).held_until(), None);
        assert_eq!(
            QueueHistory::build(&[], &q(0), &rule(50, &[])).held_until(),
            Some(i64::MAX)
        );
        let journal = vec![accepted(3, 50, 100, "[]"), effect(3, 50, 100, 0, 5_000)];
        let h = QueueHistory::build(&journal, &q(0), &current);
        assert_eq!(h.held_until(), Some(5_000));
    }
}
