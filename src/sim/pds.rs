//! One simulated PDS host: `subscribeRepos` over a real websocket, `describeServer` and
//! `getRepoStatus`, on its own port of 127.0.0.1, driven by a control handle ([`SimPds`]).
//!
//! **Hostname.** The relay knows a host as `localhost:<port>` and the DID documents name it
//! `http://localhost:<port>`. `PdsEndpoint::parse` accepts that origin (plain http, explicit
//! port), a relay dials it as `ws://localhost:<port>`, and `localhost:PORT` is the one form
//! with a port that an admin `requestCrawl` may add (PROTOCOL.md §7). Hosts differ only by
//! port, so a relay's host-authority check must compare `PdsEndpoint::host` (host and port),
//! not `PdsEndpoint::hostname()` (which drops the port and would make every simulated host
//! "localhost"). The listener binds 127.0.0.1 only; `localhost` resolves there on the test
//! machines, and a resolver that tries `::1` first falls back to it.
//!
//! **Events.** Every event is built by the account's [`SigningRepo`] (signed sync-1.1
//! `#commit`s with real MST diffs, `#sync`) or as a typed `#identity`/`#account`, given this
//! host's next seq and encoded once with [`encode_frame`]. Those bytes are the PDS's original
//! frame: they go into the outbox and to every live connection unchanged, so a relay has to
//! re-sequence them, never rebuild them. [`SimPds::push_raw`] sends caller-made bytes
//! (scenario replays, garbage, faults) the same way.
//!
//! **Cursor rules** (PROTOCOL.md §1): no cursor → live only; a cursor → replay `seq > cursor`
//! from the outbox, then live, with no gap and no duplicate (the snapshot and the live
//! subscription are taken under the lock that emitting holds, so every event is in exactly
//! one of them); a cursor older than the outbox → `#info OutdatedCursor` first; a cursor above
//! the head → the error frame `FutureCursor`, then close 1008. What clients send is ignored;
//! pings are answered.
//!
//! **Bounds.** The outbox is bounded in events and in bytes (oldest evicted first). Live
//! events go through one bounded `broadcast` ring shared by all connections of the host: a
//! connection that falls more than [`SimPdsConfig::live_buffer_events`] behind gets
//! `ConsumerTooSlow` and is closed, and a send that the socket does not take within
//! [`SimPdsConfig::send_timeout`] drops the connection, so a stuck client costs no memory.
//! Incoming client frames are capped at 64 KiB.
//!
//! **Runtime.** Each host is one `actix_web::HttpServer` with one worker, started inside the
//! caller's actix System (the `Server` future is spawned there). Tests under
//! `#[actix_rt::test]` and the fleet binary under `#[actix_rt::main]` both provide that
//! System, and no extra System or thread is made per host beyond actix-server's own acceptor
//! and worker threads. A host's websocket sessions run on its worker, so hosts never block
//! one another or the relay under test (whose actors run on the caller's System), and
//! stopping one host (`ServerHandle::stop`) closes its port and drops exactly its
//! connections. The cost, measured with 1,000 hosts each holding one idle subscriber: two
//! threads and about 0.25 MB per host, started and connected in about 2 s; so 3,000 hosts
//! are some 6,000 mostly idle threads and under 1 GB. Should the fleet need less, only
//! `serve` has to change (e.g. to one accept loop per host on a shared worker). The state
//! a handler reads is behind a `std::sync::Mutex` held only for short, non-async sections.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderValue, SERVER};
use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::plc::{PlcEntry, PlcError, SimPlc};
use crate::atproto::frame::{
    AccountEvent, CONSUMER_TOO_SLOW, FUTURE_CURSOR, Frame, FrameError, IdentityEvent,
    OUTDATED_CURSOR, encode_error, encode_frame, encode_info, peek_event,
};
use crate::atproto::keys::{Curve, PrivateKey, PublicKey};
use crate::atproto::validate::RepoState;
use crate::testkit::repo::{Change, EVENT_TIME, SigningRepo};

/// The `Server` header a host sends on the websocket upgrade when it plays a relay
/// ([`SimPds::set_relay_header`]); relays refuse upstreams that carry `atproto-relay`.
pub const RELAY_SERVER_HEADER: &str = "rookery-sim (atproto-relay)";

