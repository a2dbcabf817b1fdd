//! The scenarios of issue 16 items 2 and 3, as sequences of the two paths'
//! calls on one real store (the peer tests in tests/scheduled_peers.rs run
//! the same paths against a real 4.x schedule topic).

use super::*;
use crate::translate::test_support::RecordBuilder;

const HOUR_MS: i64 = 3_600_000;

fn store(dir: &std::path::Path) -> CheckpointStore {
    CheckpointStore::open(dir, true).expect("open store")
}

fn schedule_queue() -> SourceQueue {
    SourceQueue {
        broker_name: "broker-a".into(),
        queue_id: 3,
    }
}

fn topic_queue() -> SourceQueue {
    SourceQueue {
        broker_name: "broker-a".into(),
        queue_id: 1,
    }
}

/// The broker's copy in the real topic of the pending message `id`.
fn copy(id: &str, offset: i64) -> MessageRecord {
    RecordBuilder::new()
        .uniq_key(id)
        .prop("REAL_TOPIC", "orders")
        .prop("REAL_QID", "1")
        .queue_id(1)
        .queue_offset(offset)
        .build()
}

/// The schedule side admitted the record at `offset` and its send starts.
async fn claim(ledger: &ScheduleLedger, id: &str, offset: i64, deadline_ms: i64) -> Claim {
    let (_tx, mut stop) = Shutdown::channel();
    let key = forward_key(&copy(id, 0));
    ledger.admitted(&schedule_queue(), offset, key, deadline_ms);
    ledger.claim(&schedule_queue(), offset, &mut stop).await
}

async fn confirm(ledger: &ScheduleLedger, key: &str) {
    let (_tx, mut stop) = Shutdown::channel();
    assert!(ledger.confirm(key, &mut stop).await);
}

fn key(id: &str) -> String {
    forward_key(&copy(id, 0))
}

/// Prunes with the given durable checkpoints of the schedule queue and the
/// topic queue, as the route's housekeeping does.
fn prune_with(
    s: &CheckpointStore,
    schedule_cp: Option<i64>,
    topic_cp: Option<i64>,
    watermark: i64,
) {
    let side = schedule_side_name("r");
    if let Some(cp) = schedule_cp {
        s.advance(&[(side, schedule_queue(), cp)]).expect("cp");
    }
    if let Some(cp) = topic_cp {
        s.advance(&[("r".to_string(), topic_queue(), cp)])
            .expect("cp");
    }
    prune_now(s, "r", Some(watermark), watermark).expect("prune");
}

#[tokio::test]
async fn a_failed_early_send_is_not_lost_through_the_copy_a_prune_and_a_restart() {
    // Item 2: the early send keeps failing, the broker delivers the copy at
    // the deadline, time passes, the daemon restarts.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let now = now_ms();
    let deadline = now + HOUR_MS;
    let ledger = ScheduleLedger::new(s.clone(), "r");
    assert_eq!(
        claim(&ledger, "A", 7, deadline).await,
        Claim::Send(key("A"))
    );
    // No confirmation: every send failed. The copy arrives.
    assert!(
        !ledger.copy_delivered(&topic_queue(), &copy("A", 40)),
        "an unconfirmed message's copy must be forwarded by the topic path"
    );
    assert!(
        ledger.released(&key("A")),
        "the schedule side must stop sending once the copy is forwarded"
    );
    // The old rule forgot ids 5 minutes past the deadline; the schedule
    // checkpoint is not past the record (its send never settled).
    prune_with(&s, Some(7), Some(41), deadline + 10 * 60_000);
    assert!(
        s.scheduled_entry("r", &key("A")).expect("read").is_some(),
        "an entry whose record the schedule side has not passed must stay"
    );
    drop(ledger);
    // Restart: the schedule side reads its record again.
    let ledger = ScheduleLedger::new(s.clone(), "r");
    assert!(!ledger.needs_send(&key("A")), "the topic path forwarded it");
    // Met again by a topic path that restarted before its checkpoint
    // passed the copy: forwarded again (same id), never skipped.
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("A", 40)));
}

