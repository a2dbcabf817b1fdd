//! Several instances, one estate (issue 18): one route's share of the
//! queues when `[instances] coordinate = true`. Every instance heartbeats as
//! a member of the bridge's own 4.x consumer group (`[source]
//! consumer_group`, pipeline/mod.rs), lists the members, takes the queues
//! `ownership::allocate` gives it, and forwards a queue only while it holds
//! the broker's lock on it (LOCK_BATCH_MQ), renewed at every rebalance. The
//! send layer asks the queue's [`Fence`] before each attempt; positions
//! are shared as committed offsets of each route's own group
//! (positions.rs), written only while the fence is open, so a former owner
//! never moves a position another instance has taken over.
//!
//! The route runner (route.rs) owns the queue tasks and decides when to
//! start and stop them; this file owns the leases and speaks to the brokers.
//!
//! Must not touch: the queue workers, the window, the checkpoint store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::SourceQueue;
use crate::remoting::LockQueue;
use crate::source::TopicSource;

use super::ownership::{allocate, Fence, Lease};
use super::positions::PositionHome;

/// What every route of a coordinating instance shares: who it is, its
/// group, and a counter the membership listener bumps when a broker says
/// the group's members changed (NOTIFY_CONSUMER_IDS_CHANGED).
#[derive(Debug)]
pub struct Coordination {
    pub client_id: String,
    pub group: String,
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The estate's shared records (crate::estate): flushed before any
    /// position is written to the group, so that a successor starting from
    /// it finds every quarantine, journal and start record below it.
    pub estate: Option<Arc<crate::estate::Outbox>>,
    /// The state topic as it is now (what other instances shared since
    /// this one started): the schedule side's positions and forwarded ids.
    pub live: Option<Arc<crate::estate::LiveView>>,
    /// Which of this instance's routes hold each locked queue (topic,
    /// queue): one lock of the group serves every route of the instance
    /// that reads the queue (all schedule sides read `SCHEDULE_TOPIC_XXXX`;
    /// two routes may read one topic), so it is unlocked only when the
    /// last of them lets it go.
    holds: std::sync::Mutex<BTreeMap<(String, SourceQueue), std::collections::BTreeSet<String>>>,
    /// Routes that were their topic's only reader when this instance
    /// started (positions::sole_readers): they may read a position the
    /// shared group kept for them before routes had groups of their own.
    sole_readers: std::collections::BTreeSet<String>,
}

impl Coordination {
    pub fn new(
        client_id: String,
        group: String,
        estate: Option<Arc<crate::estate::Outbox>>,
        live: Option<Arc<crate::estate::LiveView>>,
        sole_readers: std::collections::BTreeSet<String>,
    ) -> Arc<Self> {
        let (changed, _) = tokio::sync::watch::channel(0);
        Arc::new(Coordination {
            client_id,
            group,
            changed,
            estate,
            live,
            holds: Default::default(),
            sole_readers,
        })
    }

    fn hold(&self, topic: &str, queue: &SourceQueue, route: &str) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds
            .entry((topic.to_string(), queue.clone()))
            .or_default()
            .insert(route.to_string());
    }

    /// `route` lets the lock go; true while another route of this
    /// instance still holds it (the lock must stay).
    fn unhold(&self, topic: &str, queue: &SourceQueue, route: &str) -> bool {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), queue.clone());
        let Some(routes) = holds.get_mut(&key) else {
            return false;
        };
        routes.remove(route);
        let others = !routes.is_empty();
        if !others {
            holds.remove(&key);
        }
        others
    }

    fn held_by_any(&self, topic: &str, queue: &SourceQueue) -> bool {
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(topic.to_string(), queue.clone()))
    }

    /// Whether every estate record written so far is on 5.x (true without
    /// an estate topic). A position may be written to the group only then.
    async fn records_shared(&self, route: &str, queue: &SourceQueue) -> bool {
        let Some(outbox) = &self.estate else {
            return true;
        };
        match outbox.flush().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(route, %queue, error = %e,
                    "estate records are not on 5.x yet: the queue's position is not written to the group (a successor would re-send from the older one)");
                false
            }
        }
    }
}

/// Where a lock lives, for the instance's holds: the same topic name and
/// broker name can be on both clusters (a forward and a reverse route of
/// one topic).
fn lock_scope(cluster: &str, topic: &str) -> String {
    format!("{cluster}/{topic}")
}

