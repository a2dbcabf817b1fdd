//! The bridge's configuration: parsed once from a TOML file (through the
//! `config` crate) into typed, validated structs. The running system only ever
//! sees a `BridgeConfig` that passed `validate`. Every problem of a file is
//! reported at once (unknown keys, wrong types, out-of-range values, invalid
//! combinations, across all routes), each with the file, the key and the
//! remedy.
//!
//! Secrets never live in this file: they come from the environment or from
//! files named by the environment (`RMQ_BRIDGE_*_ACCESS_KEY[_FILE]`, ...).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::cutover::RoutingKeyMode;

/// One problem of a configuration file: the key (dotted path such as
/// `routes[0].cutover_percent`; empty for the file as a whole) and what is
/// wrong with it, with the remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub reason: String,
}

/// Every problem found in a configuration file, so that one run of
/// `rmq-bridge check` names them all. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// The keys named, in the order the problems were found.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.problems.iter().map(|p| p.key.as_str())
    }

    fn fmt_problem(&self, f: &mut fmt::Formatter<'_>, p: &ConfigProblem) -> fmt::Result {
        if p.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), p.reason)
        } else {
            write!(f, "{}: `{}`: {}", self.file.display(), p.key, p.reason)
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => self.fmt_problem(f, one),
            all => {
                write!(f, "{}: {} problems", self.file.display(), all.len())?;
                for p in all {
                    f.write_str("\n  ")?;
                    self.fmt_problem(f, p)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a route with no checkpoint starts reading its source queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    /// Unix milliseconds; each queue starts at the first message stored at or after it.
    Timestamp(i64),
    /// The committed offsets of a 4.x consumer group (exact handoff).
    Group(String),
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Timestamp(ms) => write!(f, "timestamp:{ms}ms"),
            StartPosition::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl StartPosition {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "earliest" => return Ok(StartPosition::Earliest),
            "latest" => return Ok(StartPosition::Latest),
            _ => {}
        }
        if let Some(ts) = text.strip_prefix("timestamp:") {
            let at = humantime::parse_rfc3339_weak(ts.trim()).map_err(|e| {
                format!("`{ts}` is not an RFC 3339 time ({e}); write e.g. timestamp:2026-01-31T08:00:00Z")
            })?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("`{ts}` is before 1970"))?
                .as_millis();
            return Ok(StartPosition::Timestamp(ms as i64));
        }
        if let Some(group) = text.strip_prefix("group:") {
            let group = group.trim();
            if group.is_empty() {
                return Err(
                    "`group:` needs the 4.x consumer group name, e.g. group:order_consumers".into(),
                );
            }
            return Ok(StartPosition::Group(group.to_string()));
        }
        Err(format!(
            "`{text}` is not a start position; use earliest, latest, timestamp:RFC3339 or group:NAME"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FifoGroupFrom {
    ShardingKey,
    SourceQueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Access key pair, from the environment or files only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub namesrv_addrs: Vec<String>,
    /// The bridge's own consumer group on 4.x (heartbeats, pulls).
    pub consumer_group: String,
    pub pull_batch_size: u32,
    pub long_poll: Duration,
    pub request_timeout: Duration,
    pub credentials: Option<Credentials>,
    /// The 4.x brokers' delay level table (`[source] delay_levels`, the
    /// brokers' `messageDelayLevel`): deadlines of pending scheduled messages.
    pub delay_levels: crate::translate::scheduled::DelayLevels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub endpoints: Vec<String>,
    pub tls: bool,
    pub namespace: String,
    pub request_timeout: Duration,
    /// 5.x producer clients (each its own client id and HTTP/2 connection);
    /// source queues are spread over them.
    pub clients: usize,
    pub credentials: Option<Credentials>,
    /// The 5.x cluster's name servers (`[target] namesrv_addr`), for
    /// Remoting reads of the 5.x brokers by `verify`; empty when unset.
    pub namesrv_addrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub flush_interval: Duration,
    /// fsync the RocksDB WAL on each checkpoint flush (survives power loss).
    pub sync: bool,
}

/// `pipeline.send_batch_size` when unset: packed sends, measured about 5x
/// faster than single sends against the Java 5.5.0 proxy, which keeps every
/// message's id and fields in a packed send (docs/bench-results.md,
/// `target_peers`).
pub const DEFAULT_SEND_BATCH_SIZE: usize = 32;

/// The longest `target.request_timeout_ms` with `[instances] coordinate`:
/// a holder stops starting sends when its own lease lapses (30 s after it
/// asked for the lock, `pipeline::ownership::LOCAL_LOCK_TTL`), and brokers
/// keep the lock 60 s, so a send started at the last moment must end within
/// the 30 s between; a third of it leaves room for a slow lock request.
pub const MAX_COORDINATED_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Messages per source queue beyond the durable checkpoint; bounds both
    /// memory and the duplicates a crash can cause.
    pub inflight_per_queue: usize,
    /// NORMAL messages of a queue packed into one send (1: one per send).
    pub send_batch_size: usize,
    /// Sends in flight to 5.x across all routes; more only queue up inside
    /// the proxy and time out (duplicates), so keep it modest.
    pub max_concurrent_sends: usize,
    /// Budget for translated messages held in memory (in flight, batched,
    /// waiting for their FIFO group), in MiB.
    pub max_inflight_mib: u32,
    /// A message refused this many times in a row by a 5.x server answer
    /// (not a transport failure) while other sends succeed is quarantined;
    /// 0 retries it forever.
    pub quarantine_after_failures: u32,
    pub shutdown_drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranslateConfig {
    pub fifo_group: FifoGroupFrom,
    pub delay_min_lead: Duration,
    pub provenance: bool,
    pub provenance_cluster_property: String,
    pub provenance_broker_property: String,
    pub provenance_queue_property: String,
    pub provenance_offset_property: String,
    pub provenance_instance_property: String,
    pub source_cluster_name: String,
    /// `[target] cluster_name`: the 5.x cluster's name in origin stamps.
    pub target_cluster_name: String,
    /// `[translate] loop_prevention` (default true): stamp every bridged
    /// message with its origin and never send one back (translate/origin.rs).
    pub loop_prevention: bool,
    /// `[translate] origin_property`: the stamp's user-property name.
    pub origin_property: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub source_topic: String,
    pub target_topic: String,
    pub filter: String,
    pub cutover_percent: u8,
    pub routing_key: RoutingKeyMode,
    pub environments: Vec<String>,
    pub start: StartPosition,
    pub commit_as_group: Option<String>,
    /// Pending delay-level messages in the 4.x schedule topic (issue 11).
    pub scheduled: ScheduledMode,
    /// Which way the route carries messages (`routes[].direction`).
    pub direction: Direction,
    /// 4.x consumer groups of the source topic the daemon keeps translated
    /// to 5.x while they have no live 5.x consumers (`routes[].keep_translated`).
    pub keep_translated: Vec<String>,
}

/// Which way a route carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// 4.x -> 5.x: reads `[source]` over Remoting, publishes to `[target]`
    /// over gRPC v2.
    #[default]
    Forward,
    /// 5.x -> 4.x: reads the 5.x cluster's brokers over Remoting (name
    /// servers `[target] namesrv_addr`), publishes to `[source]`'s brokers
    /// over Remoting.
    Reverse,
}

impl Direction {
    /// The cluster the route reads (and whose brokers hold its queue locks
    /// and positions when instances coordinate).
    pub fn read_cluster(self) -> &'static str {
        match self {
            Direction::Forward => "4.x",
            Direction::Reverse => "5.x",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        })
    }
}

/// What a route does with its source topic's messages still pending in the
/// 4.x schedule topic (`routes[].scheduled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScheduledMode {
    /// Leave them on 4.x; the route forwards each when the broker moves it
    /// into the source topic (lost if 4.x is switched off first).
    #[default]
    Ignore,
    /// Also read the schedule topic and forward them at once as DELAY with
    /// their original deadline; the target must be a DELAY topic.
    Forward,
}

