//! The exact configuration every peer runs with, as pure functions from ports
//! and paths to config text and JVM command lines. `scripts/peers.sh` writes
//! the same files (a test below keeps the two in step); `docs/peers.md` says
//! why each key is there.

use std::path::Path;

use super::runtime::PeerLine;
use super::{DevClusterError, Peer};

/// Every peer is reached on loopback (the Java servers bind every address;
/// their ports are chosen free on 127.0.0.1 and only 127.0.0.1 is registered).
pub const LOOPBACK: &str = "127.0.0.1";

/// Commit log segment size for test brokers: 64 MiB instead of the 1 GiB
/// default, so many brokers in parallel tests stay light and retention tests
/// can roll segments quickly.
pub const TEST_COMMIT_LOG_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Seconds a peer gets after SIGTERM before the launcher SIGKILLs it (the
/// Java servers' shutdown hooks flush and unregister within a few seconds).
pub const PEER_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// The line a server's stdout prints once it serves (readiness).
pub fn ready_marker(peer: Peer) -> &'static str {
    match peer {
        // "The Name Server boot success. serializeType=JSON"
        Peer::NameServer => "The Name Server boot success",
        // "The broker[<name>, <ip:port>] boot success. serializeType=JSON ..."
        Peer::Broker | Peer::BrokerB => "boot success",
        // "<date> rocketmq-proxy startup successfully"
        Peer::Proxy => "rocketmq-proxy startup successfully",
    }
}

/// The main class of `peer`'s JVM.
fn main_class(peer: Peer) -> &'static str {
    match peer {
        Peer::NameServer => "org.apache.rocketmq.namesrv.NamesrvStartup",
        Peer::Broker | Peer::BrokerB => "org.apache.rocketmq.broker.BrokerStartup",
        Peer::Proxy => "org.apache.rocketmq.proxy.ProxyStartup",
    }
}

/// Heap of each JVM: small, fixed, and enough for the tests' traffic.
fn heap(peer: Peer) -> &'static str {
    match peer {
        Peer::NameServer => "-Xmx128m",
        Peer::Broker | Peer::BrokerB => "-Xmx512m",
        Peer::Proxy => "-Xmx256m",
    }
}

/// Name server config (Java properties, read with `-c`).
pub fn namesrv_properties(home: &Path, listen_port: u16) -> String {
    let mut out = String::from(HEADER);
    push(&mut out, "listenPort", &listen_port.to_string());
    push(
        &mut out,
        "kvConfigPath",
        &home.join("kvConfig.json").display().to_string(),
    );
    out
}

/// What a broker needs to know to render its config.
#[derive(Debug, Clone)]
pub struct BrokerPlan<'a> {
    pub line: PeerLine,
    pub cluster_name: &'a str,
    pub broker_name: &'a str,
    /// The broker also listens on `listen_port - 2` (fast channel) and
    /// `listen_port + 1` (HA), whatever the file says.
    pub listen_port: u16,
    pub namesrv_addr: &'a str,
    pub store_root: &'a Path,
    /// Extra or replaced keys: (camelCase key, plain value).
    pub overrides: &'a [(String, String)],
}

/// Broker config (Java properties, read with `-c`; unknown keys are
/// silently ignored by the Java broker, so every key here is one it reads).
pub fn broker_properties(plan: &BrokerPlan<'_>) -> Result<String, DevClusterError> {
    let store_root = plan.store_root.display().to_string();
    let commit_log = plan.store_root.join("commitlog").display().to_string();
    let mut entries: Vec<(String, String)> = [
        ("brokerClusterName", plan.cluster_name.to_string()),
        ("brokerName", plan.broker_name.to_string()),
        ("brokerId", "0".to_string()),
        ("brokerIP1", LOOPBACK.to_string()),
        ("brokerIP2", LOOPBACK.to_string()),
        ("listenPort", plan.listen_port.to_string()),
        ("haListenPort", (plan.listen_port + 1).to_string()),
        ("namesrvAddr", plan.namesrv_addr.to_string()),
        ("storePathRootDir", store_root),
        ("storePathCommitLog", commit_log),
        (
            "mappedFileSizeCommitLog",
            TEST_COMMIT_LOG_FILE_SIZE.to_string(),
        ),
        // The index file is ~420 MB of sparse mmap by default.
        ("maxHashSlotNum", "50000".to_string()),
        ("maxIndexNum", "200000".to_string()),
        ("brokerRole", "ASYNC_MASTER".to_string()),
        ("flushDiskType", "ASYNC_FLUSH".to_string()),
        ("autoCreateTopicEnable", "true".to_string()),
        ("autoCreateSubscriptionGroup", "true".to_string()),
        ("enablePropertyFilter", "true".to_string()),
        ("registerNameServerPeriod", "10000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if plan.line == PeerLine::V5 {
        // Timers (DELAY messages with a delivery time) and pop depend on it.
        entries.push(("timerWheelEnable".to_string(), "true".to_string()));
    }
    apply_overrides(&mut entries, plan.overrides)?;
    let mut out = String::from(HEADER);
    for (key, value) in &entries {
        push(&mut out, key, value);
    }
    Ok(out)
}

/// The 5.x proxy's config (`-pc rmq-proxy.json`), cluster mode. The caches
/// refresh every second: by default the proxy remembers a topic's absence
/// (and a group's settings) for up to 20 s, which a test creating topics
/// would wait out.
pub fn proxy_json(
    grpc_port: u16,
    remoting_port: u16,
    namesrv_addr: &str,
    cluster_name: &str,
) -> String {
    format!(
        "{{\n  \"rocketMQClusterName\": \"{cluster_name}\",\n  \"namesrvAddr\": \"{namesrv_addr}\",\n  \
         \"grpcServerPort\": {grpc_port},\n  \"remotingListenPort\": {remoting_port},\n  \
         \"topicRouteServiceCacheRefreshSeconds\": 1,\n  \"topicConfigCacheRefreshSeconds\": 1,\n  \
         \"subscriptionGroupConfigCacheRefreshSeconds\": 1,\n  \"userCacheRefreshSeconds\": 1,\n  \
         \"metricCollectorMode\": \"off\"\n}}\n"
    )
}

/// JVM flags needed by 4.9.x on JDK 17: without them every shutdown throws in
/// `MappedFile.clean`, leaves the abort file, and the next start runs
/// abnormal recovery.
pub const V4_JDK17_FLAGS: [&str; 3] = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
];

