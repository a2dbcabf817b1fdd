//! Developer tooling, not part of the daemon's API: compiled only with the
//! `dev` cargo feature (`cargo build --features dev`), which the daemon's
//! release build (`cargo build --release`) leaves off. Tests and benchmarks
//! get it through the crate's dev-dependency on itself (Cargo.toml), so plain
//! `cargo test` / `cargo bench` need no flag.
//!
//! - `cluster`: launches real RocketMQ test peers on loopback.
//! - `testkit`: helpers on top of `cluster` for tests, the demo and benchmarks.
//! - `demo`: the quick start behind `rmq-bridge demo`.
//! - `blackhole`: a fast 5.x endpoint that counts what it receives, for
//!   benchmarks of the bridge's own ceiling (`examples/blackhole.rs`).
//! - `chaos`: fault injection through the whole bridge (chaos tests, soak).
//! - `machine`: CPU, memory and threads of processes, machine facts, for benchmarks.

pub mod blackhole;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod machine;
pub mod testkit;
