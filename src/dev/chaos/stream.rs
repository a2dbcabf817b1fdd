//! A mixed-type stream produced into 4.x for fault tests: NORMAL, FIFO with
//! many message groups, DELAY (delay levels) and TRANSACTION (half message +
//! commit), each in its own topic, every message with a known id, body and,
//! for FIFO, group and sequence number: the ledger a run is checked against.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::RwLock;

use crate::remoting::{RemotingClient, SendRequest};

/// The four message types, one 4.x topic (and one 5.x topic) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Normal, Kind::Fifo, Kind::Delay, Kind::Transaction];

    /// The 5.x topic type (`createTopic` message type).
    pub fn topic_type(self) -> &'static str {
        match self {
            Kind::Normal => "NORMAL",
            Kind::Fifo => "FIFO",
            Kind::Delay => "DELAY",
            Kind::Transaction => "TRANSACTION",
        }
    }

    fn letter(self) -> char {
        match self {
            Kind::Normal => 'N',
            Kind::Fifo => 'F',
            Kind::Delay => 'D',
            Kind::Transaction => 'T',
        }
    }
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct MixSpec {
    /// Topic name prefix: topics are `<prefix>_normal`, `<prefix>_fifo`, ...
    pub prefix: String,
    pub total: usize,
    pub queues: i32,
    pub fifo_groups: usize,
    /// Bytes of body per message (at least the header text).
    pub body_size: usize,
    /// Messages per second (0: as fast as the broker takes them).
    pub rate: u32,
    /// Producer group of the transactional half messages.
    pub tx_group: String,
    /// The types produced (all four by default).
    pub kinds: Vec<Kind>,
}

impl MixSpec {
    pub fn new(prefix: &str, total: usize) -> MixSpec {
        MixSpec {
            prefix: prefix.to_string(),
            total,
            queues: 4,
            fifo_groups: 64,
            body_size: 256,
            rate: 400,
            tx_group: format!("{prefix}_tx_group"),
            kinds: Kind::ALL.to_vec(),
        }
    }

    pub fn topic(&self, kind: Kind) -> String {
        let suffix = match kind {
            Kind::Normal => "normal",
            Kind::Fifo => "fifo",
            Kind::Delay => "delay",
            Kind::Transaction => "tx",
        };
        format!("{}_{suffix}", self.prefix)
    }

    /// The kind of the i-th message: with all four types, 50 % NORMAL,
    /// 30 % FIFO, 10 % DELAY, 10 % TRANSACTION; otherwise round robin.
    fn kind_of(&self, i: usize) -> Kind {
        if self.kinds.len() == Kind::ALL.len() {
            return match i % 10 {
                0..=4 => Kind::Normal,
                5..=7 => Kind::Fifo,
                8 => Kind::Delay,
                _ => Kind::Transaction,
            };
        }
        self.kinds[i % self.kinds.len().max(1)]
    }
}

/// One message the producer got accepted by 4.x.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub kind: Kind,
    /// FIFO: the message group (also the 4.x sharding key) and its sequence.
    pub group: Option<String>,
    pub seq: u64,
    pub body: Bytes,
}

/// Lets a fault injector hold the producer between two messages (write
/// lock), e.g. so a 4.x broker restart does not swallow a one-way commit of
/// a transactional message: that would be a loss in 4.x, not in the bridge.
pub type ProducerGate = Arc<RwLock<()>>;

/// Produces `spec.total` messages into the 4.x broker at `broker`, retrying
/// each until the broker accepts it (across broker restarts), and returns
/// the ledger. A retried send may store a message twice in 4.x with the same
/// id; the tally compares against what 4.x holds.
pub async fn produce(
    mut client: RemotingClient,
    broker: String,
    spec: MixSpec,
    gate: ProducerGate,
) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(spec.total);
    let mut group_seq = vec![0u64; spec.fifo_groups.max(1)];
    let started = tokio::time::Instant::now();
    for i in 0..spec.total {
        if spec.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / spec.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let kind = spec.kind_of(i);
        let id = format!("{}{}{:030}", spec.prefix.to_uppercase(), kind.letter(), i);
        let (group, seq, queue) = match kind {
            Kind::Fifo => {
                let g = (i / 10 * 7 + i) % group_seq.len();
                group_seq[g] += 1;
                (
                    Some(format!("g{g}")),
                    group_seq[g],
                    (g as i32) % spec.queues,
                )
            }
            _ => (None, 0, (i as i32) % spec.queues),
        };
        let head = format!(
            "{id}|{}|{}|{seq}|",
            kind.letter(),
            group.as_deref().unwrap_or("-")
        );
        let mut body = head.into_bytes();
        while body.len() < spec.body_size {
            body.push(b'a' + (body.len() % 26) as u8);
        }
        let body = Bytes::from(body);
        let mut req = SendRequest::new("chaos_producer", &spec.topic(kind), queue, body.clone());
        req.properties.insert("UNIQ_KEY", id.clone());
        req.properties.insert("KEYS", format!("k{i}"));
        req.properties.insert("TAGS", format!("tag{}", i % 3));
        req.properties.insert("chaos_seq", i.to_string());
        match kind {
            Kind::Fifo => {
                if let Some(g) = &group {
                    req.properties.insert("__SHARDINGKEY", g.clone());
                }
            }
            Kind::Delay => {
                // Levels 1..=3: 1 s, 5 s, 10 s in the 4.x default table.
                req.properties.insert("DELAY", (1 + i % 3).to_string());
            }
            Kind::Transaction => {
                req.sys_flag = 4;
                req.properties.insert("TRAN_MSG", "true");
                req.properties.insert("PGROUP", spec.tx_group.clone());
            }
            Kind::Normal => {}
        }
        let _held = gate.read().await;
        let result = loop {
            match client.send_message(&broker, &req).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::debug!(error = %e, %id, "chaos producer retries");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client = super::super::testkit::client();
                }
            }
        };
        if kind == Kind::Transaction {
            // One-way: the gate keeps broker restarts away from it.
            while let Err(e) = client
                .end_transaction(&broker, &spec.tx_group, &result, &id, true)
                .await
            {
                tracing::debug!(error = %e, %id, "chaos producer retries the commit");
                tokio::time::sleep(Duration::from_millis(100)).await;
                client = super::super::testkit::client();
            }
        }
        sent.push(Sent {
            id,
            kind,
            group,
            seq,
            body,
        });
    }
    // The last commit is one-way: give it time to leave before the client
    // (and its connection) is dropped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sent
}
