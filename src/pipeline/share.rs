//! Send permits and the memory budget, shared fairly among routes.
//!
//! Owns: "one route never starves the others". The bridge has
//! `pipeline.max_concurrent_sends` permits and `pipeline.max_inflight_mib`
//! of budget for translated messages held in memory. A route that wants
//! them (holds some or waits for one) may hold at most an equal share of
//! each: `total / routes wanting` (at least one permit and one message), so
//! a single busy route gets everything, and a route whose sends all fail
//! cannot take what a healthy route needs.
//! Must not touch: what a permit is used for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::shutdown::Shutdown;

/// The bridge-wide pools.
#[derive(Debug)]
pub struct Shares {
    permits: Arc<Semaphore>,
    permits_total: usize,
    budget: Arc<Semaphore>,
    budget_total_kib: u64,
    /// Routes holding or waiting for a permit or budget.
    wanting: AtomicUsize,
    /// Bumped whenever something is released or a route stops wanting.
    released: watch::Sender<u64>,
}

impl Shares {
    pub fn new(permits: usize, budget_kib: u32) -> Arc<Self> {
        Arc::new(Shares {
            permits: Arc::new(Semaphore::new(permits)),
            permits_total: permits,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_total_kib: budget_kib as u64,
            wanting: AtomicUsize::new(0),
            released: watch::channel(0).0,
        })
    }

    /// A route's handle on the pools.
    pub fn route(self: &Arc<Self>) -> Arc<RouteShare> {
        Arc::new(RouteShare {
            shares: Arc::clone(self),
            permits_held: AtomicUsize::new(0),
            kib_held: AtomicU64::new(0),
            users: AtomicUsize::new(0),
        })
    }

    pub fn budget_total_kib(&self) -> u64 {
        self.budget_total_kib
    }

    fn wanting(&self) -> usize {
        self.wanting.load(Ordering::Acquire).max(1)
    }

    fn bump(&self) {
        self.released.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// One route's use of the pools.
#[derive(Debug)]
pub struct RouteShare {
    shares: Arc<Shares>,
    permits_held: AtomicUsize,
    kib_held: AtomicU64,
    /// Permits, budget parts and waiters of this route; wanting while > 0.
    users: AtomicUsize,
}

/// One send permit of a route; released on drop.
#[derive(Debug)]
pub struct SendPermit {
    share: Arc<RouteShare>,
    _permit: OwnedSemaphorePermit,
}

/// Budget held for one translated message; released on drop.
#[derive(Debug)]
pub struct Held {
    share: Arc<RouteShare>,
    kib: u64,
    _permit: OwnedSemaphorePermit,
}

/// Counts a waiter as a user while it waits.
struct Waiting<'a>(&'a RouteShare);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.unuse();
    }
}

