//! Translation of a consumer group's position from one cluster to the
//! other (issue 19), as pure functions over what was read.
//!
//! The bridge knows every forwarded message by id on both sides. For a
//! group G moving from cluster A to cluster B, each message in a queue of
//! B is either *consumed* (its counterpart in A lies below G's committed
//! offset in its A queue) or not (its counterpart lies at or above it, or
//! it has no counterpart in A: G never saw it). G's position in a queue of
//! B is the offset of the first message G has not consumed: never skip.
//! Above that offset, consumed messages are delivered again (several A
//! queues interleave into one B queue); their count is the price of never
//! skipping, reported per queue.
//!
//! Owns: that rule and the compact id -> origin map it reads through.
//! Must not touch: I/O (the caller reads both clusters and the offsets).

use std::collections::HashMap;

/// Where one B queue's group position goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueTranslation {
    /// The translated offset: the first message the group has not
    /// consumed, or the queue's max offset when it consumed everything.
    pub offset: i64,
    /// Messages at or above `offset` that the group already consumed on A.
    pub redeliver: u64,
    /// Messages at or above `offset` that the group has not consumed.
    pub pending: u64,
    /// Messages read in the queue.
    pub read: u64,
}

/// Translates one B queue. `records` are its messages in offset order as
/// (offset, consumed on A); `max_offset` is the queue's max offset (where
/// the next message will be written).
pub fn translate_queue(
    records: impl IntoIterator<Item = (i64, bool)>,
    max_offset: i64,
) -> QueueTranslation {
    let mut t = QueueTranslation {
        offset: max_offset,
        ..Default::default()
    };
    let mut found = false;
    for (offset, consumed) in records {
        t.read += 1;
        if !found && !consumed {
            found = true;
            t.offset = offset;
        }
        if found {
            if consumed {
                t.redeliver += 1;
            } else {
                t.pending += 1;
            }
        }
    }
    t
}

/// A message id's 64-bit FNV-1a: the origin map's key. Two ids sharing one
/// (about 1 in 10^7 for a million ids) share an origin entry, and
/// [`Origins::insert`] keeps the later position there, so a collision can
/// only make the translation re-deliver, never skip.
pub fn id_key(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where each message of A sits: (A queue index, offset), by id key;
/// 16 bytes of payload per message, so a million messages fit in tens of
/// MiB.
#[derive(Debug, Default)]
pub struct Origins {
    map: HashMap<u64, (u32, i64)>,
}

impl Origins {
    pub fn with_capacity(n: usize) -> Self {
        Origins {
            map: HashMap::with_capacity(n),
        }
    }

    /// Records that `id` is at `offset` of A queue `queue`. A message
    /// found twice (a re-send, a collision) keeps its later position: the
    /// group is taken to have consumed it only once both were consumed. In
    /// two A queues it is never taken as consumed (which copy the group
    /// reached is not known here).
    pub fn insert(&mut self, id: &str, queue: u32, offset: i64) {
        self.map
            .entry(id_key(id))
            .and_modify(|e| {
                if queue != e.0 {
                    e.1 = i64::MAX;
                } else if offset > e.1 {
                    e.1 = offset;
                }
            })
            .or_insert((queue, offset));
    }

    pub fn get(&self, id: &str) -> Option<(u32, i64)> {
        self.map.get(&id_key(id)).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the group consumed `id` on A, given its committed offset per
    /// A queue; false for a message A never had.
    pub fn consumed(&self, id: &str, committed: &[i64]) -> bool {
        self.consumed_key(id_key(id), committed)
    }

    /// [`Self::consumed`] by id key.
    pub fn consumed_key(&self, key: u64, committed: &[i64]) -> bool {
        match self.map.get(&key).copied() {
            Some((queue, offset)) => committed.get(queue as usize).is_some_and(|c| offset < *c),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_is_the_first_unconsumed_message_and_the_rest_is_counted() {
        // B queue: offsets 0..6; consumed pattern from two interleaved A queues.
        let records = [
            (0, true),
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (5, false),
        ];
        let t = translate_queue(records, 6);
        assert_eq!(t.offset, 2);
        assert_eq!(t.redeliver, 1, "offset 3 was consumed and lies above");
        assert_eq!(t.pending, 3);
        assert_eq!(t.read, 6);
    }

    #[test]
    fn all_consumed_goes_to_the_end_and_an_empty_queue_stays_at_its_max() {
        let t = translate_queue([(10, true), (11, true)], 12);
        assert_eq!((t.offset, t.redeliver, t.pending), (12, 0, 0));
        let t = translate_queue(std::iter::empty(), 7);
        assert_eq!((t.offset, t.read), (7, 0));
        // Nothing consumed: from the first message.
        let t = translate_queue([(3, false), (4, false)], 5);
        assert_eq!((t.offset, t.redeliver, t.pending), (3, 0, 2));
    }

    #[test]
    fn never_skips_whatever_the_interleaving() {
        // Exhaustive over 8 messages: no unconsumed message lies below the
        // translated offset, and the redelivered count is exact.
        for mask in 0u32..256 {
            let records: Vec<(i64, bool)> =
                (0..8).map(|i| (i as i64, mask & (1 << i) != 0)).collect();
            let t = translate_queue(records.iter().copied(), 8);
            for (o, consumed) in &records {
                if !consumed {
                    assert!(*o >= t.offset, "mask {mask:08b}: {o} skipped");
                }
            }
            let again = records.iter().filter(|(o, c)| *c && *o >= t.offset).count() as u64;
            assert_eq!(t.redeliver, again, "mask {mask:08b}");
        }
    }

    #[test]
    fn origins_answer_consumed_against_the_committed_offsets() {
        let mut o = Origins::default();
        o.insert("a", 0, 5);
        o.insert("b", 1, 2);
        let committed = [6, 2];
        assert!(o.consumed("a", &committed));
        assert!(
            !o.consumed("b", &committed),
            "offset 2 of queue 1 is the next to consume"
        );
        assert!(!o.consumed("never-on-a", &committed));
        // A re-send keeps the later position; an id in two queues is never
        // taken as consumed.
        o.insert("a", 0, 9);
        assert_eq!(o.get("a"), Some((0, 9)));
        assert!(
            !o.consumed("a", &committed),
            "the copy at 9 is not consumed yet"
        );
        o.insert("b", 0, 0);
        assert!(!o.consumed("b", &[100, 100]));
    }
}
