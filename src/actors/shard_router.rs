//! From Subscribers to ValidatorShards: the DID's hash picks the shard, so every event of one
//! account goes through one shard, in the order its host sent it, with no locks.
//!
//! The contract between the two sides:
//! - a Subscriber has already decoded the header (`frame::peek_event`), dropped
//!   non-increasing upstream seqs, taken a [`BytePermit`] for the frame's length from the
//!   ingest byte budget and a [`CursorMark`] for its upstream seq; [`ShardRouter::route`]
//!   waits while the shard's queue is full, and that wait is what stops the Subscriber from
//!   reading its socket (delay, never drop; lesson 10);
//! - a shard receives [`UpstreamFrame`]s from its [`ShardQueue`] (on its own thread:
//!   [`ShardQueue::blocking_recv`]), and either sends an `IngestEvent` to the Sequencer,
//!   moving the permit and the cursor mark into it, or drops the frame on purpose and
//!   completes the mark (a counted reason); the permit frees its bytes when dropped.
//!
//! The queues are bounded in slots here and in bytes by the permits the frames carry, so a
//! shard's backlog can never exceed the byte budget however many hosts feed it.
//!
//! The same queues carry operators' changes to accounts ([`AccountCommand`], sent by
//! `account_admin` through [`ShardRouter::command`]): a takedown, reversal or promotion
//! reaches the shard that owns the account in order with the account's frames, so every frame
//! routed before it is decided with the old status and every later one with the new, and the
//! shard's own `#account` for the change is sequenced after everything it forwarded before.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::sequencer::{BytePermit, EventKind};
use super::shard_rules::LocalStatus;
use super::upstream_cursor::CursorMark;
use crate::store::event_log::did_hash;

/// One frame on its way from a host's Subscriber to the shard that owns its DID. Owned data
/// only (lesson 11).
#[derive(Debug)]
pub struct UpstreamFrame {
    /// The host the frame came from (`hosts.hostname`, with its port when it has one), for
    /// the host-authority check.
    pub hostname: Arc<str>,
    /// The host is reached over plain `ws://` and `http://` (admin-added test hosts): the
    /// shard asks its `getRepoStatus` the same way.
    pub no_ssl: bool,
    /// The connection replays events the relay may have stored already: the host's first
    /// since the process started (after a crash its stored cursor lags the log by up to a
    /// write-behind interval, so the host resends the last seconds), or a catch-up on the
    /// host's whole retained outbox (`cursor=0`: a host the relay was subscribed to without
    /// a stored cursor). A `#sync` below the stored rev on it is an old one replayed (an
    /// account's creation sends one), not a rollback: taken as one, it would reset the
    /// account's state and let the replayed commits after it through a second time.
    pub catching_up: bool,
    /// The account: `repo` of a `#commit`, `did` otherwise.
    pub did: String,
    pub kind: EventKind,
    /// The websocket message as received.
    pub frame: Bytes,
    /// `hosts.id` and upstream seq, completed when the event is durable or dropped.
    pub cursor: CursorMark,
    /// The frame's share of the ingest byte budget.
    pub permit: BytePermit,
}

/// An operator's change to one account, handled by the shard that owns it between two of the
/// account's frames. Postgres already has the new local status when it is sent (a record the
/// shard loads meanwhile reads it there).
#[derive(Debug)]
pub struct AccountCommand {
    pub did: String,
    /// The account's new local status (`None`: unchanged).
    pub local_status: Option<LocalStatus>,
    /// Emit the relay's own `#account` for the account as the shard then knows it (its
    /// `active`/`status` by `shard_rules::published_status`), after every event the shard
    /// forwarded before.
    pub announce: bool,
    /// Answered once every event the shard forwarded before the command (and the `#account`
    /// it emitted) is sequenced.
    pub done: oneshot::Sender<Result<CommandDone, CommandFailed>>,
}

/// What an [`AccountCommand`] came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDone {
    /// The highest seq among the shard's events up to the command: the emitted `#account`'s
    /// when it announced, else the last event the shard forwarded before it (0: none yet).
    /// Once the durable head reaches it, every event of the account sequenced before the
    /// command is on disk.
    pub seq: u64,
    /// The `#account` emitted: `(active, status)`.
    pub announced: Option<(bool, Option<String>)>,
}