impl std::fmt::Display for ScheduledMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduledMode::Ignore => "ignore",
            ScheduledMode::Forward => "forward",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    pub file: PathBuf,
    pub source: SourceConfig,
    pub target: TargetConfig,
    pub checkpoint: CheckpointConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub environment_property: String,
    pub pipeline: PipelineConfig,
    pub translate: TranslateConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub instances: InstancesConfig,
    pub routes: Vec<RouteConfig>,
}

/// `[instances]`: several bridge processes with one config share the
/// estate through the 4.x consumer group `[source] consumer_group`
/// (pipeline/coordinate.rs). Off by default: one instance forwards every
/// queue, exactly as before.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstancesConfig {
    pub coordinate: bool,
    /// The 5.x topic where coordinating instances keep quarantine, cutover
    /// journal and queue starts (crate::estate).
    pub state_topic: String,
}

impl BridgeConfig {
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

// ---------------------------------------------------------------------------
// Reading, in two passes. The file is parsed into a loose value tree; a
// `TableReader` per table hands out typed values by key, noting each value
// of the wrong type and, when the table is finished, each key nobody asked
// for (a typo such as `cutover_pecent` must not silently keep the old
// value). The raw structs below are what the file says; `validate_*` turn
// them into the typed config. Every problem is collected, none stops the
// others from being found.

/// The problems of one file, collected while it is read and validated.
#[derive(Default)]
struct Problems(RefCell<Vec<ConfigProblem>>);

impl Problems {
    fn push(&self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.borrow_mut().push(ConfigProblem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Records a `(key, reason)` error of a validation helper.
    fn note<T>(&self, result: Result<T, KeyReason>) -> Option<T> {
        result.map_err(|(key, reason)| self.push(key, reason)).ok()
    }

    fn into_error(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            problems: self.0.into_inner(),
        }
    }

    fn into_result<T>(self, file: &Path, value: T) -> Result<T, ConfigError> {
        if self.0.borrow().is_empty() {
            Ok(value)
        } else {
            Err(self.into_error(file))
        }
    }
}

/// One table of the file being read (`path` is its dotted name, empty for
/// the top level).
struct TableReader<'p> {
    path: String,
    entries: BTreeMap<String, config::Value>,
    known: Vec<&'static str>,
    problems: &'p Problems,
}

impl<'p> TableReader<'p> {
    fn new(path: String, value: Option<config::Value>, problems: &'p Problems) -> Self {
        let entries = match value.map(|v| v.into_table()) {
            None => BTreeMap::new(),
            Some(Ok(table)) => table.into_iter().collect(),
            Some(Err(_)) => {
                problems.push(
                    path.clone(),
                    format!("must be a table: write it as a [{path}] section"),
                );
                BTreeMap::new()
            }
        };
        TableReader {
            path,
            entries,
            known: Vec::new(),
            problems,
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &'static str) -> Option<config::Value> {
        self.known.push(key);
        self.entries.remove(key)
    }

    /// The value of an optional key; a value of the wrong type is noted.
    fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let value = self.take(key)?;
        match value.try_deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(self.key(key), describe_type_error(e));
                None
            }
        }
    }

    /// The value of a required key; a missing key is noted with an example.
    fn req<T: DeserializeOwned>(&mut self, key: &'static str, example: &str) -> Option<T> {
        if !self.entries.contains_key(key) {
            self.known.push(key);
            self.problems.push(
                self.key(key),
                format!("missing; it is required, e.g. {key} = {example}"),
            );
            return None;
        }
        self.opt(key)
    }

    /// Reads the sub-table `key` (absent: empty) with `read`, then reports
    /// its unknown keys.
    fn section<T>(&mut self, key: &'static str, read: impl FnOnce(&mut TableReader<'p>) -> T) -> T {
        let value = self.take(key);
        let mut table = TableReader::new(self.key(key), value, self.problems);
        let out = read(&mut table);
        table.finish();
        out
    }

    /// Reads each table of the array of tables `key` (`[[key]]`) with `read`.
    fn sections<T>(
        &mut self,
        key: &'static str,
        mut read: impl FnMut(&mut TableReader<'p>) -> T,
    ) -> Vec<T> {
        let Some(value) = self.take(key) else {
            return Vec::new();
        };
        let Ok(items) = value.into_array() else {
            self.problems.push(
                self.key(key),
                format!("must be an array of tables: write each one as a [[{key}]] section"),
            );
            return Vec::new();
        };
        let base = self.key(key);
        let problems = self.problems;
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let mut table = TableReader::new(format!("{base}[{i}]"), Some(item), problems);
                let out = read(&mut table);
                table.finish();
                out
            })
            .collect()
    }

    /// Notes every key of the table that nothing asked for.
    fn finish(self) {
        for key in self.entries.keys() {
            if SECRET_KEYS.contains(&key.as_str()) {
                continue; // already refused by `reject_secrets`
            }
            let reason = match closest(key, &self.known) {
                Some(known) => format!("unknown key; did you mean `{known}`? (a misspelt key must not silently keep the old value)"),
                None => format!(
                    "unknown key; {} (see config/bridge.example.toml)",
                    if self.known.is_empty() {
                        "this table takes no keys".to_string()
                    } else {
                        format!("known here: {}", self.known.join(", "))
                    }
                ),
            };
            self.problems.push(self.key(key), reason);
        }
    }
}

/// The known key within two edits of `key`, if any.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn describe_type_error(e: config::ConfigError) -> String {
    format!("wrong type: {e}")
}

struct RawConfig {
    source: RawSource,
    target: RawTarget,
    checkpoint: RawCheckpoint,
    metrics: RawMetrics,
    environment: RawEnvironment,
    pipeline: RawPipeline,
    translate: RawTranslate,
    log: RawLog,
    instances: RawInstances,
    routes: Vec<RawRoute>,
}

struct RawInstances {
    coordinate: Option<bool>,
    state_topic: Option<String>,
}

impl RawConfig {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawConfig {
            source: t.section("source", RawSource::read),
            target: t.section("target", RawTarget::read),
            checkpoint: t.section("checkpoint", RawCheckpoint::read),
            metrics: t.section("metrics", |t| RawMetrics {
                listen: t.opt("listen"),
            }),
            environment: t.section("environment", |t| RawEnvironment {
                property: t.opt("property"),
            }),
            pipeline: t.section("pipeline", RawPipeline::read),
            translate: t.section("translate", RawTranslate::read),
            log: t.section("log", |t| RawLog {
                format: t.opt("format"),
                level: t.opt("level"),
            }),
            instances: t.section("instances", |t| RawInstances {
                coordinate: t.opt("coordinate"),
                state_topic: t.opt("state_topic"),
            }),
            routes: t.sections("routes", RawRoute::read),
        }
    }
}

/// Required keys are `Option` here too: a missing one is already noted.
struct RawSource {
    namesrv_addr: Option<String>,
    consumer_group: Option<String>,
    pull_batch_size: Option<u32>,
    long_poll_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    cluster_name: Option<String>,
    delay_levels: Option<String>,
}

