//! Checks what landed in 5.x against the producer's ledger and what 4.x
//! holds: lost, damaged, duplicated, strays, FIFO order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::remoting::MessageRecord;

use super::stream::{Kind, Sent};

/// The outcome of one run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Messages the producer got accepted by 4.x.
    pub produced: usize,
    /// Of those, ids 4.x does not hold (a producer or 4.x loss, not the bridge's).
    pub missing_in_source: Vec<String>,
    /// Distinct produced ids found in 5.x.
    pub arrived: usize,
    /// Produced ids that 4.x holds and 5.x does not.
    pub lost: Vec<String>,
    /// Copies in 5.x beyond the copies 4.x holds of the same id.
    pub duplicates: usize,
    /// Copies in 5.x whose body is not the produced body (first few ids).
    pub damaged: Vec<String>,
    /// Ids in 5.x that nobody produced.
    pub strays: Vec<String>,
    /// FIFO: messages that landed before an earlier message of their group,
    /// or in another queue than the group's first message.
    pub order_violations: Vec<String>,
    /// For the first violating groups: the whole landing order.
    pub order_detail: Vec<String>,
}

impl Tally {
    /// Compares. `source` and `target` are read-backs of the run's topics
    /// (4.x and 5.x), in (queue, offset) order per topic.
    pub fn compute(
        sent: &[Sent],
        source: &[MessageRecord],
        target: &BTreeMap<Kind, Vec<MessageRecord>>,
    ) -> Tally {
        let mut t = Tally {
            produced: sent.len(),
            ..Tally::default()
        };
        let mut in_source: HashMap<&str, usize> = HashMap::new();
        for r in source {
            *in_source.entry(r.message_id()).or_default() += 1;
        }
        let mut in_target: HashMap<&str, Vec<&MessageRecord>> = HashMap::new();
        for records in target.values() {
            for r in records {
                in_target.entry(r.message_id()).or_default().push(r);
            }
        }
        let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
        for s in sent {
            let held = in_source.get(s.id.as_str()).copied().unwrap_or(0);
            if held == 0 {
                t.missing_in_source.push(s.id.clone());
            }
            match in_target.get(s.id.as_str()) {
                None => {
                    if held > 0 {
                        t.lost.push(s.id.clone());
                    }
                }
                Some(copies) => {
                    t.arrived += 1;
                    t.duplicates += copies.len().saturating_sub(held.max(1));
                    if copies.iter().any(|r| r.body != s.body) {
                        t.damaged.push(s.id.clone());
                    }
                }
            }
        }
        for id in in_target.keys() {
            if !by_id.contains_key(id) {
                t.strays.push(id.to_string());
            }
        }
        t.strays.sort();
        if let Some(fifo) = target.get(&Kind::Fifo) {
            (t.order_violations, t.order_detail) = fifo_violations(fifo, &by_id);
        }
        t
    }

    /// Nothing lost, damaged, stray or out of order, and 4.x held everything.
    pub fn is_clean(&self) -> bool {
        self.missing_in_source.is_empty()
            && self.lost.is_empty()
            && self.damaged.is_empty()
            && self.strays.is_empty()
            && self.order_violations.is_empty()
    }
}

/// Per group, in 5.x (queue, offset) order: every group stays in one queue,
/// and the first copy of each message comes after the first copies of all
/// earlier messages of its group (re-sends of earlier messages after a crash
/// are duplicates, not reordering).
fn fifo_violations(
    records: &[MessageRecord],
    by_id: &HashMap<&str, &Sent>,
) -> (Vec<String>, Vec<String>) {
    let mut sorted: Vec<&MessageRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.queue_id, r.queue_offset));
    let mut queue_of: HashMap<&str, i32> = HashMap::new();
    let mut next_seq: HashMap<&str, u64> = HashMap::new();
    let mut out = Vec::new();
    let mut landings: HashMap<&str, Vec<(u64, i32, i64)>> = HashMap::new();
    for r in sorted {
        let Some(s) = by_id.get(r.message_id()) else {
            continue;
        };
        let Some(group) = s.group.as_deref() else {
            continue;
        };
        let q = *queue_of.entry(group).or_insert(r.queue_id);
        if q != r.queue_id {
            out.push(format!(
                "{} (group {group} in queues {q} and {})",
                s.id, r.queue_id
            ));
        }
        let next = next_seq.entry(group).or_insert(1);
        if s.seq == *next {
            *next += 1;
        } else if s.seq > *next {
            out.push(format!(
                "{} (group {group}: seq {} landed at 5.x queue {} offset {} before seq {})",
                s.id, s.seq, r.queue_id, r.queue_offset, *next
            ));
            *next = s.seq + 1;
        }
        // s.seq < next: a re-send of a message already seen.
        landings
            .entry(group)
            .or_default()
            .push((s.seq, r.queue_id, r.queue_offset));
    }
    // The full landing order of the first violating groups, to debug by.
    let mut detail = Vec::new();
    for v in &out {
        if detail.len() == 3 {
            break;
        }
        if let Some(g) = v
            .split("group ")
            .nth(1)
            .and_then(|t| t.split([':', ' ']).next())
        {
            if let Some(l) = landings.get(g) {
                let seqs: Vec<String> = l
                    .iter()
                    .take(16)
                    .map(|(s, q, o)| format!("{s}@q{q}/{o}"))
                    .collect();
                detail.push(format!(
                    "group {g} landed as seq@queue/offset: {}",
                    seqs.join(" ")
                ));
            }
        }
    }
    (out, detail)
}

