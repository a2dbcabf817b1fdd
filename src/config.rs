//! The bridge's configuration: parsed once from a TOML file (through the
//! `config` crate) into typed, validated structs. The running system only ever
//! sees a `BridgeConfig` that passed `validate`; every problem found is
//! reported with the file, the key and the remedy.
//!
//! Secrets never live in this file: they come from the environment or from
//! files named by the environment (`RMQ_BRIDGE_*_ACCESS_KEY[_FILE]`, ...).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cutover::RoutingKeyMode;

/// A configuration problem, naming the file and key and saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.reason
            )
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub flush_interval: Duration,
    /// fsync the RocksDB WAL on each checkpoint flush (survives power loss).
    pub sync: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Messages per source queue beyond the durable checkpoint; bounds both
    /// memory and the duplicates a crash can cause.
    pub inflight_per_queue: usize,
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
    pub source_cluster_name: String,
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
    pub routes: Vec<RouteConfig>,
}

impl BridgeConfig {
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

// ---------------------------------------------------------------------------
// Raw, file-shaped structs. Unknown keys are errors: a typo such as
// `cutover_pecent` must not silently keep the old value.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    source: RawSource,
    target: RawTarget,
    #[serde(default)]
    checkpoint: RawCheckpoint,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    environment: RawEnvironment,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    translate: RawTranslate,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    namesrv_addr: String,
    #[serde(default)]
    consumer_group: Option<String>,
    #[serde(default)]
    pull_batch_size: Option<u32>,
    #[serde(default)]
    long_poll_ms: Option<u64>,
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    cluster_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    endpoint: String,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    clients: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    dir: Option<String>,
    flush_interval_ms: Option<u64>,
    sync: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    property: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    inflight_per_queue: Option<usize>,
    send_batch_size: Option<usize>,
    max_concurrent_sends: Option<usize>,
    shutdown_drain_timeout_ms: Option<u64>,
    quarantine_after_failures: Option<u32>,
    max_inflight_mib: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTranslate {
    fifo_group: Option<String>,
    delay_min_lead_ms: Option<u64>,
    provenance: Option<bool>,
    provenance_cluster_property: Option<String>,
    provenance_broker_property: Option<String>,
    provenance_queue_property: Option<String>,
    provenance_offset_property: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    source_topic: String,
    #[serde(default)]
    target_topic: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    cutover_percent: Option<i64>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    environments: Vec<String>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    commit_as_group: Option<String>,
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
        key: String::new(),
        reason: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text, &std::env::vars().collect::<Vec<_>>())
}

