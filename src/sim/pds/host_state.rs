//! One host's event state: its accounts, the outbox and the live channel, and the cursor
//! rules a new connection starts from. All of it lives behind the host's mutex, so an event
//! is numbered, kept and broadcast in one step, and a new connection's replay snapshot and
//! live receiver are taken in one step too: every event is in exactly one of them.

use crate::atproto::tid::now_micros;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{AccountStatus, Forgery, SimError, SimPdsConfig};
use crate::atproto::frame::{AccountEvent, CommitEvent, Frame, IdentityEvent, encode_frame};
use crate::atproto::keys::PrivateKey;
use crate::testkit::repo::{Change, EVENT_TIME, SigningRepo};

/// One account as this host holds it.
pub(super) struct Account {
    pub(super) handle: String,
    /// `None` once the repo migrated to another host (the old host keeps the account,
    /// deactivated, as a real PDS does).
    pub(super) repo: Option<SigningRepo>,
    pub(super) active: bool,
    pub(super) status: Option<AccountStatus>,
}

/// Recent frames for cursor replay, bounded in count and bytes.
#[derive(Default)]
struct Outbox {
    /// `(seq, frame)` in emission order. Raw frames carry the seq found in them (or the head
    /// when they have none), so replay order is always emission order.
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Whether anything was evicted: only then can a cursor be "too old".
    evicted: bool,
}

/// What a new connection starts from.
pub(super) enum Subscription {
    /// Replay `backlog` (after an `#info OutdatedCursor` when `outdated`), then follow `live`.
    Stream {
        outdated: bool,
        backlog: Vec<Bytes>,
        live: broadcast::Receiver<Bytes>,
    },
    /// The cursor is above the head.
    FutureCursor,
}

pub(super) struct HostState {
    pub(super) accounts: HashMap<String, Account>,
    outbox: Outbox,
    /// Last seq this host assigned (0: none yet).
    pub(super) head: u64,
    /// Live frames to every connection. Replacing the sender ends every connection, which is
    /// how `SimPds::drop_connections`, `reset` and `stop` reach sessions on the worker.
    live: broadcast::Sender<Bytes>,
}

impl HostState {
    /// The frames still kept for replay, oldest first.
    pub(crate) fn kept_frames(&self) -> Vec<Bytes> {
        self.outbox.frames.iter().map(|(_, f)| f.clone()).collect()
    }

