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

/// A message id as the origin map knows it: a 64-bit FNV-1a (the map's
/// key) and a 32-bit check from another hash. Ids are told apart by all 96
/// bits: two ids sharing the 64-bit key but not the check are two messages
/// (a source pair of them is never taken as consumed, so a collision there
/// re-delivers; a destination message whose key but not check matches a
/// source message has no source copy, and is delivered). Only a 96-bit
/// collision between a destination message with no source copy and a
/// consumed source message could skip one: about 1 in 10^16 for a million
/// ids on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdKey {
    pub hash: u64,
    pub check: u32,
}

pub fn id_key(id: &str) -> IdKey {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // FNV-1a 32 over the same bytes: independent enough of the 64-bit
    // one for a check.
    let mut c: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
        c ^= u32::from(*b);
        c = c.wrapping_mul(0x0100_0193);
    }
    IdKey { hash: h, check: c }
}

/// One origin entry: the A queue index, the check of the id it was
/// recorded for, and the offset (`i64::MAX`: never taken as consumed).
#[derive(Debug, Clone, Copy)]
struct Origin {
    queue: u32,
    check: u32,
    offset: i64,
}

/// Where each message of A sits: (A queue index, offset), by id key;
/// 16 bytes of payload per message, so a million messages fit in tens of
/// MiB.
#[derive(Debug, Default)]
pub struct Origins {
    map: HashMap<u64, Origin>,
}

impl Origins {
    pub fn with_capacity(n: usize) -> Self {
        Origins {
            map: HashMap::with_capacity(n),
        }
    }

    /// Records that `id` is at `offset` of A queue `queue`. A message
    /// found twice (a re-send) keeps its later position: the group is
    /// taken to have consumed it only once both were consumed. In two A
    /// queues it is never taken as consumed (which copy the group reached
    /// is not known here), nor are two ids sharing one 64-bit key.
    pub fn insert(&mut self, id: &str, queue: u32, offset: i64) {
        let key = id_key(id);
        self.map
            .entry(key.hash)
            .and_modify(|e| {
                if queue != e.queue || key.check != e.check {
                    e.offset = i64::MAX;
                } else if offset > e.offset {
                    e.offset = offset;
                }
            })
            .or_insert(Origin {
                queue,
                check: key.check,
                offset,
            });
    }

    pub fn get(&self, id: &str) -> Option<(u32, i64)> {
        let key = id_key(id);
        self.map
            .get(&key.hash)
            .filter(|e| e.check == key.check)
            .map(|e| (e.queue, e.offset))
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

    /// [`Self::consumed`] by id key: false where only the 64-bit key
    /// matches (another message; A has no copy of this one).
    pub fn consumed_key(&self, key: IdKey, committed: &[i64]) -> bool {
        match self.map.get(&key.hash) {
            Some(e) if e.check == key.check => committed
                .get(e.queue as usize)
                .is_some_and(|c| e.offset < *c),
            _ => false,
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

    /// Issue 30, item 8: a destination message with no source copy whose
    /// 64-bit key is a consumed source message's is not taken as consumed
    /// (the translation would have put the position past it: a skip).
    #[test]
    fn a_key_collision_never_skips_a_message_the_source_does_not_have() {
        let mut o = Origins::default();
        o.insert("on-a", 0, 5);
        let a = id_key("on-a");
        assert!(o.consumed_key(a, &[10]));
        let only_on_b = IdKey {
            hash: a.hash,
            check: a.check ^ 1,
        };
        assert!(!o.consumed_key(only_on_b, &[10]));
        let t = translate_queue(
            [
                (0, o.consumed_key(a, &[10])),
                (1, o.consumed_key(only_on_b, &[10])),
            ],
            2,
        );
        assert_eq!(t.offset, 1, "the position stops at the message A never had");
        // Two source ids sharing a key are never taken as consumed.
        let mut two = Origins::default();
        two.insert("x", 0, 1);
        let x = id_key("x");
        two.map.entry(x.hash).and_modify(|e| e.check ^= 1);
        two.insert("x", 0, 2);
        assert!(!two.consumed_key(x, &[10]));
    }
}