#[tokio::test]
async fn only_a_confirmed_send_lets_the_topic_path_skip_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let ledger = ScheduleLedger::new(s.clone(), "r");
    let deadline = now_ms() + HOUR_MS;
    assert_eq!(
        claim(&ledger, "A", 7, deadline).await,
        Claim::Send(key("A"))
    );
    confirm(&ledger, &key("A")).await;
    assert_eq!(
        s.scheduled_entry("r", &key("A"))
            .expect("read")
            .map(|e| e.state),
        Some(ForwardState::Confirmed)
    );
    assert!(ledger.copy_delivered(&topic_queue(), &copy("A", 40)));
    assert_eq!(
        s.scheduled_entry("r", &key("A"))
            .expect("read")
            .and_then(|e| e.copy),
        Some((topic_queue(), 40)),
        "where the copy was met is noted, for the prune"
    );
    // A record that never went through the schedule topic is never skipped.
    let plain = RecordBuilder::new().uniq_key("A").build();
    assert!(!ledger.copy_delivered(&topic_queue(), &plain));
    // Unknown ids: forwarded.
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("B", 41)));
}

#[tokio::test]
async fn a_confirmation_after_the_copy_was_taken_does_not_turn_it_into_a_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let ledger = ScheduleLedger::new(s.clone(), "r");
    let deadline = now_ms() + HOUR_MS;
    assert_eq!(
        claim(&ledger, "A", 7, deadline).await,
        Claim::Send(key("A"))
    );
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("A", 40)));
    // The send that was in flight is accepted after all.
    confirm(&ledger, &key("A")).await;
    assert_eq!(
        s.scheduled_entry("r", &key("A"))
            .expect("read")
            .map(|e| e.state),
        Some(ForwardState::Released)
    );
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("A", 40)));
}

#[tokio::test]
async fn a_message_due_when_its_permit_came_is_left_to_the_topic_path_once() {
    // Item 3: admitted pending, waited for a permit until nearly due.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let ledger = ScheduleLedger::new(s.clone(), "r");
    let deadline = now_ms() + 2_000;
    assert_eq!(claim(&ledger, "A", 7, deadline).await, Claim::Settled);
    assert_eq!(s.scheduled_entry("r", &key("A")).expect("read"), None);
    assert!(
        !ledger.copy_delivered(&topic_queue(), &copy("A", 40)),
        "the topic path forwards the copy: sent exactly once"
    );
    // A message never admitted is not the ledger's.
    let (_tx, mut stop) = Shutdown::channel();
    assert_eq!(
        ledger.claim(&schedule_queue(), 8, &mut stop).await,
        Claim::Unclaimed
    );
}

#[tokio::test]
async fn a_claim_from_before_a_restart_is_sent_again_until_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let far = now_ms() + HOUR_MS;
    let ledger = ScheduleLedger::new(s.clone(), "r");
    assert_eq!(claim(&ledger, "A", 7, far).await, Claim::Send(key("A")));
    drop(ledger);
    let ledger = ScheduleLedger::new(s.clone(), "r");
    assert!(ledger.needs_send(&key("A")));
    assert_eq!(claim(&ledger, "A", 7, far).await, Claim::Send(key("A")));
    // Claimed earlier, due by now: the topic path forwards the copy.
    s.scheduled_put(
        "r",
        &key("B"),
        &ForwardEntry::claimed(now_ms() + 1_000, (schedule_queue(), 9)),
    )
    .expect("put");
    assert_eq!(
        claim(&ledger, "B", 9, now_ms() + 1_000).await,
        Claim::Settled
    );
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("B", 42)));
}

