//! The exact configuration every peer runs with, as pure functions from ports
//! and paths to config text and arguments. `scripts/peers.sh` writes the same
//! files (a test below keeps the two in step); `docs/peers.md` says why each
//! key is there.

use std::path::Path;

use super::DevClusterError;

/// Every peer listens on loopback only.
pub const LOOPBACK: &str = "127.0.0.1";

/// Commit log segment size for test brokers: 64 MiB instead of the 1 GiB
/// default, so many brokers in parallel tests stay light and retention tests
/// can roll segments quickly.
pub const TEST_COMMIT_LOG_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Seconds a peer may take for a graceful shutdown after SIGTERM
/// (`ROCKETMQ_SHUTDOWN_TIMEOUT_SECONDS`, accepted range 1..=300).
pub const PEER_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// Name server config (TOML, read with `-c`). Paths default to `~/rocketmq-namesrv`
/// otherwise, shared between every name server of the user.
pub fn namesrv_toml(home: &Path, listen_port: u16) -> String {
    let mut out = String::from(HEADER);
    push_entries(
        &mut out,
        &[
            ("rocketmqHome", toml_str(&home.display().to_string())),
            (
                "kvConfigPath",
                toml_str(&home.join("kvConfig.json").display().to_string()),
            ),
            (
                "configStorePath",
                toml_str(&home.join("namesrv.properties").display().to_string()),
            ),
            ("listenPort", listen_port.to_string()),
            ("bindAddress", toml_str(LOOPBACK)),
        ],
    );
    out
}

/// Command line of the name server.
pub fn namesrv_args(config: &Path, log_filter: &str) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--log-filter".into(),
        log_filter.into(),
    ]
}

/// What a broker needs to know to render its config.
#[derive(Debug, Clone)]
pub struct BrokerPlan<'a> {
    pub cluster_name: &'a str,
    pub broker_name: &'a str,
    pub listen_port: u16,
    pub ha_listen_port: u16,
    pub namesrv_addr: &'a str,
    pub store_root: &'a Path,
    /// Extra or replaced `[broker]` keys: (camelCase key, TOML value literal).
    pub broker_overrides: &'a [(String, String)],
    /// Extra or replaced `[store]` keys: (camelCase key, TOML value literal).
    pub store_overrides: &'a [(String, String)],
}

/// Broker config in the canonical TOML schema of rocketmq-broker 1.0.0
/// (`[broker]`, `[broker.brokerServerConfig]`, `[broker.brokerIdentity]`,
/// `[store]`; unknown keys are rejected at startup).
pub fn broker_toml(plan: &BrokerPlan<'_>) -> Result<String, DevClusterError> {
    let store_root = plan.store_root.display().to_string();
    let commit_log = plan.store_root.join("commitlog").display().to_string();
    let mut broker = vec![
        ("brokerIp1".to_string(), toml_str(LOOPBACK)),
        ("brokerIp2".to_string(), toml_str(LOOPBACK)),
        ("listenPort".to_string(), plan.listen_port.to_string()),
        ("namesrvAddr".to_string(), toml_str(plan.namesrv_addr)),
        ("storePathRootDir".to_string(), toml_str(&store_root)),
        ("autoCreateTopicEnable".to_string(), "true".to_string()),
        ("enablePropertyFilter".to_string(), "true".to_string()),
        ("registerNameServerPeriod".to_string(), "10000".to_string()),
    ];
    let mut store = vec![
        ("brokerRole".to_string(), toml_str("ASYNC_MASTER")),
        ("flushDiskType".to_string(), toml_str("ASYNC_FLUSH")),
        ("haListenAddress".to_string(), toml_str(LOOPBACK)),
        ("haListenPort".to_string(), plan.ha_listen_port.to_string()),
        ("storePathRootDir".to_string(), toml_str(&store_root)),
        ("storePathCommitLog".to_string(), toml_str(&commit_log)),
        (
            "mappedFileSizeCommitLog".to_string(),
            TEST_COMMIT_LOG_FILE_SIZE.to_string(),
        ),
    ];
    apply_overrides(&mut broker, plan.broker_overrides, "broker")?;
    apply_overrides(&mut store, plan.store_overrides, "store")?;

    let mut out = String::from(HEADER);
    out.push_str("[broker]\n");
    push_owned(&mut out, &broker);
    out.push_str("\n[broker.brokerServerConfig]\n");
    push_entries(&mut out, &[("bindAddress", toml_str(LOOPBACK))]);
    out.push_str("\n[broker.brokerIdentity]\n");
    push_entries(
        &mut out,
        &[
            ("brokerClusterName", toml_str(plan.cluster_name)),
            ("brokerName", toml_str(plan.broker_name)),
            ("brokerId", "0".to_string()),
        ],
    );
    out.push_str("\n[store]\n");
    push_owned(&mut out, &store);
    Ok(out)
}

