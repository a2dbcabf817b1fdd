//! Developer tooling, not part of the daemon's API: compiled only with the
//! `dev` cargo feature (`cargo build --features dev`), which the daemon's
//! release build (`cargo build --release`) leaves off. Tests and benchmarks
//! get it through the crate's dev-dependency on itself (Cargo.toml), so plain
//! `cargo test` / `cargo bench` need no flag.
//!
//! - `cluster`: launches real RocketMQ test peers on loopback.
//! - `testkit`: helpers on top of `cluster` for tests, the demo and benchmarks.
//! - `demo`: the quick start behind `rmq-bridge demo`.

pub mod cluster;
pub mod demo;
pub mod testkit;