impl RawSource {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawSource {
            namesrv_addr: t.req("namesrv_addr", "\"127.0.0.1:9876\""),
            consumer_group: t.opt("consumer_group"),
            pull_batch_size: t.opt("pull_batch_size"),
            long_poll_ms: t.opt("long_poll_ms"),
            request_timeout_ms: t.opt("request_timeout_ms"),
            cluster_name: t.opt("cluster_name"),
            delay_levels: t.opt("delay_levels"),
        }
    }
}

struct RawTarget {
    endpoint: Option<String>,
    tls: Option<bool>,
    namespace: Option<String>,
    request_timeout_ms: Option<u64>,
    clients: Option<usize>,
    namesrv_addr: Option<String>,
    cluster_name: Option<String>,
}

impl RawTarget {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawTarget {
            endpoint: t.req("endpoint", "\"127.0.0.1:8081\""),
            tls: t.opt("tls"),
            namespace: t.opt("namespace"),
            request_timeout_ms: t.opt("request_timeout_ms"),
            clients: t.opt("clients"),
            namesrv_addr: t.opt("namesrv_addr"),
            cluster_name: t.opt("cluster_name"),
        }
    }
}

struct RawCheckpoint {
    dir: Option<String>,
    flush_interval_ms: Option<u64>,
    sync: Option<bool>,
}

impl RawCheckpoint {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawCheckpoint {
            dir: t.opt("dir"),
            flush_interval_ms: t.opt("flush_interval_ms"),
            sync: t.opt("sync"),
        }
    }
}

struct RawMetrics {
    listen: Option<String>,
}

struct RawEnvironment {
    property: Option<String>,
}

struct RawPipeline {
    inflight_per_queue: Option<usize>,
    send_batch_size: Option<usize>,
    max_concurrent_sends: Option<usize>,
    shutdown_drain_timeout_ms: Option<u64>,
    quarantine_after_failures: Option<u32>,
    max_inflight_mib: Option<u32>,
}

impl RawPipeline {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawPipeline {
            inflight_per_queue: t.opt("inflight_per_queue"),
            send_batch_size: t.opt("send_batch_size"),
            max_concurrent_sends: t.opt("max_concurrent_sends"),
            shutdown_drain_timeout_ms: t.opt("shutdown_drain_timeout_ms"),
            quarantine_after_failures: t.opt("quarantine_after_failures"),
            max_inflight_mib: t.opt("max_inflight_mib"),
        }
    }
}

struct RawTranslate {
    fifo_group: Option<String>,
    delay_min_lead_ms: Option<u64>,
    provenance: Option<bool>,
    provenance_cluster_property: Option<String>,
    provenance_broker_property: Option<String>,
    provenance_queue_property: Option<String>,
    provenance_offset_property: Option<String>,
    provenance_instance_property: Option<String>,
    loop_prevention: Option<bool>,
    origin_property: Option<String>,
}

impl RawTranslate {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawTranslate {
            fifo_group: t.opt("fifo_group"),
            delay_min_lead_ms: t.opt("delay_min_lead_ms"),
            provenance: t.opt("provenance"),
            provenance_cluster_property: t.opt("provenance_cluster_property"),
            provenance_broker_property: t.opt("provenance_broker_property"),
            provenance_queue_property: t.opt("provenance_queue_property"),
            provenance_offset_property: t.opt("provenance_offset_property"),
            provenance_instance_property: t.opt("provenance_instance_property"),
            loop_prevention: t.opt("loop_prevention"),
            origin_property: t.opt("origin_property"),
        }
    }
}

struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

struct RawRoute {
    name: Option<String>,
    source_topic: Option<String>,
    target_topic: Option<String>,
    filter: Option<String>,
    cutover_percent: Option<i64>,
    routing_key: Option<String>,
    environments: Option<Vec<String>>,
    start: Option<String>,
    commit_as_group: Option<String>,
    scheduled: Option<String>,
    direction: Option<String>,
    keep_translated: Option<Vec<String>>,
}

impl RawRoute {
    fn read(t: &mut TableReader<'_>) -> Self {
        RawRoute {
            name: t.req("name", "\"orders\""),
            source_topic: t.req("source_topic", "\"orders\""),
            target_topic: t.opt("target_topic"),
            filter: t.opt("filter"),
            cutover_percent: t.opt("cutover_percent"),
            routing_key: t.opt("routing_key"),
            environments: t.opt("environments"),
            start: t.opt("start"),
            commit_as_group: t.opt("commit_as_group"),
            scheduled: t.opt("scheduled"),
            direction: t.opt("direction"),
            keep_translated: t.opt("keep_translated"),
        }
    }
}

/// Names of keys that look like secrets; they are refused in the file.
const SECRET_KEYS: &[&str] = &[
    "access_key",
    "secret_key",
    "password",
    "token",
    "security_token",
];

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<BridgeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![ConfigProblem {
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, &text, &std::env::vars().collect::<Vec<_>>())
}

/// Parses configuration text; `env` supplies the secret variables (tests pass
/// their own). The error lists every problem found.
pub fn parse(
    path: &Path,
    text: &str,
    env: &[(String, String)],
) -> Result<BridgeConfig, ConfigError> {
    let problems = Problems::default();
    reject_secrets(text, &problems);
    let tree = match config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
    {
        Ok(c) => c.cache,
        Err(e) => {
            // Not TOML: nothing further can be checked.
            problems.push("", describe_config_error(e));
            return Err(problems.into_error(path));
        }
    };
    let mut root = TableReader::new(String::new(), Some(tree), &problems);
    let raw = RawConfig::read(&mut root);
    root.finish();
    let config = validate(path, &raw, env, &problems);
    problems.into_result(path, config)
}

