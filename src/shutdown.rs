//! The one stop signal every task listens to (the mini-redis shape), and the
//! one backoff every retry loop uses.
//!
//! Owns: "stopping" as a value tasks can check and await, and the growth of
//! retry delays. Must not touch: what is retried or why.

use std::time::Duration;

use tokio::sync::watch;

/// A receiver of the stop signal. Cheap to clone; `stopped` never misses a
/// stop that happened before it was called.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown { rx }
    }

    /// A sender and its first receiver.
    pub fn channel() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown { rx })
    }

    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once stop was signalled (or every sender is gone).
    pub async fn stopped(&mut self) {
        loop {
            if *self.rx.borrow_and_update() {
                return;
            }
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The underlying receiver, for code that selects on it directly.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

/// Exponential backoff between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            next: initial,
            max,
        }
    }

    /// The delay to wait now; the following one doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps the next delay; false when stopping (before or during it).
    pub async fn wait(&mut self, stop: &mut Shutdown) -> bool {
        if stop.is_stopping() {
            return false;
        }
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => !stop.is_stopping(),
            _ = stop.stopped() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn wait_returns_false_once_stopping() {
        let (tx, mut stop) = Shutdown::channel();
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let waiter = tokio::spawn(async move { b.wait(&mut stop).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(true).expect("send");
        let done = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("wait ends at stop")
            .expect("join");
        assert!(!done);
    }
}