#[tokio::test]
async fn switching_to_ignore_leaves_no_skip_of_an_unsent_copy() {
    // A route forwarded early, stalled, and was switched to "ignore": the
    // schedule side is gone; what it claimed but never got confirmed must
    // reach 5.x through the topic path.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let deadline = now_ms() + HOUR_MS;
    let forward = ScheduleLedger::new(s.clone(), "r");
    assert_eq!(
        claim(&forward, "SENT", 1, deadline).await,
        Claim::Send(key("SENT"))
    );
    confirm(&forward, &key("SENT")).await;
    assert_eq!(
        claim(&forward, "STALLED", 2, deadline).await,
        Claim::Send(key("STALLED"))
    );
    drop(forward);
    let ignore = ScheduleLedger::new(s.clone(), "r");
    assert!(ignore.copy_delivered(&topic_queue(), &copy("SENT", 40)));
    assert!(!ignore.copy_delivered(&topic_queue(), &copy("STALLED", 41)));
}

#[tokio::test]
async fn an_unreadable_entry_forwards_the_copy_and_is_never_claimed_as_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let ledger = ScheduleLedger::new(s.clone(), "r");
    s.scheduled_put_raw("r", &key("A"), &[1, 2, 3]);
    assert!(!ledger.copy_delivered(&topic_queue(), &copy("A", 40)));
    assert!(ledger.needs_send(&key("A")));
    // claim retries the read instead of taking it as "not stored": it
    // holds until stopped.
    let (tx, mut stop) = Shutdown::channel();
    ledger.admitted(&schedule_queue(), 7, key("A"), now_ms() + HOUR_MS);
    let sq = schedule_queue();
    let claim = ledger.claim(&sq, 7, &mut stop);
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tx.send(true);
    };
    let (claim, ()) = tokio::join!(claim, stopper);
    assert_eq!(claim, Claim::Stopped);
}

fn confirmed(deadline_ms: i64, copy: Option<i64>) -> ForwardEntry {
    ForwardEntry {
        deadline_ms,
        state: ForwardState::Confirmed,
        record: Some((schedule_queue(), 7)),
        copy: copy.map(|o| (topic_queue(), o)),
    }
}

#[test]
fn a_confirmed_entry_stays_until_both_paths_passed_its_records() {
    let d = 1_000_000_000;
    let wm = Some(d + HOUR_MS);
    let cp = |v: Option<i64>| move |_: &SourceQueue| v;
    // Copy not met yet (a broker delivering late): kept.
    assert!(!prunable(&confirmed(d, None), cp(Some(8)), cp(None), wm));
    // Copy met, topic checkpoint not past it: kept.
    assert!(!prunable(
        &confirmed(d, Some(40)),
        cp(Some(8)),
        cp(Some(40)),
        wm
    ));
    // Schedule checkpoint not past the record: kept.
    assert!(!prunable(
        &confirmed(d, Some(40)),
        cp(Some(7)),
        cp(Some(41)),
        wm
    ));
    // Both passed: gone.
    assert!(prunable(
        &confirmed(d, Some(40)),
        cp(Some(8)),
        cp(Some(41)),
        wm
    ));
    // A copy that never came: forgotten a week past the deadline, not
    // five minutes.
    let stale = STALE_AFTER.as_millis() as i64;
    assert!(!prunable(
        &confirmed(d, None),
        cp(Some(8)),
        cp(None),
        Some(d + stale - 1)
    ));
    assert!(prunable(
        &confirmed(d, None),
        cp(Some(8)),
        cp(None),
        Some(d + stale + 1)
    ));
    // Watermark unknown: nothing by time.
    assert!(!prunable(&confirmed(d, None), cp(Some(8)), cp(None), None));
}