/// Why an [`AccountCommand`] was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandFailed {
    #[error("the account is not in the database")]
    UnknownAccount,
    #[error("the account row could not be loaded: {0}")]
    Store(&'static str),
    #[error("the #account event could not be encoded")]
    Encode,
    #[error("ingest halted: {0}")]
    Halted(&'static str),
    #[error("the shard or the sequencer stopped")]
    Stopped,
}

impl CommandFailed {
    /// Stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandFailed::UnknownAccount => "unknown-account",
            CommandFailed::Store(_) => "store",
            CommandFailed::Encode => "encode",
            CommandFailed::Halted(_) => "halted",
            CommandFailed::Stopped => "stopped",
        }
    }
}

/// What a shard's queue carries: frames and account commands, in one order.
#[derive(Debug)]
pub enum ShardInput {
    Frame(UpstreamFrame),
    Command(AccountCommand),
}

impl ShardInput {
    /// The account it is about (it picked the shard).
    pub fn did(&self) -> &str {
        match self {
            ShardInput::Frame(f) => &f.did,
            ShardInput::Command(c) => &c.did,
        }
    }

    /// The frame, if it is one.
    pub fn into_frame(self) -> Option<UpstreamFrame> {
        match self {
            ShardInput::Frame(f) => Some(f),
            ShardInput::Command(_) => None,
        }
    }
}

/// The sending side: cheap to clone, one per Subscriber (and one for the account admin).
#[derive(Clone, Debug)]
pub struct ShardRouter {
    queues: Arc<[mpsc::Sender<ShardInput>]>,
}

/// The receiving side of one shard.
#[derive(Debug)]
pub struct ShardQueue {
    rx: mpsc::Receiver<ShardInput>,
}

/// The shard's queue is closed (the shard stopped): ingest is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("validator shard {0} is stopped")]
pub struct ShardStopped(pub usize);

/// The shard that owns `did` among `shards` (which must be at least 1).
pub fn shard_of(did: &str, shards: usize) -> usize {
    // The same hash the event log stores, so a shard and a record agree on an account.
    (did_hash(did) % shards.max(1) as u64) as usize
}

impl ShardRouter {
    /// `shards` queues of `depth` frames each (both at least 1).
    pub fn new(shards: usize, depth: usize) -> (ShardRouter, Vec<ShardQueue>) {
        let (senders, queues): (Vec<_>, Vec<_>) = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(depth.max(1));
                (tx, ShardQueue { rx })
            })
            .unzip();
        (
            ShardRouter {
                queues: senders.into(),
            },
            queues,
        )
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// Hands `frame` to the shard that owns its DID, waiting while that queue is full.
    pub async fn route(&self, frame: UpstreamFrame) -> Result<(), ShardStopped> {
        // A frame that cannot be delivered drops here with its permit and its mark: the
        // mark is abandoned, so the host's cursor stays below it.
        self.send(ShardInput::Frame(frame)).await
    }

    /// Hands an operator's change to the shard that owns the account, behind the frames
    /// already queued there, waiting while that queue is full.
    pub async fn command(&self, command: AccountCommand) -> Result<(), ShardStopped> {
        self.send(ShardInput::Command(command)).await
    }

    async fn send(&self, input: ShardInput) -> Result<(), ShardStopped> {
        let shard = shard_of(input.did(), self.queues.len());
        self.queues[shard]
            .send(input)
            .await
            .map_err(|_| ShardStopped(shard))
    }

    /// Frames waiting in each shard's queue (for the shards' depth gauges).
    pub fn queued(&self) -> Vec<usize> {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .collect()
    }
}

impl ShardQueue {
    /// The next frame or command, waiting for one; `None` once every router is dropped and
    /// the queue is empty. For a thread outside an async runtime.
    pub fn blocking_recv(&mut self) -> Option<ShardInput> {
        self.rx.blocking_recv()
    }

    /// The next frame or command, from async code.
    pub async fn recv(&mut self) -> Option<ShardInput> {
        self.rx.recv().await
    }

