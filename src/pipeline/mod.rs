//! The pipeline: wires the 4.x source, translation and cutover, and the 5.x
//! publishers for every route, and alone owns flow control (per-queue
//! windows, fairly shared send permits and memory budget), ordering, and
//! checkpoint advancement. One file per promise:
//! - `window`: a checkpoint never passes an unfinished message;
//! - `order`: one send per (target topic, FIFO group) in flight, bridge-wide;
//! - `health`: poison versus outage, and stalled routes;
//! - `share`: routes share permits and budget fairly;
//! - `send`: the one retry layer; `quarantine`: kept before done;
//! - `admit`: cutover decision, translation, budget; `worker`: the loop.
//!
//! `Bridge::run` is the daemon: it starts routes, applies config changes
//! (file change or SIGHUP) without losing position, and on SIGTERM drains
//! in-flight sends and writes checkpoints before returning.

pub mod admit;
pub mod coordinate;
pub mod health;
pub mod order;
pub mod ownership;
pub mod positions;
pub mod progress;
pub mod publishers;
pub mod quarantine;
mod queues;
pub mod route;
pub mod rule;
pub mod schedule_ledger;
pub mod scheduled;
pub mod send;
pub mod share;
pub mod window;
pub mod worker;
pub mod writeback;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::checkpoint::CheckpointStore;
use crate::config::{self, BridgeConfig, RouteConfig};
use crate::grpc::{GrpcClientConfig, GrpcCredentials, Publisher};
use crate::metrics as m;
use crate::remoting::{
    AclCredentials, HeartbeatData, NameServers, RemotingClient, RemotingClientConfig,
};

use progress::CheckpointFlusher;
pub use publishers::PublisherPool;
use route::{spawn_route, RouteHandle};

/// Store meta key holding a route's stall reason (empty: healthy); written
/// by the running daemon, read by `status`.
pub fn stall_meta_key(route: &str) -> String {
    format!("route_stalled/{route}")
}

/// Connections and stores shared by every route.
#[derive(Clone)]
pub struct Shared {
    pub remoting: RemotingClient,
    pub namesrv: NameServers,
    /// The first of `publishers`; for lookups that are not sends.
    pub publisher: Publisher,
    /// `target.clients` producer clients; sends take turns over them.
    pub publishers: PublisherPool,
    pub store: CheckpointStore,
    pub flusher: Arc<CheckpointFlusher>,
    /// Send permits and the memory budget, shared fairly by routes.
    pub shares: Arc<share::Shares>,
    /// One send per (target topic, FIFO group) in flight, bridge-wide.
    pub order: Arc<order::OrderLocks>,
    /// Accepted / refused counts per target topic (the poison rule).
    pub topics: Arc<health::TopicHealthMap>,
    /// `[instances] coordinate = true`: this instance's identity in the
    /// group the instances share the queues through (coordinate.rs).
    pub coordination: Option<Arc<coordinate::Coordination>>,
    /// Where reverse routes (5.x -> 4.x) read and write; None without
    /// `[target] namesrv_addr` (config refuses reverse routes then).
    pub reverse: Option<Ends>,
    /// The estate state topic as read when this instance started
    /// (coordinating instances; None otherwise or when 5.x was away):
    /// routes continue the journal every instance wrote.
    pub estate_view: Option<Arc<crate::checkpoint::shared::SharedView>>,
}

impl Shared {
    /// The records a route reads at its start: this store's, and the
    /// estate's as read at startup.
    pub fn records(&self) -> crate::checkpoint::shared::Records<'_> {
        crate::checkpoint::shared::Records::new(&self.store, self.estate_view.as_deref())
    }
}

/// One direction's two sides as a route sees them: the cluster it reads
/// over Remoting, and the sinks it publishes through.
#[derive(Clone)]
pub struct Ends {
    pub remoting: RemotingClient,
    pub namesrv: NameServers,
    pub sinks: PublisherPool,
}