/// Turns what the file says into the typed config, noting every problem;
/// the result only counts when no problem was noted.
fn validate(path: &Path, raw: &RawConfig, env: &[(String, String)], p: &Problems) -> BridgeConfig {
    let source = validate_source(&raw.source, env, p);
    let target = validate_target(&raw.target, env, p);

    let checkpoint = CheckpointConfig {
        dir: PathBuf::from(
            raw.checkpoint
                .dir
                .clone()
                .unwrap_or_else(|| "/var/lib/rmq-bridge".into()),
        ),
        flush_interval: Duration::from_millis(raw.checkpoint.flush_interval_ms.unwrap_or(20)),
        sync: raw.checkpoint.sync.unwrap_or(true),
    };
    if checkpoint.dir.as_os_str().is_empty() {
        p.push("checkpoint.dir", "must not be empty");
    }
    if checkpoint.flush_interval.is_zero() || checkpoint.flush_interval > Duration::from_secs(10) {
        p.push(
            "checkpoint.flush_interval_ms",
            format!(
                "{} is out of range; must be between 1 and 10000",
                checkpoint.flush_interval.as_millis()
            ),
        );
    }

    let metrics_listen = match raw.metrics.listen.as_deref().map(str::trim) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        Some("") | Some("off") => None,
        Some(addr) => match addr.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(
                    "metrics.listen",
                    format!("`{addr}` is not an address:port such as 127.0.0.1:9464 (or \"off\")"),
                );
                None
            }
        },
    };

    let environment_property = raw
        .environment
        .property
        .clone()
        .unwrap_or_else(|| "__microservice_tag__".into());
    if environment_property.trim().is_empty() {
        p.push("environment.property", "must not be empty");
    }

    let pipeline = PipelineConfig {
        inflight_per_queue: raw.pipeline.inflight_per_queue.unwrap_or(1024),
        send_batch_size: raw
            .pipeline
            .send_batch_size
            .unwrap_or(DEFAULT_SEND_BATCH_SIZE),
        max_concurrent_sends: raw.pipeline.max_concurrent_sends.unwrap_or(128),
        quarantine_after_failures: raw.pipeline.quarantine_after_failures.unwrap_or(10),
        max_inflight_mib: raw.pipeline.max_inflight_mib.unwrap_or(8),
        shutdown_drain_timeout: Duration::from_millis(
            raw.pipeline.shutdown_drain_timeout_ms.unwrap_or(10_000),
        ),
    };
    let in_range = |key: &str, value: usize, min: usize, max: usize| {
        if !(min..=max).contains(&value) {
            p.push(
                key,
                format!("{value} is out of range; must be between {min} and {max}"),
            );
        }
    };
    in_range(
        "pipeline.inflight_per_queue",
        pipeline.inflight_per_queue,
        1,
        65_536,
    );
    in_range(
        "pipeline.max_concurrent_sends",
        pipeline.max_concurrent_sends,
        1,
        65_536,
    );
    in_range(
        "pipeline.max_inflight_mib",
        pipeline.max_inflight_mib as usize,
        1,
        4096,
    );
    in_range(
        "pipeline.send_batch_size",
        pipeline.send_batch_size,
        1,
        1024,
    );

    let translate = validate_translate(&raw.translate, &raw.source, &raw.target, p);

    let log_format = match raw.log.format.as_deref().unwrap_or("human") {
        "human" | "text" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            p.push(
                "log.format",
                format!("`{other}` is not a log format; use \"human\" or \"json\""),
            );
            LogFormat::Human
        }
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut names = BTreeSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let Some(route) = validate_route(i, r, p) else {
            continue;
        };
        if !names.insert(route.name.clone()) {
            p.push(
                format!("routes[{i}].name"),
                format!("route name `{}` is used twice; names must be unique because checkpoints are keyed by them", route.name),
            );
        }
        routes.push(route);
    }
    if raw.routes.is_empty() {
        p.push(
            "routes",
            "no [[routes]] defined; add at least one route (source_topic, target_topic)",
        );
    }
    let instances = InstancesConfig {
        coordinate: raw.instances.coordinate.unwrap_or(false),
        state_topic: raw
            .instances
            .state_topic
            .clone()
            .unwrap_or_else(|| crate::estate::DEFAULT_TOPIC.to_string()),
    };
    if instances.state_topic.trim().is_empty() {
        p.push(
            "instances.state_topic",
            "must name a 5.x topic (default rmq_bridge_state)",
        );
    }
    if instances.coordinate {
        // Each route's positions live in a 4.x group of its own.
        for (i, r) in routes.iter().enumerate() {
            let group = route_position_group(&source.consumer_group, &r.name);
            if !valid_resource_name(&group) {
                p.push(
                    format!("routes[{i}].name"),
                    format!(
                        "with [instances] coordinate the route's positions are kept in the 4.x group `{group}`, longer than RocketMQ's 255 characters; shorten the route name or [source] consumer_group"
                    ),
                );
            }
        }
    }
    if instances.coordinate && target.namesrv_addrs.is_empty() {
        p.push(
            "instances.coordinate",
            format!(
                "instances sharing an estate keep quarantine, cutover journal and queue starts in the 5.x topic `{}`, \
                 read and written over Remoting: set [target] namesrv_addr to the 5.x cluster's name servers",
                instances.state_topic
            ),
        );
    }
    if instances.coordinate && target.request_timeout > MAX_COORDINATED_REQUEST_TIMEOUT {
        p.push(
            "target.request_timeout_ms",
            format!(
                "{} is above {} with [instances] coordinate = true: a send must end well inside the 30 s \
                 between a holder's own lease and the broker's lock expiry, or another instance may \
                 forward the same queue meanwhile; lower it",
                target.request_timeout.as_millis(),
                MAX_COORDINATED_REQUEST_TIMEOUT.as_millis()
            ),
        );
    }
    for (i, route) in routes.iter().enumerate() {
        if !route.keep_translated.is_empty() && target.namesrv_addrs.is_empty() {
            p.push(
                format!("routes[{i}].keep_translated"),
                "translating groups reads 5.x over Remoting and writes the 5.x brokers: set [target] namesrv_addr",
            );
        }
        if route.direction != Direction::Reverse {
            continue;
        }
        if target.namesrv_addrs.is_empty() {
            p.push(
                format!("routes[{i}].direction"),
                format!("route `{}` reads 5.x over Remoting, which needs the 5.x cluster's name servers: set [target] namesrv_addr", route.name),
            );
        }
    }
    let cfg = BridgeConfig {
        file: path.to_path_buf(),
        source,
        target,
        checkpoint,
        metrics_listen,
        environment_property,
        pipeline,
        translate,
        log_format,
        log_level,
        instances,
        routes,
    };
    for (key, reason) in loop_problems(&cfg) {
        p.push(key, reason);
    }
    cfg
}

fn describe_config_error(e: config::ConfigError) -> String {
    format!("not valid TOML: {e}")
}

/// Notes each line that sets a secret: those come from the environment.
fn reject_secrets(text: &str, p: &Problems) {
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if SECRET_KEYS.contains(&key) {
                p.push(
                    key,
                    format!(
                        "line {}: secrets are not accepted in the config file; set RMQ_BRIDGE_SOURCE_ACCESS_KEY / RMQ_BRIDGE_SOURCE_SECRET_KEY / RMQ_BRIDGE_TARGET_ACCESS_KEY / RMQ_BRIDGE_TARGET_SECRET_KEY (or their _FILE variants) in the environment instead",
                        lineno + 1
                    ),
                );
            }
        }
    }
}

type KeyReason = (String, String);

