//! WriteBehind: writes upstream cursors and account sync state to Postgres, batched, behind
//! the event log.
//!
//! Owns nothing but a schedule: the pending writes live in [`PendingWrites`], a small shared
//! map that the Persister fills after each durable batch (including the upstream seqs the
//! ValidatorShards dropped on purpose, which reach it through the Sequencer, in order). Every `flush_every` the actor takes everything that
//! changed and writes it in **one statement per table** (lesson 5: never one statement per
//! host), through a [`StateSink`] (Postgres in production, an in-memory fake in paused-clock
//! tests).
//!
//! What it never does:
//! - it never touches a host's `status` (and never lowers `last_seq`): a cursor flush can not
//!   undo a ban or an `idle` (PROTOCOL.md §10; indigo's flush can);
//! - it never blocks ingest: if Postgres is unreachable, the writes stay pending (merged with
//!   newer ones, so memory stays bounded by the number of hosts and accounts), a retry is
//!   scheduled with backoff on tokio time, and the shared `degraded` flag is raised for
//!   readiness (lesson 18: DB trouble is "degraded", not death). Nothing is lost.
//!
//! Lessons prevented: 5 (per-host cursor writes), 13 (state only in memory: it reaches
//! Postgres within seconds), 18.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio::sync::oneshot;

use super::obs::{ActorObs, ObservedMessage};
use super::sequencer::EventKind;
use crate::atproto::validate::stored_state_of;
use crate::store::event_log::{EventLogError, EventLogReader};
use crate::store::postgres::{Db, DbError};

// ------------------------------------------------------------------------------------------
// Data

/// The verified commit state of an account (`account_sync_state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub rev: String,
    pub commit_cid: String,
    pub data_cid: String,
}

/// A write-behind update of one account, produced by its ValidatorShard with the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStateUpdate {
    /// `accounts.uid` (the shard knows it: it created or loaded the account).
    pub uid: i64,
    /// New sync state (`#commit`, `#sync`); `None` leaves it unchanged.
    pub sync: Option<SyncState>,
    /// New upstream status (`#account`); `None` leaves it unchanged.
    pub upstream_status: Option<String>,
}