/// Command line of the broker. The name server comes from the config file
/// (`-n` and `$NAMESRV_ADDR` would override it; the environment is cleared).
pub fn broker_args(config: &Path, log_filter: &str) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--log-filter".into(),
        log_filter.into(),
    ]
}

/// Proxy config (TOML, read with `-c`). The proxy must know the broker's
/// cluster: its startup dependency check (and its metadata reads) look for a
/// broker of that cluster and the proxy exits otherwise. rocketmq-proxy 1.0.0
/// takes it from `auth.clusterName` (default `DefaultCluster`), which
/// silently overrides `cluster.brokerClusterName`; both are set.
pub fn proxy_toml(home: &Path, grpc_port: u16, namesrv_addr: &str, cluster_name: &str) -> String {
    let mut out = String::from(HEADER);
    push_entries(&mut out, &[("mode", toml_str("cluster"))]);
    out.push_str("\n[grpc]\n");
    push_entries(
        &mut out,
        &[("listenAddr", toml_str(&format!("{LOOPBACK}:{grpc_port}")))],
    );
    out.push_str("\n[cluster]\n");
    push_entries(
        &mut out,
        &[
            ("namesrvAddr", toml_str(namesrv_addr)),
            ("brokerClusterName", toml_str(cluster_name)),
        ],
    );
    out.push_str("\n[auth]\n");
    push_entries(
        &mut out,
        &[
            ("clusterName", toml_str(cluster_name)),
            (
                "authConfigPath",
                toml_str(&home.join("auth").display().to_string()),
            ),
        ],
    );
    out
}

/// Command line of the proxy: cluster mode in front of the 5.x name server,
/// gRPC on loopback, its own Remoting listener left disabled (the default).
/// Mode, gRPC address and name server repeat the config file so that `ps`
/// shows them.
pub fn proxy_args(
    config: &Path,
    grpc_port: u16,
    namesrv_addr: &str,
    log_filter: &str,
) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--mode".into(),
        "cluster".into(),
        "--grpcListenAddr".into(),
        format!("{LOOPBACK}:{grpc_port}"),
        "--namesrvAddr".into(),
        namesrv_addr.into(),
        "--log-filter".into(),
        log_filter.into(),
    ]
}

const HEADER: &str =
    "# Generated by rmq-bridge devcluster (src/dev/cluster); docs/peers.md explains every key.\n";

