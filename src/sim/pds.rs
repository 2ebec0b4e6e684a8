//! One simulated PDS host: `subscribeRepos` over a real websocket, `describeServer` and
//! `getRepoStatus`, on its own port of 127.0.0.1, driven by a control handle ([`SimPds`]).
//!
//! **Hostname.** The relay knows a host as `localhost:<port>` and the DID documents name it
//! `http://localhost:<port>`. `PdsEndpoint::parse` accepts that origin (plain http, explicit
//! port), a relay dials it as `ws://localhost:<port>`, and `localhost:PORT` is the one form
//! with a port that an admin `requestCrawl` may add (PROTOCOL.md §7). With
//! [`SimPdsConfig::tls`] the host serves TLS only, and the same names become
//! `https://localhost:<port>` and `wss://localhost:<port>` (a relay stores it with
//! `no_ssl = false`, or an admin adds `https://localhost:<port>`). Hosts differ only by
//! port, so a relay's host-authority check must compare `PdsEndpoint::host` (host and port),
//! not `PdsEndpoint::hostname()` (which drops the port and would make every simulated host
//! "localhost"). The listener binds 127.0.0.1 only; `localhost` resolves there on the test
//! machines, and a resolver that tries `::1` first falls back to it.
//!
//! **Events.** Every event is built by the account's [`SigningRepo`] (signed sync-1.1
//! `#commit`s with real MST diffs, `#sync`) or as a typed `#identity`/`#account`, given this
//! host's next seq and encoded once with
//! [`encode_frame`](crate::atproto::frame::encode_frame). Those bytes are the PDS's original
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
//! **Runtime.** Every host of the process is served by two shared worker threads (each
//! its own actix System, started on first use and kept for the process's life): a host is
//! its own port and accept loop, handed round robin to a worker, which serves the host's
//! actix-web app on each connection it accepts (`actix_http::HttpService`, what
//! `HttpServer` does per worker). So a host costs one listening socket and no thread: 3,000
//! hosts with one subscriber each are about 6,000 file descriptors, where one `HttpServer`
//! per host took two threads and six descriptors per host and ran out of this machine's
//! 20,000 open files before 3,000 hosts (measured; BENCHMARKS.md, "rookery-fleet"). The
//! workers are not the caller's System, so hosts never block the relay under test (whose
//! actors run on the caller's System in the tests), and a host never blocks another for
//! longer than one handler's short critical section. Stopping a host ends its accept loop:
//! the listener is closed before [`SimPds::stop`] returns and exactly its connections are
//! dropped. Control calls (signing, emitting) run on the caller's thread. The state a
//! handler reads is behind a `std::sync::Mutex` held only for short, non-async sections.
//!
//! **Files.** This file is the control handle; `pds/host_state.rs` holds the accounts, the
//! outbox and the cursor rules (everything under the host's lock); `pds/wire.rs` is the
//! shared workers, the accept loops, the websocket sessions and the two XRPC queries.

mod host_state;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use self::host_state::{Account, HostState};
use self::wire::{Listen, Serving, serve};
use super::plc::{PlcEntry, PlcError, SimPlc};
use super::tls::SimTls;
use crate::atproto::frame::{Frame, FrameError, encode_frame, peek_event, resequence};
use crate::atproto::keys::{Curve, PrivateKey, PublicKey};
use crate::atproto::tid::now_micros;
use crate::atproto::validate::RepoState;
use crate::testkit::repo::{Change, SigningRepo};

/// The `Server` header a host sends (websocket upgrade, describeServer) when it plays a relay
/// ([`SimPds::set_relay_header`]); relays refuse upstreams that carry `atproto-relay`.
pub const RELAY_SERVER_HEADER: &str = "rookery-sim (atproto-relay)";

/// The handle domain of simulated accounts (`u<id>.sim.test`).
pub const USER_DOMAIN: &str = ".sim.test";

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
    /// Serve `https`/`wss` with this certificate instead of plain `http`/`ws`.
    pub tls: Option<SimTls>,
}