fn first(ids: &[String]) -> String {
    let mut shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
    // The debug lines about whole groups come last; show them too.
    shown.extend(
        ids.iter()
            .skip(5)
            .filter(|l| l.contains("landed as"))
            .map(String::as_str),
    );
    if ids.len() > shown.len() {
        format!("{} ... (+{})", shown.join(", "), ids.len() - shown.len())
    } else {
        shown.join(", ")
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "produced {}  arrived {}  lost {}  duplicates {}  damaged {}  strays {}  fifo order violations {}  missing in 4.x {}",
            self.produced, self.arrived, self.lost.len(), self.duplicates, self.damaged.len(),
            self.strays.len(), self.order_violations.len(), self.missing_in_source.len())?;
        for (what, ids) in [
            ("lost", &self.lost),
            ("damaged", &self.damaged),
            ("strays", &self.strays),
            ("fifo order", &self.order_violations),
            ("missing in 4.x", &self.missing_in_source),
            ("fifo detail", &self.order_detail),
        ] {
            if !ids.is_empty() {
                writeln!(f, "  {what}: {}", first(ids))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::RecordBuilder;
    use bytes::Bytes;

    fn sent(id: &str, group: Option<&str>, seq: u64) -> Sent {
        Sent {
            id: id.into(),
            kind: if group.is_some() {
                Kind::Fifo
            } else {
                Kind::Normal
            },
            group: group.map(str::to_string),
            seq,
            body: Bytes::from(id.to_string()),
        }
    }

    fn rec(id: &str, queue: i32, offset: i64, body: &str) -> MessageRecord {
        RecordBuilder::new()
            .uniq_key(id)
            .queue_id(queue)
            .queue_offset(offset)
            .body(body.as_bytes())
            .build()
    }

    #[test]
    fn resends_are_duplicates_and_reordering_is_a_violation() {
        let ledger = vec![
            sent("a1", Some("g"), 1),
            sent("a2", Some("g"), 2),
            sent("a3", Some("g"), 3),
            sent("n", None, 0),
        ];
        let source: Vec<MessageRecord> = ledger.iter().map(|s| rec(&s.id, 0, 0, &s.id)).collect();
        // 1 2 3 2 3: a crash re-send, fine.
        let fifo = vec![
            rec("a1", 0, 0, "a1"),
            rec("a2", 0, 1, "a2"),
            rec("a3", 0, 2, "a3"),
            rec("a2", 0, 3, "a2"),
            rec("a3", 0, 4, "a3"),
        ];
        let mut target = BTreeMap::new();
        target.insert(Kind::Fifo, fifo);
        target.insert(Kind::Normal, vec![rec("n", 0, 0, "n")]);
        let t = Tally::compute(&ledger, &source, &target);
        assert!(t.is_clean(), "{t}");
        assert_eq!(t.duplicates, 2);

        // 1 3 2: reordered; and a damaged body; and a stray.
        target.insert(
            Kind::Fifo,
            vec![
                rec("a1", 0, 0, "a1"),
                rec("a3", 0, 1, "a3"),
                rec("a2", 0, 2, "a2"),
            ],
        );
        target.insert(
            Kind::Normal,
            vec![rec("n", 0, 0, "other"), rec("x", 0, 1, "x")],
        );
        let t = Tally::compute(&ledger, &source, &target);
        assert_eq!(t.order_violations.len(), 1, "{t}");
        assert_eq!(t.damaged, vec!["n".to_string()]);
        assert_eq!(t.strays, vec!["x".to_string()]);

        // Lost: in 4.x, not in 5.x.
        target.insert(Kind::Normal, vec![]);
        let t = Tally::compute(&ledger, &source, &target);
        assert_eq!(t.lost, vec!["n".to_string()]);
        assert!(!t.is_clean());
    }
}