    /// Frames and commands waiting (the shard's depth gauge).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Stops accepting frames; those already queued can still be received (shutdown).
    pub fn close(&mut self) {
        self.rx.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::sequencer::ByteBudget;
    use crate::actors::upstream_cursor::HostCursor;
    use crate::actors::write_behind::PendingWrites;

    async fn frame(did: &str, seq: i64, cursor: &HostCursor, budget: &ByteBudget) -> UpstreamFrame {
        UpstreamFrame {
            hostname: Arc::from("pds.example.com"),
            no_ssl: false,
            catching_up: false,
            did: did.to_string(),
            kind: EventKind::Commit,
            frame: Bytes::from(vec![0u8; 100]),
            cursor: cursor.begin(seq),
            permit: budget.acquire(100).await.expect("budget open"),
        }
    }

    #[test]
    fn shards_are_stable_and_cover_the_range() {
        let dids: Vec<String> = (0..1000).map(|i| format!("did:plc:{i:024}")).collect();
        let mut counts = [0usize; 4];
        for d in &dids {
            let s = shard_of(d, 4);
            assert_eq!(s, shard_of(d, 4));
            counts[s] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
        assert_eq!(shard_of("did:plc:x", 0), 0);
    }

    #[actix_rt::test]
    async fn one_accounts_frames_keep_their_order_and_a_full_queue_waits() {
        let (router, mut queues) = ShardRouter::new(2, 2);
        let budget = ByteBudget::new(10_000);
        let cursor = HostCursor::new(1, 0, PendingWrites::default());
        let did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
        let shard = shard_of(did, 2);
        router
            .route(frame(did, 1, &cursor, &budget).await)
            .await
            .unwrap();
        router
            .route(frame(did, 2, &cursor, &budget).await)
            .await
            .unwrap();
        assert_eq!(router.queued()[shard], 2);
        // The queue is full: the third send waits until the shard takes one.
        let third = frame(did, 3, &cursor, &budget).await;
        let pending = {
            let router = router.clone();
            actix_rt::spawn(async move { router.route(third).await })
        };
        tokio::task::yield_now().await;
        assert!(!pending.is_finished(), "a full queue makes the sender wait");
        let first = queues[shard].recv().await.unwrap().into_frame().unwrap();
        assert_eq!(first.cursor.seq(), 1);
        pending.await.unwrap().unwrap();
        assert_eq!(
            budget.in_use(),
            300,
            "queued and received frames hold their bytes"
        );
        let seqs: Vec<i64> = [
            queues[shard].recv().await.unwrap().into_frame().unwrap(),
            queues[shard].recv().await.unwrap().into_frame().unwrap(),
        ]
        .iter()
        .map(|f| f.cursor.seq())
        .collect();
        assert_eq!(seqs, [2, 3]);
        drop(first);
        assert_eq!(budget.in_use(), 0, "finished frames release their bytes");
    }

    #[actix_rt::test]
    async fn a_command_queues_behind_the_accounts_frames() {
        let (router, mut queues) = ShardRouter::new(2, 4);
        let budget = ByteBudget::new(10_000);
        let cursor = HostCursor::new(1, 0, PendingWrites::default());
        let did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
        let shard = shard_of(did, 2);
        router
            .route(frame(did, 1, &cursor, &budget).await)
            .await
            .unwrap();
        let (done, _answer) = oneshot::channel();
        router
            .command(AccountCommand {
                did: did.to_string(),
                local_status: Some(LocalStatus::Takendown),
                announce: false,
                done,
            })
            .await
            .unwrap();
        router
            .route(frame(did, 2, &cursor, &budget).await)
            .await
            .unwrap();
        let order: Vec<Option<i64>> = (0..3)
            .map(|_| match queues[shard].rx.try_recv().expect("queued") {
                ShardInput::Frame(f) => Some(f.cursor.seq()),
                ShardInput::Command(c) => {
                    assert_eq!(c.local_status, Some(LocalStatus::Takendown));
                    None
                }
            })
            .collect();
        assert_eq!(order, [Some(1), None, Some(2)]);
        assert!(queues[1 - shard].is_empty());
    }

    #[actix_rt::test]
    async fn a_stopped_shard_is_an_error_and_abandons_the_mark() {
        let (router, mut queues) = ShardRouter::new(1, 4);
        queues[0].close();
        let budget = ByteBudget::new(10_000);
        let cursor = HostCursor::new(1, 0, PendingWrites::default());
        let f = frame("did:plc:x", 5, &cursor, &budget).await;
        assert_eq!(router.route(f).await, Err(ShardStopped(0)));
        assert_eq!(budget.in_use(), 0, "the permit is released");
        cursor.begin(6).complete();
        assert_eq!(cursor.committed(), 4, "never past the undelivered seq 5");
    }
}