impl AccountStateUpdate {
    /// Folds a newer update for the same account into this one.
    fn absorb(&mut self, newer: AccountStateUpdate) {
        if newer.sync.is_some() {
            self.sync = newer.sync;
        }
        if newer.upstream_status.is_some() {
            self.upstream_status = newer.upstream_status;
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    cursors: HashMap<i64, i64>,
    accounts: HashMap<i64, AccountStateUpdate>,
    /// Per host, how many times its cursor was reset ([`PendingWrites::reset_cursor`]):
    /// cursor trackers of an older generation (the connection that got `FutureCursor`)
    /// can no longer raise it.
    generations: HashMap<i64, u64>,
    /// Per host, the highest cursor recorded in its current generation, kept across flushes:
    /// where its next connection resumes. Marks of a connection that ended complete later
    /// (their events were in flight); the supervisor redials from here, not from the cursor
    /// the connection had when it ended, or a fatal frame right after an event in flight
    /// would be asked for again on every reconnect.
    resume: HashMap<i64, i64>,
    /// The durable head whose events' account updates are all recorded here (or written).
    durable_seq: u64,
}

impl Pending {
    fn raise_cursor(&mut self, host_id: i64, upstream_seq: i64) {
        for map in [&mut self.cursors, &mut self.resume] {
            let e = map.entry(host_id).or_insert(upstream_seq);
            *e = (*e).max(upstream_seq);
        }
    }
}

/// Writes waiting for the next flush: at most one entry per host and per account.
#[derive(Clone, Debug, Default)]
pub struct PendingWrites(Arc<Mutex<Pending>>);

impl PendingWrites {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic elsewhere while holding this tiny lock leaves plain maps behind: still valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `host_id`'s events up to `upstream_seq` are durable or deliberately
    /// dropped. Cursors only move forward. Called by a host's `upstream_cursor::HostCursor`
    /// when the prefix of finished seqs grows, so a cursor never passes an event of the same
    /// host that is still in flight.
    pub fn record_cursor(&self, host_id: i64, upstream_seq: i64) {
        self.lock().raise_cursor(host_id, upstream_seq);
    }

    /// The cursor `host_id`'s next connection resumes from, as far as this process knows
    /// (`None`: nothing recorded since start or since its last reset).
    pub fn resume_cursor(&self, host_id: i64) -> Option<i64> {
        self.lock().resume.get(&host_id).copied()
    }

    /// The cursor generation of `host_id` (0 until its cursor is first reset). A cursor
    /// tracker records under the generation it was created in.
    pub fn cursor_generation(&self, host_id: i64) -> u64 {
        self.lock().generations.get(&host_id).copied().unwrap_or(0)
    }

    /// Like [`PendingWrites::record_cursor`], but ignored when `generation` is older than
    /// the host's current one: marks of a connection whose cursor was reset complete late
    /// (their events were in flight) and must not undo the reset.
    pub fn record_cursor_in(&self, host_id: i64, generation: u64, upstream_seq: i64) {
        let mut p = self.lock();
        if p.generations.get(&host_id).copied().unwrap_or(0) != generation {
            return;
        }
        p.raise_cursor(host_id, upstream_seq);
    }

    /// Forgets `host_id`'s pending cursor and starts a new generation (upstream
    /// `FutureCursor`). The caller writes `last_seq = 0` itself, after the write-behind's
    /// running flush ended ([`FlushNow`]): this map only ever raises `last_seq`.
    pub fn reset_cursor(&self, host_id: i64) {
        let mut p = self.lock();
        p.cursors.remove(&host_id);
        p.resume.remove(&host_id);
        *p.generations.entry(host_id).or_insert(0) += 1;
    }

    /// Records an account update; a later update of the same account wins field by field.
    pub fn record_account(&self, update: AccountStateUpdate) {
        let mut p = self.lock();
        match p.accounts.get_mut(&update.uid) {
            Some(existing) => existing.absorb(update),
            None => {
                p.accounts.insert(update.uid, update);
            }
        }
    }

    /// Records that every event up to `seq` is durable and its account update recorded
    /// (the Persister calls it after a batch's updates).
    pub fn record_durable(&self, seq: u64) {
        let mut p = self.lock();
        p.durable_seq = p.durable_seq.max(seq);
    }

    /// Number of (cursors, accounts) waiting.
    pub fn len(&self) -> (usize, usize) {
        let p = self.lock();
        (p.cursors.len(), p.accounts.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    fn take_cursors(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<_> = self.lock().cursors.drain().collect();
        v.sort_unstable();
        v
    }

    #[cfg(test)]
    fn take_accounts(&self) -> Vec<AccountStateUpdate> {
        self.take_accounts_with_checkpoint().0
    }

    /// The pending account updates and, taken in the same step, the seq they complete: once
    /// they are written, account state covers every event up to it.
    fn take_accounts_with_checkpoint(&self) -> (Vec<AccountStateUpdate>, u64) {
        let mut p = self.lock();
        let mut v: Vec<_> = p.accounts.drain().map(|(_, a)| a).collect();
        v.sort_unstable_by_key(|a| a.uid);
        (v, p.durable_seq)
    }

    /// Puts back cursors whose write failed (newer values recorded meanwhile win).
    fn restore_cursors(&self, cursors: Vec<(i64, i64)>) {
        for (host, seq) in cursors {
            self.record_cursor(host, seq);
        }
    }

    /// Puts back account updates whose write failed, under any newer ones.
    fn restore_accounts(&self, accounts: Vec<AccountStateUpdate>) {
        let mut p = self.lock();
        for mut older in accounts {
            if let Some(newer) = p.accounts.remove(&older.uid) {
                older.absorb(newer);
            }
            p.accounts.insert(older.uid, older);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Sink

/// Where the batched writes go. Each call is one statement.
pub trait StateSink: Send + Sync + 'static {
    /// Raises `hosts.last_seq` to each value (never lowers it, never touches `status`).
    fn write_cursors(&self, cursors: Vec<(i64, i64)>) -> BoxFuture<'static, Result<u64, DbError>>;
    /// Upserts `account_sync_state`, sets `accounts.upstream_status` where given and raises
    /// the account-state checkpoint to `checkpoint`, in one statement.
    fn write_accounts(
        &self,
        accounts: Vec<AccountStateUpdate>,
        checkpoint: u64,
    ) -> BoxFuture<'static, Result<u64, DbError>>;
}

/// One statement for all changed cursors; `GREATEST` semantics through the `WHERE`.
pub const CURSORS_SQL: &str = "\
UPDATE hosts AS h SET last_seq = v.seq, updated_at = now() \
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, seq) \
WHERE h.id = v.id AND v.seq > h.last_seq";

/// One statement for all changed accounts: statuses in a CTE, sync state upserted. Updates
/// for an account row that does not exist (yet) are skipped rather than failing the batch.
pub const ACCOUNTS_SQL: &str = "\
WITH v AS ( \
  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
    AS v(uid, rev, commit_cid, data_cid, upstream_status) \
), statuses AS ( \
  UPDATE accounts AS a SET upstream_status = v.upstream_status, updated_at = now() \
  FROM v WHERE a.uid = v.uid AND v.upstream_status IS NOT NULL \
  AND a.upstream_status IS DISTINCT FROM v.upstream_status \
  RETURNING a.uid \
), checkpoint AS ( \
  INSERT INTO relay_checkpoint (id, account_state_seq) VALUES (1, $6) \
  ON CONFLICT (id) DO UPDATE SET account_state_seq = \
    GREATEST(relay_checkpoint.account_state_seq, EXCLUDED.account_state_seq) \
  RETURNING 1 \
) \
INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid, updated_at) \
SELECT v.uid, v.rev, v.commit_cid, v.data_cid, now() FROM v JOIN accounts AS a ON a.uid = v.uid \
WHERE v.rev IS NOT NULL \
ON CONFLICT (uid) DO UPDATE SET rev = EXCLUDED.rev, commit_cid = EXCLUDED.commit_cid, \
  data_cid = EXCLUDED.data_cid, updated_at = now()";

/// The production sink.
#[derive(Clone, Debug)]
pub struct PostgresSink {
    db: Db,
}

impl PostgresSink {
    pub fn new(db: Db) -> PostgresSink {
        PostgresSink { db }
    }
}

impl StateSink for PostgresSink {
    fn write_cursors(&self, cursors: Vec<(i64, i64)>) -> BoxFuture<'static, Result<u64, DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let (ids, seqs): (Vec<i64>, Vec<i64>) = cursors.into_iter().unzip();
            let client = db.client().await?;
            Ok(client.execute(CURSORS_SQL, &[&ids, &seqs]).await?)
        })
    }

    fn write_accounts(
        &self,
        accounts: Vec<AccountStateUpdate>,
        checkpoint: u64,
    ) -> BoxFuture<'static, Result<u64, DbError>> {
        let db = self.db.clone();
        let checkpoint = i64::try_from(checkpoint).unwrap_or(i64::MAX);
        Box::pin(async move {
            let n = accounts.len();
            let mut uids = Vec::with_capacity(n);
            let mut revs = Vec::with_capacity(n);
            let mut commits = Vec::with_capacity(n);
            let mut datas = Vec::with_capacity(n);
            let mut statuses = Vec::with_capacity(n);
            for a in accounts {
                uids.push(a.uid);
                let (rev, commit, data) = match a.sync {
                    Some(s) => (Some(s.rev), Some(s.commit_cid), Some(s.data_cid)),
                    None => (None, None, None),
                };
                revs.push(rev);
                commits.push(commit);
                datas.push(data);
                statuses.push(a.upstream_status);
            }
            let client = db.client().await?;
            Ok(client
                .execute(
                    ACCOUNTS_SQL,
                    &[&uids, &revs, &commits, &datas, &statuses, &checkpoint],
                )
                .await?)
        })
    }
}

