//! Compiles our own `apache.rocketmq.v2` definitions (proto/) with protox, a
//! pure-Rust protobuf compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = "proto/apache/rocketmq/v2/service.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([service], ["proto"])?;
    tonic_prost_build::configure()
        // Message bodies as `bytes::Bytes`: the body pulled from 4.x is
        // handed to the encoder without a copy, and a decoded body is a
        // slice of the received buffer.
        .bytes(".apache.rocketmq.v2.Message.body")
        // User properties as a `BTreeMap`, the bridge's own type: no hash
        // map (and hasher) built per message, and a stable wire order.
        .btree_map(".apache.rocketmq.v2.Message.user_properties")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
