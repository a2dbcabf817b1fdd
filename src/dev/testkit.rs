//! Helpers on top of `dev::cluster` shared by the integration tests, the quick
//! start (`rmq-bridge demo`) and the end-to-end benchmark: typed topics,
//! producing sample 4.x traffic, reading a topic back over Remoting (the
//! ground truth of what landed, SPEC section 7), and writing bridge configs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;

use crate::dev::cluster::{ClusterOptions, LocalCluster};
use crate::remoting::{
    MessageRecord, NameServers, RemotingClient, RemotingClientConfig, SendRequest, SendResult,
    TopicConfig,
};

pub fn client() -> RemotingClient {
    RemotingClient::new(RemotingClientConfig {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(3),
        credentials: None,
        client_id: format!("testkit@{}", std::process::id()),
    })
}

/// A 4.x cluster (name server + broker) on loopback.
pub fn start_source_cluster(name: &str) -> anyhow::Result<LocalCluster> {
    LocalCluster::start(ClusterOptions::new(name)).map_err(|e| anyhow!("starting 4.x peers: {e}"))
}

/// A 5.x cluster (name server + broker + gRPC proxy in cluster mode) on loopback.
pub fn start_target_cluster(name: &str) -> anyhow::Result<LocalCluster> {
    LocalCluster::start(ClusterOptions::new(name).with_proxy(true))
        .map_err(|e| anyhow!("starting 5.x peers: {e}"))
}

/// Creates a topic on the cluster's broker (with `message.type` when given:
/// NORMAL, FIFO, DELAY, TRANSACTION) and waits until the name server routes it.
pub async fn create_topic(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    queues: i32,
    message_type: Option<&str>,
) -> anyhow::Result<()> {
    let mut config = TopicConfig::new(topic, queues);
    if let Some(t) = message_type {
        config.attributes.insert("message.type".into(), t.into());
    }
    // On every broker of the cluster (a second one: `queues` on each).
    let mut brokers = vec![cluster.broker_addr.clone()];
    brokers.extend(cluster.broker_b.as_ref().map(|(addr, _)| addr.clone()));
    for addr in &brokers {
        client
            .create_topic(addr, &config)
            .await
            .with_context(|| format!("creating topic {topic} on {addr}"))?;
    }
    let want = queues * brokers.len() as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(route)) = client.get_topic_route(&cluster.namesrv_addr, topic).await {
            if route.readable_queues().len() as i32 >= want {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "topic {topic} not routed by {} after 30 s",
                cluster.namesrv_addr
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message to produce into 4.x.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub queue_id: i32,
    pub body: Vec<u8>,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub uniq_key: Option<String>,
    pub properties: Vec<(String, String)>,
    pub compress_over: Option<usize>,
    pub sys_flag: i32,
}

pub async fn produce(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
    sample: &Sample,
) -> anyhow::Result<SendResult> {
    let mut req = SendRequest::new(
        "testkit_producer",
        topic,
        sample.queue_id,
        Bytes::from(sample.body.clone()),
    );
    if let Some(tag) = &sample.tag {
        req.properties.insert("TAGS", tag.clone());
    }
    if !sample.keys.is_empty() {
        req.properties.insert("KEYS", sample.keys.join(" "));
    }
    if let Some(id) = &sample.uniq_key {
        req.properties.insert("UNIQ_KEY", id.clone());
    }
    for (k, v) in &sample.properties {
        req.properties.insert(k.clone(), v.clone());
    }
    req.compress_over = sample.compress_over;
    req.sys_flag = sample.sys_flag;
    client
        .send_message(&cluster.broker_addr, &req)
        .await
        .with_context(|| format!("sending to {topic} queue {}", sample.queue_id))
}

/// Reads every message of every queue of `topic` on the cluster's broker, in
/// (queue, offset) order.
pub async fn read_back(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
) -> anyhow::Result<Vec<MessageRecord>> {
    let route = client
        .get_topic_route(&cluster.namesrv_addr, topic)
        .await?
        .ok_or_else(|| anyhow!("topic {topic} not found on {}", cluster.namesrv_addr))?;
    let mut out = Vec::new();
    for (broker_name, queue_id) in route.readable_queues() {
        let addr = route
            .master_addr(&broker_name)
            .ok_or_else(|| anyhow!("no master for {broker_name}"))?
            .to_string();
        let max = client.get_max_offset(&addr, topic, queue_id).await?;
        let min = client.get_min_offset(&addr, topic, queue_id).await?;
        crate::decommission::probe::scan_queue(client, &addr, topic, queue_id, min, max, |r| {
            out.push(r.clone())
        })
        .await?;
    }
    Ok(out)
}

/// Message count of a topic (sum of max - min over queues).
pub async fn topic_size(
    client: &RemotingClient,
    cluster: &LocalCluster,
    topic: &str,
) -> anyhow::Result<i64> {
    let ns = NameServers::parse(&cluster.namesrv_addr)?;
    let route = ns
        .topic_route(client, topic)
        .await?
        .ok_or_else(|| anyhow!("topic {topic} not found"))?;
    let mut total = 0;
    for (broker_name, queue_id) in route.readable_queues() {
        let addr = route
            .master_addr(&broker_name)
            .unwrap_or_default()
            .to_string();
        total += client.get_max_offset(&addr, topic, queue_id).await?
            - client.get_min_offset(&addr, topic, queue_id).await?;
    }
    Ok(total)
}

/// One `[[routes]]` entry for [`write_config`].
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub source_topic: String,
    pub target_topic: String,
    pub cutover_percent: u8,
    pub extra: BTreeMap<String, String>,
}