// ------------------------------------------------------------------------------------------
// Recovery at start

/// What [`recover_account_state`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountRecovery {
    /// The checkpoint found (events after it were read).
    pub checkpoint: u64,
    /// The durable head read up to (the new checkpoint).
    pub head: u64,
    pub events_read: u64,
    /// Accounts whose sync state was rewritten from the log.
    pub accounts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the checkpoint or writing account state: {0}")]
    Db(#[from] DbError),
    #[error("reading the event log tail: {0}")]
    Log(#[from] EventLogError),
    #[error("the log reader thread failed")]
    Join,
}

const CHECKPOINT_SQL: &str = "SELECT account_state_seq FROM relay_checkpoint WHERE id = 1";

/// The latest state of each account in the log tail, by DID; rows of accounts that do not
/// exist are skipped. Unconditional: the log's last event of an account is its state (a
/// rollback `#sync` included).
const RECOVER_SQL: &str = "\
WITH v AS ( \
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
    AS v(did, rev, commit_cid, data_cid) \
), checkpoint AS ( \
  INSERT INTO relay_checkpoint (id, account_state_seq) VALUES (1, $5) \
  ON CONFLICT (id) DO UPDATE SET account_state_seq = \
    GREATEST(relay_checkpoint.account_state_seq, EXCLUDED.account_state_seq) \
  RETURNING 1 \
) \
INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid, updated_at) \
SELECT a.uid, v.rev, v.commit_cid, v.data_cid, now() FROM v JOIN accounts AS a ON a.did = v.did \
ON CONFLICT (uid) DO UPDATE SET rev = EXCLUDED.rev, commit_cid = EXCLUDED.commit_cid, \
  data_cid = EXCLUDED.data_cid, updated_at = now()";

