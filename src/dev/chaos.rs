//! Fault injection through the whole bridge, for the chaos tests
//! (`tests/chaos.rs`) and the soak (`benches/chaos_soak.rs`,
//! `scripts/chaos.sh`): a 4.x and a 5.x cluster of real peers, the bridge
//! as a child process, a mixed-type stream with a ledger, faults (SIGKILL /
//! SIGTERM of the bridge, restarts of every peer, SIGSTOP pauses), and a
//! tally of what landed. Ground truth is the Remoting read-back of the 5.x
//! broker.

pub mod bridge;
pub mod stream;
pub mod tally;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::RwLock;

use crate::dev::cluster::{free_port, ClusterOptions, LocalCluster, Peer};
use crate::dev::testkit::{self, metric, RouteSpec};
use crate::remoting::{MessageRecord, RemotingClient};

pub use bridge::{scrape, BridgeProcess, Paused};
pub use stream::{Kind, MixSpec, ProducerGate, Sent};
pub use tally::Tally;

/// Which cluster a peer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// Two clusters, the stream's topics on both, a working directory, and
/// the bridge's metrics address.
pub struct Rig {
    pub source: LocalCluster,
    pub target: LocalCluster,
    pub client: RemotingClient,
    pub spec: MixSpec,
    pub metrics: String,
    pub gate: ProducerGate,
    dir: PathBuf,
}