/// The handle domain of simulated accounts (`u<id>.sim.test`).
pub const USER_DOMAIN: &str = ".sim.test";

/// Largest frame a client may send (clients have nothing to say; this only bounds memory).
const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

/// Limits of one host.
#[derive(Debug, Clone)]
pub struct SimPdsConfig {
    /// Events kept for cursor replay.
    pub outbox_max_events: usize,
    /// Bytes kept for cursor replay.
    pub outbox_max_bytes: usize,
    /// How far (in events) a live connection may fall behind before `ConsumerTooSlow`.
    pub live_buffer_events: usize,
    /// How long one websocket send may wait for the socket before the connection is dropped.
    pub send_timeout: Duration,
    /// Curve of new account keys.
    pub key_curve: Curve,
}

impl Default for SimPdsConfig {
    fn default() -> Self {
        SimPdsConfig {
            outbox_max_events: 10_000,
            outbox_max_bytes: 64 * 1024 * 1024,
            live_buffer_events: 1024,
            send_timeout: Duration::from_secs(10),
            key_curve: Curve::K256,
        }
    }
}

/// An account status a PDS announces in `#account` (the lexicon's known values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Takendown,
    Suspended,
    Deleted,
    Deactivated,
    Desynchronized,
    Throttled,
}

impl AccountStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountStatus::Takendown => "takendown",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Deleted => "deleted",
            AccountStatus::Deactivated => "deactivated",
            AccountStatus::Desynchronized => "desynchronized",
            AccountStatus::Throttled => "throttled",
        }
    }
}

/// Errors of the control API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("account {0} is not on this host")]
    UnknownAccount(String),
    #[error("account {0} has migrated away from this host")]
    MovedAway(String),
    #[error("an account cannot migrate to the host it is on")]
    SameHost,
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] FrameError),
    #[error(transparent)]
    Plc(#[from] PlcError),
}

/// One account as this host holds it.
struct Account {
    handle: String,
    /// `None` once the repo migrated to another host (the old host keeps the account,
    /// deactivated, as a real PDS does).
    repo: Option<SigningRepo>,
    active: bool,
    status: Option<AccountStatus>,
}

/// Recent frames for cursor replay, bounded in count and bytes.
struct Outbox {
    /// `(seq, frame)` in emission order. Raw frames carry the seq found in them (or the head
    /// when they have none), so replay order is always emission order.
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Whether anything was evicted: only then can a cursor be "too old".
    evicted: bool,
}

/// What a new connection starts from.
enum Subscription {
    /// Replay `backlog` (after an `#info OutdatedCursor` when `outdated`), then follow `live`.
    Stream {
        outdated: bool,
        backlog: Vec<Bytes>,
        live: broadcast::Receiver<Bytes>,
    },
    /// The cursor is above the head.
    FutureCursor,
}

struct HostState {
    accounts: HashMap<String, Account>,
    outbox: Outbox,
    /// Last seq this host assigned (0: none yet).
    head: u64,
    /// Live frames to every connection. Replacing the sender ends every connection, which is
    /// how [`SimPds::drop_connections`], `reset` and `stop` reach sessions on the worker.
    live: broadcast::Sender<Bytes>,
}

impl HostState {
    fn account_mut(&mut self, did: &str) -> Result<&mut Account, SimError> {
        self.accounts
            .get_mut(did)
            .ok_or_else(|| SimError::UnknownAccount(did.to_string()))
    }

    fn repo_mut(&mut self, did: &str) -> Result<&mut SigningRepo, SimError> {
        self.account_mut(did)?
            .repo
            .as_mut()
            .ok_or_else(|| SimError::MovedAway(did.to_string()))
    }

