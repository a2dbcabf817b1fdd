//! What a verification found, and how it is shown: the per-queue counts and
//! the named messages, the table, the JSON report, the verdict kept next to
//! the checkpoint store for `check --decommission`, and the
//! `rmq_bridge_verify_*` gauges.
//!
//! Owns: the report's shape and wording. Must not touch: reading or matching.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// How many missing / damaged messages a queue's report names; the counts
/// stay exact beyond it.
pub const NAMED_PER_QUEUE: usize = 1000;

/// File next to the checkpoint store's data holding the last verdict.
pub const VERDICT_FILE: &str = "last-verify.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// 4.x messages read in the verified range.
    pub read: u64,
    /// Forwarded under the rule in force at their offset: must be in 5.x.
    pub expected: u64,
    pub found: u64,
    pub missing: u64,
    /// Found with at least one field differing, or out of group order.
    pub damaged: u64,
    /// Found more than once (at-least-once: a crash can re-send; bounded by
    /// `pipeline.inflight_per_queue`). Reported, not a failure.
    pub duplicated: u64,
    /// Held on 4.x by the cutover percent in force at their offset.
    pub skipped: u64,
    /// Left out by the environment filter in force at their offset.
    pub filtered: u64,
    /// In the bridge's quarantine (see `rmq-bridge quarantine list`).
    pub quarantined: u64,
    /// Half (uncommitted) transactional records: never forwarded.
    pub not_forwardable: u64,
    /// Not expected, yet found in 5.x (the rule history says skip).
    pub unexpected_found: u64,
    /// Offsets of the range no longer stored on 4.x when verify read them
    /// (retention while it ran): not verified, so not clean.
    #[serde(default)]
    pub expired: u64,
    /// Came from the route's destination (origin stamp): the original is
    /// there already, so the route never sends it (translate/origin.rs).
    #[serde(default)]
    pub loop_skipped: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.read += o.read;
        self.expected += o.expected;
        self.found += o.found;
        self.missing += o.missing;
        self.damaged += o.damaged;
        self.duplicated += o.duplicated;
        self.skipped += o.skipped;
        self.filtered += o.filtered;
        self.quarantined += o.quarantined;
        self.not_forwardable += o.not_forwardable;
        self.unexpected_found += o.unexpected_found;
        self.expired += o.expired;
        self.loop_skipped += o.loop_skipped;
    }

    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.damaged == 0 && self.expired == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedMessage {
    pub offset: i64,
    pub message_id: String,
    /// For damaged messages: what differs; for missing ones, empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Where the 5.x copy is (damaged ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_position: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    pub queue: String,
    /// Verified range `[from, to)`; `to` is the durable checkpoint.
    pub from: i64,
    pub to: i64,
    pub counts: Counts,
    pub missing: Vec<NamedMessage>,
    pub damaged: Vec<NamedMessage>,
    /// Messages beyond `NAMED_PER_QUEUE` counted but not named.
    pub unnamed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReport {
    pub route: String,
    pub source_topic: String,
    pub target_topic: String,
    pub queues: Vec<QueueReport>,
    pub totals: Counts,
    /// Records read from the 5.x target topic.
    pub target_records: u64,
    /// What the verifier assumed or could not check.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// "clean" or "failed".
    pub verdict: String,
    pub generated_at_ms: i64,
    pub config: PathBuf,
    pub routes: Vec<RouteReport>,
    pub totals: Counts,
}

impl Report {
    pub fn new(config: &Path, routes: Vec<RouteReport>) -> Self {
        let mut totals = Counts::default();
        for r in &routes {
            totals.add(&r.totals);
        }
        Report {
            verdict: if totals.is_clean() { "clean" } else { "failed" }.into(),
            generated_at_ms: crate::checkpoint::now_ms(),
            config: config.to_path_buf(),
            routes,
            totals,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.totals.is_clean()
    }

    /// The human table: one line per route and source queue, the named
    /// messages, the notes and the verdict.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:>21} {:>9} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8}",
            "route",
            "source queue",
            "range",
            "expected",
            "found",
            "missing",
            "damaged",
            "dup",
            "skipped",
            "quarant"
        );
        for r in &self.routes {
            for q in &r.queues {
                let c = &q.counts;
                let _ = writeln!(
                    out,
                    "{:<16} {:<22} {:>21} {:>9} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8}",
                    r.route,
                    q.queue,
                    format!("{}..{}", q.from, q.to),
                    c.expected,
                    c.found,
                    c.missing,
                    c.damaged,
                    c.duplicated,
                    c.skipped + c.filtered,
                    c.quarantined
                );
            }
            let c = &r.totals;
            let _ = writeln!(
                out,
                "{:<16} {:<22} {:>21} {:>9} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8}",
                r.route,
                "(all queues)",
                format!("{} read", c.read),
                c.expected,
                c.found,
                c.missing,
                c.damaged,
                c.duplicated,
                c.skipped + c.filtered,
                c.quarantined
            );
        }
        for r in &self.routes {
            for q in &r.queues {
                for msg in &q.missing {
                    let _ = writeln!(
                        out,
                        "MISSING  route {} {} offset {} id {}",
                        r.route, q.queue, msg.offset, msg.message_id
                    );
                }
                for msg in &q.damaged {
                    let _ = writeln!(
                        out,
                        "DAMAGED  route {} {} offset {} id {} (5.x {}): {}",
                        r.route,
                        q.queue,
                        msg.offset,
                        msg.message_id,
                        msg.target_position.as_deref().unwrap_or("?"),
                        msg.problems.join("; ")
                    );
                }
                if q.unnamed > 0 {
                    let _ = writeln!(
                        out,
                        "...      route {} {}: {} more not named here",
                        r.route, q.queue, q.unnamed
                    );
                }
            }
            for note in &r.notes {
                let _ = writeln!(out, "note     route {}: {note}", r.route);
            }
        }
        let t = &self.totals;
        if self.is_clean() {
            let _ = writeln!(
                out,
                "VERDICT: CLEAN — {} of {} expected message(s) found intact at their destination ({} duplicated copies, {} held at the source by cutover/environment, {} quarantined)",
                t.found, t.expected, t.duplicated, t.skipped + t.filtered, t.quarantined
            );
        } else {
            let _ = writeln!(
                out,
                "VERDICT: FAILED — {} missing, {} damaged of {} expected; do not decommission 4.x. \
                 Missing: re-forward them (stop the bridge, `rmq-bridge reset-route` or a `start` before them) \
                 or find who deleted them in 5.x; damaged: compare with `rmq-bridge peek` and the 5.x copy",
                t.missing, t.damaged, t.expected
            );
        }
        out
    }
}