/// The whole command line after `java`: JVM flags, classpath, main class and
/// the server's own arguments. `home` is the server's working directory,
/// `rocketmq.home.dir` and `user.home` (its logs go to `home/logs`).
pub fn jvm_args(
    line: PeerLine,
    peer: Peer,
    home: &Path,
    classpath: &str,
    config: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        heap(peer).into(),
        "-XX:+UseSerialGC".into(),
        "-XX:-UsePerfData".into(),
        "-Xss512k".into(),
        format!("-Drocketmq.home.dir={}", home.display()),
        format!("-Duser.home={}", home.display()),
        "-Dfile.encoding=UTF-8".into(),
    ];
    match line {
        PeerLine::V4 => args.extend(V4_JDK17_FLAGS.iter().map(|f| f.to_string())),
        PeerLine::V5 => {
            args.push("--add-opens=java.base/java.lang=ALL-UNNAMED".into());
            args.push(format!(
                "-Drmq.logback.configurationFile=rmq.{}.logback.xml",
                peer.file_name()
            ));
        }
    }
    args.push("-cp".into());
    args.push(classpath.into());
    args.push(main_class(peer).into());
    match peer {
        Peer::NameServer | Peer::Broker | Peer::BrokerB => {
            args.push("-c".into());
            args.push(config.display().to_string());
        }
        Peer::Proxy => {
            args.push("-pc".into());
            args.push(config.display().to_string());
            args.push("-pm".into());
            args.push("cluster".into());
        }
    }
    args
}

/// 4.9.x aborts startup without `conf/logback_<role>.xml` under its home:
/// a plain console configuration, so the server's log is its stdout.
pub fn v4_logback_xml() -> &'static str {
    r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by rmq-bridge devcluster: the 4.x server logs to stdout (logs/<peer>.log). -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{yyyy-MM-dd HH:mm:ss.SSS} %-5p [%t] %c{0} - %m%n</pattern></encoder>
  </appender>
  <logger name="RocketmqStore" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"#
}

/// File names 4.9.x looks for under `conf/`.
pub const V4_LOGBACK_FILES: [&str; 3] = [
    "logback_namesrv.xml",
    "logback_broker.xml",
    "logback_tools.xml",
];

const HEADER: &str =
    "# Generated by rmq-bridge devcluster (src/dev/cluster); docs/peers.md explains every key.\n";

fn push(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    out.push('\n');
}

