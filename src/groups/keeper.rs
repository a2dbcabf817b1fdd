//! The daemon's kept translations (`routes[].keep_translated`): every
//! [`EVERY`], each listed 4.x group of a forward route is translated and
//! written to 5.x while it has no live 5.x consumers, so it can move at any
//! moment and start exactly where it left 4.x. Its 4.x consumers may still
//! run (their position is what is translated). Once the group has live
//! 5.x consumers it has moved: the keeper leaves it alone (logged once).
//! While messages the group has not consumed on 4.x are not on 5.x
//! (`held_not_forwarded`), nothing is written: a group that moved then
//! would never receive them; the gauge says how many.
//!
//! Owns: the schedule and the metrics; the translation is `groups::run`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{GroupOptions, Toward};
use crate::config::BridgeConfig;
use crate::metrics as m;

/// Between two translations of a group.
pub const EVERY: Duration = Duration::from_secs(30);

pub async fn run(mut config: watch::Receiver<Arc<BridgeConfig>>, mut stop: watch::Receiver<bool>) {
    let mut last_ok: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let mut moved: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut next_pass = Instant::now();
    loop {
        let cfg = config.borrow_and_update().clone();
        if Instant::now() >= next_pass {
            next_pass = Instant::now() + EVERY;
            for route in &cfg.routes {
                for group in &route.keep_translated {
                    let key = (route.name.clone(), group.clone());
                    let opts = GroupOptions {
                        group: group.clone(),
                        route: Some(route.name.clone()),
                        toward: Toward::FiveX,
                        apply: true,
                        force: false,
                        source_may_be_live: true,
                        progress: false,
                        allow_backwards: false,
                        json: None,
                    };
                    match super::run(&cfg, &opts).await {
                        Ok(report) => {
                            last_ok.insert(key.clone(), Instant::now());
                            moved.remove(&key);
                            let labels = [("route", route.name.clone()), ("group", group.clone())];
                            metrics::gauge!(m::GROUP_REDELIVER, &labels)
                                .set(report.redeliver as f64);
                            metrics::gauge!(m::GROUP_HELD, &labels)
                                .set(report.held_not_forwarded as f64);
                            tracing::info!(route = %route.name, group, redeliver = report.redeliver,
                                held = report.held_not_forwarded, "group translated to 5.x");
                        }
                        Err(e) => {
                            let text = format!("{e:#}");
                            let refused = e.downcast_ref::<super::NotApplied>();
                            if let Some(r) = refused {
                                let labels =
                                    [("route", route.name.clone()), ("group", group.clone())];
                                metrics::gauge!(m::GROUP_REDELIVER, &labels)
                                    .set(r.report.redeliver as f64);
                                metrics::gauge!(m::GROUP_HELD, &labels)
                                    .set(r.report.held_not_forwarded as f64);
                            }
                            if refused.is_some_and(super::NotApplied::moved) {
                                if moved.insert(key.clone(), true).is_none() {
                                    tracing::info!(route = %route.name, group,
                                        "group has live consumers on 5.x: it moved, no longer translated");
                                }
                            } else {
                                tracing::warn!(route = %route.name, group, error = %text,
                                    "cannot translate group to 5.x; retrying in 30 s");
                            }
                        }
                    }
                }
            }
        }
        for ((route, group), at) in &last_ok {
            metrics::gauge!(m::GROUP_TRANSLATION_AGE_SECONDS, "route" => route.clone(), "group" => group.clone())
                .set(at.elapsed().as_secs_f64());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}