/// One route's part of the kept verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteVerdict {
    /// "clean" or "failed".
    pub verdict: String,
    pub at_ms: i64,
    pub missing: u64,
    pub damaged: u64,
    pub expected: u64,
    /// In quarantine then, so not in 5.x (see `rmq-bridge quarantine list`).
    #[serde(default)]
    pub quarantined: u64,
    /// Offsets gone from 4.x before verify could read them (not verified).
    #[serde(default)]
    pub expired: u64,
    /// Per source queue: the offset verified up to (the checkpoint then).
    pub verified_to: BTreeMap<String, i64>,
    /// Per source queue: the offset verified from (verdicts of older
    /// bridges have none: `check --decommission` then asks for a new run).
    #[serde(default)]
    pub verified_from: BTreeMap<String, i64>,
}

/// The verdict kept for `check --decommission`, per route: a `--route` run
/// replaces that route's part only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVerdict {
    pub config: PathBuf,
    pub routes: BTreeMap<String, RouteVerdict>,
}

impl StoredVerdict {
    pub fn of(report: &Report) -> Self {
        StoredVerdict {
            config: report.config.clone(),
            routes: report
                .routes
                .iter()
                .map(|r| {
                    (
                        r.route.clone(),
                        RouteVerdict {
                            verdict: if r.totals.is_clean() {
                                "clean"
                            } else {
                                "failed"
                            }
                            .into(),
                            at_ms: report.generated_at_ms,
                            missing: r.totals.missing,
                            damaged: r.totals.damaged,
                            expected: r.totals.expected,
                            quarantined: r.totals.quarantined,
                            expired: r.totals.expired,
                            verified_to: r.queues.iter().map(|q| (q.queue.clone(), q.to)).collect(),
                            verified_from: r
                                .queues
                                .iter()
                                .map(|q| (q.queue.clone(), q.from))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn path(checkpoint_dir: &Path) -> PathBuf {
        checkpoint_dir.join(VERDICT_FILE)
    }

    /// Merges into the stored verdict and writes it atomically.
    pub fn save(&self, checkpoint_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(checkpoint_dir);
        let mut merged = Self::load(checkpoint_dir)
            .ok()
            .flatten()
            .unwrap_or_default();
        merged.config = self.config.clone();
        merged.routes.extend(self.routes.clone());
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&merged)?)
            .with_context(|| format!("cannot write the verdict to {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot write the verdict to {}", path.display()))?;
        Ok(())
    }

    pub fn load(checkpoint_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(checkpoint_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a verify verdict; delete it and run verify again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// Sets the `rmq_bridge_verify_*` gauges from a report.
pub fn export_metrics(report: &Report) {
    for r in &report.routes {
        let c = &r.totals;
        for (state, v) in [
            ("expected", c.expected),
            ("found", c.found),
            ("missing", c.missing),
            ("damaged", c.damaged),
            ("duplicated", c.duplicated),
            ("quarantined", c.quarantined),
            ("expired", c.expired),
        ] {
            metrics::gauge!(m::VERIFY_MESSAGES, "route" => r.route.clone(), "state" => state)
                .set(v as f64);
        }
        let verified: i64 = r.queues.iter().map(|q| q.to).sum();
        metrics::gauge!(m::VERIFY_VERIFIED_OFFSET_SUM, "route" => r.route.clone())
            .set(verified as f64);
    }
    metrics::gauge!(m::VERIFY_CLEAN).set(if report.is_clean() { 1.0 } else { 0.0 });
    metrics::gauge!(m::VERIFY_LAST_RUN_TIMESTAMP_SECONDS)
        .set(report.generated_at_ms as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(route: &str, missing: u64) -> Report {
        let counts = Counts {
            expected: 10,
            found: 10 - missing,
            missing,
            ..Default::default()
        };
        Report::new(
            Path::new("b.toml"),
            vec![RouteReport {
                route: route.into(),
                queues: vec![QueueReport {
                    queue: "b:0".into(),
                    from: 0,
                    to: 10,
                    counts: counts.clone(),
                    missing: (0..missing)
                        .map(|i| NamedMessage {
                            offset: i as i64,
                            message_id: format!("ID{i}"),
                            problems: vec![],
                            target_position: None,
                        })
                        .collect(),
                    ..Default::default()
                }],
                totals: counts,
                ..Default::default()
            }],
        )
    }

    #[test]
    fn offsets_removed_while_verify_read_them_fail_the_verdict() {
        let mut r = report("a", 0);
        r.routes[0].queues[0].counts.expired = 3;
        r.routes[0].totals.expired = 3;
        let r = Report::new(Path::new("b.toml"), r.routes);
        assert!(!r.is_clean(), "an expired range was not verified");
        let kept = StoredVerdict::of(&r);
        let v = &kept.routes["a"];
        assert_eq!((v.verdict.as_str(), v.expired), ("failed", 3));
        // Verdicts of older bridges have no count: read as 0.
        let old: RouteVerdict = serde_json::from_str(
            r#"{"verdict":"clean","at_ms":1,"missing":0,"damaged":0,"expected":5,"verified_to":{}}"#,
        )
        .expect("old verdict");
        assert_eq!(old.expired, 0);
    }

    #[test]
    fn the_table_names_missing_messages_and_the_verdict() {
        let clean = report("a", 0);
        assert!(clean.is_clean());
        assert!(clean.table().contains("VERDICT: CLEAN"));
        let failed = report("a", 2);
        let table = failed.table();
        assert!(
            table.contains("MISSING  route a b:0 offset 1 id ID1"),
            "{table}"
        );
        assert!(table.contains("VERDICT: FAILED — 2 missing"));
    }

    #[test]
    fn a_route_run_replaces_only_its_own_verdict() {
        let dir = tempdir();
        StoredVerdict::of(&report("a", 1)).save(&dir).unwrap();
        StoredVerdict::of(&report("b", 0)).save(&dir).unwrap();
        let v = StoredVerdict::load(&dir).unwrap().unwrap();
        assert_eq!(v.routes["a"].verdict, "failed");
        assert_eq!(v.routes["a"].missing, 1);
        assert_eq!(v.routes["b"].verdict, "clean");
        assert_eq!(v.routes["b"].verified_to["b:0"], 10);
        StoredVerdict::of(&report("a", 0)).save(&dir).unwrap();
        let v = StoredVerdict::load(&dir).unwrap().unwrap();
        assert_eq!(v.routes["a"].verdict, "clean");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rmq-verify-report-{}-{}",
            std::process::id(),
            crate::checkpoint::now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