/// One held queue.
struct Held {
    /// The topic it was locked under ([`lock_scope`]).
    topic: String,
    lease: Lease,
    fence: Arc<Fence>,
    /// The last offset written to the group for it, and when.
    committed: Option<(i64, Instant)>,
}

/// A held queue's position is written to the group once it moved this far
/// past the last write, or this long after it (whichever comes first):
/// what a successor re-sends after a crash is at most the in-flight window
/// plus `step`, or [`COMMIT_AT_LEAST_EVERY`] of a slow queue's traffic.
pub const COMMIT_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a queue at `offset` is due for a write to the group.
pub fn commit_due(last: Option<(i64, Instant)>, offset: i64, step: i64, now: Instant) -> bool {
    match last {
        None => true,
        Some((at, _)) if at == offset => false,
        Some((at, when)) => {
            offset.abs_diff(at) >= step.max(1) as u64
                || now.saturating_duration_since(when) >= COMMIT_AT_LEAST_EVERY
        }
    }
}

/// A queue newly assigned to this instance is locked only once every
/// rebalance for this long has assigned it here. Member lists are briefly
/// incomplete (a 4.x broker restarted: its lock table is empty and only the
/// members that heartbeated since are listed, for up to one heartbeat
/// interval, 10 s); a member acting on such a list would lock queues whose
/// owners still send under their leases. Queues held are renewed at once.
pub const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// One route's leases.
pub struct RouteOwnership {
    route: String,
    /// The cluster whose brokers hold the locks and positions: "4.x" for
    /// forward routes and schedule sides, "5.x" for reverse routes.
    cluster: &'static str,
    coordination: Arc<Coordination>,
    /// Where the held queues' positions are shared.
    home: PositionHome,
    held: BTreeMap<SourceQueue, Held>,
    /// Since when each queue not held has been assigned here without a break.
    assigned_since: BTreeMap<SourceQueue, Instant>,
}

/// Of `assigned`, what to lock at `now`: the queues held (renewals) and the
/// others assigned here for [`SETTLE_FOR`]; and how long until the next
/// waiting one is due. `since` is updated: queues no longer assigned leave it.
pub fn settled(
    since: &mut BTreeMap<SourceQueue, Instant>,
    held: &dyn Fn(&SourceQueue) -> bool,
    assigned: &[SourceQueue],
    now: Instant,
) -> (Vec<SourceQueue>, Option<std::time::Duration>) {
    since.retain(|q, _| assigned.contains(q) && !held(q));
    let mut due = Vec::new();
    let mut next: Option<std::time::Duration> = None;
    for q in assigned {
        if held(q) {
            due.push(q.clone());
            continue;
        }
        let from = *since.entry(q.clone()).or_insert(now);
        let waited = now.saturating_duration_since(from);
        if waited >= SETTLE_FOR {
            due.push(q.clone());
        } else {
            let left = SETTLE_FOR - waited;
            next = Some(next.map_or(left, |n| n.min(left)));
        }
    }
    (due, next)
}

impl RouteOwnership {
    /// A route's topic queues, read on `cluster`: positions in the route's
    /// own group there.
    pub fn new(route: &str, cluster: &'static str, coordination: Arc<Coordination>) -> Self {
        let sole = coordination.sole_readers.contains(route);
        let home = PositionHome::of_route(&coordination.group, route, sole);
        RouteOwnership {
            route: route.to_string(),
            cluster,
            coordination,
            home,
            held: BTreeMap::new(),
            assigned_since: BTreeMap::new(),
        }
    }

    /// The schedule queues of route `route` (its side is named `side`):
    /// positions in the estate state topic. None without the estate topic.
    pub fn schedule_side(side: &str, route: &str, coordination: Arc<Coordination>) -> Option<Self> {
        let home = PositionHome::StateTopic {
            route: route.to_string(),
            outbox: coordination.estate.clone()?,
            live: coordination.live.clone()?,
        };
        Some(RouteOwnership {
            route: side.to_string(),
            cluster: "4.x",
            coordination,
            home,
            held: BTreeMap::new(),
            assigned_since: BTreeMap::new(),
        })
    }

    pub fn home(&self) -> &PositionHome {
        &self.home
    }