impl RouteShare {
    fn use_one(&self) {
        if self.users.fetch_add(1, Ordering::AcqRel) == 0 {
            self.shares.wanting.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn unuse(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shares.wanting.fetch_sub(1, Ordering::AcqRel);
        }
        self.shares.bump();
    }

    /// The most permits this route may hold now.
    pub fn permit_cap(&self) -> usize {
        (self.shares.permits_total / self.shares.wanting()).max(1)
    }

    /// The most budget (KiB) this route may hold now.
    pub fn budget_cap_kib(&self) -> u64 {
        self.shares.budget_total_kib / self.shares.wanting() as u64
    }

    pub fn permits_held(&self) -> usize {
        self.permits_held.load(Ordering::Acquire)
    }

    /// Takes `kib` of the budget now, or None (over the route's share or
    /// the pool is empty). A route holding nothing may always take one
    /// message, however large (up to the whole pool).
    pub fn try_budget(self: &Arc<Self>, kib: u32) -> Option<Held> {
        let kib = (kib as u64).min(self.shares.budget_total_kib).max(1);
        let held = self.kib_held.load(Ordering::Acquire);
        if held > 0 && held + kib > self.budget_cap_kib() {
            return None;
        }
        let permit = Arc::clone(&self.shares.budget)
            .try_acquire_many_owned(kib as u32)
            .ok()?;
        self.kib_held.fetch_add(kib, Ordering::AcqRel);
        self.use_one();
        Some(Held {
            share: Arc::clone(self),
            kib,
            _permit: permit,
        })
    }

    /// Something was released since `rx` last looked: a deferred message
    /// may fit now.
    pub fn released(&self) -> watch::Receiver<u64> {
        self.shares.released.subscribe()
    }

    /// Waits for a send permit within the route's share; None when stopping.
    pub async fn send_permit(self: &Arc<Self>, stop: &mut Shutdown) -> Option<SendPermit> {
        if let Some(p) = self.try_send_permit() {
            return Some(p);
        }
        self.use_one();
        let _waiting = Waiting(self);
        let mut released = self.shares.released.subscribe();
        loop {
            if stop.is_stopping() {
                return None;
            }
            if let Some(p) = self.try_send_permit() {
                return Some(p);
            }
            let under_cap = self.permits_held() < self.permit_cap();
            let pool = Arc::clone(&self.shares.permits);
            tokio::select! {
                permit = pool.acquire_owned(), if under_cap => {
                    let Ok(permit) = permit else { return None };
                    return Some(self.wrap(permit));
                }
                changed = released.changed() => {
                    if changed.is_err() { return None; }
                }
                _ = stop.stopped() => return None,
            }
        }
    }

    fn try_send_permit(self: &Arc<Self>) -> Option<SendPermit> {
        if self.permits_held() >= self.permit_cap() {
            return None;
        }
        let permit = Arc::clone(&self.shares.permits).try_acquire_owned().ok()?;
        Some(self.wrap(permit))
    }

    fn wrap(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> SendPermit {
        self.permits_held.fetch_add(1, Ordering::AcqRel);
        self.use_one();
        SendPermit {
            share: Arc::clone(self),
            _permit: permit,
        }
    }
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        self.share.permits_held.fetch_sub(1, Ordering::AcqRel);
        self.share.unuse();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.share.kib_held.fetch_sub(self.kib, Ordering::AcqRel);
        self.share.unuse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_single_route_may_take_everything() {
        let shares = Shares::new(4, 100);
        let a = shares.route();
        let held: Vec<Held> = (0..10).filter_map(|_| a.try_budget(10)).collect();
        assert_eq!(held.len(), 10);
        assert!(a.try_budget(1).is_none(), "the pool is empty");
    }

    #[test]
    fn a_route_holding_budget_cannot_take_the_others_share() {
        let shares = Shares::new(4, 100);
        let broken = shares.route();
        let healthy = shares.route();
        let first = healthy.try_budget(10).expect("healthy takes one");
        // Two routes want: the broken one stops at half of the pool.
        let held: Vec<Held> = (0..10).filter_map(|_| broken.try_budget(10)).collect();
        assert_eq!(held.len(), 5);
        drop(first);
        let more: Vec<Held> = (0..5).filter_map(|_| healthy.try_budget(10)).collect();
        assert_eq!(more.len(), 5, "the healthy route still gets its half");
    }

    #[tokio::test]
    async fn permits_are_shared_between_wanting_routes() {
        let shares = Shares::new(4, 100);
        let (_tx, mut stop) = Shutdown::channel();
        let broken = shares.route();
        let healthy = shares.route();
        // The healthy route waits for a permit: both want now.
        let _h0 = healthy.send_permit(&mut stop).await.expect("permit");
        let mut b = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(50), broken.send_permit(&mut stop))
                .await
            {
                Ok(Some(p)) => b.push(p),
                _ => break,
            }
        }
        assert_eq!(b.len(), 2, "the broken route holds at most its half");
        let h1 = tokio::time::timeout(Duration::from_millis(200), healthy.send_permit(&mut stop))
            .await
            .expect("healthy route gets its share")
            .expect("permit");
        drop(h1);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_a_permit_is_released() {
        let shares = Shares::new(1, 100);
        let (_tx, mut stop) = Shutdown::channel();
        let a = shares.route();
        let first = a.send_permit(&mut stop).await.expect("permit");
        let a2 = Arc::clone(&a);
        let waiter = tokio::spawn(async move {
            let (_tx, mut stop) = Shutdown::channel();
            a2.send_permit(&mut stop).await.is_some()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .expect("join");
        assert!(got);
    }
}
