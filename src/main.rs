//! `rmq-bridge` command line: run, check, verify, status, quarantine,
//! reset-route, peek, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rmq_bridge::cli;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "rmq-bridge",
    version,
    about = "Bridge Apache RocketMQ 4.x (Remoting) to 5.x (gRPC v2)"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge daemon.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file; --online also checks both clusters and topic types.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        online: bool,
        /// Report what switching 4.x off now would lose: lag, pending
        /// scheduled messages, retries, dead letters, half transactions,
        /// quarantine, live 4.x consumers, the last verify verdict.
        #[arg(long)]
        decommission: bool,
    },
    /// Reconcile what the bridge forwarded with what 5.x holds (needs
    /// `[target] namesrv_addr`); non-zero exit on any missing or damaged message.
    Verify {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Start at this time (RFC 3339) or this long ago (2h) instead of the
        /// route's start position.
        #[arg(long)]
        since: Option<String>,
        /// Keep verifying as new checkpoints land (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// --follow: seconds between passes.
        #[arg(long, default_value_t = 30)]
        interval_secs: u64,
        /// --follow: serve rmq_bridge_verify_* metrics here.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Parent directory of the temporary on-disk index (default: $TMPDIR).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Per route: checkpoints, lag, cutover percent and journal, quarantine count.
    Status {
        #[arg(short, long)]
        config: PathBuf,
        /// Do not contact the 4.x cluster (no lag figures).
        #[arg(long)]
        offline: bool,
    },
    /// Inspect or act on quarantined messages.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Drop a route's checkpoints and source-topic binding (stop the daemon
    /// first): its next start begins at its configured `start` position.
    /// The cutover journal and quarantined messages are kept.
    ResetRoute {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// With `[instances] coordinate = true`: drop this instance's
        /// checkpoints and binding only, knowing that the instances resume
        /// from their group's positions on 4.x (refused without it).
        #[arg(long)]
        local_only: bool,
    },
    /// Print messages of a 4.x topic as JSON lines.
    Peek {
        #[arg(long)]
        namesrv: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// earliest | latest | OFFSET (per queue)
        #[arg(long, default_value = "earliest")]
        from: String,
        /// 4.x tag expression
        #[arg(long, default_value = "*")]
        filter: String,
        /// Keep waiting for new messages until --count is reached.
        #[arg(long)]
        follow: bool,
    },
    /// Consumer groups moving between the clusters.
    Groups {
        #[command(subcommand)]
        action: GroupsAction,
    },
    /// Quick start: local 4.x and 5.x peers, sample traffic, the bridge, progress
    /// (needs a build with `--features dev`).
    Demo {
        /// Messages per message type to produce.
        #[arg(long, default_value_t = 200)]
        messages: usize,
    },
}