fn apply_overrides(
    entries: &mut Vec<(String, String)>,
    overrides: &[(String, String)],
) -> Result<(), DevClusterError> {
    for (key, value) in overrides {
        let key_ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let value_ok = !value.contains('\n') && !value.contains('\r');
        if !key_ok || !value_ok {
            return Err(DevClusterError::InvalidOption(format!(
                "broker property `{key}={value}`: the key must be a plain camelCase name and the \
                 value one line (for example `true`, `64`, `1s 2s`)"
            )));
        }
        match entries.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1.clone_from(value),
            None => entries.push((key.clone(), value.clone())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn plan<'a>(
        line: PeerLine,
        root: &'a Path,
        overrides: &'a [(String, String)],
    ) -> BrokerPlan<'a> {
        BrokerPlan {
            line,
            cluster_name: "src-cluster",
            broker_name: "src-broker-a",
            listen_port: 20911,
            namesrv_addr: "127.0.0.1:19876",
            store_root: root,
            overrides,
        }
    }

    #[test]
    fn broker_config_pins_loopback_identity_and_ports() {
        let root = PathBuf::from("/tmp/x/broker/store");
        let text = broker_properties(&plan(PeerLine::V4, &root, &[])).unwrap();
        for line in [
            "brokerIP1=127.0.0.1",
            "listenPort=20911",
            "haListenPort=20912",
            "namesrvAddr=127.0.0.1:19876",
            "brokerClusterName=src-cluster",
            "brokerName=src-broker-a",
            "brokerId=0",
            "storePathCommitLog=/tmp/x/broker/store/commitlog",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(!text.contains("timerWheelEnable"));
        let v5 = broker_properties(&plan(PeerLine::V5, &root, &[])).unwrap();
        assert!(v5.contains("timerWheelEnable=true\n"));
    }

    #[test]
    fn overrides_replace_or_extend_and_reject_garbage() {
        let root = PathBuf::from("/s");
        let overrides = vec![
            ("fileReservedTime".to_string(), "1".to_string()),
            ("mappedFileSizeCommitLog".to_string(), "1048576".to_string()),
        ];
        let text = broker_properties(&plan(PeerLine::V4, &root, &overrides)).unwrap();
        assert!(text.contains("fileReservedTime=1\n"));
        assert!(text.contains("mappedFileSizeCommitLog=1048576\n"));
        assert_eq!(text.matches("mappedFileSizeCommitLog").count(), 1);

        let bad = vec![("a=1\nb".to_string(), "2".to_string())];
        assert!(broker_properties(&plan(PeerLine::V4, &root, &bad)).is_err());
        let bad_value = vec![("x".to_string(), "1\nbrokerId=3".to_string())];
        assert!(broker_properties(&plan(PeerLine::V4, &root, &bad_value)).is_err());
    }

    #[test]
    fn jvm_command_lines_per_line() {
        let home = Path::new("/h");
        let v4 = jvm_args(
            PeerLine::V4,
            Peer::Broker,
            home,
            "a.jar",
            Path::new("/h/b.properties"),
        );
        for flag in V4_JDK17_FLAGS {
            assert!(v4.iter().any(|a| a == flag), "{v4:?}");
        }
        assert!(v4.ends_with(&[
            "org.apache.rocketmq.broker.BrokerStartup".to_string(),
            "-c".to_string(),
            "/h/b.properties".to_string()
        ]));
        let proxy = jvm_args(
            PeerLine::V5,
            Peer::Proxy,
            home,
            "a.jar",
            Path::new("/h/p.json"),
        );
        assert!(proxy
            .iter()
            .any(|a| a == "-Drmq.logback.configurationFile=rmq.proxy.logback.xml"));
        assert!(proxy.ends_with(&["-pm".to_string(), "cluster".to_string()]));
    }

    #[test]
    fn namesrv_config_keeps_state_under_its_home() {
        let text = namesrv_properties(Path::new("/d/namesrv"), 19876);
        assert!(text.contains("kvConfigPath=/d/namesrv/kvConfig.json\n"));
        assert!(text.contains("listenPort=19876\n"));
    }

    /// `scripts/peers.sh` must start the peers with the same keys and flags.
    #[test]
    fn peers_script_uses_the_same_settings() {
        let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.sh");
        let script = std::fs::read_to_string(&script_path).unwrap();
        let root = PathBuf::from("/s");
        let broker = broker_properties(&plan(PeerLine::V5, &root, &[])).unwrap();
        for line in broker.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            assert!(
                script.contains(&format!("{key}=")),
                "scripts/peers.sh does not set `{key}`"
            );
            let constant = (value.parse::<u64>().is_ok() && !key.contains("Port"))
                || matches!(
                    value,
                    "true" | "false" | "ASYNC_MASTER" | "ASYNC_FLUSH" | LOOPBACK
                );
            if constant {
                assert!(
                    script.contains(&format!("{key}={value}")),
                    "scripts/peers.sh sets `{key}` to something other than {value}"
                );
            }
        }
        let proxy = proxy_json(1, 2, "x", "c");
        for key in proxy
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        {
            assert!(
                script.contains(&format!("\"{key}\"")),
                "scripts/peers.sh lacks proxy key {key}"
            );
        }
        let flags = jvm_args(
            PeerLine::V4,
            Peer::Broker,
            Path::new("/h"),
            "cp",
            Path::new("/c"),
        )
        .into_iter()
        .chain(jvm_args(
            PeerLine::V5,
            Peer::Proxy,
            Path::new("/h"),
            "cp",
            Path::new("/c"),
        ));
        for flag in flags.filter(|f| f.starts_with("-X") || f.starts_with("--add")) {
            assert!(
                script.contains(&flag),
                "scripts/peers.sh lacks JVM flag {flag}"
            );
        }
    }
}