impl Shared {
    /// The ends of a route of `direction`; None for a reverse route when
    /// the 5.x name servers are not configured.
    pub fn ends(&self, direction: config::Direction) -> Option<Ends> {
        match direction {
            config::Direction::Forward => Some(Ends {
                remoting: self.remoting.clone(),
                namesrv: self.namesrv.clone(),
                sinks: self.publishers.clone(),
            }),
            config::Direction::Reverse => self.reverse.clone(),
        }
    }
}

/// The cluster a route of `direction` reads, as a Remoting client (with
/// that cluster's credentials) and its name servers: 4.x for forward
/// routes, 5.x (`[target] namesrv_addr`) for reverse ones.
pub fn read_side(
    cfg: &BridgeConfig,
    direction: config::Direction,
) -> Result<(RemotingClient, NameServers), String> {
    match direction {
        config::Direction::Forward => Ok((remoting_client(cfg), name_servers(cfg)?)),
        config::Direction::Reverse => {
            let namesrv = NameServers::parse(&cfg.target.namesrv_addrs.join(";"))
                .map_err(|e| format!("target.namesrv_addr: {e}"))?;
            Ok((target_remoting_client(cfg, client_id()), namesrv))
        }
    }
}

/// The estate state topic of instances sharing an estate, on 5.x.
pub fn state_topic(cfg: &BridgeConfig) -> Result<crate::estate::StateTopic, String> {
    let (client, namesrv) = read_side(cfg, config::Direction::Reverse)?;
    Ok(crate::estate::StateTopic::new(
        client,
        namesrv,
        &cfg.instances.state_topic,
        &format!("{}_state", cfg.source.consumer_group),
    ))
}

/// What the estate state topic holds, for the commands that report on the
/// whole estate (`verify`, `check --decommission`, `quarantine`, `status`);
/// None for a single instance. An unreadable topic is an error: a report
/// of one instance's records would be read as the estate's.
pub async fn estate_view(
    cfg: &BridgeConfig,
) -> anyhow::Result<Option<crate::checkpoint::shared::SharedView>> {
    if !cfg.instances.coordinate {
        return Ok(None);
    }
    let topic = state_topic(cfg).map_err(anyhow::Error::msg)?;
    topic.read().await.map(Some).map_err(|e| {
        anyhow::anyhow!(
            "{e}; with [instances] coordinate = true every instance's quarantine, journal and queue starts are read from it"
        )
    })
}

/// A Remoting client for the 5.x brokers, signed with the 5.x credentials.
pub fn target_remoting_client(cfg: &BridgeConfig, client_id: String) -> RemotingClient {
    RemotingClient::new(RemotingClientConfig {
        request_timeout: cfg.target.request_timeout,
        connect_timeout: Duration::from_secs(3),
        credentials: cfg.target.credentials.as_ref().map(|c| AclCredentials {
            access_key: c.access_key.clone(),
            secret_key: c.secret_key.clone(),
            security_token: None,
        }),
        client_id,
    })
}

/// The producer group reverse routes send to 4.x as.
pub fn reverse_producer_group(cfg: &BridgeConfig) -> String {
    format!("{}_reverse", cfg.source.consumer_group)
}

/// The reverse direction's ends: the 5.x brokers read over Remoting (with
/// the 5.x credentials), the 4.x brokers written over Remoting (with the
/// 4.x credentials, through the source's client).
fn reverse_ends(
    cfg: &BridgeConfig,
    four: &RemotingClient,
    four_namesrv: &NameServers,
) -> anyhow::Result<Option<Ends>> {
    if cfg.target.namesrv_addrs.is_empty() {
        return Ok(None);
    }
    let (five, namesrv) = read_side(cfg, config::Direction::Reverse).map_err(anyhow::Error::msg)?;
    let sink = crate::sink::RemotingSink::new(
        four.clone(),
        four_namesrv.clone(),
        &reverse_producer_group(cfg),
    );
    let sinks =
        PublisherPool::of_sinks(vec![sink.into()]).ok_or_else(|| anyhow::anyhow!("no 4.x sink"))?;
    Ok(Some(Ends {
        remoting: five,
        namesrv,
        sinks,
    }))
}

pub fn client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}@rmq-bridge@{}", std::process::id())
}