#[derive(Subcommand)]
enum GroupsAction {
    /// Translate a group's positions to the other cluster: per queue there,
    /// the first message the group has not consumed (0 skipped) and how many
    /// it already consumed would come again; --apply writes them.
    Translate {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        group: String,
        /// The route whose topics the group consumes (needed with several).
        #[arg(long)]
        route: Option<String>,
        /// Where the group moves: "5.x" (default) or "4.x" (a rollback).
        #[arg(long, default_value = "5.x")]
        to: String,
        /// Write the positions to the destination's brokers and read them back.
        #[arg(long)]
        apply: bool,
        /// Apply although the group has (or may have) live consumers.
        #[arg(long)]
        force: bool,
        /// Apply although a position would move backwards.
        #[arg(long)]
        allow_backwards: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    List {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: Option<String>,
    },
    /// Re-send quarantined messages (stop the daemon first).
    Replay {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        offset: Option<i64>,
        /// The message id (`msg_id` in `quarantine list`): picks one of
        /// several messages at one offset (a 4.x queue reset reuses offsets).
        #[arg(long)]
        msg_id: Option<String>,
        /// Replay every match of an --offset that names several messages.
        #[arg(long)]
        all: bool,
    },
    /// Delete quarantined messages (stop the daemon first).
    Drop {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        offset: Option<i64>,
        /// The message id (`msg_id` in `quarantine list`).
        #[arg(long)]
        msg_id: Option<String>,
        /// Required to drop everything matching without --offset or
        /// --msg-id, or every message at an --offset that names several.
        #[arg(long)]
        all: bool,
    },
}

/// The quick start lives in `rmq_bridge::dev`, compiled only with the `dev`
/// feature; the daemon's own build keeps the subcommand to say how to get it.
#[cfg(feature = "dev")]
async fn demo(messages: usize) -> anyhow::Result<()> {
    rmq_bridge::dev::demo::run(messages).await
}

#[cfg(not(feature = "dev"))]
async fn demo(_messages: usize) -> anyhow::Result<()> {
    anyhow::bail!(
        "built without the dev feature: rebuild with --features dev \
         (e.g. `cargo run --release --features dev -- demo`, or scripts/quickstart.sh)"
    )
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Run { config } => cli::run(&config, args.log_json).await,
            Command::Check {
                config,
                online,
                decommission,
            } => {
                cli::init_logging("warn", args.log_json);
                if decommission {
                    cli::check_decommission(&config).await
                } else {
                    cli::check(&config, online).await
                }
            }
            Command::Verify {
                config,
                route,
                since,
                follow,
                json,
                interval_secs,
                metrics_listen,
                work_dir,
            } => {
                cli::init_logging("warn", args.log_json);
                let opts = rmq_bridge::verify::VerifyOptions {
                    route,
                    since,
                    follow,
                    json,
                    interval: std::time::Duration::from_secs(interval_secs.max(1)),
                    metrics_listen,
                    work_dir,
                };
                cli::verify(&config, opts).await
            }
            Command::Groups { action } => {
                cli::init_logging("warn", args.log_json);
                match action {
                    GroupsAction::Translate {
                        config,
                        group,
                        route,
                        to,
                        apply,
                        force,
                        allow_backwards,
                        json,
                    } => {
                        let toward = match to.trim() {
                            "5.x" | "5" | "5x" => rmq_bridge::groups::Toward::FiveX,
                            "4.x" | "4" | "4x" => rmq_bridge::groups::Toward::FourX,
                            other => {
                                eprintln!("--to `{other}`: use \"5.x\" or \"4.x\"");
                                std::process::exit(2);
                            }
                        };
                        let opts = rmq_bridge::groups::GroupOptions {
                            group,
                            route,
                            toward,
                            apply,
                            force,
                            source_may_be_live: false,
                            progress: true,
                            allow_backwards,
                            json,
                        };
                        cli::groups_translate(&config, &opts).await
                    }
                }
            }
            Command::Status { config, offline } => {
                cli::init_logging("warn", args.log_json);
                cli::status(&config, !offline).await
            }
            Command::Quarantine { action } => {
                cli::init_logging("warn", args.log_json);
                match action {
                    QuarantineAction::List { config, route } => {
                        cli::quarantine_list(&config, route.as_deref()).await
                    }
                    QuarantineAction::Replay {
                        config,
                        route,
                        offset,
                        msg_id,
                        all,
                    } => {
                        cli::quarantine_replay(
                            &config,
                            route.as_deref(),
                            offset,
                            msg_id.as_deref(),
                            all,
                        )
                        .await
                    }
                    QuarantineAction::Drop {
                        config,
                        route,
                        offset,
                        msg_id,
                        all,
                    } => {
                        cli::quarantine_drop(
                            &config,
                            route.as_deref(),
                            offset,
                            msg_id.as_deref(),
                            all,
                        )
                        .await
                    }
                }
            }
            Command::ResetRoute {
                config,
                route,
                local_only,
            } => {
                cli::init_logging("warn", args.log_json);
                cli::reset_route(&config, &route, local_only)
            }
            Command::Peek {
                namesrv,
                topic,
                count,
                from,
                filter,
                follow,
            } => {
                cli::init_logging("warn", args.log_json);
                cli::peek(&namesrv, &topic, count, &from, &filter, follow).await
            }
            Command::Demo { messages } => {
                cli::init_logging("info", args.log_json);
                demo(messages).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
