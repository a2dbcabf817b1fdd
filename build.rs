//! Compiles our own `apache.rocketmq.v2` definitions (proto/) with protox, a
//! pure-Rust protobuf compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = "proto/apache/rocketmq/v2/service.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([service], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