    pub fn cluster(&self) -> &'static str {
        self.cluster
    }

    /// Forgets a held queue here and in the instance's holds.
    fn forget(&mut self, queue: &SourceQueue) -> Option<Held> {
        let h = self.held.remove(queue)?;
        self.coordination.unhold(&h.topic, queue, &self.route);
        h.fence.close();
        Some(h)
    }

    /// [`settled`] over this route's leases.
    pub fn to_lock(
        &mut self,
        assigned: &[SourceQueue],
        now: Instant,
    ) -> (Vec<SourceQueue>, Option<std::time::Duration>) {
        let held = &self.held;
        settled(
            &mut self.assigned_since,
            &|q| held.contains_key(q),
            assigned,
            now,
        )
    }

    pub fn client_id(&self) -> &str {
        &self.coordination.client_id
    }

    /// The queues this instance should own among `queues`, from the group's
    /// member list as the topic's first broker (by name) sees it. An error
    /// when that list cannot be read: the caller keeps what it holds.
    pub async fn assigned(
        &self,
        source: &TopicSource,
        queues: &[SourceQueue],
    ) -> Result<Vec<SourceQueue>, String> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let members = group_members(source, queues, &self.coordination.group).await?;
        let mine = allocate(queues, &members, &self.coordination.client_id);
        if !members.contains(&self.coordination.client_id) {
            tracing::warn!(route = %self.route, group = %self.coordination.group, client_id = %self.coordination.client_id,
                members = ?members, "this instance is not (yet) in its group's member list; owning no queue until its heartbeat is seen");
        }
        Ok(mine)
    }

    /// Asks each broker for the locks on `wanted` (taking or renewing them);
    /// returns those held now. A queue held before and not in the answer
    /// is lost: its fence closes at once.
    pub async fn lock(&mut self, source: &TopicSource, wanted: &[SourceQueue]) -> Vec<SourceQueue> {
        let mut by_broker: BTreeMap<&str, Vec<LockQueue>> = BTreeMap::new();
        for q in wanted {
            by_broker
                .entry(q.broker_name.as_str())
                .or_default()
                .push(LockQueue {
                    topic: source.topic().to_string(),
                    broker_name: q.broker_name.clone(),
                    queue_id: q.queue_id,
                });
        }
        let mut granted = Vec::new();
        for (broker, asked) in by_broker {
            let Some(addr) = source.broker_addrs(broker).into_iter().next() else {
                continue;
            };
            let sent_at = Instant::now();
            let answer = source
                .client()
                .lock_queues(
                    &addr,
                    &self.coordination.group,
                    &self.coordination.client_id,
                    &asked,
                )
                .await;
            let locked = match answer {
                Ok(locked) => locked,
                Err(e) => {
                    // Leases run on; they end by themselves if this lasts.
                    tracing::warn!(route = %self.route, broker, error = %e, "cannot take or renew queue locks; retrying at the next rebalance");
                    continue;
                }
            };
            for a in &asked {
                let queue = SourceQueue {
                    broker_name: a.broker_name.clone(),
                    queue_id: a.queue_id,
                };
                if locked.contains(a) {
                    match self.held.get_mut(&queue) {
                        Some(h) => {
                            h.lease.renewed(sent_at);
                            h.fence.extend(&h.lease);
                        }
                        None => {
                            let lease = Lease::granted(sent_at);
                            let fence = Arc::new(Fence::new(&lease));
                            let scope = lock_scope(self.cluster, source.topic());
                            self.coordination.hold(&scope, &queue, &self.route);
                            self.held.insert(
                                queue.clone(),
                                Held {
                                    topic: scope,
                                    lease,
                                    fence,
                                    committed: None,
                                },
                            );
                        }
                    }
                    granted.push(queue);
                } else if self.forget(&queue).is_some() {
                    tracing::error!(route = %self.route, %queue, "the broker gave this queue's lock to another instance; stopped sending for it");
                }
            }
        }
        granted
    }

    /// The fence of a held queue.
    pub fn fence(&self, queue: &SourceQueue) -> Option<Arc<Fence>> {
        self.held.get(queue).map(|h| h.fence.clone())
    }

    /// Held queues whose lease ended without a renewal (broker unreachable,
    /// process paused): forgotten here, their fences closed.
    pub fn take_expired(&mut self, now: Instant) -> Vec<SourceQueue> {
        let expired: Vec<SourceQueue> = self
            .held
            .iter()
            .filter(|(_, h)| !h.lease.valid_at(now))
            .map(|(q, _)| q.clone())
            .collect();
        for q in &expired {
            self.forget(q);
        }
        expired
    }

    /// Stops sending for `queue` and forgets its lease; returns its fence
    /// and when the lease ends (the caller releases the lock with
    /// [`release_lock`] once the position is durable, if still before then).
    pub fn close(&mut self, queue: &SourceQueue) -> Option<(Arc<Fence>, Instant)> {
        let h = self.forget(queue)?;
        Some((h.fence, h.lease.expires_at()))
    }

    pub fn holds(&self, queue: &SourceQueue) -> bool {
        self.held.contains_key(queue)
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Writes `offset` as the group's position of a held queue whose
    /// fence is open, when [`commit_due`] (`step`: see there).
    pub async fn commit(
        &mut self,
        source: &TopicSource,
        queue: &SourceQueue,
        offset: i64,
        step: i64,
    ) {
        let Some(h) = self.held.get_mut(queue) else {
            return;
        };
        let now = Instant::now();
        if !commit_due(h.committed, offset, step, now) || !h.fence.open() {
            return;
        }
        // The flush may take a while: the lease is asked again after it.
        if !self.coordination.records_shared(&self.route, queue).await || !h.fence.open() {
            return;
        }
        match self.home.write(source, queue, offset).await {
            Ok(()) => h.committed = Some((offset, now)),
            Err(e) => {
                tracing::warn!(route = %self.route, %queue, offset, home = ?self.home, error = %e, "cannot write the queue's shared position; retrying")
            }
        }
    }

    pub fn coordination(&self) -> &Arc<Coordination> {
        &self.coordination
    }
}