fn push_entries(out: &mut String, entries: &[(&str, String)]) {
    for (key, value) in entries {
        out.push_str(key);
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
}

fn push_owned(out: &mut String, entries: &[(String, String)]) {
    for (key, value) in entries {
        out.push_str(key);
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
}

fn apply_overrides(
    entries: &mut Vec<(String, String)>,
    overrides: &[(String, String)],
    section: &str,
) -> Result<(), DevClusterError> {
    for (key, value) in overrides {
        let key_ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let value_ok = !value.trim().is_empty() && !value.contains('\n') && !value.contains('\r');
        if !key_ok || !value_ok {
            return Err(DevClusterError::InvalidOption(format!(
                "broker override `{key} = {value}` for [{section}]: the key must be a plain camelCase \
                 name and the value a one-line TOML literal (for example `true`, `64`, `\"04\"`)"
            )));
        }
        match entries.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1.clone_from(value),
            None => entries.push((key.clone(), value.clone())),
        }
    }
    Ok(())
}

/// A TOML basic string.
pub fn toml_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn plan<'a>(
        root: &'a Path,
        broker: &'a [(String, String)],
        store: &'a [(String, String)],
    ) -> BrokerPlan<'a> {
        BrokerPlan {
            cluster_name: "src-cluster",
            broker_name: "src-broker-a",
            listen_port: 20911,
            ha_listen_port: 20912,
            namesrv_addr: "127.0.0.1:19876",
            store_root: root,
            broker_overrides: broker,
            store_overrides: store,
        }
    }

    #[test]
    fn broker_config_pins_loopback_identity_and_ports() {
        let root = PathBuf::from("/tmp/x/broker/store");
        let text = broker_toml(&plan(&root, &[], &[])).unwrap();
        for line in [
            "brokerIp1 = \"127.0.0.1\"",
            "listenPort = 20911",
            "namesrvAddr = \"127.0.0.1:19876\"",
            "haListenPort = 20912",
            "haListenAddress = \"127.0.0.1\"",
            "bindAddress = \"127.0.0.1\"",
            "brokerClusterName = \"src-cluster\"",
            "brokerName = \"src-broker-a\"",
            "brokerId = 0",
            "storePathCommitLog = \"/tmp/x/broker/store/commitlog\"",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        // Sub-tables come after the plain [broker] keys, as TOML requires.
        let broker = text.find("[broker]\n").unwrap();
        let server = text.find("[broker.brokerServerConfig]").unwrap();
        let listen = text.find("listenPort").unwrap();
        assert!(broker < listen && listen < server);
    }

    #[test]
    fn overrides_replace_or_extend_and_reject_garbage() {
        let root = PathBuf::from("/s");
        let store = vec![
            ("fileReservedTime".to_string(), "1".to_string()),
            ("mappedFileSizeCommitLog".to_string(), "1048576".to_string()),
        ];
        let text = broker_toml(&plan(&root, &[], &store)).unwrap();
        assert!(text.contains("fileReservedTime = 1\n"));
        assert!(text.contains("mappedFileSizeCommitLog = 1048576\n"));
        assert_eq!(text.matches("mappedFileSizeCommitLog").count(), 1);

        let bad = vec![("a = 1\nb".to_string(), "2".to_string())];
        assert!(broker_toml(&plan(&root, &bad, &[])).is_err());
        let bad_value = vec![("x".to_string(), "1\n[evil]".to_string())];
        assert!(broker_toml(&plan(&root, &[], &bad_value)).is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn namesrv_config_keeps_state_under_its_home() {
        let text = namesrv_toml(Path::new("/d/namesrv"), 19876);
        assert!(text.contains("kvConfigPath = \"/d/namesrv/kvConfig.json\""));
        assert!(text.contains("configStorePath = \"/d/namesrv/namesrv.properties\""));
        assert!(text.contains("listenPort = 19876"));
        assert!(text.contains("bindAddress = \"127.0.0.1\""));
    }

    /// `scripts/peers.sh` must start the peers with the same keys.
    #[test]
    fn peers_script_uses_the_same_settings() {
        let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.sh");
        let script = std::fs::read_to_string(&script_path).unwrap();
        let root = PathBuf::from("/s");
        let broker = broker_toml(&plan(&root, &[], &[])).unwrap();
        let namesrv = namesrv_toml(Path::new("/n"), 1);
        let proxy = proxy_toml(Path::new("/p"), 1, "x", "c");
        for line in broker.lines().chain(namesrv.lines()).chain(proxy.lines()) {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            assert!(
                script.contains(&format!("{key} = ")),
                "scripts/peers.sh does not set `{key}`"
            );
            // Constant values must match literally.
            let constant = (value.parse::<u64>().is_ok() && !key.contains("Port"))
                || value == "true"
                || value == "false"
                || matches!(
                    value,
                    "\"ASYNC_MASTER\"" | "\"ASYNC_FLUSH\"" | "\"127.0.0.1\"" | "\"cluster\""
                );
            if constant {
                assert!(
                    script.contains(&format!("{key} = {value}")),
                    "scripts/peers.sh sets `{key}` to something other than {value}"
                );
            }
        }
        for flag in proxy_args(Path::new("/p"), 1, "x", "info") {
            if flag.starts_with("--") {
                assert!(
                    script.contains(&flag),
                    "scripts/peers.sh lacks proxy flag {flag}"
                );
            }
        }
        for variable in [
            "ROCKETMQ_HOME",
            "ROCKETMQ_HEALTH_BIND_ADDR",
            "ROCKETMQ_SHUTDOWN_TIMEOUT_SECONDS",
        ] {
            assert!(
                script.contains(variable),
                "scripts/peers.sh lacks {variable}"
            );
        }
    }
}