/// Brings `account_sync_state` up to the event log before ingest starts: the events after
/// the checkpoint (the write-behind's last account statement) were durable but their account
/// state may not have reached Postgres before a crash. Without this, the upstream would
/// resend them (the cursor is behind too) and they would pass the rev check again.
pub async fn recover_account_state(
    reader: &EventLogReader,
    db: &Db,
) -> Result<AccountRecovery, RecoveryError> {
    let client = db.client().await?;
    let checkpoint: i64 = match client
        .query_opt(CHECKPOINT_SQL, &[])
        .await
        .map_err(DbError::from)?
    {
        Some(row) => row.try_get(0).map_err(DbError::from)?,
        None => 0,
    };
    let checkpoint = u64::try_from(checkpoint).unwrap_or(0);
    let reader = reader.clone();
    // File reads and decoding: off the async thread.
    let (latest, head, events_read) = tokio::task::spawn_blocking(move || {
        let head = reader.durable_head();
        let mut latest: HashMap<String, SyncState> = HashMap::new();
        let mut events_read = 0u64;
        if head <= checkpoint {
            return Ok((latest, head, events_read));
        }
        let mut replay = reader.read_after(checkpoint)?;
        loop {
            let batch = replay.next_batch(1_024, 8 << 20)?;
            if batch.is_empty() {
                break;
            }
            for record in batch {
                if record.seq > head {
                    break;
                }
                events_read += 1;
                let kind = EventKind::from_u8(record.kind);
                if !matches!(kind, Some(EventKind::Commit | EventKind::Sync)) {
                    continue;
                }
                let did = match crate::atproto::frame::peek_event(&record.body) {
                    Ok(peek) => peek.did.map(str::to_string),
                    Err(_) => None,
                };
                if let (Some(did), Some(state)) = (did, stored_state_of(&record.body)) {
                    latest.insert(did, super::shard_rules::sync_state_of(&state));
                }
            }
            if replay.cursor() >= head {
                break;
            }
        }
        Ok::<_, RecoveryError>((latest, head, events_read))
    })
    .await
    .map_err(|_| RecoveryError::Join)??;
    let n = latest.len();
    let mut dids = Vec::with_capacity(n);
    let mut revs = Vec::with_capacity(n);
    let mut commits = Vec::with_capacity(n);
    let mut datas = Vec::with_capacity(n);
    for (did, state) in latest {
        dids.push(did);
        revs.push(state.rev);
        commits.push(state.commit_cid);
        datas.push(state.data_cid);
    }
    let head_param = i64::try_from(head).unwrap_or(i64::MAX);
    let accounts = if head > checkpoint {
        client
            .execute(RECOVER_SQL, &[&dids, &revs, &commits, &datas, &head_param])
            .await
            .map_err(DbError::from)?
    } else {
        0
    };
    Ok(AccountRecovery {
        checkpoint,
        head,
        events_read,
        accounts,
    })
}