fn parse_addr_list(key: &str, text: &str, sep: &[char]) -> Result<Vec<String>, KeyReason> {
    let mut out = Vec::new();
    for part in text.split(sep).map(str::trim).filter(|p| !p.is_empty()) {
        let Some((host, port)) = part.rsplit_once(':') else {
            return Err((
                key.into(),
                format!("`{part}` has no port; write host:port, e.g. 127.0.0.1:9876"),
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err((
                key.into(),
                format!("`{part}` is not host:port with a port in 1..65535"),
            ));
        }
        out.push(part.to_string());
    }
    if out.is_empty() {
        return Err((key.into(), "no address given".into()));
    }
    Ok(out)
}

fn validate_source(raw: &RawSource, env: &[(String, String)], p: &Problems) -> SourceConfig {
    let namesrv_addrs = raw
        .namesrv_addr
        .as_deref()
        .and_then(|a| p.note(parse_addr_list("source.namesrv_addr", a, &[';'])))
        .unwrap_or_default();
    let consumer_group = raw
        .consumer_group
        .clone()
        .unwrap_or_else(|| "rmq_bridge".into());
    if !valid_resource_name(&consumer_group) {
        p.push(
            "source.consumer_group",
            format!("`{consumer_group}` is not a valid RocketMQ group name (letters, digits, %, -, _, | up to 255)"),
        );
    }
    let pull_batch_size = raw.pull_batch_size.unwrap_or(32);
    if !(1..=1024).contains(&pull_batch_size) {
        p.push(
            "source.pull_batch_size",
            format!("{pull_batch_size} is out of range; must be between 1 and 1024"),
        );
    }
    let long_poll = Duration::from_millis(raw.long_poll_ms.unwrap_or(15_000));
    if long_poll < Duration::from_millis(100) || long_poll > Duration::from_secs(60) {
        p.push(
            "source.long_poll_ms",
            format!(
                "{} is out of range; must be between 100 and 60000",
                long_poll.as_millis()
            ),
        );
    }
    SourceConfig {
        namesrv_addrs,
        consumer_group,
        pull_batch_size,
        long_poll,
        request_timeout: Duration::from_millis(raw.request_timeout_ms.unwrap_or(5_000)),
        credentials: p.note(credentials_from_env("SOURCE", env)).flatten(),
        delay_levels: match raw.delay_levels.as_deref() {
            None => Default::default(),
            Some(text) => {
                crate::translate::scheduled::DelayLevels::parse(text).unwrap_or_else(|bad| {
                    for b in bad {
                        p.push(
                            "source.delay_levels",
                            format!(
                                "{b}; the 4.x brokers' messageDelayLevel, e.g. \"{}\"",
                                crate::translate::scheduled::DEFAULT_DELAY_LEVELS
                            ),
                        );
                    }
                    Default::default()
                })
            }
        },
    }
}

fn validate_target(raw: &RawTarget, env: &[(String, String)], p: &Problems) -> TargetConfig {
    let endpoints = raw
        .endpoint
        .as_deref()
        .and_then(|e| p.note(parse_addr_list("target.endpoint", e, &[';', ','])))
        .unwrap_or_default();
    let clients = raw.clients.unwrap_or(4);
    if !(1..=64).contains(&clients) {
        p.push(
            "target.clients",
            format!("must be between 1 and 64 (got {clients})"),
        );
    }
    TargetConfig {
        endpoints,
        tls: raw.tls.unwrap_or(false),
        namespace: raw.namespace.clone().unwrap_or_default(),
        request_timeout: Duration::from_millis(raw.request_timeout_ms.unwrap_or(5_000)),
        clients,
        credentials: p.note(credentials_from_env("TARGET", env)).flatten(),
        namesrv_addrs: raw
            .namesrv_addr
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .and_then(|a| p.note(parse_addr_list("target.namesrv_addr", a, &[';'])))
            .unwrap_or_default(),
    }
}

fn validate_translate(
    raw: &RawTranslate,
    source: &RawSource,
    target: &RawTarget,
    p: &Problems,
) -> TranslateConfig {
    let fifo_group = match raw.fifo_group.as_deref().unwrap_or("sharding_key") {
        "sharding_key" => FifoGroupFrom::ShardingKey,
        "queue" | "source_queue" => FifoGroupFrom::SourceQueue,
        other => {
            p.push(
                "translate.fifo_group",
                format!("`{other}` is not valid; use \"sharding_key\" or \"queue\""),
            );
            FifoGroupFrom::ShardingKey
        }
    };
    TranslateConfig {
        fifo_group,
        delay_min_lead: Duration::from_millis(raw.delay_min_lead_ms.unwrap_or(1_000)),
        provenance: raw.provenance.unwrap_or(false),
        provenance_cluster_property: raw
            .provenance_cluster_property
            .clone()
            .unwrap_or_else(|| "bridge_source_cluster".into()),
        provenance_broker_property: raw
            .provenance_broker_property
            .clone()
            .unwrap_or_else(|| "bridge_source_broker".into()),
        provenance_queue_property: raw
            .provenance_queue_property
            .clone()
            .unwrap_or_else(|| "bridge_source_queue".into()),
        provenance_offset_property: raw
            .provenance_offset_property
            .clone()
            .unwrap_or_else(|| "bridge_source_offset".into()),
        provenance_instance_property: raw
            .provenance_instance_property
            .clone()
            .unwrap_or_else(|| "bridge_instance".into()),
        source_cluster_name: source.cluster_name.clone().unwrap_or_else(|| "4.x".into()),
        target_cluster_name: target.cluster_name.clone().unwrap_or_else(|| "5.x".into()),
        loop_prevention: raw.loop_prevention.unwrap_or(true),
        origin_property: raw
            .origin_property
            .clone()
            .unwrap_or_else(|| "bridge_origin".into()),
    }
}

/// Why the routes' directions and the loop-prevention settings cannot go
/// together: each problem as (key, reason).
fn loop_problems(cfg: &BridgeConfig) -> Vec<(String, String)> {
    let t = &cfg.translate;
    let mut out = Vec::new();
    let (s, d) = (t.source_cluster_name.trim(), t.target_cluster_name.trim());
    if t.loop_prevention {
        if s == d {
            out.push((
                "target.cluster_name".to_string(),
                format!("the 4.x and 5.x clusters are both named `{s}`; origin stamps could not tell them apart. Give them different names ([source] cluster_name, [target] cluster_name)"),
            ));
        }
        for (key, name) in [("source.cluster_name", s), ("target.cluster_name", d)] {
            if name.is_empty() || name.contains(',') {
                out.push((key.to_string(), format!("`{name}` cannot name a cluster in an origin stamp: use a non-empty name without commas")));
            }
        }
        if t.origin_property.trim().is_empty()
            || crate::reserved::is_reserved_property(&t.origin_property)
        {
            out.push((
                "translate.origin_property".to_string(),
                format!("`{}` cannot hold the origin stamp: use a non-empty user-property name that RocketMQ does not reserve", t.origin_property),
            ));
        }
        return out;
    }
    for f in &cfg.routes {
        if f.direction != Direction::Forward {
            continue;
        }
        for r in cfg
            .routes
            .iter()
            .filter(|r| r.direction == Direction::Reverse)
        {
            if r.source_topic == f.target_topic && r.target_topic == f.source_topic {
                out.push((
                    "translate.loop_prevention".to_string(),
                    format!(
                        "routes `{}` (4.x `{}` -> 5.x `{}`) and `{}` (5.x `{}` -> 4.x `{}`) carry one topic pair both ways,                          which without origin stamps sends every message back where it came from, forever.                          Remove loop_prevention = false (stamps are on by default)",
                        f.name, f.source_topic, f.target_topic, r.name, r.source_topic, r.target_topic,
                    ),
                ));
            }
        }
    }
    out
}

/// The route, unless its name or source topic is missing (already noted).
fn validate_route(i: usize, r: &RawRoute, p: &Problems) -> Option<RouteConfig> {
    let key = |k: &str| format!("routes[{i}].{k}");
    if let Some(name) = &r.name {
        if !valid_resource_name(name) {
            p.push(
                key("name"),
                format!("`{name}` must be 1..=255 chars of letters, digits, %, -, _, |"),
            );
        }
    }
    if let Some(topic) = &r.source_topic {
        if !valid_resource_name(topic) {
            p.push(
                key("source_topic"),
                format!("`{topic}` is not a valid RocketMQ topic name"),
            );
        }
    }
    if let Some(topic) = &r.target_topic {
        if !valid_resource_name(topic) {
            p.push(
                key("target_topic"),
                format!("`{topic}` is not a valid RocketMQ topic name"),
            );
        }
    }
    let filter = r.filter.clone().unwrap_or_else(|| "*".into());
    if filter.trim().is_empty() {
        p.push(key("filter"), "use \"*\" to take every tag");
    }
    let percent = r.cutover_percent.unwrap_or(0);
    if !(0..=100).contains(&percent) {
        p.push(
            key("cutover_percent"),
            format!("{percent} is out of range; must be an integer 0..=100"),
        );
    }
    let routing_key = r
        .routing_key
        .as_deref()
        .unwrap_or("auto")
        .parse::<RoutingKeyMode>()
        .map_err(|e| p.push(key("routing_key"), e.to_string()))
        .unwrap_or(RoutingKeyMode::Auto);
    let mut environments = Vec::new();
    for env in r.environments.iter().flatten() {
        let env = env.trim();
        if env.is_empty() {
            p.push(
                key("environments"),
                "empty name; use \"baseline\" for messages without an environment tag",
            );
            continue;
        }
        environments.push(env.to_string());
    }
    let start = StartPosition::parse(r.start.as_deref().unwrap_or("earliest"))
        .map_err(|reason| p.push(key("start"), reason))
        .unwrap_or(StartPosition::Earliest);
    let commit_as_group = match r.commit_as_group.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(g) if valid_resource_name(g) => Some(g.to_string()),
        Some(g) => {
            p.push(
                key("commit_as_group"),
                format!("`{g}` is not a valid RocketMQ group name"),
            );
            None
        }
    };
    let scheduled = match r.scheduled.as_deref().map(str::trim) {
        None | Some("ignore") => ScheduledMode::Ignore,
        Some("forward") => ScheduledMode::Forward,
        Some(other) => {
            p.push(
                key("scheduled"),
                format!("`{other}` is not \"ignore\" (the default) or \"forward\" (forward messages pending in the 4.x schedule topic as DELAY; the target must be a DELAY topic)"),
            );
            ScheduledMode::Ignore
        }
    };
    let direction = match r.direction.as_deref().map(str::trim) {
        None | Some("forward") => Direction::Forward,
        Some("reverse") => Direction::Reverse,
        Some(other) => {
            p.push(
                key("direction"),
                format!("`{other}` is not \"forward\" (4.x -> 5.x, the default) or \"reverse\" (5.x -> 4.x)"),
            );
            Direction::Forward
        }
    };
    if direction == Direction::Reverse {
        if scheduled == ScheduledMode::Forward {
            p.push(
                key("scheduled"),
                "scheduled = \"forward\" reads the 4.x schedule topic, which a reverse route (5.x -> 4.x) does not read; 5.x timers reach the route when due. Remove it",
            );
        }
        if commit_as_group.is_some() {
            p.push(
                key("commit_as_group"),
                "commit_as_group writes 4.x group offsets of the route's source topic, and a reverse route's source is on 5.x; remove it",
            );
        }
    }
    let mut keep_translated = Vec::new();
    for g in r.keep_translated.iter().flatten() {
        let g = g.trim();
        if !valid_resource_name(g) {
            p.push(
                key("keep_translated"),
                format!("`{g}` is not a valid RocketMQ group name"),
            );
        } else if direction == Direction::Reverse {
            p.push(key("keep_translated"), "keep_translated moves 4.x groups of a forward route's source topic to 5.x; a reverse route has none");
        } else {
            keep_translated.push(g.to_string());
        }
    }
    let route = RouteConfig {
        name: r.name.clone()?,
        source_topic: r.source_topic.clone()?,
        target_topic: r.target_topic.clone().or_else(|| r.source_topic.clone())?,
        filter,
        cutover_percent: percent.clamp(0, 100) as u8,
        routing_key,
        environments,
        start,
        commit_as_group,
        scheduled,
        direction,
        keep_translated,
    };
    if (0..=100).contains(&percent) {
        for reason in commit_as_group_conflicts(&route) {
            p.push(key("commit_as_group"), reason);
        }
    }
    Some(route)
}

/// Why `commit_as_group` cannot go with the rest of the route. Write-back
/// sets the group's offsets to the bridge's checkpoints, and a checkpoint
/// also passes the messages the route holds on 4.x (buckets at or above the
/// percent, other environments, other tags): the group's 4.x consumers
/// would skip them after a write-back, and 5.x never got them either.
fn commit_as_group_conflicts(route: &RouteConfig) -> Vec<String> {
    let Some(group) = &route.commit_as_group else {
        return Vec::new();
    };
    let lead = format!(
        "route `{}` writes its progress back to 4.x group `{group}`, but",
        route.name
    );
    let tail = format!(
        "stay on 4.x only while the checkpoint moves past them, so 4.x consumers of `{group}` \
         would skip them after the write-back: progress would be written past messages that \
         went to neither side"
    );
    let mut out = Vec::new();
    if route.cutover_percent < 100 {
        out.push(format!(
            "{lead} `cutover_percent` = {}: messages in buckets {}..=99 {tail}. Write back only \
             once the route forwards everything (cutover_percent = 100, the group handoff), or \
             remove commit_as_group",
            route.cutover_percent, route.cutover_percent
        ));
    }
    if !route.environments.is_empty() {
        out.push(format!(
            "{lead} `environments` = {:?} forwards only those environments: messages of the \
             others {tail}. Remove `environments` (forward every environment), or remove \
             commit_as_group",
            route.environments
        ));
    }
    if route.filter.trim() != "*" && !route.filter.trim().is_empty() {
        out.push(format!(
            "{lead} `filter` = \"{}\" forwards only those tags: messages with other tags {tail}. \
             Use filter = \"*\", or remove commit_as_group",
            route.filter
        ));
    }
    out
}

/// The 4.x group holding route `route`'s positions when the instances
/// share the group `group` (`[instances] coordinate`; pipeline/positions.rs).
/// Offsets are kept per (group, topic, queue): two routes reading one topic
/// need a group each, as two Java consumer groups of a topic do (issue 30).
pub fn route_position_group(group: &str, route: &str) -> String {
    format!("{group}-route-{route}")
}

/// RocketMQ's topic / group character set.
fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '%' | '-' | '_' | '|'))
}