/// Parses configuration text; `env` supplies the secret variables (tests pass
/// their own).
pub fn parse(
    path: &Path,
    text: &str,
    env: &[(String, String)],
) -> Result<BridgeConfig, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        file: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    reject_secrets(path, text)?;
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| err("", describe_config_error(e)))?;

    let source = validate_source(&raw.source, env).map_err(|(k, r)| err(&k, r))?;
    let target = validate_target(&raw.target, env).map_err(|(k, r)| err(&k, r))?;

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
        return Err(err("checkpoint.dir", "must not be empty".into()));
    }
    if checkpoint.flush_interval.is_zero() || checkpoint.flush_interval > Duration::from_secs(10) {
        return Err(err(
            "checkpoint.flush_interval_ms",
            "must be between 1 and 10000".into(),
        ));
    }

    let metrics_listen = match raw.metrics.listen.as_deref().map(str::trim) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        Some("") | Some("off") => None,
        Some(addr) => Some(addr.parse().map_err(|_| {
            err(
                "metrics.listen",
                format!("`{addr}` is not an address:port such as 127.0.0.1:9464 (or \"off\")"),
            )
        })?),
    };

    let environment_property = raw
        .environment
        .property
        .clone()
        .unwrap_or_else(|| "__microservice_tag__".into());
    if environment_property.trim().is_empty() {
        return Err(err("environment.property", "must not be empty".into()));
    }

    let pipeline = PipelineConfig {
        inflight_per_queue: raw.pipeline.inflight_per_queue.unwrap_or(1024),
        send_batch_size: raw.pipeline.send_batch_size.unwrap_or(1),
        max_concurrent_sends: raw.pipeline.max_concurrent_sends.unwrap_or(128),
        quarantine_after_failures: raw.pipeline.quarantine_after_failures.unwrap_or(10),
        max_inflight_mib: raw.pipeline.max_inflight_mib.unwrap_or(8),
        shutdown_drain_timeout: Duration::from_millis(
            raw.pipeline.shutdown_drain_timeout_ms.unwrap_or(10_000),
        ),
    };
    if !(1..=65_536).contains(&pipeline.inflight_per_queue) {
        return Err(err(
            "pipeline.inflight_per_queue",
            "must be between 1 and 65536".into(),
        ));
    }
    if !(1..=65_536).contains(&pipeline.max_concurrent_sends) {
        return Err(err(
            "pipeline.max_concurrent_sends",
            "must be between 1 and 65536".into(),
        ));
    }
    if !(1..=4096).contains(&pipeline.max_inflight_mib) {
        return Err(err(
            "pipeline.max_inflight_mib",
            "must be between 1 and 4096".into(),
        ));
    }
    if !(1..=1024).contains(&pipeline.send_batch_size) {
        return Err(err(
            "pipeline.send_batch_size",
            "must be between 1 and 1024".into(),
        ));
    }

    let translate = validate_translate(&raw.translate, &raw.source).map_err(|(k, r)| err(&k, r))?;

    let log_format = match raw.log.format.as_deref().unwrap_or("human") {
        "human" | "text" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(err(
                "log.format",
                format!("`{other}` is not a log format; use \"human\" or \"json\""),
            ))
        }
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut names = BTreeSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let route = validate_route(i, r).map_err(|(k, reason)| err(&k, reason))?;
        if !names.insert(route.name.clone()) {
            return Err(err(
                &format!("routes[{i}].name"),
                format!("route name `{}` is used twice; names must be unique because checkpoints are keyed by them", route.name),
            ));
        }
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(err(
            "routes",
            "no [[routes]] defined; add at least one route (source_topic, target_topic)".into(),
        ));
    }

    Ok(BridgeConfig {
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
        routes,
    })
}

fn describe_config_error(e: config::ConfigError) -> String {
    let text = e.to_string();
    if text.contains("unknown field") {
        format!("{text} (check the spelling against the config reference in README.md)")
    } else {
        text
    }
}

fn reject_secrets(path: &Path, text: &str) -> Result<(), ConfigError> {
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if SECRET_KEYS.contains(&key) {
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    key: key.to_string(),
                    reason: format!(
                        "line {}: secrets are not accepted in the config file; set RMQ_BRIDGE_SOURCE_ACCESS_KEY / RMQ_BRIDGE_SOURCE_SECRET_KEY / RMQ_BRIDGE_TARGET_ACCESS_KEY / RMQ_BRIDGE_TARGET_SECRET_KEY (or their _FILE variants) in the environment instead",
                        lineno + 1
                    ),
                });
            }
        }
    }
    Ok(())
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

fn validate_source(raw: &RawSource, env: &[(String, String)]) -> Result<SourceConfig, KeyReason> {
    let namesrv_addrs = parse_addr_list("source.namesrv_addr", &raw.namesrv_addr, &[';'])?;
    let consumer_group = raw
        .consumer_group
        .clone()
        .unwrap_or_else(|| "rmq_bridge".into());
    if !valid_resource_name(&consumer_group) {
        return Err((
            "source.consumer_group".into(),
            format!("`{consumer_group}` is not a valid RocketMQ group name (letters, digits, %, -, _, | up to 255)"),
        ));
    }
    let pull_batch_size = raw.pull_batch_size.unwrap_or(32);
    if !(1..=1024).contains(&pull_batch_size) {
        return Err((
            "source.pull_batch_size".into(),
            "must be between 1 and 1024".into(),
        ));
    }
    let long_poll = Duration::from_millis(raw.long_poll_ms.unwrap_or(15_000));
    if long_poll < Duration::from_millis(100) || long_poll > Duration::from_secs(60) {
        return Err((
            "source.long_poll_ms".into(),
            "must be between 100 and 60000".into(),
        ));
    }
    Ok(SourceConfig {
        namesrv_addrs,
        consumer_group,
        pull_batch_size,
        long_poll,
        request_timeout: Duration::from_millis(raw.request_timeout_ms.unwrap_or(5_000)),
        credentials: credentials_from_env("SOURCE", env)?,
    })
}