// ------------------------------------------------------------------------------------------
// Messages

/// Flushes everything pending now (shutdown, tests); answers when that flush ended, with
/// the failure's reason label if Postgres refused (the writes then stay pending).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), &'static str>")]
pub struct FlushNow;
impl ObservedMessage for FlushNow {
    const NAME: &'static str = "flush_now";
}

/// Asks for the observable state.
#[derive(Debug, Message)]
#[rtype(result = "WriteBehindState")]
pub struct GetWriteBehindState;
impl ObservedMessage for GetWriteBehindState {
    const NAME: &'static str = "get_state";
}

// ------------------------------------------------------------------------------------------
// Observable state

/// What tests, `/metrics` and readiness read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBehindState {
    /// Cursors and accounts waiting for the next flush.
    pub pending_cursors: usize,
    pub pending_accounts: usize,
    /// Statements that succeeded (one per table per flush).
    pub cursor_statements: u64,
    pub account_statements: u64,
    /// Entries written by those statements.
    pub cursors_written: u64,
    pub accounts_written: u64,
    /// Failed flushes, and failures since the last success.
    pub failures: u64,
    pub consecutive_failures: u32,
    /// Postgres is unreachable: writes are pending and retried.
    pub degraded: bool,
    pub last_error: Option<&'static str>,
}

// ------------------------------------------------------------------------------------------
// Actor

/// The write-behind's counters on `/metrics` (bounded labels: table, reason).
#[derive(Clone, Debug)]
pub struct WriteBehindMetrics {
    degraded: IntGauge,
    statements: IntCounterVec,
    rows: IntCounterVec,
    failures: IntCounterVec,
    pending: IntGaugeVec,
    /// Seconds per batched statement, by table (Postgres batch latency).
    seconds: HistogramVec,
}