impl Default for SimPdsConfig {
    fn default() -> Self {
        SimPdsConfig {
            outbox_max_events: 10_000,
            outbox_max_bytes: 64 * 1024 * 1024,
            live_buffer_events: 1024,
            send_timeout: Duration::from_secs(10),
            key_curve: Curve::K256,
            tls: None,
        }
    }
}

/// How a forged `#commit` ([`SimPds::publish_forged`]) is wrong: a relay must drop each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// Signed with a key that is not the account's.
    BadSignature,
    /// A rev an hour ahead of the clock.
    FutureRev,
    /// A record of 2.1 MB: the commit's blocks pass the 2,000,000-byte limit.
    Oversized,
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

struct PdsShared {
    state: Mutex<HostState>,
    config: SimPdsConfig,
    plc: SimPlc,
    port: u16,
    relay_header: AtomicBool,
    /// Websocket sessions end right after the upgrade ([`SimPds::set_accept_then_drop`]).
    accept_then_drop: AtomicBool,
    /// Pause before each frame a session sends, in µs ([`SimPds::set_frame_delay`]).
    frame_delay_micros: AtomicU64,
    /// `None` while stopped.
    server: Mutex<Option<Serving>>,
}

impl PdsShared {
    /// The host state, even after a control call panicked while holding it (a fixture that
    /// cannot be built panics by design): the server must keep answering.
    fn state(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn server(&self) -> MutexGuard<'_, Option<Serving>> {
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
        let state = HostState::new(&config);
        // Bind first to learn the port; the shared state needs it for the endpoint.
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(PdsShared {
            state: Mutex::new(state),
            config,
            plc: plc.clone(),
            port,
            relay_header: AtomicBool::new(false),
            accept_then_drop: AtomicBool::new(false),
            frame_delay_micros: AtomicU64::new(0),
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

    /// Whether the host serves TLS ([`SimPdsConfig::tls`]).
    pub fn is_tls(&self) -> bool {
        self.shared.config.tls.is_some()
    }

    /// `http://localhost:<port>` (`https://` with TLS): the `#atproto_pds` endpoint in this
    /// host's DID documents.
    pub fn endpoint(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.hostname())
    }

    /// `ws://localhost:<port>/xrpc/com.atproto.sync.subscribeRepos` (`wss://` with TLS).
    pub fn subscribe_url(&self) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!(
            "{scheme}://{}/xrpc/com.atproto.sync.subscribeRepos",
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

    /// Changes the account's status without emitting `#account`: an event a relay missed
    /// (only `getRepoStatus` tells).
    pub fn set_status_silently(
        &self,
        did: &str,
        active: bool,
        status: Option<AccountStatus>,
    ) -> Result<(), SimError> {
        let mut state = self.shared.state();
        let account = state.account_mut(did)?;
        account.active = active;
        account.status = status;
        Ok(())
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

    /// Publishes a `#commit` of `did` creating `path` that is wrong as `forgery` says; the
    /// account's repo does not move (its next commit chains from its last valid one).
    /// Returns the seq.
    pub fn publish_forged(
        &self,
        did: &str,
        forgery: Forgery,
        path: String,
    ) -> Result<u64, SimError> {
        let mut state = self.shared.state();
        let event = state.forged_commit(did, Some(forgery), path)?;
        state.emit_commit_event(&self.shared.config, event)
    }

    /// A valid `#commit` of `did` (signed with its key, chained to its last commit) that this
    /// host never publishes, encoded with seq 1: what another host republishes to play one
    /// without authority over the account ([`SimPds::publish_resequenced`]).
    pub fn unpublished_commit(&self, did: &str, path: String) -> Result<Bytes, SimError> {
        let event = self.shared.state().forged_commit(did, None, path)?;
        Ok(Bytes::from(encode_frame(&Frame::Commit(Box::new(event)))?))
    }

    /// Publishes an event frame built elsewhere under this host's next seq, its bytes
    /// re-sequenced as a relay does: a commit of a pre-generated corpus
    /// ([`crate::sim::fleet::corpus`]), or another host's commit (an event this host has no
    /// authority for). Returns the seq.
    pub fn publish_resequenced(&self, frame: &[u8]) -> Result<u64, SimError> {
        let mut state = self.shared.state();
        let seq = state.head + 1;
        let frame = resequence(frame, seq as i64)?;
        state.publish(seq, Bytes::from(frame), &self.shared.config);
        Ok(seq)
    }

    /// The account's handle.
    pub fn handle(&self, did: &str) -> Option<String> {
        Some(self.shared.state().accounts.get(did)?.handle.clone())
    }

    /// A copy of `did`'s repo, to build commits on away from the host's lock.
    pub fn repo_copy(&self, did: &str) -> Result<SigningRepo, SimError> {
        Ok(self.shared.state().repo_mut(did)?.clone())
    }

    /// Makes `repo` (a [`SimPds::repo_copy`] that commits were built on) its account's repo:
    /// the host's next commit of the account chains from the copy's last one.
    pub fn install_repo(&self, repo: SigningRepo) -> Result<(), SimError> {
        let did = repo.did.clone();
        *self.shared.state().repo_mut(&did)? = repo;
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
        self.shared.state().forget_events(&self.shared.config);
    }

    /// Drops every open `subscribeRepos` connection; the listener stays up.
    pub fn drop_connections(&self) {
        self.shared
            .state()
            .replace_live_channel(&self.shared.config);
    }

    /// With `on`, the websocket upgrade and `describeServer` carry
    /// `Server: `[`RELAY_SERVER_HEADER`], so the host looks like a relay (to a relay's
    /// subscriber and to its requestCrawl check).
    pub fn set_relay_header(&self, on: bool) {
        self.shared.relay_header.store(on, Ordering::Relaxed);
    }

    /// With `on`, every `subscribeRepos` upgrade is accepted and the connection dropped at
    /// once, before any frame (a host that accepts then drops).
    pub fn set_accept_then_drop(&self, on: bool) {
        self.shared.accept_then_drop.store(on, Ordering::Relaxed);
    }

    /// Every session waits `delay` before each frame it sends (a slow host; zero: none).
    pub fn set_frame_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared
            .frame_delay_micros
            .store(micros, Ordering::Relaxed);
    }

    /// Stops the listener and drops every connection: a dead host (connections are refused).
    pub async fn stop(&self) {
        let serving = self.shared.server().take();
        self.drop_connections();
        if let Some(serving) = serving {
            serving.stop().await;
        }
    }

    /// Listens again on the same port after [`SimPds::stop`] (a no-op while running); inside
    /// an actix System, like [`SimPds::start`]. The
    /// outbox and seq survive, as they would on a PDS that restarted with its disk.
    pub fn restart(&self) -> std::io::Result<()> {
        let mut server = self.shared.server();
        if server.is_none() {
            *server = Some(serve(&self.shared, Listen::Port(self.shared.port))?);
        }
        Ok(())
    }

    /// Every frame this host published that it still keeps for replay, oldest first, byte
    /// for byte (what a relay should re-emit, apart from seq).
    pub fn published(&self) -> Vec<Bytes> {
        self.shared.state().kept_frames()
    }

    /// The frame published at `seq`, while the outbox still keeps it (a fleet driver hands it
    /// to the coverage checker right after publishing).
    pub fn published_frame(&self, seq: u64) -> Option<Bytes> {
        self.shared.state().frame_at(seq)
    }

    /// Open `subscribeRepos` connections past their replay (a relay that will see every event
    /// pushed from now on).
    pub fn live_connections(&self) -> usize {
        self.shared.state().live_connections()
    }

    pub fn is_running(&self) -> bool {
        self.shared.server().is_some()
    }
}