pub fn remoting_client(cfg: &BridgeConfig) -> RemotingClient {
    RemotingClient::new(RemotingClientConfig {
        request_timeout: cfg.source.request_timeout,
        connect_timeout: Duration::from_secs(3),
        credentials: cfg.source.credentials.as_ref().map(|c| AclCredentials {
            access_key: c.access_key.clone(),
            secret_key: c.secret_key.clone(),
            security_token: None,
        }),
        client_id: client_id(),
    })
}

pub fn grpc_config(cfg: &BridgeConfig) -> GrpcClientConfig {
    GrpcClientConfig {
        endpoints: cfg.target.endpoints.clone(),
        tls: cfg.target.tls,
        namespace: cfg.target.namespace.clone(),
        credentials: cfg.target.credentials.as_ref().map(|c| GrpcCredentials {
            access_key: c.access_key.clone(),
            secret_key: c.secret_key.clone(),
            security_token: None,
        }),
        request_timeout: cfg.target.request_timeout,
        client_id: client_id(),
        direct_send: true,
    }
}

/// One producer client per `target.clients`, each with its own client id
/// (a proxy serves one client's sends on one session; several spread them).
async fn connect_publishers(cfg: &BridgeConfig) -> anyhow::Result<PublisherPool> {
    let base = grpc_config(cfg);
    let connects = (0..cfg.target.clients).map(|i| {
        let mut config = base.clone();
        if i > 0 {
            config.client_id = format!("{}-{i}", base.client_id);
        }
        // Single attempt per call: the pipeline's send layer owns retries.
        Publisher::connect_single_shot(config)
    });
    let publishers = futures::future::try_join_all(connects)
        .await
        .map_err(|e| anyhow::anyhow!("5.x target {}: {e}", cfg.target.endpoints.join(",")))?;
    PublisherPool::new(publishers)
        .ok_or_else(|| anyhow::anyhow!("target.clients must be at least 1"))
}

pub fn name_servers(cfg: &BridgeConfig) -> Result<NameServers, String> {
    NameServers::parse(&cfg.source.namesrv_addrs.join(";")).map_err(|e| e.to_string())
}

/// What a route's checkpoints are bound to in the store: its source topic,
/// marked for a reverse route (its queues are the 5.x cluster's), so that
/// neither a topic nor a direction change reuses positions of other queues.
pub fn topic_binding(route: &RouteConfig) -> String {
    match route.direction {
        config::Direction::Forward => route.source_topic.clone(),
        config::Direction::Reverse => format!("{}{REVERSE_BINDING_SUFFIX}", route.source_topic),
    }
}

/// How a reverse route's store binding ends (see [`topic_binding`]).
pub const REVERSE_BINDING_SUFFIX: &str = " (5.x, reverse)";

/// Why a config change cannot be applied to the running bridge.
fn incompatible_change(old: &RouteConfig, new: &RouteConfig) -> Option<String> {
    if topic_binding(old) != topic_binding(new) {
        // The same words as the store's binding check at startup.
        let mismatch = crate::checkpoint::StoreError::TopicMismatch {
            route: old.name.clone(),
            bound: topic_binding(old),
            configured: topic_binding(new),
        };
        return Some(mismatch.to_string());
    }
    None
}

/// Only these keys are applied to a running route in place; any other change
/// restarts the route from its checkpoints.
fn hot_fields_only(old: &RouteConfig, new: &RouteConfig) -> bool {
    old.target_topic == new.target_topic
        && old.filter == new.filter
        && old.start == new.start
        && old.commit_as_group == new.commit_as_group
        && old.scheduled == new.scheduled
}