fn credentials_from_env(
    side: &str,
    env: &[(String, String)],
) -> Result<Option<Credentials>, KeyReason> {
    let access = secret_from_env(&format!("RMQ_BRIDGE_{side}_ACCESS_KEY"), env)?;
    let secret = secret_from_env(&format!("RMQ_BRIDGE_{side}_SECRET_KEY"), env)?;
    match (access, secret) {
        (None, None) => Ok(None),
        (Some(access_key), Some(secret_key)) => Ok(Some(Credentials {
            access_key,
            secret_key,
        })),
        _ => Err((
            format!("RMQ_BRIDGE_{side}_*"),
            format!("set both RMQ_BRIDGE_{side}_ACCESS_KEY and RMQ_BRIDGE_{side}_SECRET_KEY (or their _FILE variants), or neither"),
        )),
    }
}

fn secret_from_env(name: &str, env: &[(String, String)]) -> Result<Option<String>, KeyReason> {
    let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if let Some(v) = get(name) {
        if !v.is_empty() {
            return Ok(Some(v));
        }
    }
    let file_var = format!("{name}_FILE");
    if let Some(path) = get(&file_var) {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            (
                file_var.clone(),
                format!("cannot read secret file `{path}`: {e}"),
            )
        })?;
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err((file_var, format!("secret file `{path}` is empty")));
        }
        return Ok(Some(text));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