impl WriteBehindMetrics {
    pub fn register(registry: &Registry) -> Result<WriteBehindMetrics, prometheus::Error> {
        let m = WriteBehindMetrics {
            degraded: IntGauge::new(
                "rookery_write_behind_degraded",
                "1 while Postgres writes fail and state waits to be written",
            )?,
            statements: IntCounterVec::new(
                Opts::new(
                    "rookery_write_behind_statements_total",
                    "Batched statements written, by table",
                ),
                &["table"],
            )?,
            rows: IntCounterVec::new(
                Opts::new(
                    "rookery_write_behind_entries_total",
                    "Cursors or accounts written, by table",
                ),
                &["table"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "rookery_write_behind_failures_total",
                    "Failed flushes, by reason",
                ),
                &["reason"],
            )?,
            pending: IntGaugeVec::new(
                Opts::new(
                    "rookery_write_behind_pending",
                    "Entries waiting for the next flush, by table",
                ),
                &["table"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rookery_write_behind_statement_seconds",
                    "Seconds per batched Postgres statement (successful ones), by table",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["table"],
            )?,
        };
        registry.register(Box::new(m.seconds.clone()))?;
        registry.register(Box::new(m.degraded.clone()))?;
        registry.register(Box::new(m.statements.clone()))?;
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        Ok(m)
    }

    /// The degraded gauge's value (0 or 1).
    pub fn degraded(&self) -> i64 {
        self.degraded.get()
    }

    /// Failed flushes so far for `reason`.
    pub fn failures(&self, reason: &str) -> u64 {
        self.failures.with_label_values(&[reason]).get()
    }
}

/// Flush cadence and retry backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteBehindSettings {
    /// Flush changed state this often (indigo: cursors every 4 s).
    pub flush_every: Duration,
    /// First retry delay after a failed flush; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for WriteBehindSettings {
    fn default() -> Self {
        WriteBehindSettings {
            flush_every: Duration::from_secs(4),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// What one flush did; the unwritten parts go back to [`PendingWrites`].
#[derive(Default)]
struct FlushOutcome {
    cursors_written: Option<u64>,
    accounts_written: Option<u64>,
    /// The account-state checkpoint written with the accounts.
    checkpoint: Option<u64>,
    /// How long each successful statement took.
    accounts_seconds: Option<f64>,
    cursors_seconds: Option<f64>,
    unwritten_cursors: Vec<(i64, i64)>,
    unwritten_accounts: Vec<AccountStateUpdate>,
    error: Option<DbError>,
}

/// The write-behind flusher (one).
pub struct WriteBehind {
    obs: ActorObs,
    pending: PendingWrites,
    sink: Arc<dyn StateSink>,
    settings: WriteBehindSettings,
    degraded: Arc<AtomicBool>,
    metrics: WriteBehindMetrics,
    /// The next scheduled flush (cancelled when a `FlushNow` flushes at once).
    next_flush: Option<SpawnHandle>,
    flushing: bool,
    /// The account-state checkpoint Postgres has (as far as this process wrote it).
    checkpoint_written: u64,
    /// `FlushNow` callers answered when the running flush ends, and those that asked while
    /// it ran (their writes may have come too late for it: they get a flush of their own).
    waiting_current: Vec<oneshot::Sender<Result<(), &'static str>>>,
    waiting_next: Vec<oneshot::Sender<Result<(), &'static str>>>,
    state: WriteBehindState,
}

impl WriteBehind {
    /// Its `actor` label.
    pub const NAME: &'static str = "write_behind";
    /// Only state queries arrive by message; flushes are timers.
    pub const MAILBOX: usize = 16;

    pub fn new(
        obs: ActorObs,
        pending: PendingWrites,
        sink: Arc<dyn StateSink>,
        settings: WriteBehindSettings,
        degraded: Arc<AtomicBool>,
        metrics: WriteBehindMetrics,
    ) -> WriteBehind {
        WriteBehind {
            obs,
            pending,
            sink,
            settings,
            degraded,
            metrics,
            next_flush: None,
            flushing: false,
            checkpoint_written: 0,
            waiting_current: Vec::new(),
            waiting_next: Vec::new(),
            state: WriteBehindState::default(),
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(old) = self.next_flush.take() {
            ctx.cancel_future(old);
        }
        self.next_flush = Some(ctx.run_later(after, |act, ctx| {
            act.next_flush = None;
            act.flush(ctx);
        }));
    }

    /// One flush: one statement per table that has changes. Exactly one flush runs at a time
    /// (the next is scheduled only when this one finished).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.next_flush.take() {
            ctx.cancel_future(old);
        }
        let cursors = self.pending.take_cursors();
        let (accounts, checkpoint) = self.pending.take_accounts_with_checkpoint();
        let advance = checkpoint > self.checkpoint_written;
        if cursors.is_empty() && accounts.is_empty() && !advance {
            for waiter in self.waiting_current.drain(..) {
                let _ = waiter.send(Ok(()));
            }
            self.schedule(ctx, self.settings.flush_every);
            return;
        }
        self.flushing = true;
        let sink = Arc::clone(&self.sink);
        // Accounts first: a crash between the two statements then leaves cursors behind the
        // account state, so the events come again and are dropped by rev; the other order
        // would leave account state behind events that never come again.
        let work = async move {
            let mut out = FlushOutcome::default();
            if !accounts.is_empty() || advance {
                let n = accounts.len() as u64;
                // Real time, not the actor's clock: this is a latency measurement only.
                let started = std::time::Instant::now();
                match sink.write_accounts(accounts.clone(), checkpoint).await {
                    Ok(_) => {
                        out.accounts_seconds = Some(started.elapsed().as_secs_f64());
                        out.accounts_written = Some(n);
                        out.checkpoint = Some(checkpoint);
                    }
                    Err(e) => {
                        out.unwritten_accounts = accounts;
                        out.unwritten_cursors = cursors;
                        out.error = Some(e);
                        return out;
                    }
                }
            }
            if !cursors.is_empty() {
                let n = cursors.len() as u64;
                let started = std::time::Instant::now();
                if let Err(e) = sink.write_cursors(cursors.clone()).await {
                    out.unwritten_cursors = cursors;
                    out.error = Some(e);
                    return out;
                }
                out.cursors_seconds = Some(started.elapsed().as_secs_f64());
                out.cursors_written = Some(n);
            }
            out
        };
        ctx.spawn(
            work.into_actor(self)
                .map(|out, act, ctx| act.flushed(out, ctx)),
        );
    }

    fn flushed(&mut self, out: FlushOutcome, ctx: &mut Context<Self>) {
        self.flushing = false;
        let answer = out.error.as_ref().map_or(Ok(()), |e| Err(e.reason()));
        for waiter in self.waiting_current.drain(..) {
            let _ = waiter.send(answer);
        }
        for (table, seconds) in [
            ("hosts", out.cursors_seconds),
            ("accounts", out.accounts_seconds),
        ] {
            if let Some(seconds) = seconds {
                self.metrics
                    .seconds
                    .with_label_values(&[table])
                    .observe(seconds);
            }
        }
        if let Some(n) = out.cursors_written {
            self.state.cursor_statements += 1;
            self.state.cursors_written += n;
            self.metrics.statements.with_label_values(&["hosts"]).inc();
            self.metrics.rows.with_label_values(&["hosts"]).inc_by(n);
        }
        if let Some(checkpoint) = out.checkpoint {
            self.checkpoint_written = self.checkpoint_written.max(checkpoint);
        }
        if let Some(n) = out.accounts_written {
            self.state.account_statements += 1;
            self.state.accounts_written += n;
            self.metrics
                .statements
                .with_label_values(&["accounts"])
                .inc();
            self.metrics.rows.with_label_values(&["accounts"]).inc_by(n);
        }
        self.pending.restore_cursors(out.unwritten_cursors);
        self.pending.restore_accounts(out.unwritten_accounts);
        let (cursors, accounts) = self.pending.len();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .pending
            .with_label_values(&["hosts"])
            .set(gauge(cursors));
        self.metrics
            .pending
            .with_label_values(&["accounts"])
            .set(gauge(accounts));
        match out.error {
            None => {
                self.state.consecutive_failures = 0;
                self.state.last_error = None;
                self.set_degraded(false);
                self.schedule(ctx, self.settings.flush_every);
            }
            Some(e) => {
                self.state.failures += 1;
                self.metrics.failures.with_label_values(&[e.reason()]).inc();
                self.state.consecutive_failures = self.state.consecutive_failures.saturating_add(1);
                self.state.last_error = Some(e.reason());
                self.set_degraded(true);
                let delay = retry_delay(&self.settings, self.state.consecutive_failures);
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "write-behind flush failed; the writes stay pending"
                );
                self.schedule(ctx, delay);
            }
        }
        if !self.waiting_next.is_empty() {
            self.waiting_current = std::mem::take(&mut self.waiting_next);
            self.flush(ctx);
        }
    }

    fn set_degraded(&mut self, degraded: bool) {
        self.state.degraded = degraded;
        self.degraded.store(degraded, Ordering::Release);
        self.metrics.degraded.set(i64::from(degraded));
    }
}

impl Actor for WriteBehind {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
        self.schedule(ctx, self.settings.flush_every);
    }
}