pub struct Bridge {
    config: Arc<BridgeConfig>,
    shared: Shared,
    routes: BTreeMap<String, RouteHandle>,
    flusher_stop: watch::Sender<bool>,
    flusher_task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Connects to both clusters and opens the store; starts nothing yet.
    pub async fn connect(cfg: BridgeConfig) -> anyhow::Result<Self> {
        let store = CheckpointStore::open(&cfg.checkpoint.dir, cfg.checkpoint.sync)?;
        // Before anything starts: every route's checkpoints must belong to
        // its configured source topic.
        let bindings: Vec<(String, String)> = cfg
            .routes
            .iter()
            .map(|r| (r.name.clone(), topic_binding(r)))
            .collect();
        let found = store.bind_route_topics_blocking(bindings).await?;
        for (route, binding) in cfg.routes.iter().zip(found) {
            if let crate::checkpoint::TopicBinding::Adopted { queues } = binding {
                tracing::warn!(route = %route.name, topic = %route.source_topic, queues,
                    "checkpoints written before topic bindings existed are now bound to the configured source_topic; if it was changed while the bridge was stopped, stop it and run `rmq-bridge reset-route`");
            }
        }
        let namesrv = name_servers(&cfg).map_err(anyhow::Error::msg)?;
        let remoting = remoting_client(&cfg);
        let publishers = connect_publishers(&cfg).await?;
        let publisher = publishers
            .first()
            .grpc()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the 5.x publishers are not gRPC"))?;
        let reverse = reverse_ends(&cfg, &remoting, &namesrv)?;
        let flusher = CheckpointFlusher::new(store.clone());
        let (flusher_stop, stop_rx) = watch::channel(false);
        let flusher_task =
            tokio::spawn(flusher.clone().run(cfg.checkpoint.flush_interval, stop_rx));
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        for (route, n) in quarantine_sizes(&store, &names) {
            metrics::gauge!(m::QUARANTINE_SIZE, "route" => route).set(n as f64);
        }
        let shares = share::Shares::new(
            cfg.pipeline.max_concurrent_sends,
            cfg.pipeline.max_inflight_mib.saturating_mul(1024),
        );
        // Instances sharing an estate: quarantine, journal and queue starts
        // also go to the 5.x state topic (crate::estate), and what this
        // store holds that the topic lacks is published first.
        let (estate, estate_view, live) = if cfg.instances.coordinate {
            let topic = state_topic(&cfg).map_err(anyhow::Error::msg)?;
            let outbox = crate::estate::Outbox::new(topic.clone());
            let view = outbox.attach(&store).await?;
            // Followed while running: what other instances share later
            // (the schedule side's positions and forwarded ids).
            let live = crate::estate::LiveView::new(topic);
            if let Err(e) = live.catch_up().await {
                tracing::warn!(error = %e, "cannot read the estate state topic now; following it from the next attempt");
            }
            (Some(outbox), view.map(Arc::new), Some(live))
        } else {
            (None, None, None)
        };
        let coordination = cfg.instances.coordinate.then(|| {
            coordinate::Coordination::new(
                client_id(),
                cfg.source.consumer_group.clone(),
                estate.clone(),
                live.clone(),
                positions::sole_readers(&cfg.routes),
            )
        });
        Ok(Bridge {
            config: Arc::new(cfg),
            shared: Shared {
                remoting,
                namesrv,
                publisher,
                publishers,
                store,
                flusher,
                shares,
                order: order::OrderLocks::new(),
                topics: health::TopicHealthMap::new(),
                coordination,
                reverse,
                estate_view,
            },
            routes: BTreeMap::new(),
            flusher_stop,
            flusher_task,
        })
    }

    pub fn start_routes(&mut self) {
        for route in self.config.routes.clone() {
            self.start_route(route);
        }
    }

    fn start_route(&mut self, route: RouteConfig) {
        tracing::info!(route = %route.name, source = %route.source_topic, target = %route.target_topic,
            percent = route.cutover_percent, "starting route");
        let handle = spawn_route(self.shared.clone(), self.config.clone(), route.clone());
        self.routes.insert(route.name.clone(), handle);
    }

    async fn stop_route(&mut self, name: &str) {
        if let Some(handle) = self.routes.remove(name) {
            let _ = handle.stop_tx.send(true);
            let _ = handle.task.await;
            tracing::info!(route = name, "route stopped; checkpoints kept");
        }
    }