    /// The kept frame of `seq`; searched from the newest, where a just-published one is.
    pub(crate) fn frame_at(&self, seq: u64) -> Option<Bytes> {
        self.outbox
            .frames
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, f)| f.clone())
    }

    /// Open `subscribeRepos` connections that follow the live channel.
    pub(crate) fn live_connections(&self) -> usize {
        self.live.receiver_count()
    }

    pub(super) fn new(config: &SimPdsConfig) -> HostState {
        HostState {
            accounts: HashMap::new(),
            outbox: Outbox::default(),
            head: 0,
            live: broadcast::channel(config.live_buffer_events.max(1)).0,
        }
    }

    /// Forgets the outbox and the seq (the next event is seq 1) and drops every connection.
    pub(super) fn forget_events(&mut self, config: &SimPdsConfig) {
        self.outbox = Outbox::default();
        self.head = 0;
        self.replace_live_channel(config);
    }

    pub(super) fn account_mut(&mut self, did: &str) -> Result<&mut Account, SimError> {
        self.accounts
            .get_mut(did)
            .ok_or_else(|| SimError::UnknownAccount(did.to_string()))
    }

    pub(super) fn repo_mut(&mut self, did: &str) -> Result<&mut SigningRepo, SimError> {
        self.account_mut(did)?
            .repo
            .as_mut()
            .ok_or_else(|| SimError::MovedAway(did.to_string()))
    }

    /// Stores and broadcasts one frame under `seq`.
    pub(super) fn publish(&mut self, seq: u64, frame: Bytes, config: &SimPdsConfig) {
        self.head = self.head.max(seq);
        self.outbox.bytes += frame.len();
        self.outbox.frames.push_back((seq, frame.clone()));
        while self.outbox.frames.len() > config.outbox_max_events
            || self.outbox.bytes > config.outbox_max_bytes
        {
            match self.outbox.frames.pop_front() {
                Some((_, old)) => {
                    self.outbox.bytes -= old.len();
                    self.outbox.evicted = true;
                }
                None => break,
            }
        }
        // An error only means no connection is listening right now.
        let _ = self.live.send(frame);
    }

    /// Assigns the next seq to the event `build` makes, encodes it and publishes it.
    fn emit(
        &mut self,
        config: &SimPdsConfig,
        build: impl FnOnce(i64) -> Frame,
    ) -> Result<u64, SimError> {
        let seq = self.head + 1;
        // Seqs stay far below 2^53, so the cast never truncates.
        let frame = encode_frame(&build(seq as i64))?;
        self.publish(seq, Bytes::from(frame), config);
        Ok(seq)
    }

    pub(super) fn emit_identity(
        &mut self,
        config: &SimPdsConfig,
        did: &str,
    ) -> Result<u64, SimError> {
        let handle = self.account_mut(did)?.handle.clone();
        self.emit(config, |seq| {
            Frame::Identity(IdentityEvent {
                seq,
                did: did.to_string(),
                time: EVENT_TIME.into(),
                handle: Some(handle),
            })
        })
    }

    pub(super) fn emit_account(
        &mut self,
        config: &SimPdsConfig,
        did: &str,
    ) -> Result<u64, SimError> {
        let account = self.account_mut(did)?;
        let (active, status) = (account.active, account.status);
        self.emit(config, |seq| {
            Frame::Account(AccountEvent {
                seq,
                did: did.to_string(),
                time: EVENT_TIME.into(),
                active,
                status: status.map(|s| s.as_str().to_string()),
            })
        })
    }

    pub(super) fn emit_commit(
        &mut self,
        config: &SimPdsConfig,
        did: &str,
        changes: &[Change],
    ) -> Result<u64, SimError> {
        let repo = self.repo_mut(did)?;
        keep_revs_near_now(repo);
        let mut event = repo.commit(changes);
        self.emit(config, move |seq| {
            event.seq = seq;
            Frame::Commit(Box::new(event))
        })
    }

    /// A `#commit` of `did` creating `path`, built on a copy of its repo (the account's repo
    /// does not move, so its next real commit chains from the last real one), wrong as
    /// `forgery` says, or right (signed with the account's key) with `None`.
    pub(super) fn forged_commit(
        &mut self,
        did: &str,
        forgery: Option<Forgery>,
        path: String,
    ) -> Result<CommitEvent, SimError> {
        let repo = self.repo_mut(did)?;
        keep_revs_near_now(repo);
        let key = match forgery {
            Some(Forgery::BadSignature) => PrivateKey::generate(repo.key.curve()),
            _ => repo.key.clone(),
        };
        let clock = match forgery {
            Some(Forgery::FutureRev) => repo.clock + FUTURE_REV_AHEAD_MICROS,
            _ => repo.clock,
        };
        let change = match forgery {
            Some(Forgery::Oversized) => Change::CreateSized(path, OVERSIZED_RECORD_BYTES),
            _ => Change::Create(path),
        };
        let mut copy = SigningRepo::from_tree(&repo.did, key, repo.tree.clone(), clock);
        copy.state = repo.state;
        Ok(copy.commit(&[change]))
    }

    /// Publishes `event` under the next seq.
    pub(super) fn emit_commit_event(
        &mut self,
        config: &SimPdsConfig,
        mut event: CommitEvent,
    ) -> Result<u64, SimError> {
        self.emit(config, move |seq| {
            event.seq = seq;
            Frame::Commit(Box::new(event))
        })
    }

    pub(super) fn emit_sync(&mut self, config: &SimPdsConfig, did: &str) -> Result<u64, SimError> {
        let repo = self.repo_mut(did)?;
        keep_revs_near_now(repo);
        let mut event = repo.sync();
        self.emit(config, move |seq| {
            event.seq = seq;
            Frame::Sync(event)
        })
    }

    pub(super) fn subscribe(&self, cursor: Option<u64>) -> Subscription {
        let live = self.live.subscribe();
        let Some(cursor) = cursor else {
            return Subscription::Stream {
                outdated: false,
                backlog: Vec::new(),
                live,
            };
        };
        if cursor > self.head {
            return Subscription::FutureCursor;
        }
        let oldest = self.outbox.frames.front().map(|(seq, _)| *seq);
        let outdated = self.outbox.evicted && oldest.is_some_and(|oldest| cursor + 1 < oldest);
        let backlog = self
            .outbox
            .frames
            .iter()
            .filter(|(seq, _)| *seq > cursor)
            .map(|(_, frame)| frame.clone())
            .collect();
        Subscription::Stream {
            outdated,
            backlog,
            live,
        }
    }

    /// Ends every open connection (their receivers see the channel close).
    pub(super) fn replace_live_channel(&mut self, config: &SimPdsConfig) {
        self.live = broadcast::channel(config.live_buffer_events.max(1)).0;
    }
}

