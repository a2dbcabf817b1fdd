//! 4.x ACL against the reference: a 4.9.7 broker with `aclEnable=true` and
//! a `plain_acl.yml` refuses unsigned requests, and accepts the bridge's
//! signed ones (AccessKey / SecretKey, HmacSHA1 as Java's `AclClientRPCHook`):
//! a route forwards every message; a wrong secret is refused and named.

use std::path::Path;
use std::time::Duration;

use rmq_bridge::config;
use rmq_bridge::dev::cluster::{ClusterOptions, LocalCluster};
use rmq_bridge::dev::testkit::{self, RouteSpec, Sample};
use rmq_bridge::pipeline::Bridge;
use rmq_bridge::remoting::{AclCredentials, RemotingClient, RemotingClientConfig};

const ACCESS_KEY: &str = "bridgeAK";
const SECRET_KEY: &str = "bridge-secret-12345";
const MESSAGES: usize = 20;

/// One admin account (it may create topics) and nothing else; no address
/// is trusted without a signature.
fn plain_acl_yml() -> String {
    format!(
        "globalWhiteRemoteAddresses: []\n\
         accounts:\n\
         - accessKey: {ACCESS_KEY}\n  \
           secretKey: {SECRET_KEY}\n  \
           whiteRemoteAddress:\n  \
           admin: true\n  \
           defaultTopicPerm: PUB|SUB\n  \
           defaultGroupPerm: PUB|SUB\n"
    )
}

fn client_with(credentials: Option<AclCredentials>) -> RemotingClient {
    RemotingClient::new(RemotingClientConfig {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(3),
        credentials,
        client_id: format!("acl-test@{}", std::process::id()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_pass_an_acl_broker_and_unsigned_ones_do_not() {
    let source = tokio::task::spawn_blocking(|| {
        LocalCluster::start(
            ClusterOptions::new("acl-src")
                .broker_property("aclEnable", "true")
                .broker_conf_file("plain_acl.yml", plain_acl_yml()),
        )
    })
    .await
    .expect("start task")
    .unwrap_or_else(|e| panic!("4.x peers with ACL: {e}"));
    let target = tokio::task::spawn_blocking(|| testkit::start_target_cluster("acl-dst"))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("5.x peers: {e}"));

    let signed = client_with(Some(AclCredentials::new(ACCESS_KEY, SECRET_KEY)));
    let unsigned = client_with(None);
    let wrong = client_with(Some(AclCredentials::new(ACCESS_KEY, "not-the-secret")));

    testkit::create_topic(&signed, &source, "acl_orders", 2, None)
        .await
        .expect("a signed admin request creates the topic");
    let target_admin = testkit::client();
    testkit::create_topic(&target_admin, &target, "acl_orders", 2, Some("NORMAL"))
        .await
        .expect("5.x topic");

    // The broker enforces its ACL: unsigned and wrongly signed sends fail.
    let sample = |i: usize| Sample {
        queue_id: (i % 2) as i32,
        body: format!("acl body {i}").into_bytes(),
        uniq_key: Some(format!("ACL{i:029}")),
        ..Default::default()
    };
    let refused = testkit::produce(&unsigned, &source, "acl_orders", &sample(0))
        .await
        .expect_err("an unsigned send must be refused by an ACL broker");
    eprintln!("unsigned send: {refused:#}");
    let refused = testkit::produce(&wrong, &source, "acl_orders", &sample(0))
        .await
        .expect_err("a send signed with a wrong secret must be refused");
    let text = format!("{refused:#}");
    assert!(
        text.to_lowercase().contains("signature")
            || text.contains("NO_PERMISSION")
            || text.contains("(16)"),
        "the refusal names the signature or permission: {text}"
    );
    for i in 0..MESSAGES {
        testkit::produce(&signed, &source, "acl_orders", &sample(i))
            .await
            .expect("a signed send");
    }

    // The bridge with the credentials from its environment forwards all.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = testkit::render_config(
        &source,
        &target,
        &dir.path().join("checkpoints"),
        "off",
        "",
        &[RouteSpec::new("acl", "acl_orders", "acl_orders", 100)],
    )
    .expect("config");
    let env = vec![
        (
            "RMQ_BRIDGE_SOURCE_ACCESS_KEY".to_string(),
            ACCESS_KEY.to_string(),
        ),
        (
            "RMQ_BRIDGE_SOURCE_SECRET_KEY".to_string(),
            SECRET_KEY.to_string(),
        ),
    ];
    let cfg = config::parse(Path::new("acl.toml"), &text, &env).expect("config parses");
    let mut bridge = Bridge::connect(cfg).await.expect("bridge connects");
    bridge.start_routes();
    let landed = testkit::eventually("every message in 5.x", Duration::from_secs(90), || async {
        let n = testkit::topic_size(&target_admin, &target, "acl_orders")
            .await
            .ok()?;
        (n >= MESSAGES as i64).then_some(n)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    bridge.shutdown().await;
    assert_eq!(landed, MESSAGES as i64);
    let ids: std::collections::BTreeSet<String> =
        testkit::read_back(&target_admin, &target, "acl_orders")
            .await
            .expect("read 5.x")
            .iter()
            .map(|r| r.message_id().to_string())
            .collect();
    let sent: std::collections::BTreeSet<String> =
        (0..MESSAGES).filter_map(|i| sample(i).uniq_key).collect();
    assert_eq!(ids, sent, "every message once, ids kept");

    // Without credentials the same bridge cannot read: `check --online`
    // says so instead of starting blind.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rmq-bridge"))
        .args(["check", "--online", "-c"])
        .arg(testkit::write_config(&dir.path().join("bridge.toml"), &text).expect("write"))
        .env_remove("RMQ_BRIDGE_SOURCE_ACCESS_KEY")
        .env_remove("RMQ_BRIDGE_SOURCE_SECRET_KEY")
        .output()
        .expect("run check");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("check --online without credentials:\n{shown}");
    assert!(
        !out.status.success(),
        "check --online passed without credentials:\n{shown}"
    );
}