#[test]
fn an_unconfirmed_entry_stays_until_the_schedule_side_passed_its_record() {
    let d = 1_000_000_000;
    let wm = Some(d + HOUR_MS);
    let cp = |v: Option<i64>| move |_: &SourceQueue| v;
    for state in [ForwardState::Claimed, ForwardState::Released] {
        let e = ForwardEntry {
            state,
            ..confirmed(d, Some(40))
        };
        assert!(!prunable(&e, cp(Some(7)), cp(Some(41)), wm), "{state:?}");
        assert!(!prunable(&e, cp(None), cp(Some(41)), wm), "{state:?}");
        assert!(prunable(&e, cp(Some(8)), cp(None), wm), "{state:?}");
    }
    // An older bridge's entry keeps its old rule (it never skips a copy).
    let legacy = ForwardEntry {
        deadline_ms: d,
        state: ForwardState::Claimed,
        record: None,
        copy: None,
    };
    assert!(!prunable(&legacy, cp(None), cp(None), Some(d + 60_000)));
    assert!(prunable(&legacy, cp(None), cp(None), Some(d + 6 * 60_000)));
}

/// The estate state topic between two instances' stores: what each store
/// replicates is folded into one view both ledgers read.
#[derive(Default)]
struct Topic(std::sync::Mutex<crate::checkpoint::shared::SharedView>);

impl crate::checkpoint::shared::Replica for Topic {
    fn enqueue(&self, record: crate::checkpoint::shared::SharedRecord) {
        self.0.lock().expect("view").apply(record, now_ms());
    }
}

impl SharedForwards for Topic {
    fn forwarded(&self, route: &str, key: &str) -> Option<ForwardedShare> {
        self.0
            .lock()
            .expect("view")
            .schedule()
            .get_forwarded(route, key)
    }
}

fn instance(dir: &std::path::Path, topic: &Arc<Topic>) -> ScheduleLedger {
    let s = store(dir);
    assert!(s.set_replica(topic.clone()));
    ScheduleLedger::new(s, "r").with_shared(Some(topic.clone() as Arc<dyn SharedForwards>))
}

#[tokio::test]
async fn instances_sharing_an_estate_skip_copies_the_other_confirmed_and_stop_sends_the_other_took()
{
    let topic = Arc::new(Topic::default());
    let (da, db) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    // a owns the schedule queue, b the topic queue the copies come due in.
    let a = instance(da.path(), &topic);
    let b = instance(db.path(), &topic);
    let deadline = now_ms() + HOUR_MS;

    // 5.x confirmed a's early send: b skips the broker's copy.
    assert_eq!(claim(&a, "M1", 10, deadline).await, Claim::Send(key("M1")));
    confirm(&a, &key("M1")).await;
    assert!(b.copy_delivered(&topic_queue(), &copy("M1", 5)));
    // Claimed but not confirmed on a: b forwards the copy.
    assert_eq!(claim(&a, "M2", 11, deadline).await, Claim::Send(key("M2")));
    assert!(!b.copy_delivered(&topic_queue(), &copy("M2", 6)));

    // b owned the schedule queue before and claimed M3; a took the queue
    // over (b's disk gone or not) and 5.x confirmed a's send: b skips.
    assert_eq!(claim(&b, "M3", 12, deadline).await, Claim::Send(key("M3")));
    assert!(a.needs_send(&key("M3")), "only a claim is not shared");
    assert_eq!(claim(&a, "M3", 12, deadline).await, Claim::Send(key("M3")));
    confirm(&a, &key("M3")).await;
    assert!(b.copy_delivered(&topic_queue(), &copy("M3", 7)));
    // Read again by a successor of the schedule queue: nothing to send.
    assert!(!b.needs_send(&key("M1")) && !b.needs_send(&key("M3")));

    // b claimed M4, then met its copy first: the release is shared, so a
    // (the schedule queue's owner now) stops sending it.
    assert_eq!(claim(&b, "M4", 13, deadline).await, Claim::Send(key("M4")));
    assert!(!b.copy_delivered(&topic_queue(), &copy("M4", 8)));
    assert!(!a.needs_send(&key("M4")));
    assert!(a.released(&key("M4")));

    // Alone (no shared view), b would have forwarded M1's copy again.
    let alone = ScheduleLedger::new(store(tempfile::tempdir().expect("c").path()), "r");
    assert!(!alone.copy_delivered(&topic_queue(), &copy("M1", 5)));
}
