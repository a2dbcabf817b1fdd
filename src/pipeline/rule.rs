//! A route's rule: what its queue workers decide with (cutover, target
//! types, translation options), replaced as a whole on a config change, and
//! the journal entry written where a new rule took effect on a queue.
//!
//! Owns: turning route config into a rule. Must not touch: tasks, sending.

use crate::checkpoint::{now_ms, CheckpointStore, JournalEntry, SourceQueue};
use crate::config::{BridgeConfig, FifoGroupFrom, RouteConfig};
use crate::cutover::{CutoverRule, EnvironmentFilter};
use crate::grpc::TopicMessageType;
use crate::translate::{FifoGroupSource, ProvenanceNames, TranslateOptions};

/// What the queue workers of a route decide with; replaced on config change.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub generation: u64,
    pub cutover: CutoverRule,
    pub target_types: Vec<TopicMessageType>,
    pub translate: TranslateOptions,
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
            }),
            source_cluster: t.source_cluster_name.clone(),
            delay_clamp_min_ahead: t.delay_min_lead,
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
    if old.cutover.percent == new.cutover.percent
        && old.cutover.environments == new.cutover.environments
    {
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
