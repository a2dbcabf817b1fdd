//! A queue from producer tasks to one consumer task that costs almost
//! nothing while empty: a `VecDeque` behind a mutex and two `Notify`s
//! (~150 bytes, no allocation until the first item). A bridge keeps two of
//! these per source queue (pulled batches, send completions), most of them
//! idle on a large estate: tokio's `mpsc` allocates a block of 32 slots per
//! channel up front, 3 KiB per channel of pulled batches, which at 8,000
//! queues was a quarter of the bridge's memory.
//!
//! Semantics follow `tokio::sync::mpsc`: [`Sender::send`] waits while the
//! queue holds `capacity` items and fails once the receiver is gone;
//! [`Receiver::recv`] returns `None` once every sender is gone and the queue
//! is empty. `recv` is cancel-safe (nothing is taken until it returns), so it
//! can be a `tokio::select!` branch. A queue that emptied after a burst
//! gives its memory back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Capacity kept by an empty queue; above it the buffer is freed.
const KEEP_EMPTY_CAPACITY: usize = 4;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Wakes the receiver: an item arrived or the last sender left.
    item: Notify,
    /// Wakes a waiting sender: room was made or the receiver left.
    room: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code holding the lock can panic half-way; a poisoned state is
        // still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A queue of at most `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
        }),
        capacity: capacity.max(1),
        item: Notify::new(),
        room: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// A queue without a bound: [`Sender::push`] never waits.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    channel(usize::MAX)
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; gives it back if the
    /// receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            // Registered before the check, so a wake-up between the check
            // and the wait (room made, receiver gone) is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(Full::Closed(back)) => return Err(back),
                Err(Full::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Queues `item` now whatever the queue holds (for unbounded queues);
    /// gives it back if the receiver is gone.
    pub fn push(&self, item: T) -> Result<(), T> {
        {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(item);
            }
            state.items.push_back(item);
        }
        self.shared.item.notify_one();
        Ok(())
    }

    fn try_push(&self, item: T) -> Result<(), Full<T>> {
        {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(Full::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(Full::Full(item));
            }
            state.items.push_back(item);
        }
        self.shared.item.notify_one();
        Ok(())
    }
}

enum Full<T> {
    Full(T),
    Closed(T),
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.item.notify_one();
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.take() {
                Taken::Item(item) => return Some(item),
                Taken::Closed => return None,
                Taken::Empty => {}
            }
            self.shared.item.notified().await;
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        match self.take() {
            Taken::Item(item) => Some(item),
            Taken::Closed | Taken::Empty => None,
        }
    }

    fn take(&mut self) -> Taken<T> {
        let taken = {
            let mut state = self.shared.lock();
            match state.items.pop_front() {
                Some(item) => {
                    if state.items.is_empty() && state.items.capacity() > KEEP_EMPTY_CAPACITY {
                        state.items = VecDeque::new();
                    }
                    Taken::Item(item)
                }
                None if state.senders == 0 => Taken::Closed,
                None => Taken::Empty,
            }
        };
        if matches!(taken, Taken::Item(_)) {
            self.shared.room.notify_one();
        }
        taken
    }
}

enum Taken<T> {
    Item(T),
    Empty,
    Closed,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item's drop may itself use a queue.
        drop(items);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_send_waits_for_room() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        // Full: the third send waits until the receiver takes one.
        let third = tokio::spawn(async move {
            tx.send(3).await.unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "send did not wait for room");
        assert_eq!(rx.recv().await, Some(1));
        let tx = third.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.try_recv(), None);
        drop(tx);
        assert_eq!(rx.recv().await, None, "closed once the sender is gone");
    }

    #[tokio::test]
    async fn recv_waits_until_an_item_or_the_last_sender_leaves() {
        let (tx, mut rx) = unbounded::<u32>();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        tx2.push(7).unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one sender is still there");
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_gone_receiver_fails_sends_and_wakes_a_waiting_one() {
        let (tx, rx) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        let blocked = tokio::spawn(async move { tx.send(2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(2));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = channel::<u32>(4);
        for round in 0..100u32 {
            tokio::select! {
                _ = rx.recv() => panic!("nothing was sent yet"),
                _ = tokio::task::yield_now() => {}
            }
            tx.send(round).await.unwrap();
            assert_eq!(rx.recv().await, Some(round));
        }
    }

    #[tokio::test]
    async fn an_emptied_queue_frees_its_buffer() {
        let (tx, mut rx) = unbounded::<u64>();
        for i in 0..1000 {
            tx.push(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_producers_one_consumer_lose_nothing() {
        let (tx, mut rx) = channel::<(u32, u32)>(3);
        let mut producers = Vec::new();
        for p in 0..4u32 {
            let tx = tx.clone();
            producers.push(tokio::spawn(async move {
                for i in 0..2000u32 {
                    tx.send((p, i)).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut next = [0u32; 4];
        while let Some((p, i)) = rx.recv().await {
            assert_eq!(next[p as usize], i, "producer {p} out of order");
            next[p as usize] += 1;
        }
        assert_eq!(next, [2000; 4]);
        for producer in producers {
            producer.await.unwrap();
        }
    }
}