namesrv_addr = "127.0.0.1:9876;127.0.0.2:9876"
[target]
endpoint = "127.0.0.1:8081"
[checkpoint]
dir = "/tmp/x"
[[routes]]
name = "orders"
source_topic = "orders"
cutover_percent = 30
"#;

    fn parse_text(text: &str) -> Result<BridgeConfig, ConfigError> {
        parse(Path::new("bridge.toml"), text, &[])
    }

    #[test]
    fn directions_and_the_loop_rules() {
        let c = parse_text(MINIMAL).unwrap();
        assert_eq!(c.routes[0].direction, Direction::Forward);
        assert!(c.translate.loop_prevention, "stamps are on by default");
        assert_eq!(c.translate.origin_property, "bridge_origin");
        assert_eq!(
            (
                c.translate.source_cluster_name.as_str(),
                c.translate.target_cluster_name.as_str()
            ),
            ("4.x", "5.x")
        );
        let both = format!(
            "{MINIMAL}\n[[routes]]\nname = \"orders-back\"\nsource_topic = \"orders\"\ndirection = \"reverse\"\n"
        );
        // A reverse route reads 5.x over Remoting: it needs the name servers.
        let err = parse_text(&both).unwrap_err().to_string();
        assert!(
            err.contains("routes[1].direction") && err.contains("namesrv_addr"),
            "{err}"
        );
        let both = both.replace(
            "[target]\n",
            "[target]\nnamesrv_addr = \"127.0.0.1:9877\"\n",
        );
        let c = parse_text(&both).unwrap();
        assert_eq!(c.routes[1].direction, Direction::Reverse);
        // Both directions of one topic pair without stamps would loop.
        let off = both.replace(
            "[checkpoint]",
            "[translate]\nloop_prevention = false\n[checkpoint]",
        );
        let err = parse_text(&off).unwrap_err().to_string();
        assert!(
            err.contains("translate.loop_prevention") && err.contains("`orders-back`"),
            "{err}"
        );
        // Off is allowed where no pair goes both ways.
        let one_way = MINIMAL.replace(
            "[checkpoint]",
            "[translate]\nloop_prevention = false\n[checkpoint]",
        );
        assert!(!parse_text(&one_way).unwrap().translate.loop_prevention);
        // Two clusters of one name: stamps could not tell them apart.
        let same = both.replace("[target]\n", "[target]\ncluster_name = \"4.x\"\n");
        let err = parse_text(&same).unwrap_err().to_string();
        assert!(
            err.contains("target.cluster_name") && err.contains("both named"),
            "{err}"
        );
        let bad = both.replace("direction = \"reverse\"", "direction = \"backwards\"");
        let err = parse_text(&bad).unwrap_err().to_string();
        assert!(
            err.contains("routes[1].direction") && err.contains("`backwards`"),
            "{err}"
        );
        let with_schedule = both.replace(
            "direction = \"reverse\"",
            "direction = \"reverse\"\nscheduled = \"forward\"",
        );
        let err = parse_text(&with_schedule).unwrap_err().to_string();
        assert!(err.contains("routes[1].scheduled"), "{err}");
    }

    #[test]
    fn scheduled_forwarding_and_level_table() {
        let c = parse_text(MINIMAL).unwrap();
        assert_eq!(c.routes[0].scheduled, ScheduledMode::Ignore);
        assert_eq!(c.source.delay_levels.len(), 18);
        let text = MINIMAL
            .replace("[target]", "delay_levels = \"1s 5s 20s\"\n[target]")
            .replace(
                "cutover_percent = 30",
                "cutover_percent = 30\nscheduled = \"forward\"",
            );
        let c = parse_text(&text).unwrap();
        assert_eq!(c.routes[0].scheduled, ScheduledMode::Forward);
        assert_eq!(c.source.delay_levels.to_string(), "1s 5s 20s");
        let text = MINIMAL
            .replace("[target]", "delay_levels = \"1s 5 20x\"\n[target]")
            .replace(
                "cutover_percent = 30",
                "cutover_percent = 30\nscheduled = \"later\"",
            );
        let err = parse_text(&text).unwrap_err().to_string();
        assert!(
            err.contains("source.delay_levels") && err.contains("level 2 `5`"),
            "{err}"
        );
        assert!(err.contains("level 3 `20x`"), "{err}");
        assert!(
            err.contains("routes[0].scheduled") && err.contains("`later`"),
            "{err}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_text(MINIMAL).unwrap();
        assert_eq!(
            c.source.namesrv_addrs,
            vec!["127.0.0.1:9876", "127.0.0.2:9876"]
        );
        let r = &c.routes[0];
        assert_eq!(r.target_topic, "orders");
        assert_eq!(r.filter, "*");
        assert_eq!(r.cutover_percent, 30);
        assert_eq!(r.routing_key, RoutingKeyMode::Auto);
        assert_eq!(r.start, StartPosition::Earliest);
        assert_eq!(r.commit_as_group, None);
        assert_eq!(c.environment_property, "__microservice_tag__");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.target.clients, 4);
        assert!(c.target.namesrv_addrs.is_empty());
        assert_eq!(c.pipeline.max_inflight_mib, 8);
        assert_eq!(c.pipeline.quarantine_after_failures, 10);
    }

    #[test]
    fn errors_name_the_key_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "cutover_percent = 30",
                "cutover_percent = 130",
                "routes[0].cutover_percent",
            ),
            (
                "cutover_percent = 30",
                "cutover_pecent = 30",
                "routes[0].cutover_pecent",
            ),
            (
                "cutover_percent = 30",
                "cutover_percent = 30\nstart = \"yesterday\"",
                "routes[0].start",
            ),
            (
                "cutover_percent = 30",
                "cutover_percent = 30\nrouting_key = \"hash\"",
                "routes[0].routing_key",
            ),
            (
                "127.0.0.1:9876;127.0.0.2:9876",
                "127.0.0.1",
                "source.namesrv_addr",
            ),
            (
                "dir = \"/tmp/x\"",
                "dir = \"/tmp/x\"\nsecret_key = \"s\"",
                "secret",
            ),
            ("name = \"orders\"", "name = \"or ders\"", "routes[0].name"),
            (
                "endpoint = \"127.0.0.1:8081\"",
                "endpoint = \"127.0.0.1:8081\"\nnamesrv_addr = \"localhost\"",
                "target.namesrv_addr",
            ),
            (
                "endpoint = \"127.0.0.1:8081\"",
                "endpoint = \"127.0.0.1:8081\"\nclients = 0",
                "target.clients",
            ),
            (
                "dir = \"/tmp/x\"",
                "dir = \"/tmp/x\"\n[pipeline]\nmax_inflight_mib = 0",
                "pipeline.max_inflight_mib",
            ),
        ];
        for (from, to, expect) in cases {
            let text = MINIMAL.replace(from, to);
            let e = parse_text(&text).expect_err(to).to_string();
            assert!(
                e.contains(expect),
                "{to}: error `{e}` should mention `{expect}`"
            );
            assert!(e.contains("bridge.toml"), "{e}");
        }
    }

    /// `check` names every problem of a file at once, across sections and
    /// routes, each with the file and its key.
    #[test]
    fn every_problem_is_reported_at_once() {
        let text = MINIMAL
            .replace(
                "cutover_percent = 30",
                "cutover_percent = 150\nrouting_key = \"weird\"\ncutover_pecent = 30",
            )
            .replace("[checkpoint]", "[checkpoint]\nflush_interval_ms = 0")
            + "\n[[routes]]\nname = \"payments\"\nsource_topic = \"pay ments\"\nstart = \"yesterday\"\n";
        let e = parse_text(&text).expect_err("four bad keys").to_string();
        for key in [
            "routes[0].cutover_pecent",
            "routes[0].cutover_percent",
            "routes[0].routing_key",
            "checkpoint.flush_interval_ms",
            "routes[1].source_topic",
            "routes[1].start",
        ] {
            assert!(e.contains(key), "error should name `{key}`:\n{e}");
        }
        assert!(e.contains("150"), "{e}");
        assert!(e.contains("weird"), "{e}");
        assert!(e.contains("did you mean `cutover_percent`"), "{e}");
        for line in e.lines().skip(1) {
            assert!(
                line.contains("bridge.toml"),
                "each problem names the file: {line}"
            );
        }
    }

    /// A wrongly typed value is one problem among the others, named by key.
    #[test]
    fn type_errors_are_reported_with_the_others() {
        let text = MINIMAL
            .replace("cutover_percent = 30", "cutover_percent = \"lots\"")
            .replace("[checkpoint]", "[checkpoint]\nsync = \"maybe\"")
            .replace(
                "endpoint = \"127.0.0.1:8081\"",
                "endpoint = \"127.0.0.1:8081\"\nclients = 0",
            );
        let e = parse_text(&text).expect_err("bad types").to_string();
        for key in [
            "routes[0].cutover_percent",
            "checkpoint.sync",
            "target.clients",
        ] {
            assert!(e.contains(key), "error should name `{key}`:\n{e}");
        }
    }

    #[test]
    fn instances_coordinate_is_off_by_default_and_needs_the_5x_name_servers() {
        assert!(!parse_text(MINIMAL).expect("minimal").instances.coordinate);
        // The estate's shared records live on 5.x, read over Remoting.
        let without_5x_namesrv = format!("{MINIMAL}\n[instances]\ncoordinate = true\n");
        let e = parse_text(&without_5x_namesrv)
            .expect_err("coordinate without the 5.x name servers")
            .to_string();
        assert!(
            e.contains("instances.coordinate") && e.contains("namesrv_addr"),
            "{e}"
        );
        let on = without_5x_namesrv.replace(
            "endpoint = \"127.0.0.1:8081\"",
            "endpoint = \"127.0.0.1:8081\"\nnamesrv_addr = \"127.0.0.1:9877\"",
        );
        let c = parse_text(&on).expect("coordinate");
        assert!(c.instances.coordinate);
        assert_eq!(c.instances.state_topic, "rmq_bridge_state");
        // Issue 30: a send must end inside the fence's margin.
        let slow = on.replace(
            "endpoint = \"127.0.0.1:8081\"",
            "endpoint = \"127.0.0.1:8081\"\nrequest_timeout_ms = 30000",
        );
        let e = parse_text(&slow)
            .expect_err("a request timeout beyond the fence's margin")
            .to_string();
        assert!(
            e.contains("target.request_timeout_ms") && e.contains("10000"),
            "{e}"
        );
        let alone = MINIMAL.replace(
            "endpoint = \"127.0.0.1:8081\"",
            "endpoint = \"127.0.0.1:8081\"\nrequest_timeout_ms = 30000",
        );
        parse_text(&alone).expect("one instance may wait longer");
        let forward = on.replace(
            "cutover_percent = 30",
            "cutover_percent = 30\nscheduled = \"forward\"",
        );
        // The schedule side is shared out too (its positions and ids in
        // the estate state topic).
        let c = parse_text(&forward).expect("forward with coordinate");
        assert_eq!(c.routes[0].scheduled, ScheduledMode::Forward);
        let typo = format!("{MINIMAL}\n[instances]\ncoordinated = true\n");
        assert!(parse_text(&typo).is_err(), "unknown keys are errors");
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../config/bridge.example.toml");
        let c = parse(Path::new("bridge.example.toml"), text, &[]).unwrap();
        assert_eq!(c.routes[0].name, "orders");
        assert_eq!(c.routes[0].commit_as_group, None);
    }

    #[test]
    fn missing_keys_and_misspelt_sections_are_named() {
        let text = MINIMAL.replace("namesrv_addr = \"127.0.0.1:9876;127.0.0.2:9876\"\n", "")
            + "[pipelne]\nsend_batch_size = 8\n";
        let e = parse_text(&text).expect_err("two problems");
        let keys: Vec<&str> = e.keys().collect();
        assert_eq!(keys, vec!["source.namesrv_addr", "pipelne"], "{e}");
        let text = e.to_string();
        assert!(text.contains("did you mean `pipeline`"), "{text}");
        assert!(text.contains("e.g. namesrv_addr = "), "{text}");
    }

    /// Write-back moves the 4.x group's offsets to the bridge's checkpoint;
    /// a checkpoint also passes messages held on 4.x (bucket above the
    /// percent, other environments, other tags), which the group's 4.x
    /// consumers would then skip although 5.x never got them.
    #[test]
    fn commit_as_group_only_with_everything_forwarded() {
        let handoff = MINIMAL.replace(
            "cutover_percent = 30",
            "cutover_percent = 100\ncommit_as_group = \"legacy\"",
        );
        let ok = parse_text(&handoff).expect("100%, every tag, every environment");
        assert_eq!(ok.routes[0].commit_as_group.as_deref(), Some("legacy"));
        let star = handoff.replace(
            "cutover_percent = 100",
            "cutover_percent = 100\nfilter = \" * \"",
        );
        assert!(parse_text(&star).is_ok());

        let cases: &[(&str, &str)] = &[
            ("cutover_percent = 30", "cutover_percent"),
            ("cutover_percent = 0", "cutover_percent"),
            (
                "cutover_percent = 100\nenvironments = [\"gray\"]",
                "environments",
            ),
            ("cutover_percent = 100\nfilter = \"TagA || TagB\"", "filter"),
        ];
        for (edit, conflicting) in cases {
            let text = handoff.replace("cutover_percent = 100", edit);
            let e = parse_text(&text).expect_err(edit).to_string();
            assert!(e.contains("routes[0].commit_as_group"), "{edit}: {e}");
            assert!(e.contains("route `orders`"), "{edit}: {e}");
            assert!(e.contains(&format!("`{conflicting}`")), "{edit}: {e}");
            assert!(e.contains("skip"), "{edit}: says why: {e}");
        }
        let all = handoff.replace(
            "cutover_percent = 100",
            "cutover_percent = 50\nenvironments = [\"gray\"]\nfilter = \"TagA\"",
        );
        let e = parse_text(&all).expect_err("three conflicts").to_string();
        for conflicting in ["`cutover_percent`", "`environments`", "`filter`"] {
            assert!(e.contains(conflicting), "{e}");
        }
    }

    #[test]
    fn duplicate_route_names_are_rejected() {
        let text = format!("{MINIMAL}\n[[routes]]\nname = \"orders\"\nsource_topic = \"b\"\n");
        let e = parse_text(&text).unwrap_err();
        assert_eq!(e.keys().collect::<Vec<_>>(), vec!["routes[1].name"]);
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(
            StartPosition::parse("latest").unwrap(),
            StartPosition::Latest
        );
        assert_eq!(
            StartPosition::parse("group:g1").unwrap(),
            StartPosition::Group("g1".into())
        );
        assert_eq!(
            StartPosition::parse("timestamp:1970-01-01T00:00:01Z").unwrap(),
            StartPosition::Timestamp(1000)
        );
        assert!(StartPosition::parse("group:").is_err());
    }

    #[test]
    fn credentials_come_from_env_in_pairs() {
        let env = vec![
            ("RMQ_BRIDGE_TARGET_ACCESS_KEY".to_string(), "ak".to_string()),
            ("RMQ_BRIDGE_TARGET_SECRET_KEY".to_string(), "sk".to_string()),
        ];
        let c = parse(Path::new("b.toml"), MINIMAL, &env).unwrap();
        assert_eq!(c.target.credentials.as_ref().unwrap().access_key, "ak");
        assert!(!format!("{:?}", c.target.credentials).contains("sk\""));
        let half = vec![("RMQ_BRIDGE_SOURCE_ACCESS_KEY".to_string(), "ak".to_string())];
        assert!(parse(Path::new("b.toml"), MINIMAL, &half).is_err());
    }
}