impl Rig {
    /// Starts both clusters and creates the four topics of `spec` (typed on 5.x).
    pub async fn start(name: &str, spec: MixSpec) -> anyhow::Result<Rig> {
        let source = testkit::start_source_cluster(&format!("{name}-src"))?;
        // A COMMIT the 5.x proxy forwards one-way to a broker that is going
        // down is lost; the broker then asks the producer (the bridge) by
        // check-back. Check every 5 s instead of Java's default, so that a
        // bounded test sees the recovery.
        let target = LocalCluster::start(
            ClusterOptions::new(format!("{name}-dst"))
                .with_proxy(true)
                .broker_property("transactionCheckInterval", "5000"),
        )
        .map_err(|e| anyhow::anyhow!("starting 5.x peers: {e}"))?;
        let client = testkit::client();
        for kind in spec.kinds.clone() {
            let topic = spec.topic(kind);
            testkit::create_topic(&client, &source, &topic, spec.queues, None).await?;
            testkit::create_topic(
                &client,
                &target,
                &topic,
                spec.queues,
                Some(kind.topic_type()),
            )
            .await?;
        }
        let dir = std::env::temp_dir().join(format!(
            "rmq-chaos-{name}-{}-{}",
            std::process::id(),
            crate::checkpoint::now_ms()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Rig {
            source,
            target,
            client,
            spec,
            metrics: format!("127.0.0.1:{}", free_port()?),
            gate: Arc::new(RwLock::new(())),
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One route per topic of the stream, 100 % cut over.
    pub fn routes(&self) -> Vec<RouteSpec> {
        self.spec
            .kinds
            .iter()
            .map(|k| {
                let t = self.spec.topic(*k);
                RouteSpec::new(&t, &t, &t, 100)
            })
            .collect()
    }

    /// Writes `bridge.toml` (checkpoints under the rig's directory unless
    /// `checkpoint_dir` is given) and returns its path.
    pub fn write_config(
        &self,
        extra: &str,
        routes: &[RouteSpec],
        checkpoint_dir: Option<&Path>,
    ) -> anyhow::Result<PathBuf> {
        let ckpt = checkpoint_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.join("checkpoints"));
        let text = testkit::render_config(
            &self.source,
            &self.target,
            &ckpt,
            &self.metrics,
            extra,
            routes,
        )?;
        testkit::write_config(&self.dir.join("bridge.toml"), &text)
    }

    pub fn bridge(&self, bin: &Path) -> BridgeProcess {
        BridgeProcess::start(
            bin,
            &self.dir.join("bridge.toml"),
            &self.dir.join("bridge.log"),
        )
    }

    /// Starts the producer of the stream in the background.
    pub fn produce(&self) -> tokio::task::JoinHandle<Vec<Sent>> {
        tokio::spawn(stream::produce(
            testkit::client(),
            self.source.broker_addr.clone(),
            self.spec.clone(),
            self.gate.clone(),
        ))
    }

    pub fn scrape(&self) -> String {
        scrape(&self.metrics)
    }

    /// Messages the running bridge forwarded since it started (0 when it
    /// does not answer).
    pub fn forwarded(&self) -> f64 {
        metric(
            &self.scrape(),
            crate::metrics::MESSAGES_TOTAL,
            &[("outcome", "forwarded")],
        )
    }

    /// Waits until the bridge forwarded more than `baseline`; returns how
    /// long that took, or None after `timeout`.
    pub async fn wait_forwarding(&self, baseline: f64, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.forwarded() > baseline {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Restarts a peer with the same ports and storage. A 4.x broker
    /// restart holds the producer between two messages (see [`ProducerGate`]).
    pub async fn restart_peer(&mut self, side: Side, peer: Peer) -> anyhow::Result<()> {
        match side {
            Side::Source => {
                let gate = self.gate.clone();
                let _held = gate.write().await;
                // Let a one-way commit sent just before land first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let cluster = &mut self.source;
                tokio::task::block_in_place(|| cluster.restart_peer(peer))?;
            }
            Side::Target => {
                let cluster = &mut self.target;
                tokio::task::block_in_place(|| cluster.restart_peer(peer))?;
            }
        }
        Ok(())
    }

    pub fn cluster_mut(&mut self, side: Side) -> &mut LocalCluster {
        match side {
            Side::Source => &mut self.source,
            Side::Target => &mut self.target,
        }
    }

    /// Every copy of the stream's messages in 4.x.
    pub async fn read_source(&self) -> anyhow::Result<Vec<MessageRecord>> {
        let mut out = Vec::new();
        for kind in self.spec.kinds.clone() {
            out.extend(
                testkit::read_back(&self.client, &self.source, &self.spec.topic(kind)).await?,
            );
        }
        Ok(out)
    }

    /// Every copy of the stream's messages in 5.x, per type.
    pub async fn read_target(&self) -> anyhow::Result<BTreeMap<Kind, Vec<MessageRecord>>> {
        let mut out = BTreeMap::new();
        for kind in self.spec.kinds.clone() {
            let records =
                testkit::read_back(&self.client, &self.target, &self.spec.topic(kind)).await?;
            out.insert(kind, records);
        }
        Ok(out)
    }

    /// Waits (up to `timeout`) until 5.x holds every id of `sent` that 4.x
    /// holds, lets stragglers land, and tallies.
    pub async fn settle(&self, sent: &[Sent], timeout: Duration) -> anyhow::Result<Tally> {
        let deadline = Instant::now() + timeout;
        loop {
            let source = self.read_source().await?;
            let target = self.read_target().await?;
            let tally = Tally::compute(sent, &source, &target);
            if tally.lost.is_empty() || Instant::now() > deadline {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let target = self.read_target().await?;
                return Ok(Tally::compute(sent, &source, &target));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Evidence for messages a tally found lost: which of `ids` the 5.x
    /// broker holds only as transaction half messages (prepared, never
    /// committed), read over Remoting from its half topic directly (the
    /// name server has no route for it). Empty when none or unreadable.
    pub async fn held_as_5x_half_messages(&self, ids: &[String]) -> Vec<String> {
        const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
        let addr = self.target.broker_addr.clone();
        let (Ok(min), Ok(max)) = (
            self.client.get_min_offset(&addr, HALF_TOPIC, 0).await,
            self.client.get_max_offset(&addr, HALF_TOPIC, 0).await,
        ) else {
            return Vec::new();
        };
        let mut held = Vec::new();
        let _ = crate::decommission::probe::scan_queue(
            &self.client,
            &addr,
            HALF_TOPIC,
            0,
            min,
            max,
            |r| {
                if let Some(id) = r.uniq_key() {
                    if ids.iter().any(|lost| lost == id) && !held.iter().any(|h| h == id) {
                        held.push(id.to_string());
                    }
                }
            },
        )
        .await;
        held
    }

    /// Quarantined messages over all routes, as the running bridge reports them.
    pub fn quarantined(&self) -> f64 {
        metric(&self.scrape(), crate::metrics::QUARANTINE_SIZE, &[])
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::env::var_os("RMQ_KEEP_PEER_DIRS").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Median and maximum of `samples` (None when empty).
pub fn median_max(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let mut s = samples.to_vec();
    s.sort();
    let max = *s.last()?;
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    Some((median, max))
}

/// One fault of a run.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// SIGKILL the bridge and start it again.
    KillBridge,
    /// SIGTERM the bridge (it must exit cleanly) and start it again.
    TermBridge,
    /// Stop a peer (SIGTERM) and start it again with the same storage.
    Restart(Side, Peer),
    /// Stop a peer, keep it down this long, start it again.
    Down(Side, Peer, Duration),
    /// SIGSTOP a peer this long, then SIGCONT.
    Pause(Side, Peer, Duration),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |s: &Side| match s {
            Side::Source => "4.x",
            Side::Target => "5.x",
        };
        match self {
            Fault::KillBridge => write!(f, "SIGKILL bridge"),
            Fault::TermBridge => write!(f, "SIGTERM bridge"),
            Fault::Restart(s, p) => write!(f, "restart {} {p}", side(s)),
            Fault::Down(s, p, d) => write!(f, "{} {p} down {}s", side(s), d.as_secs()),
            Fault::Pause(s, p, d) => write!(f, "{} {p} paused {}s", side(s), d.as_secs()),
        }
    }
}

/// What one injected fault did.
#[derive(Debug, Clone)]
pub struct FaultOutcome {
    pub fault: Fault,
    /// From the end of the fault (peer back, bridge restarted) until the
    /// bridge forwarded again; None if it did not within the wait.
    pub recovery: Option<Duration>,
    /// For SIGTERM: whether the bridge exited with success.
    pub clean_exit: bool,
}

impl Rig {
    /// Injects `fault`, then waits up to `recovery_wait` for the bridge to
    /// forward again.
    pub async fn inject(
        &mut self,
        bridge: &mut BridgeProcess,
        fault: Fault,
        recovery_wait: Duration,
    ) -> anyhow::Result<FaultOutcome> {
        let mut clean_exit = true;
        let baseline = match fault {
            Fault::KillBridge => {
                bridge.kill9();
                tokio::time::sleep(Duration::from_millis(200)).await;
                bridge.restart();
                0.0
            }
            Fault::TermBridge => {
                clean_exit = tokio::task::block_in_place(|| bridge.terminate());
                bridge.restart();
                0.0
            }
            Fault::Restart(side, peer) => {
                self.restart_peer(side, peer).await?;
                self.forwarded()
            }
            Fault::Down(side, peer, dur) => {
                let gate = self.gate.clone();
                let _held = match side {
                    Side::Source => Some(gate.write().await),
                    Side::Target => None,
                };
                let cluster = self.cluster_mut(side);
                tokio::task::block_in_place(|| cluster.stop_peer(peer));
                tokio::time::sleep(dur).await;
                let cluster = self.cluster_mut(side);
                tokio::task::block_in_place(|| cluster.start_peer(peer))?;
                self.forwarded()
            }
            Fault::Pause(side, peer, dur) => {
                let pid = self
                    .cluster_mut(side)
                    .pid(peer)
                    .with_context(|| format!("{peer} is not running"))?;
                {
                    let _paused = Paused::new(pid);
                    tokio::time::sleep(dur).await;
                }
                self.forwarded()
            }
        };
        let recovery = self.wait_forwarding(baseline, recovery_wait).await;
        Ok(FaultOutcome {
            fault,
            recovery,
            clean_exit,
        })
    }
}