    /// Stores and broadcasts one frame under `seq`.
    fn publish(&mut self, seq: u64, frame: Bytes, config: &SimPdsConfig) {
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

    fn emit_identity(&mut self, config: &SimPdsConfig, did: &str) -> Result<u64, SimError> {
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

    fn emit_account(&mut self, config: &SimPdsConfig, did: &str) -> Result<u64, SimError> {
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

    fn emit_commit(
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

    fn emit_sync(&mut self, config: &SimPdsConfig, did: &str) -> Result<u64, SimError> {
        let repo = self.repo_mut(did)?;
        keep_revs_near_now(repo);
        let mut event = repo.sync();
        self.emit(config, move |seq| {
            event.seq = seq;
            Frame::Sync(event)
        })
    }

    fn subscribe(&self, cursor: Option<u64>) -> Subscription {
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
    fn replace_live_channel(&mut self, config: &SimPdsConfig) {
        self.live = broadcast::channel(config.live_buffer_events.max(1)).0;
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `SigningRepo` advances its clock one second per rev; left alone, a busy account's revs
/// would run ahead of the wall clock and a relay would reject them as future revs. Setting
/// the clock here makes the next rev `max(previous rev + 1 µs, now)`.
fn keep_revs_near_now(repo: &mut SigningRepo) {
    repo.clock = (repo.clock + 1).max(now_micros()).saturating_sub(1_000_000);
}

struct PdsShared {
    state: Mutex<HostState>,
    config: SimPdsConfig,
    plc: SimPlc,
    port: u16,
    relay_header: AtomicBool,
    /// `None` while stopped.
    server: Mutex<Option<ServerHandle>>,
}

impl PdsShared {
    /// The host state, even after a control call panicked while holding it (a fixture that
    /// cannot be built panics by design): the server must keep answering.
    fn state(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn server(&self) -> MutexGuard<'_, Option<ServerHandle>> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running simulated PDS host. Cheap to clone; every clone controls the same host.
#[derive(Clone)]
pub struct SimPds {
    shared: Arc<PdsShared>,
}

impl SimPds {
    /// Starts a host on a free port of 127.0.0.1 whose accounts are registered in `plc`. Must
    /// be called inside an actix System.
    pub fn start(plc: &SimPlc, config: SimPdsConfig) -> std::io::Result<SimPds> {
        let (live, _) = broadcast::channel(config.live_buffer_events.max(1));
        let state = HostState {
            accounts: HashMap::new(),
            outbox: Outbox {
                frames: VecDeque::new(),
                bytes: 0,
                evicted: false,
            },
            head: 0,
            live,
        };
        // Bind first to learn the port; the shared state needs it for the endpoint.
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(PdsShared {
            state: Mutex::new(state),
            config,
            plc: plc.clone(),
            port,
            relay_header: AtomicBool::new(false),
            server: Mutex::new(None),
        });
        let handle = serve(&shared, Listen::Listener(listener))?;
        *shared.server() = Some(handle);
        Ok(SimPds { shared })
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `localhost:<port>`: the host as a relay's host table and `requestCrawl` name it.
    pub fn hostname(&self) -> String {
        format!("localhost:{}", self.shared.port)
    }

    /// `http://localhost:<port>`: the `#atproto_pds` endpoint in this host's DID documents.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.hostname())
    }

    /// `ws://localhost:<port>/xrpc/com.atproto.sync.subscribeRepos`.
    pub fn subscribe_url(&self) -> String {
        format!(
            "ws://{}/xrpc/com.atproto.sync.subscribeRepos",
            self.hostname()
        )
    }

    /// The service DID `describeServer` reports: `did:web:localhost%3A<port>`.
    pub fn service_did(&self) -> String {
        format!("did:web:localhost%3A{}", self.shared.port)
    }

    pub fn plc(&self) -> &SimPlc {
        &self.shared.plc
    }

    /// The last seq this host assigned (0 before the first event or after [`SimPds::reset`]).
    pub fn head_seq(&self) -> u64 {
        self.shared.state().head
    }

    /// The state of `did`'s repo after its last event (what a relay that saw all has stored).
    pub fn repo_state(&self, did: &str) -> Option<RepoState> {
        let state = self.shared.state();
        state.accounts.get(did)?.repo.as_ref()?.state
    }

    /// The current signing key of `did`, while its repo is here.
    pub fn signing_key(&self, did: &str) -> Option<PublicKey> {
        let state = self.shared.state();
        Some(state.accounts.get(did)?.repo.as_ref()?.public())
    }

    /// The DIDs of accounts on this host (migrated-away ones included).
    pub fn accounts(&self) -> Vec<String> {
        self.shared.state().accounts.keys().cloned().collect()
    }

    /// Creates an empty account; see [`SimPds::create_account_with`].
    pub fn create_account(&self) -> Result<String, SimError> {
        self.create_account_with(0)
    }

    /// Creates an account holding `records` records with a fresh key, registers it in the
    /// PLC with this host as its PDS, and emits `#identity`, `#account` (active) and `#sync`,
    /// as a PDS does on account creation (PROTOCOL.md §7). Returns the new DID.
    pub fn create_account_with(&self, records: usize) -> Result<String, SimError> {
        let plc = &self.shared.plc;
        let did = plc.new_did();
        let handle = format!("u{}{USER_DOMAIN}", &did["did:plc:".len()..][..8]);
        let repo = SigningRepo::new(
            &did,
            self.shared.config.key_curve,
            records,
            now_micros().saturating_sub(1_000_000),
        );
        plc.register(
            &did,
            PlcEntry {
                handle: handle.clone(),
                signing_key: repo.public(),
                pds_endpoint: self.endpoint(),
                tombstoned: false,
            },
        );
        let config = &self.shared.config;
        let mut state = self.shared.state();
        state.accounts.insert(
            did.clone(),
            Account {
                handle,
                repo: Some(repo),
                active: true,
                status: None,
            },
        );
        state.emit_identity(config, &did)?;
        state.emit_account(config, &did)?;
        state.emit_sync(config, &did)?;
        Ok(did)
    }

    /// Applies `changes` to `did`'s repo and emits the signed `#commit`; returns its seq.
    /// Panics if a change does not fit the repo (creating a path that exists, …), like
    /// [`SigningRepo::commit`]. Commits are emitted whatever the account's status, so tests
    /// can check that a relay drops them.
    pub fn commit(&self, did: &str, changes: &[Change]) -> Result<u64, SimError> {
        self.shared
            .state()
            .emit_commit(&self.shared.config, did, changes)
    }

    /// Emits a `#sync` of `did`'s current repo at a fresh rev; returns its seq.
    pub fn sync(&self, did: &str) -> Result<u64, SimError> {
        self.shared.state().emit_sync(&self.shared.config, did)
    }

    /// Emits an `#identity` with the account's handle; returns its seq.
    pub fn identity(&self, did: &str) -> Result<u64, SimError> {
        self.shared.state().emit_identity(&self.shared.config, did)
    }

    /// Changes the handle in the PLC and emits `#identity`; returns its seq.
    pub fn change_handle(&self, did: &str, handle: &str) -> Result<u64, SimError> {
        let mut state = self.shared.state();
        state.account_mut(did)?.handle = handle.to_string();
        self.shared.plc.set_handle(did, handle)?;
        state.emit_identity(&self.shared.config, did)
    }

    /// Sets the account's status and emits `#account`; returns its seq. `active` with a status
    /// is allowed (`desynchronized` and `throttled` may be active).
    pub fn set_status(
        &self,
        did: &str,
        active: bool,
        status: Option<AccountStatus>,
    ) -> Result<u64, SimError> {
        let mut state = self.shared.state();
        let account = state.account_mut(did)?;
        account.active = active;
        account.status = status;
        state.emit_account(&self.shared.config, did)
    }

    /// `#account {active: false, status: deactivated}`.
    pub fn deactivate(&self, did: &str) -> Result<u64, SimError> {
        self.set_status(did, false, Some(AccountStatus::Deactivated))
    }

    /// `#account {active: false, status: deleted}` (the PLC entry stays; see
    /// [`SimPlc::tombstone`]).
    pub fn delete(&self, did: &str) -> Result<u64, SimError> {
        self.set_status(did, false, Some(AccountStatus::Deleted))
    }

    /// `#account {active: true}` then a fresh `#sync`, as a PDS does on reactivation; returns
    /// the seq of the `#sync`.
    pub fn reactivate(&self, did: &str) -> Result<u64, SimError> {
        let mut state = self.shared.state();
        let account = state.account_mut(did)?;
        account.active = true;
        account.status = None;
        state.emit_account(&self.shared.config, did)?;
        state.emit_sync(&self.shared.config, did)
    }

    /// Gives `did` a new signing key (same curve) and publishes it in the PLC. With
    /// `announce`, emits `#identity` (returned); without, the relay learns of the rotation
    /// only when a signature fails.
    pub fn rotate_key(&self, did: &str, announce: bool) -> Result<Option<u64>, SimError> {
        let mut state = self.shared.state();
        let repo = state.repo_mut(did)?;
        repo.key = PrivateKey::generate(repo.key.curve());
        self.shared.plc.set_key(did, repo.public())?;
        if announce {
            Ok(Some(state.emit_identity(&self.shared.config, did)?))
        } else {
            Ok(None)
        }
    }

    /// Moves `did` to `target` as an account migration does (PROTOCOL.md §7): the repo gets a
    /// new key, the PLC names the new key and `target`'s endpoint, `target` emits `#identity`,
    /// `#account` (active) and a `#commit` (no ops) signed with the new key at a higher rev,
    /// and this host then emits `#account` (deactivated) and keeps the account deactivated.
    pub fn migrate(&self, did: &str, target: &SimPds) -> Result<(), SimError> {
        if Arc::ptr_eq(&self.shared, &target.shared) {
            return Err(SimError::SameHost);
        }
        // One host's lock at a time, so two migrations in opposite directions cannot deadlock.
        let (handle, mut repo) = {
            let mut state = self.shared.state();
            let account = state.account_mut(did)?;
            let repo = account
                .repo
                .take()
                .ok_or_else(|| SimError::MovedAway(did.to_string()))?;
            account.active = false;
            account.status = Some(AccountStatus::Deactivated);
            (account.handle.clone(), repo)
        };
        repo.key = PrivateKey::generate(repo.key.curve());
        let plc = &self.shared.plc;
        plc.set_key(did, repo.public())?;
        plc.set_pds(did, &target.endpoint())?;
        {
            let config = &target.shared.config;
            let mut state = target.shared.state();
            state.accounts.insert(
                did.to_string(),
                Account {
                    handle,
                    repo: Some(repo),
                    active: true,
                    status: None,
                },
            );
            state.emit_identity(config, did)?;
            state.emit_account(config, did)?;
            state.emit_commit(config, did, &[])?;
        }
        self.shared.state().emit_account(&self.shared.config, did)?;
        Ok(())
    }

    /// Sends `frame` to every live connection and keeps it for replay, byte for byte as
    /// given. The seq inside is the caller's: it is read (when the frame has one) only to
    /// order replay and to move the head up, never written.
    pub fn push_raw(&self, frame: impl Into<Bytes>) {
        let frame = frame.into();
        let mut state = self.shared.state();
        let seq = peek_event(&frame)
            .ok()
            .and_then(|peek| peek.seq)
            .unwrap_or(state.head);
        state.publish(seq, frame, &self.shared.config);
    }

    /// A PDS that lost its event state: the outbox and the seq are forgotten (the next event
    /// is seq 1) and open connections are dropped, so a relay that reconnects with its old
    /// cursor gets `FutureCursor`. Accounts and repos are kept.
    pub fn reset(&self) {
        let mut state = self.shared.state();
        state.outbox = Outbox {
            frames: VecDeque::new(),
            bytes: 0,
            evicted: false,
        };
        state.head = 0;
        state.replace_live_channel(&self.shared.config);
    }

    /// Drops every open `subscribeRepos` connection; the listener stays up.
    pub fn drop_connections(&self) {
        self.shared
            .state()
            .replace_live_channel(&self.shared.config);
    }

    /// With `on`, the websocket upgrade carries `Server: `[`RELAY_SERVER_HEADER`], so the
    /// host looks like a relay.
    pub fn set_relay_header(&self, on: bool) {
        self.shared.relay_header.store(on, Ordering::Relaxed);
    }

    /// Stops the listener and drops every connection: a dead host (connections are refused).
    pub async fn stop(&self) {
        let handle = self.shared.server().take();
        self.drop_connections();
        if let Some(handle) = handle {
            handle.stop(false).await;
        }
    }

    /// Listens again on the same port after [`SimPds::stop`] (a no-op while running). The
    /// outbox and seq survive, as they would on a PDS that restarted with its disk.
    pub fn restart(&self) -> std::io::Result<()> {
        let mut server = self.shared.server();
        if server.is_none() {
            *server = Some(serve(&self.shared, Listen::Port(self.shared.port))?);
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.shared.server().is_some()
    }
}

enum Listen {
    Listener(std::net::TcpListener),
    Port(u16),
}

/// Starts the host's actix-web server (one worker) and spawns it on the current System.
fn serve(shared: &Arc<PdsShared>, listen: Listen) -> std::io::Result<ServerHandle> {
    let data = web::Data::from(shared.clone());
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .route(
                "/xrpc/com.atproto.sync.subscribeRepos",
                web::get().to(subscribe_repos),
            )
            .route(
                "/xrpc/com.atproto.server.describeServer",
                web::get().to(describe_server),
            )
            .route(
                "/xrpc/com.atproto.sync.getRepoStatus",
                web::get().to(get_repo_status),
            )
            .default_service(web::to(crate::http::not_found))
    })
    .workers(1)
    // Zero: a finished or dropped session closes its socket at once, as a dying PDS's does,
    // instead of lingering a second for the client to hang up.
    .client_disconnect_timeout(Duration::ZERO)
    .shutdown_timeout(1)
    .disable_signals();
    let server = match listen {
        Listen::Listener(listener) => server.listen(listener)?,
        Listen::Port(port) => server.bind(("127.0.0.1", port))?,
    }
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

fn xrpc_error(status: actix_web::http::StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": error, "message": message }))
}

/// The value of query parameter `name`, if present.
fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]`.
async fn subscribe_repos(
    req: HttpRequest,
    body: web::Payload,
    host: web::Data<PdsShared>,
) -> Result<HttpResponse, actix_web::Error> {
    let cursor = match query_param(&req, "cursor").map(|c| c.parse::<u64>()) {
        None => None,
        Some(Ok(cursor)) => Some(cursor),
        Some(Err(_)) => {
            return Ok(xrpc_error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "cursor must be a non-negative integer",
            ));
        }
    };
    let (mut response, session, stream) = actix_ws::handle(&req, body)?;
    if host.relay_header.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(SERVER, HeaderValue::from_static(RELAY_SERVER_HEADER));
    }
    let subscription = host.state().subscribe(cursor);
    actix_rt::spawn(run_session(
        session,
        stream,
        subscription,
        host.config.send_timeout,
    ));
    Ok(response)
}

/// What a session sends next.
enum Outgoing {
    Frame(Bytes),
    /// The connection fell further behind than the live ring holds.
    TooSlow,
    /// The host dropped its connections.
    Dropped,
}

/// The backlog first, then live frames. Cancel-safe: popping the backlog completes at once
/// and `broadcast::Receiver::recv` loses nothing when cancelled.
async fn next_outgoing(
    backlog: &mut VecDeque<Bytes>,
    live: &mut broadcast::Receiver<Bytes>,
) -> Outgoing {
    // A dropped connection must end even in the middle of a long replay.
    if live.is_closed() {
        return Outgoing::Dropped;
    }
    if let Some(frame) = backlog.pop_front() {
        return Outgoing::Frame(frame);
    }
    match live.recv().await {
        Ok(frame) => Outgoing::Frame(frame),
        Err(broadcast::error::RecvError::Lagged(_)) => Outgoing::TooSlow,
        Err(broadcast::error::RecvError::Closed) => Outgoing::Dropped,
    }
}

/// Sends an error frame and closes with 1008 and the error name, as the reference PDS does.
async fn close_with_error(mut session: Session, error: &str, message: &str, timeout: Duration) {
    let Ok(frame) = encode_error(error, Some(message)) else {
        return;
    };
    if !matches!(
        tokio::time::timeout(timeout, session.binary(frame)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let reason = CloseReason {
        code: CloseCode::Policy,
        description: Some(error.to_string()),
    };
    let _ = tokio::time::timeout(timeout, session.close(Some(reason))).await;
}

/// One `subscribeRepos` connection: replay, then live; answers pings, ignores everything
/// else the client sends, and ends when the client goes, the host drops it, or a send stalls.
async fn run_session(
    mut session: Session,
    stream: MessageStream,
    subscription: Subscription,
    send_timeout: Duration,
) {
    let (outdated, backlog, mut live) = match subscription {
        Subscription::FutureCursor => {
            close_with_error(
                session,
                FUTURE_CURSOR,
                "cursor is ahead of the stream",
                send_timeout,
            )
            .await;
            return;
        }
        Subscription::Stream {
            outdated,
            backlog,
            live,
        } => (outdated, backlog, live),
    };
    let mut backlog = VecDeque::from(backlog);
    if outdated
        && let Ok(info) = encode_info(OUTDATED_CURSOR, Some("cursor is older than the outbox"))
    {
        backlog.push_front(Bytes::from(info));
    }
    let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME_BYTES);
    loop {
        let outgoing = tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Ping(payload))) => {
                    match tokio::time::timeout(send_timeout, session.pong(&payload)).await {
                        Ok(Ok(())) => continue,
                        _ => return,
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // A server ignores what the client sends (PROTOCOL.md §1).
                Some(Ok(_)) => continue,
            },
            outgoing = next_outgoing(&mut backlog, &mut live) => outgoing,
        };
        match outgoing {
            Outgoing::Frame(frame) => {
                if !matches!(
                    tokio::time::timeout(send_timeout, session.binary(frame)).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Outgoing::TooSlow => {
                close_with_error(
                    session,
                    CONSUMER_TOO_SLOW,
                    "consumer fell too far behind",
                    send_timeout,
                )
                .await;
                return;
            }
            // Returning drops the session: the connection ends without a close frame, as
            // when a PDS process dies.
            Outgoing::Dropped => return,
        }
    }
}

/// `GET /xrpc/com.atproto.server.describeServer`.
async fn describe_server(host: web::Data<PdsShared>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "did": format!("did:web:localhost%3A{}", host.port),
        "availableUserDomains": [USER_DOMAIN],
    }))
}

/// `GET /xrpc/com.atproto.sync.getRepoStatus?did=`.
async fn get_repo_status(req: HttpRequest, host: web::Data<PdsShared>) -> HttpResponse {
    let Some(did) = query_param(&req, "did") else {
        return xrpc_error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "did is required",
        );
    };
    let state = host.state();
    let Some(account) = state.accounts.get(&did) else {
        return xrpc_error(
            actix_web::http::StatusCode::NOT_FOUND,
            "RepoNotFound",
            "no repo for this DID",
        );
    };
    let mut body = serde_json::json!({ "did": did, "active": account.active });
    if let Some(status) = account.status {
        body["status"] = status.as_str().into();
    }
    if let Some(repo_state) = account.repo.as_ref().and_then(|repo| repo.state) {
        body["rev"] = repo_state.rev.to_string().into();
    }
    HttpResponse::Ok().json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_state(config: &SimPdsConfig) -> HostState {
        HostState {
            accounts: HashMap::new(),
            outbox: Outbox {
                frames: VecDeque::new(),
                bytes: 0,
                evicted: false,
            },
            head: 0,
            live: broadcast::channel(config.live_buffer_events).0,
        }
    }

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
        let mut state = host_state(&config);
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
        let mut state = host_state(&config);
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

    #[actix_rt::test]
    async fn a_lagging_session_is_too_slow_and_a_replaced_channel_drops_it() {
        let config = SimPdsConfig {
            live_buffer_events: 2,
            ..SimPdsConfig::default()
        };
        let mut state = host_state(&config);
        let mut backlog = VecDeque::from([frame(1)]);
        let mut live = state.live.subscribe();
        for seq in 2..=5 {
            state.publish(seq, frame(seq), &config);
        }
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::Frame(f) if f == frame(1)
        ));
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::TooSlow
        ));

        let mut backlog = VecDeque::from([frame(1)]);
        let mut live = state.live.subscribe();
        state.replace_live_channel(&config);
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::Dropped
        ));
    }
}