impl RouteSpec {
    pub fn new(name: &str, source: &str, target: &str, percent: u8) -> Self {
        RouteSpec {
            name: name.into(),
            source_topic: source.into(),
            target_topic: target.into(),
            cutover_percent: percent,
            extra: BTreeMap::new(),
        }
    }

    /// Adds a raw TOML `key = value` line (value written as given).
    pub fn with(mut self, key: &str, toml_value: &str) -> Self {
        self.extra.insert(key.into(), toml_value.into());
        self
    }
}

/// Renders a bridge config file for the two local clusters.
pub fn render_config(
    source: &LocalCluster,
    target: &LocalCluster,
    checkpoint_dir: &Path,
    metrics_listen: &str,
    extra_sections: &str,
    routes: &[RouteSpec],
) -> anyhow::Result<String> {
    let endpoint = target
        .proxy_endpoint
        .clone()
        .ok_or_else(|| anyhow!("target cluster has no proxy"))?;
    let mut text = format!(
        "[source]\nnamesrv_addr = \"{}\"\nlong_poll_ms = 2000\n\n[target]\nendpoint = \"{endpoint}\"\n\n[checkpoint]\ndir = \"{}\"\n\n[metrics]\nlisten = \"{metrics_listen}\"\n\n{extra_sections}\n",
        source.namesrv_addr,
        checkpoint_dir.display()
    );
    for r in routes {
        text.push_str(&format!(
            "[[routes]]\nname = \"{}\"\nsource_topic = \"{}\"\ntarget_topic = \"{}\"\ncutover_percent = {}\n",
            r.name, r.source_topic, r.target_topic, r.cutover_percent
        ));
        for (k, v) in &r.extra {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push('\n');
    }
    Ok(text)
}

/// `text` (from [`render_config`]) with the 5.x cluster's name server under
/// `[target]`, which reverse routes, `verify` and `groups translate` read.
pub fn with_target_namesrv(text: &str, target: &LocalCluster) -> String {
    text.replacen(
        "[target]\n",
        &format!("[target]\nnamesrv_addr = \"{}\"\n", target.namesrv_addr),
        1,
    )
}

/// Renders the config for the two clusters (with the 5.x name server,
/// [`with_target_namesrv`]) into `dir/bridge.toml`, checkpoints in
/// `dir/checkpoints`; returns the file's path.
pub fn write_bridge_config(
    source: &LocalCluster,
    target: &LocalCluster,
    dir: &Path,
    metrics_listen: &str,
    extra_sections: &str,
    routes: &[RouteSpec],
) -> anyhow::Result<PathBuf> {
    let text = render_config(
        source,
        target,
        &dir.join("checkpoints"),
        metrics_listen,
        extra_sections,
        routes,
    )?;
    write_config(
        &dir.join("bridge.toml"),
        &with_target_namesrv(&text, target),
    )
}

pub fn write_config(path: &Path, text: &str) -> anyhow::Result<PathBuf> {
    // Write-then-rename so a watching bridge never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(path.to_path_buf())
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sum of the samples of `name` in Prometheus text (a `/metrics` scrape)
/// whose labels include every pair in `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += value;
        }
    }
    sum
}

/// A number from the environment variable `name`; None when unset or blank.
pub fn env_num<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}=`{v}` is not a valid number")),
        _ => Ok(None),
    }
}

/// `key=value,...` from the environment variable `name` (empty when unset).
pub fn env_pairs(name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("{name}: `{pair}` is not key=value"))
        })
        .collect()
}

/// Runs `bin` (the `rmq-bridge` binary) with `args` for at most two
/// minutes; (exit success, stdout then stderr). The output is echoed to
/// stderr for the test log.
pub fn run_cli(bin: &Path, args: &[&str]) -> (bool, String) {
    use std::io::Read;
    let mut child = match std::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {}: {e}", bin.display())),
    };
    // Both pipes drain on their own threads: a verb that prints more than a
    // pipe holds must not block until the deadline.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
        String::from_utf8_lossy(&stderr.join().unwrap_or_default())
    );
    let text = match status {
        Some(_) => text,
        None => format!("{text}\n(killed after 120 s)"),
    };
    eprintln!("$ rmq-bridge {}\n{text}", args.join(" "));
    (status.is_some_and(|s| s.success()), text)
}

/// `rmq-bridge verify -c CONFIG ARGS --json JSON` through [`run_cli`]:
/// its output and the JSON report; an error (with the output) when verify
/// does not pass.
pub fn verify_json(
    bin: &Path,
    config: &Path,
    args: &[&str],
    json: &Path,
) -> anyhow::Result<(String, serde_json::Value)> {
    let (config, json_arg) = (config.to_string_lossy(), json.to_string_lossy());
    let mut all = vec!["verify", "-c", &config];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", &json_arg]);
    let (ok, out) = run_cli(bin, &all);
    if !ok {
        anyhow::bail!("verify failed:\n{out}");
    }
    let bytes = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
    let report = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a verify report", json.display()))?;
    Ok((out, report))
}