/// How far ahead of the clock a [`Forgery::FutureRev`] commit's rev is: an hour, far past a
/// relay's tolerance (5 minutes).
const FUTURE_REV_AHEAD_MICROS: u64 = 3_600_000_000;
/// The record of a [`Forgery::Oversized`] commit: its blocks pass the 2,000,000-byte limit
/// of `#commit` while the frame stays under the 5 MB message cap.
const OVERSIZED_RECORD_BYTES: usize = 2_100_000;

/// `SigningRepo` advances its clock one second per rev; left alone, a busy account's revs
/// would run ahead of the wall clock and a relay would reject them as future revs. Setting
/// the clock here makes the next rev `max(previous rev + 1 µs, now)`.
fn keep_revs_near_now(repo: &mut SigningRepo) {
    repo.clock = (repo.clock + 1).max(now_micros()).saturating_sub(1_000_000);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_be_bytes().to_vec())
    }

    #[test]
    fn the_outbox_evicts_by_count_and_by_bytes() {
        let config = SimPdsConfig {
            outbox_max_events: 3,
            outbox_max_bytes: 20,
            ..SimPdsConfig::default()
        };
        let mut state = HostState::new(&config);
        for seq in 1..=5 {
            state.publish(seq, frame(seq), &config);
        }
        let kept: Vec<u64> = state.outbox.frames.iter().map(|(s, _)| *s).collect();
        // Three 8-byte frames are 24 bytes: over the byte bound, so only two stay.
        assert_eq!(kept, [4, 5]);
        assert_eq!(state.outbox.bytes, 16);
        assert!(state.outbox.evicted);
        assert_eq!(state.head, 5);
    }

    #[test]
    fn subscriptions_follow_the_cursor_rules() {
        let config = SimPdsConfig {
            outbox_max_events: 3,
            ..SimPdsConfig::default()
        };
        let mut state = HostState::new(&config);
        assert!(matches!(
            state.subscribe(Some(1)),
            Subscription::FutureCursor
        ));
        for seq in 1..=5 {
            state.publish(seq, frame(seq), &config);
        }
        let backlog_of = |sub| match sub {
            Subscription::Stream {
                outdated, backlog, ..
            } => (outdated, backlog),
            Subscription::FutureCursor => panic!("future cursor"),
        };
        assert_eq!(backlog_of(state.subscribe(None)), (false, vec![]));
        assert_eq!(backlog_of(state.subscribe(Some(5))), (false, vec![]));
        assert_eq!(
            backlog_of(state.subscribe(Some(3))),
            (false, vec![frame(4), frame(5)])
        );
        // 3 is the oldest kept, so cursor 2 misses nothing; cursor 1 missed seq 2.
        assert!(!backlog_of(state.subscribe(Some(2))).0);
        assert_eq!(
            backlog_of(state.subscribe(Some(1))),
            (true, vec![frame(3), frame(4), frame(5)])
        );
        assert!(matches!(
            state.subscribe(Some(6)),
            Subscription::FutureCursor
        ));
    }
}