impl Handler<FlushNow> for WriteBehind {
    type Result = ResponseFuture<Result<(), &'static str>>;

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(FlushNow::NAME);
        let (tx, rx) = oneshot::channel();
        if self.flushing {
            self.waiting_next.push(tx);
        } else {
            self.waiting_current.push(tx);
            self.flush(ctx);
        }
        Box::pin(async move { rx.await.unwrap_or(Err("stopped")) })
    }
}

impl Handler<GetWriteBehindState> for WriteBehind {
    type Result = MessageResult<GetWriteBehindState>;

    fn handle(&mut self, _: GetWriteBehindState, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(GetWriteBehindState::NAME);
        let (pending_cursors, pending_accounts) = self.pending.len();
        MessageResult(WriteBehindState {
            pending_cursors,
            pending_accounts,
            ..self.state.clone()
        })
    }
}

/// The delay before retry number `failures` (1-based): doubling from `retry_min`, capped.
pub fn retry_delay(settings: &WriteBehindSettings, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    settings
        .retry_min
        .saturating_mul(1u32 << exponent)
        .min(settings.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_cursor_outlives_flushes_and_not_a_reset() {
        let p = PendingWrites::default();
        assert_eq!(p.resume_cursor(1), None);
        p.record_cursor_in(1, 0, 10);
        assert_eq!(p.take_cursors(), vec![(1, 10)]);
        // Flushed, still where the next connection resumes; a late mark still raises it.
        assert_eq!(p.resume_cursor(1), Some(10));
        p.record_cursor_in(1, 0, 12);
        assert_eq!(p.resume_cursor(1), Some(12));
        p.reset_cursor(1);
        assert_eq!(p.resume_cursor(1), None);
        // The reset connection's late marks cannot bring it back.
        p.record_cursor_in(1, 0, 14);
        assert_eq!(p.resume_cursor(1), None);
        p.record_cursor_in(1, 1, 2);
        assert_eq!(p.resume_cursor(1), Some(2));
    }

    #[test]
    fn cursors_only_move_forward_and_accounts_merge_field_by_field() {
        let p = PendingWrites::default();
        p.record_cursor(1, 10);
        p.record_cursor(1, 7);
        p.record_cursor(2, 3);
        p.record_account(AccountStateUpdate {
            uid: 5,
            sync: Some(SyncState {
                rev: "a".into(),
                commit_cid: "c1".into(),
                data_cid: "d1".into(),
            }),
            upstream_status: None,
        });
        p.record_account(AccountStateUpdate {
            uid: 5,
            sync: None,
            upstream_status: Some("deactivated".into()),
        });
        assert_eq!(p.len(), (2, 1));
        let cursors = p.take_cursors();
        assert_eq!(cursors, vec![(1, 10), (2, 3)]);
        let accounts = p.take_accounts();
        assert_eq!(accounts[0].sync.as_ref().map(|s| s.rev.as_str()), Some("a"));
        assert_eq!(accounts[0].upstream_status.as_deref(), Some("deactivated"));
        assert!(p.is_empty());

        // A failed write is restored under newer values.
        p.record_cursor(1, 12);
        p.restore_cursors(cursors);
        p.record_account(AccountStateUpdate {
            uid: 5,
            sync: None,
            upstream_status: Some("active".into()),
        });
        p.restore_accounts(accounts);
        assert_eq!(p.take_cursors(), vec![(1, 12), (2, 3)]);
        let merged = p.take_accounts();
        assert_eq!(merged[0].upstream_status.as_deref(), Some("active"));
        assert_eq!(merged[0].sync.as_ref().map(|s| s.rev.as_str()), Some("a"));
    }

    #[test]
    fn retry_delay_doubles_to_the_cap() {
        let s = WriteBehindSettings::default();
        let secs: Vec<u64> = [1, 2, 3, 4, 6, 7, 50, u32::MAX]
            .iter()
            .map(|&n| retry_delay(&s, n).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 32, 60, 60, 60]);
    }
}