/// The members of `group` as the first broker (by name) of `queues` lists
/// them: the one list every instance (and `status`) allocates from.
pub async fn group_members(
    source: &TopicSource,
    queues: &[SourceQueue],
    group: &str,
) -> Result<Vec<String>, String> {
    let first = queues
        .iter()
        .map(|q| &q.broker_name)
        .min()
        .ok_or_else(|| "the topic has no queues".to_string())?;
    let addr = source
        .broker_addrs(first)
        .into_iter()
        .next()
        .ok_or_else(|| format!("no address for broker {first}"))?;
    source
        .client()
        .get_consumer_list_by_group(&addr, group)
        .await
        .map_err(|e| format!("listing the members of group `{group}` on {addr}: {e}"))
}

/// The last step of releasing a queue whose tasks have stopped and whose
/// position is durable: writes `offset` to the group, reads it back (a
/// broker answers success and writes nothing while a server-side reset is
/// pending), then unlocks. A position that did not take is logged; the
/// next owner then starts lower and re-sends (duplicates, never a gap).
pub async fn release_lock(
    source: &TopicSource,
    cluster: &str,
    coordination: &Coordination,
    home: &PositionHome,
    route: &str,
    queue: &SourceQueue,
    offset: i64,
) {
    let written = if coordination.records_shared(route, queue).await {
        home.write(source, queue, offset).await
    } else {
        Err("estate records not on 5.x yet".to_string())
    };
    match written {
        Ok(()) => {
            home.took(source, queue, offset).await;
        }
        Err(e) => tracing::warn!(route, %queue, offset, error = %e,
            "cannot write the released queue's position; the next owner may re-send from an older offset"),
    }
    // Another route of this instance reading the same queue still holds
    // the lock (its own rebalance releases it, and unlocks if last).
    if coordination.held_by_any(&lock_scope(cluster, source.topic()), queue) {
        tracing::debug!(route, %queue, "the queue's lock stays: another route of this instance still reads it");
        return;
    }
    let Ok(addr) = source.master_addr(queue) else {
        return;
    };
    let unlock = [LockQueue {
        topic: source.topic().to_string(),
        broker_name: queue.broker_name.clone(),
        queue_id: queue.queue_id,
    }];
    if let Err(e) = source
        .client()
        .unlock_queues(&addr, &coordination.group, &coordination.client_id, &unlock)
        .await
    {
        tracing::warn!(route, %queue, error = %e, "cannot unlock the released queue; the broker frees it within 60 s");
    }
}