fn validate_target(raw: &RawTarget, env: &[(String, String)]) -> Result<TargetConfig, KeyReason> {
    let endpoints = parse_addr_list("target.endpoint", &raw.endpoint, &[';', ','])?;
    let clients = raw.clients.unwrap_or(4);
    if !(1..=64).contains(&clients) {
        return Err((
            "target.clients".into(),
            format!("must be between 1 and 64 (got {clients})"),
        ));
    }
    Ok(TargetConfig {
        endpoints,
        tls: raw.tls,
        namespace: raw.namespace.clone(),
        request_timeout: Duration::from_millis(raw.request_timeout_ms.unwrap_or(5_000)),
        clients,
        credentials: credentials_from_env("TARGET", env)?,
    })
}

fn validate_translate(
    raw: &RawTranslate,
    source: &RawSource,
) -> Result<TranslateConfig, KeyReason> {
    let fifo_group = match raw.fifo_group.as_deref().unwrap_or("sharding_key") {
        "sharding_key" => FifoGroupFrom::ShardingKey,
        "queue" | "source_queue" => FifoGroupFrom::SourceQueue,
        other => {
            return Err((
                "translate.fifo_group".into(),
                format!("`{other}` is not valid; use \"sharding_key\" or \"queue\""),
            ))
        }
    };
    Ok(TranslateConfig {
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
        source_cluster_name: source.cluster_name.clone().unwrap_or_else(|| "4.x".into()),
    })
}

fn validate_route(i: usize, r: &RawRoute) -> Result<RouteConfig, KeyReason> {
    let key = |k: &str| format!("routes[{i}].{k}");
    if !valid_resource_name(&r.name) {
        return Err((
            key("name"),
            format!(
                "`{}` must be 1..=255 chars of letters, digits, %, -, _, |",
                r.name
            ),
        ));
    }
    if !valid_resource_name(&r.source_topic) {
        return Err((
            key("source_topic"),
            format!("`{}` is not a valid RocketMQ topic name", r.source_topic),
        ));
    }
    let target_topic = r
        .target_topic
        .clone()
        .unwrap_or_else(|| r.source_topic.clone());
    if !valid_resource_name(&target_topic) {
        return Err((
            key("target_topic"),
            format!("`{target_topic}` is not a valid RocketMQ topic name"),
        ));
    }
    let filter = r.filter.clone().unwrap_or_else(|| "*".into());
    if filter.trim().is_empty() {
        return Err((key("filter"), "use \"*\" to take every tag".into()));
    }
    let percent = r.cutover_percent.unwrap_or(0);
    if !(0..=100).contains(&percent) {
        return Err((
            key("cutover_percent"),
            format!("{percent} is out of range; must be an integer 0..=100"),
        ));
    }
    let routing_key = r
        .routing_key
        .as_deref()
        .unwrap_or("auto")
        .parse::<RoutingKeyMode>()
        .map_err(|e| (key("routing_key"), e.to_string()))?;
    let mut environments = Vec::new();
    for env in &r.environments {
        let env = env.trim();
        if env.is_empty() {
            return Err((
                key("environments"),
                "empty name; use \"baseline\" for messages without an environment tag".into(),
            ));
        }
        environments.push(env.to_string());
    }
    let start = StartPosition::parse(r.start.as_deref().unwrap_or("earliest"))
        .map_err(|reason| (key("start"), reason))?;
    let commit_as_group = match r.commit_as_group.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(g) if valid_resource_name(g) => Some(g.to_string()),
        Some(g) => {
            return Err((
                key("commit_as_group"),
                format!("`{g}` is not a valid RocketMQ group name"),
            ))
        }
    };
    Ok(RouteConfig {
        name: r.name.clone(),
        source_topic: r.source_topic.clone(),
        target_topic,
        filter,
        cutover_percent: percent as u8,
        routing_key,
        environments,
        start,
        commit_as_group,
    })
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
                "unknown field",
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

    #[test]
    fn duplicate_route_names_are_rejected() {
        let text = format!("{MINIMAL}\n[[routes]]\nname = \"orders\"\nsource_topic = \"b\"\n");
        let e = parse_text(&text).unwrap_err();
        assert_eq!(e.key, "routes[1].name");
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
