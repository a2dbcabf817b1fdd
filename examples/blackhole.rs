//! A blackhole 5.x endpoint (`rmq_bridge::dev::blackhole`) as a process, for
//! benchmarking a bridge or any 5.x producer by hand:
//!
//!     cargo run --release --example blackhole -- \
//!         --listen 127.0.0.1:8081 --topic orders=NORMAL --topic seq=FIFO
//!
//! then point `[target] endpoint` at it. Every `--report-secs` it prints,
//! per topic, what arrived (messages, distinct ids, duplicates, FIFO order).

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use rmq_bridge::dev::blackhole::{Blackhole, BlackholeConfig, DEFAULT_MAX_BODY_SIZE};
use rmq_bridge::grpc::TopicMessageType;

#[derive(Parser)]
#[command(about = "A 5.x gRPC v2 endpoint that accepts and counts, storing nothing")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// A topic and the types it accepts: NAME=NORMAL|FIFO|DELAY|TRANSACTION
    /// (several joined by `+` for a mixed topic). Repeat for more topics.
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// Queues per topic in routes.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// Fixed service time of every send, in microseconds.
    #[arg(long, default_value_t = 0)]
    service_time_us: u64,
    /// Largest body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_SIZE)]
    max_body_size: usize,
    /// Seconds between reports (0: none).
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
}

fn parse_type(s: &str) -> anyhow::Result<TopicMessageType> {
    Ok(match s.trim().to_ascii_uppercase().as_str() {
        "NORMAL" => TopicMessageType::Normal,
        "FIFO" => TopicMessageType::Fifo,
        "DELAY" => TopicMessageType::Delay,
        "TRANSACTION" => TopicMessageType::Transaction,
        other => return Err(anyhow!("unknown message type `{other}`")),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bh = Blackhole::new(BlackholeConfig {
        queues: args.queues,
        service_time: Duration::from_micros(args.service_time_us),
        max_body_size: args.max_body_size,
    });
    let mut names = Vec::new();
    for t in &args.topics {
        let (name, types) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("--topic `{t}`: expected NAME=TYPE"))?;
        let types = types
            .split('+')
            .map(parse_type)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("--topic `{t}`"))?;
        bh.add_topic(name, &types);
        names.push(name.to_owned());
    }
    let addr = bh
        .start(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("blackhole serving apache.rocketmq.v2.MessagingService on {addr}");
    if args.report_secs == 0 {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(args.report_secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        for name in &names {
            println!("{name}: {}", bh.tally(name));
        }
    }
    for name in &names {
        println!("final {name}: {}", bh.tally(name));
    }
    Ok(())
}