/// Where a queue this instance takes over starts: the later of its own
/// checkpoint and the group's committed offset (what another instance
/// confirmed). Both are positions below which 5.x confirmed everything.
pub fn takeover_offset(local: Option<i64>, group: Option<i64>) -> Option<i64> {
    match (local, group) {
        (Some(l), Some(g)) => Some(l.max(g)),
        (l, g) => l.or(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_never_goes_back_past_what_another_instance_confirmed() {
        // Another instance moved the queue to 900 while this one's own
        // checkpoint stayed at 400 from when it owned it before.
        assert_eq!(takeover_offset(Some(400), Some(900)), Some(900));
        // This instance confirmed up to 950 but its last commit to the group
        // said 900: its own checkpoint is confirmed by 5.x too.
        assert_eq!(takeover_offset(Some(950), Some(900)), Some(950));
        // A replacement without its state directory starts from the group.
        assert_eq!(takeover_offset(None, Some(900)), Some(900));
        assert_eq!(takeover_offset(Some(10), None), Some(10));
        // Neither: the route's start rules decide.
        assert_eq!(takeover_offset(None, None), None);
    }

    fn q(id: i32) -> SourceQueue {
        SourceQueue {
            broker_name: "broker-a".into(),
            queue_id: id,
        }
    }

    #[test]
    fn a_new_assignment_is_locked_only_once_it_held_for_the_settle_time() {
        let t0 = Instant::now();
        let mut since = BTreeMap::new();
        let held = |x: &SourceQueue| x.queue_id == 0;
        // q0 held: renewed at once; q1, q2 newly assigned: they wait.
        let (due, next) = settled(&mut since, &held, &[q(0), q(1), q(2)], t0);
        assert_eq!(due, vec![q(0)]);
        assert_eq!(next, Some(SETTLE_FOR));
        // A moment later an incomplete member list assigned q1 only...
        let t1 = t0 + std::time::Duration::from_secs(5);
        let (due, _) = settled(&mut since, &held, &[q(0), q(1)], t1);
        assert_eq!(due, vec![q(0)]);
        // ...and q2 again: its wait starts over, q1's goes on.
        let t2 = t0 + SETTLE_FOR;
        let (due, next) = settled(&mut since, &held, &[q(0), q(1), q(2)], t2);
        assert_eq!(due, vec![q(0), q(1)]);
        assert_eq!(next, Some(SETTLE_FOR));
        let (due, next) = settled(&mut since, &held, &[q(0), q(1), q(2)], t2 + SETTLE_FOR);
        assert_eq!(due, vec![q(0), q(1), q(2)]);
        assert_eq!(next, None);
    }

    #[test]
    fn a_lock_several_routes_hold_stays_until_the_last_lets_it_go() {
        let c = Coordination::new("me".into(), "g".into(), None, None, Default::default());
        let topic = "SCHEDULE_TOPIC_XXXX";
        c.hold(topic, &q(1), "a#scheduled");
        c.hold(topic, &q(1), "b#scheduled");
        c.hold(topic, &q(2), "a#scheduled");
        assert!(c.unhold(topic, &q(1), "a#scheduled"), "b still holds q1");
        assert!(c.held_by_any(topic, &q(1)));
        assert!(!c.unhold(topic, &q(1), "b#scheduled"), "the last one");
        assert!(!c.held_by_any(topic, &q(1)));
        assert!(c.held_by_any(topic, &q(2)));
        // Another topic's queue of the same id is another lock.
        assert!(!c.held_by_any("orders", &q(2)));
    }

    #[test]
    fn positions_reach_the_group_within_a_step_or_a_few_seconds() {
        let t0 = Instant::now();
        assert!(commit_due(None, 0, 16, t0), "the start is written at once");
        assert!(!commit_due(
            Some((100, t0)),
            100,
            16,
            t0 + COMMIT_AT_LEAST_EVERY * 2
        ));
        assert!(!commit_due(Some((100, t0)), 115, 16, t0));
        assert!(commit_due(Some((100, t0)), 116, 16, t0));
        assert!(commit_due(
            Some((100, t0)),
            101,
            16,
            t0 + COMMIT_AT_LEAST_EVERY
        ));
        // A queue reset below its position is written too.
        assert!(commit_due(Some((100, t0)), 10, 16, t0));
    }
}