    /// Applies a new, already validated config. Returns an error (and changes
    /// nothing) when the change is not safe to apply in place.
    pub async fn apply(&mut self, new: BridgeConfig) -> Result<(), String> {
        if new.instances != self.config.instances {
            return Err(format!(
                "[instances] coordinate changed from {} to {}: joining or leaving the instances' group \
                 moves queue ownership, which a running bridge does not do; restart it to apply this",
                self.config.instances.coordinate, new.instances.coordinate
            ));
        }
        for route in &new.routes {
            if let Some(old) = self.routes.get(&route.name) {
                if let Some(why) = incompatible_change(&old.config, route) {
                    return Err(why);
                }
            }
        }
        // New and re-added routes too (a removed route keeps its binding):
        // all bound, or none and the old config keeps running.
        let bindings: Vec<(String, String)> = new
            .routes
            .iter()
            .map(|r| (r.name.clone(), topic_binding(r)))
            .collect();
        self.shared
            .store
            .bind_route_topics_blocking(bindings)
            .await
            .map_err(|e| e.to_string())?;
        if new.source != self.config.source
            || new.target != self.config.target
            || new.checkpoint != self.config.checkpoint
        {
            tracing::warn!("changes to [source], [target] or [checkpoint] take effect after a restart; routes were updated");
        }
        let new = Arc::new(new);
        let names: Vec<String> = self.routes.keys().cloned().collect();
        for name in names {
            if new.route(&name).is_none() {
                self.stop_route(&name).await;
            }
        }
        self.config = new.clone();
        for route in new.routes.clone() {
            let in_place = self
                .routes
                .get(&route.name)
                .map(|h| hot_fields_only(&h.config, &route));
            match in_place {
                Some(true) => {
                    if let Some(handle) = self.routes.get_mut(&route.name) {
                        handle.config = route.clone();
                        let _ = handle.config_tx.send((new.clone(), route));
                    }
                }
                Some(false) => {
                    self.stop_route(&route.name).await;
                    self.start_route(route);
                }
                None => self.start_route(route),
            }
        }
        self.config = new;
        Ok(())
    }

