//! Reading a range of one queue, over Remoting, from either cluster: the
//! 4.x source queue up to the checkpoint, and the 5.x target topic (its
//! brokers speak Remoting; SPEC section 7). A reader task pulls ahead into a
//! small channel, so the network and the matching overlap while at most a
//! few batches are held in memory.
//!
//! Owns: the pull loop over `[from, to)`. Must not touch: matching, counts.

use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::mpsc;

use crate::checkpoint::SourceQueue;
use crate::remoting::{MessageRecord, NameServers, RemotingClient, UndecodableRecord};
use crate::source::{BodyLimit, PullOutcome, SourceSettings, TopicSource};

/// Bodies are read whole up to this size (larger ones come back undecodable).
const READ_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Batches pulled ahead of the matcher.
const PREFETCH: usize = 8;

/// One pulled batch of a range.
pub enum Piece {
    Records {
        records: Vec<MessageRecord>,
        undecodable: Vec<UndecodableRecord>,
    },
    /// `[from, to)` is no longer stored (retention removed it).
    Expired { from: i64, to: i64 },
}

/// A topic to read from, on either cluster.
pub fn topic_reader(
    client: RemotingClient,
    namesrv: NameServers,
    topic: &str,
    filter: &str,
    group: &str,
    pull_batch_size: u32,
) -> TopicSource {
    TopicSource::new(
        client,
        namesrv,
        SourceSettings {
            topic: topic.to_string(),
            filter: filter.to_string(),
            consumer_group: group.to_string(),
            pull_batch_size,
            // A range read never waits for new messages.
            long_poll: Duration::from_millis(0),
        },
    )
    .with_body_limit(BodyLimit::fixed(READ_BODY_LIMIT))
}

/// Streams the records of `queue` in `[from, to)`, in offset order. The
/// channel ends after `to` is reached, or with an error naming the queue.
pub fn read_range(
    source: &TopicSource,
    queue: &SourceQueue,
    from: i64,
    to: i64,
    batch: u32,
) -> mpsc::Receiver<anyhow::Result<Piece>> {
    let (tx, rx) = mpsc::channel(PREFETCH);
    let source = source.clone();
    let queue = queue.clone();
    tokio::spawn(async move {
        let mut offset = from;
        let mut failures = 0u32;
        while offset < to {
            let outcome = match source.pull(&queue, offset, batch).await {
                Ok(o) => {
                    failures = 0;
                    o
                }
                Err(e) if failures < 5 => {
                    failures += 1;
                    tracing::warn!(topic = source.topic(), %queue, offset, error = %e, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(anyhow!(
                            "reading {} {queue} at offset {offset}: {e}",
                            source.topic()
                        )))
                        .await;
                    return;
                }
            };
            let piece = match outcome {
                PullOutcome::Records {
                    mut records,
                    mut undecodable,
                    next_offset,
                    ..
                } => {
                    records.retain(|r| r.queue_offset < to);
                    undecodable.retain(|u| u.queue_offset < to);
                    let next = next_offset.max(offset + 1);
                    offset = next;
                    Piece::Records {
                        records,
                        undecodable,
                    }
                }
                PullOutcome::Idle { next_offset, .. } => {
                    // Nothing stored at `offset` although `to` is beyond it:
                    // the broker's max moved back (or the index lags). Stop
                    // here; the caller reports what was read.
                    let _ = tx
                        .send(Err(anyhow!(
                            "{} {queue}: nothing stored at offset {offset} (broker says next {next_offset}), \
                             although the range ends at {to}",
                            source.topic()
                        )))
                        .await;
                    return;
                }
                PullOutcome::OffsetMoved { next_offset, .. } => {
                    let next = next_offset.clamp(offset + 1, to);
                    let piece = Piece::Expired {
                        from: offset,
                        to: next,
                    };
                    offset = next;
                    piece
                }
            };
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Several ranges at once, at most `parallel` queues in flight: pieces of
/// each queue arrive in offset order, tagged with their queue; queues
/// interleave. The channel ends when every range is read (or after the
/// first error, which is delivered).
pub fn read_many(
    source: &TopicSource,
    ranges: Vec<(SourceQueue, i64, i64)>,
    batch: u32,
    parallel: usize,
) -> mpsc::Receiver<(SourceQueue, anyhow::Result<Piece>)> {
    let (tx, rx) = mpsc::channel(PREFETCH * parallel.max(1));
    let source = source.clone();
    tokio::spawn(async move {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut readers = Vec::new();
        for (queue, from, to) in ranges {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let mut pieces = read_range(&source, &queue, from, to, batch);
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let _permit = permit;
                while let Some(piece) = pieces.recv().await {
                    if tx.send((queue.clone(), piece)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        for r in readers {
            let _ = r.await;
        }
    });
    rx
}