    /// Stops every route (draining in-flight sends), then writes checkpoints.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.routes.keys().cloned().collect();
        for handle in self.routes.values() {
            let _ = handle.stop_tx.send(true);
        }
        for name in names {
            if let Some(handle) = self.routes.remove(&name) {
                let _ = handle.task.await;
            }
        }
        let _ = self.flusher_stop.send(true);
        let _ = self.flusher_task.await;
        for publisher in self.shared.publishers.all() {
            publisher.shutdown().await;
        }
        if let Some(r) = &self.shared.reverse {
            r.remoting.shutdown();
        }
        tracing::info!("checkpoints written; bye");
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Heartbeats the bridge's own group to every broker of every route so the
/// 4.x console shows the bridge.
async fn heartbeat_loop(
    shared: Shared,
    config: watch::Receiver<Arc<BridgeConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let client_id = client_id();
    // Coordinating instances heartbeat well inside the brokers' 120 s
    // expiry of a silent member: a member list that lost a live instance
    // would give its queues away.
    let every = if shared.coordination.is_some() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    loop {
        let cfg = config.borrow().clone();
        // Reverse routes read 5.x: the 4.x brokers must not list the
        // bridge as a consumer of their topics.
        let topics: Vec<String> = cfg
            .routes
            .iter()
            .filter(|r| r.direction == config::Direction::Forward)
            .map(|r| r.source_topic.clone())
            .collect();
        let data = HeartbeatData::consumer(&client_id, &cfg.source.consumer_group, &topics);
        let addrs = source_broker_addrs(&shared, &cfg).await;
        for addr in &addrs {
            if let Err(e) = shared.remoting.heartbeat(addr, &data).await {
                tracing::debug!(%addr, error = %e, "heartbeat failed");
            }
        }
        // Coordinating instances share reverse routes through the same
        // group on the 5.x brokers they read (issue 30, item 7).
        if let (Some(_), Some(ends)) = (&shared.coordination, &shared.reverse) {
            let topics = route_topics(&cfg, config::Direction::Reverse);
            if !topics.is_empty() {
                let data = HeartbeatData::consumer(&client_id, &cfg.source.consumer_group, &topics);
                for addr in &reverse_broker_addrs(ends, &cfg).await {
                    if let Err(e) = ends.remoting.heartbeat(addr, &data).await {
                        tracing::debug!(%addr, error = %e, "heartbeat to a 5.x broker failed");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The source topics of the routes of one direction.
fn route_topics(cfg: &BridgeConfig, direction: config::Direction) -> Vec<String> {
    let mut topics: Vec<String> = cfg
        .routes
        .iter()
        .filter(|r| r.direction == direction)
        .map(|r| r.source_topic.clone())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// Every broker address (masters and slaves) of every forward route's
/// source topic, as the 4.x name servers answer now; topics they cannot
/// route are left out.
async fn source_broker_addrs(shared: &Shared, cfg: &BridgeConfig) -> Vec<String> {
    let topics = route_topics(cfg, config::Direction::Forward);
    broker_addrs(&shared.remoting, &shared.namesrv, &topics).await
}

/// The same for the reverse routes' source topics on 5.x.
async fn reverse_broker_addrs(ends: &Ends, cfg: &BridgeConfig) -> Vec<String> {
    let topics = route_topics(cfg, config::Direction::Reverse);
    broker_addrs(&ends.remoting, &ends.namesrv, &topics).await
}

async fn broker_addrs(
    client: &RemotingClient,
    namesrv: &NameServers,
    topics: &[String],
) -> Vec<String> {
    let mut addrs = Vec::new();
    for topic in topics {
        if let Ok(Some(r)) = namesrv.topic_route(client, topic).await {
            for b in &r.broker_datas {
                for addr in b.broker_addrs.values() {
                    if !addrs.contains(addr) {
                        addrs.push(addr.clone());
                    }
                }
            }
        }
    }
    addrs
}

/// Bumps the coordination's change counter when a broker says the group's
/// members changed (NOTIFY_CONSUMER_IDS_CHANGED: Java 4.9.7 brokers send it
/// on joins and leaves, `source_peers`; routes also rebalance on a timer, for
/// a notice lost with a connection).
async fn membership_listener(
    client: RemotingClient,
    coordination: Arc<coordinate::Coordination>,
    mut stop: watch::Receiver<bool>,
) {
    let mut requests = client.subscribe_server_requests();
    loop {
        let request = tokio::select! {
            r = requests.recv() => r,
            _ = stop.changed() => return,
        };
        match request {
            Ok(r)
                if r.command.code
                    == crate::remoting::codes::request::NOTIFY_CONSUMER_IDS_CHANGED =>
            {
                let group = r.command.ext("consumerGroup").unwrap_or_default();
                if group == coordination.group {
                    tracing::info!(broker = %r.addr, group, "the group's members changed; rebalancing");
                    coordination.changed.send_modify(|n| *n += 1);
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                coordination.changed.send_modify(|n| *n += 1);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Leaves the group at once on a clean stop (after every route released
/// its queues), so the others take them without waiting for the brokers'
/// expiry of a silent member.
async fn leave_group(shared: &Shared, cfg: &BridgeConfig, coordination: &coordinate::Coordination) {
    let mut sides = vec![(
        shared.remoting.clone(),
        source_broker_addrs(shared, cfg).await,
    )];
    if let Some(ends) = &shared.reverse {
        sides.push((ends.remoting.clone(), reverse_broker_addrs(ends, cfg).await));
    }
    for (client, addrs) in sides {
        leave_side(&client, &addrs, coordination).await;
    }
}

async fn leave_side(
    client: &RemotingClient,
    addrs: &[String],
    coordination: &coordinate::Coordination,
) {
    for addr in addrs {
        if let Err(e) = client
            .unregister_client(
                addr,
                &coordination.client_id,
                None,
                Some(&coordination.group),
            )
            .await
        {
            tracing::warn!(%addr, error = %e, "cannot leave the instances' group; the broker drops this member within 120 s");
        }
    }
}

/// Pings the systemd watchdog only while the pipeline makes progress: the
/// checkpoint flusher (which also publishes every queue's lag) completed a
/// cycle since the last ping. A runtime that is alive but whose pipeline is
/// stuck stops pinging and systemd restarts it. Checks run at a quarter of
/// `WATCHDOG_USEC` so consecutive pings stay within half of it.
async fn watchdog(
    flusher: Arc<CheckpointFlusher>,
    half_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tick = (half_interval / 2).max(Duration::from_millis(10));
    let mut last = flusher.cycles();
    let mut withheld_since: Option<tokio::time::Instant> = None;
    crate::systemd::watchdog_ping();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        let now = flusher.cycles();
        if now != last {
            last = now;
            withheld_since = None;
            crate::systemd::watchdog_ping();
        } else if withheld_since.is_none() {
            withheld_since = Some(tokio::time::Instant::now());
            tracing::warn!(
                "the checkpoint flusher made no progress; withholding the systemd watchdog ping"
            );
        }
    }
}

/// Runs the daemon until SIGTERM / SIGINT.
pub async fn run_daemon(cfg: BridgeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let path = cfg.file.clone();
    let mut bridge = Bridge::connect(cfg).await?;

    let (config_tx, config_rx) = watch::channel(bridge.config.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Heartbeats first: a coordinating instance owns no queue before the
    // brokers list it as a member.
    tokio::spawn(heartbeat_loop(
        bridge.shared.clone(),
        config_rx.clone(),
        stop_rx.clone(),
    ));
    // Kept group translations (routes[].keep_translated), if any route
    // lists a group; it follows config reloads.
    tokio::spawn(crate::groups::keeper::run(config_rx, stop_rx.clone()));
    if let Some(coordination) = bridge.shared.coordination.clone() {
        tracing::info!(group = %coordination.group, client_id = %coordination.client_id,
            state_topic = %bridge.config.instances.state_topic,
            "sharing the estate with the other instances of this group");
        if let Some(outbox) = coordination.estate.clone() {
            tokio::spawn(outbox.spawn(crate::shutdown::Shutdown::new(stop_rx.clone())));
        }
        if let Some(live) = coordination.live.clone() {
            live.spawn(crate::shutdown::Shutdown::new(stop_rx.clone()));
        }
        if let Some(ends) = &bridge.shared.reverse {
            // Notices of the 5.x brokers, for reverse routes.
            tokio::spawn(membership_listener(
                ends.remoting.clone(),
                coordination.clone(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(membership_listener(
            bridge.shared.remoting.clone(),
            coordination,
            stop_rx.clone(),
        ));
    }
    bridge.start_routes();
    if let Some(half) = crate::systemd::watchdog_interval() {
        tokio::spawn(watchdog(
            bridge.shared.flusher.clone(),
            half,
            stop_rx.clone(),
        ));
    }

    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut stamp = file_stamp(&path);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    crate::systemd::ready(&format!("bridging {} route(s)", bridge.config.routes.len()));
    tracing::info!(config = %path.display(), routes = bridge.config.routes.len(), "rmq-bridge running");

    loop {
        let reload = tokio::select! {
            _ = sighup.recv() => { tracing::info!("SIGHUP: reloading config"); true }
            _ = poll.tick() => {
                let now = file_stamp(&path);
                if now != stamp && now.is_some() { stamp = now; tracing::info!("config file changed: reloading"); true } else { false }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        if !reload {
            continue;
        }
        crate::systemd::reloading();
        match config::load(&path) {
            Ok(new) => match bridge.apply(new).await {
                Ok(()) => {
                    metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
                    let _ = config_tx.send(bridge.config.clone());
                    tracing::info!("config reloaded");
                }
                Err(why) => {
                    metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "rejected").increment(1);
                    tracing::error!(
                        "config change rejected, the previous config keeps running: {why}"
                    );
                }
            },
            Err(e) => {
                metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "invalid").increment(1);
                tracing::error!("invalid config rejected, the previous config keeps running: {e}");
            }
        }
        crate::systemd::ready("running");
    }

    tracing::info!("stopping: draining in-flight sends and writing checkpoints");
    crate::systemd::stopping();
    let _ = stop_tx.send(true);
    let coordination = bridge.shared.coordination.clone();
    let (shared, cfg) = (bridge.shared.clone(), bridge.config.clone());
    bridge.shutdown().await;
    if let Some(coordination) = coordination {
        if let Some(outbox) = &coordination.estate {
            match tokio::time::timeout(Duration::from_secs(10), outbox.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, pending = outbox.pending(),
                    "estate records left unpublished at stop; this instance publishes them when it starts again"),
                Err(_) => tracing::warn!(pending = outbox.pending(),
                    "estate records left unpublished at stop (5.x slow); this instance publishes them when it starts again"),
            }
        }
        leave_group(&shared, &cfg, &coordination).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StartPosition;
    use crate::cutover::RoutingKeyMode;

    fn route() -> RouteConfig {
        RouteConfig {
            name: "orders".into(),
            source_topic: "orders".into(),
            target_topic: "orders".into(),
            filter: "*".into(),
            cutover_percent: 10,
            routing_key: RoutingKeyMode::Auto,
            environments: vec![],
            start: StartPosition::Earliest,
            commit_as_group: None,
            scheduled: Default::default(),
            direction: Default::default(),
            keep_translated: Vec::new(),
        }
    }

    #[test]
    fn reload_classifies_route_changes() {
        let old = route();
        let mut hot = route();
        hot.cutover_percent = 50;
        hot.environments = vec!["gray".into()];
        hot.routing_key = RoutingKeyMode::Queue;
        assert!(hot_fields_only(&old, &hot));
        assert!(incompatible_change(&old, &hot).is_none());

        let mut restart = route();
        restart.target_topic = "orders_v5".into();
        assert!(!hot_fields_only(&old, &restart));
        assert!(incompatible_change(&old, &restart).is_none());

        let mut refused = route();
        refused.source_topic = "payments".into();
        let why = incompatible_change(&old, &refused).unwrap();
        assert!(why.contains("orders") && why.contains("new name"), "{why}");
    }
}

/// What the quarantine gauge starts at, per route name: every name that has
/// entries in the store (the schedule side's `<route>#scheduled`, routes
/// since removed from the config) and every configured route and its
/// schedule side at 0, so that `RmqBridgeQuarantineNotEmpty` sees entries
/// kept by an earlier run. A store that cannot be listed is logged.
pub fn quarantine_sizes(store: &CheckpointStore, routes: &[&str]) -> BTreeMap<String, usize> {
    let mut sizes: BTreeMap<String, usize> = routes
        .iter()
        .flat_map(|r| [r.to_string(), schedule_ledger::schedule_side_name(r)])
        .map(|r| (r, 0))
        .collect();
    match store.quarantine_list(None) {
        Ok(entries) => {
            for e in entries {
                *sizes.entry(e.route).or_default() += 1;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list the quarantine; its gauge starts at 0"),
    }
    sizes
}

#[cfg(test)]
mod quarantine_gauge_tests {
    use super::*;
    use crate::checkpoint::{QuarantineEntry, SourceQueue};

    /// Issue 16 item 5: entries of the schedule side (`<route>#scheduled`)
    /// are counted at startup, not only those of configured route names.
    #[test]
    fn the_gauge_counts_schedule_side_entries_kept_by_an_earlier_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::open(dir.path(), false).expect("store");
        let side = schedule_ledger::schedule_side_name("r");
        let entries = store.quarantine_list(None).expect("list");
        assert!(entries.is_empty());
        let entry = QuarantineEntry {
            route: side.clone(),
            queue: SourceQueue {
                broker_name: "b".into(),
                queue_id: 1,
            },
            offset: 7,
            message_id: "m".into(),
            reason: "test".into(),
            quarantined_at_ms: 1,
            message_json: String::new(),
        };
        store.quarantine_put(&entry).expect("put");
        let sizes = quarantine_sizes(&store, &["r"]);
        assert_eq!(sizes.get("r"), Some(&0));
        assert_eq!(sizes.get(&side), Some(&1));
    }
}
