//! AccountAdmin: an operator's actions on accounts (a takedown, its reversal, the list of
//! taken-down accounts, and a host's account limit with the promotion of throttled accounts
//! that raising it allows), as one cloneable handle the admin routes call
//! ([`super::Pipeline::accounts`]).
//!
//! Why a handle and not an actor: each action is a short sequence of steps, each done by the
//! part that already owns what it changes (Postgres rows, the ValidatorShard that owns the
//! account, the event log's [`EventLogAdmin`], the Broadcaster's ring, the HostSupervisor's
//! limits); the handle only orders them. Actions are serialised by one async lock: they are
//! rare, and a takedown and a reversal of one account must not interleave their masking.
//! Every step is logged at info with the DID (the operators' audit trail), and actions are
//! counted by kind (`rookery_account_admin_actions_total{action}`, no per-DID label).
//!
//! A takedown, step by step:
//! 1. `accounts.local_status = 'takendown'` (a host-limit throttle is remembered, so a
//!    reversal gives it back: rookery never un-throttles by reversal), so a shard that loads
//!    the account from now on reads it;
//! 2. an [`AccountCommand`] to the account's shard, through its queue in order with the
//!    account's frames: from then on the shard drops the account's commits, syncs and
//!    identities (`shard_rules`), and it answers with the highest seq among what it forwarded
//!    before (the *barrier*);
//! 3. wait until the durable head reaches the barrier: every event of the account sequenced
//!    before the takedown is now in the log, and no later one can be sequenced;
//! 4. mask the account's records in the log ([`EventLogAdmin::set_masked`]), then its frames
//!    up to the barrier in the Broadcaster's ring ([`RingMasks::mask`]);
//! 5. the shard emits the relay's own `#account {active: false, status: "takendown"}` through
//!    the Sequencer (after the barrier, so it is not masked), its seq is stored in
//!    `accounts.takedown_seq`, and the handle waits until it is durable.
//!
//! So a consumer reading after the takedown event is visible never gets the account's earlier
//! events; a consumer that was already past them got them before the takedown event, in seq
//! order. Repeating a takedown that was announced only tells the shard again (step 2): no
//! second event, and no second masking, which would hide the announcement itself (it carries
//! the account's DID hash). One that was interrupted before its announcement runs every step
//! again, which finishes it.
//!
//! A reversal: the local status goes back (`throttled` if it was), the log's records are
//! unmasked, the ring forgets its frames up to the takedown event (sessions read them from the
//! log: [`RingMasks::unmask`]), and the shard publishes the account's recomputed
//! `active`/`status` (`shard_rules::published_status`: lexicon values only) as `#account`.
//!
//! A host's limit: [`ChangeLimits`] to the HostSupervisor (stored, live rate limits), then in
//! one transaction holding the host row (account creation locks it too) the headroom is the
//! new limit less the host's accounts that are neither deleted nor throttled; that many
//! throttled accounts whose upstream status is active become active, oldest first; then each
//! one's shard takes the status and emits `#account`, one after the other, so their seqs
//! follow creation order. Lowering a limit throttles no existing account.
//!
//! Failure stance: Postgres is written first, so a restart always comes back with the
//! operator's decision (the shards load it; the log's flags are on disk). A step that fails
//! later (ingest halted, shutdown, a log I/O error) is an error to the caller; repeating the
//! takedown finishes it. A reversal or promotion interrupted after its Postgres write loses at
//! most its `#account` (the account's next `#account` from its PDS publishes the status).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{Mutex, oneshot, watch};

use super::firehose::RingMasks;
use super::host_supervisor::{ChangeLimits, HostSupervisor};
use super::obs::InstrumentedAddr;
use super::shard_router::{AccountCommand, CommandDone, CommandFailed, ShardRouter};
use super::shard_rules::LocalStatus;
use crate::store::event_log::{EventLogAdmin, EventLogError, did_hash};
use crate::store::postgres::{Db, DbError};

// ------------------------------------------------------------------------------------------
// Settings, errors, results, metrics

/// Settings of the account admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountAdminSettings {
    /// How long an action waits for the durable head to reach an event it needs durable
    /// (a healthy log syncs within milliseconds; a halted one never does).
    pub durable_wait: Duration,
    /// The most taken-down accounts one [`AccountAdmin::takedowns`] page holds.
    pub max_page: usize,
}

impl Default for AccountAdminSettings {
    fn default() -> Self {
        AccountAdminSettings {
            durable_wait: Duration::from_secs(30),
            max_page: 10_000,
        }
    }
}

/// What a not-found refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Account,
    Host,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountAdminError {
    /// No such account (DID) or host (hostname): nothing was changed or emitted.
    #[error("{0:?} not found")]
    NotFound(Missing),
    #[error("an account limit cannot be negative")]
    NegativeLimit,
    #[error("account admin: {0}")]
    Db(#[from] DbError),
    /// The account's shard did not carry out the command.
    #[error("account command: {0}")]
    Shard(CommandFailed),
    #[error("masking the event log: {0}")]
    Log(#[from] EventLogError),
    /// The durable head did not reach `seq` within the wait (ingest halted or stopping).
    #[error("seq {seq} did not become durable in time")]
    NotDurable { seq: u64 },
    /// The HostSupervisor did not store the limit (the write failed, or it is stopping).
    #[error("the host supervisor did not apply the limit")]
    Supervisor,
    /// The blocking task that (un)masks the log panicked.
    #[error("the masking task failed")]
    MaskTask,
}

impl AccountAdminError {
    /// Stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AccountAdminError::NotFound(Missing::Account) => "account-not-found",
            AccountAdminError::NotFound(Missing::Host) => "host-not-found",
            AccountAdminError::NegativeLimit => "negative-limit",
            AccountAdminError::Db(e) => e.reason(),
            AccountAdminError::Shard(e) => e.reason(),
            AccountAdminError::Log(e) => e.reason(),
            AccountAdminError::NotDurable { .. } => "not-durable",
            AccountAdminError::Supervisor => "supervisor",
            AccountAdminError::MaskTask => "mask-task",
        }
    }

    /// The account or host does not exist (the routes answer 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AccountAdminError::NotFound(_))
    }
}

/// What [`AccountAdmin::take_down`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takedown {
    /// The seq of the relay's `#account {takendown}`; `None` when the account was already
    /// taken down and announced (no second event).
    pub seq: Option<u64>,
    /// The account was already taken down.
    pub repeated: bool,
    /// Log records whose flag changed now.
    pub masked_records: u64,
    /// Frames removed from the Broadcaster's ring.
    pub removed_from_ring: usize,
}

/// What [`AccountAdmin::reverse_takedown`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reversal {
    /// The seq of the relay's `#account`; `None` when the account was not taken down
    /// (nothing changed).
    pub seq: Option<u64>,
    /// The local status now (`throttled` when the takedown had found it throttled).
    pub local_status: LocalStatus,
    /// What the `#account` published: `(active, status)`.
    pub published: Option<(bool, Option<String>)>,
    pub unmasked_records: u64,
}

/// What [`AccountAdmin::change_account_limit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitChange {
    /// Accounts promoted from `throttled` to `active`, oldest first, with the seq of the
    /// `#account` each one's shard emitted.
    pub promoted: Vec<(String, u64)>,
    /// Accounts promoted in Postgres whose shard did not take the change (shutdown, halt):
    /// they are active from their next load, without an `#account` now.
    pub not_announced: Vec<String>,
}

/// The account admin's counters (no per-DID or per-host label).
#[derive(Clone, Debug)]
pub struct AccountAdminMetrics {
    actions: IntCounterVec,
    failures: IntCounterVec,
}

impl AccountAdminMetrics {
    pub fn register(registry: &Registry) -> Result<AccountAdminMetrics, prometheus::Error> {
        let m = AccountAdminMetrics {
            actions: IntCounterVec::new(
                Opts::new(
                    "rookery_account_admin_actions_total",
                    "Operator account actions done, by action (takedown, takedown-repeated, \
                     reversal, reversal-not-taken-down, promotion)",
                ),
                &["action"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "rookery_account_admin_failures_total",
                    "Operator account actions that failed, by action and reason",
                ),
                &["action", "reason"],
            )?,
        };
        registry.register(Box::new(m.actions.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        Ok(m)
    }

    /// Actions done so far (tests).
    pub fn actions(&self, action: &str) -> u64 {
        self.actions.with_label_values(&[action]).get()
    }

    fn failed(&self, action: &str, error: &AccountAdminError) {
        self.failures
            .with_label_values(&[action, error.reason()])
            .inc();
    }
}

// ------------------------------------------------------------------------------------------
// Statements

const ACCOUNT_SQL: &str = "\
SELECT uid, local_status, takedown_seq FROM accounts WHERE did = $1";

const TAKE_DOWN_SQL: &str = "\
UPDATE accounts SET local_status = 'takendown', \
  throttled_before_takedown = (local_status = 'throttled'), takedown_seq = NULL, \
  updated_at = now() \
WHERE uid = $1 AND local_status <> 'takendown'";

const TAKEDOWN_SEQ_SQL: &str = "\
UPDATE accounts SET takedown_seq = $2 WHERE uid = $1 AND local_status = 'takendown'";

const REVERSE_SQL: &str = "\
UPDATE accounts SET \
  local_status = CASE WHEN throttled_before_takedown THEN 'throttled' ELSE 'active' END, \
  throttled_before_takedown = false, takedown_seq = NULL, updated_at = now() \
WHERE uid = $1 AND local_status = 'takendown' RETURNING local_status";

/// Keyset pages over the partial index `accounts_takendown_idx`.
const TAKEDOWNS_SQL: &str = "\
SELECT uid, did FROM accounts WHERE local_status = 'takendown' AND uid > $1 \
ORDER BY uid LIMIT $2";

const HOST_ID_SQL: &str = "SELECT id FROM hosts WHERE hostname = $1";

/// Locks the host row, as account creation does.
const HOST_LOCK_SQL: &str =
    "SELECT account_limit, account_count FROM hosts WHERE id = $1 FOR UPDATE";

/// The host's accounts that are not deleted and held back by its limit: throttled ones, and
/// taken-down ones that a reversal would throttle again. Two counts, each over its partial
/// index (`accounts_throttled_idx`, `accounts_takendown_idx`).
const HELD_BACK_SQL: &str = "\
SELECT (SELECT count(*) FROM accounts WHERE host_id = $1 AND local_status = 'throttled' \
          AND upstream_status <> 'deleted') \
     + (SELECT count(*) FROM accounts WHERE local_status = 'takendown' \
          AND throttled_before_takedown AND host_id = $1 AND upstream_status <> 'deleted')";

/// The oldest throttled accounts whose PDS says they are active, up to `$2`, become active;
/// `n` is their rank by creation.
const PROMOTE_SQL: &str = "\
WITH oldest AS ( \
  SELECT uid, created_at FROM accounts \
  WHERE host_id = $1 AND local_status = 'throttled' AND upstream_status = 'active' \
  ORDER BY created_at, uid LIMIT $2 FOR UPDATE \
), picked AS ( \
  SELECT uid, row_number() OVER (ORDER BY created_at, uid) AS n FROM oldest \
) \
UPDATE accounts AS a SET local_status = 'active', updated_at = now() \
FROM picked WHERE a.uid = picked.uid RETURNING a.did, picked.n";

// ------------------------------------------------------------------------------------------
// The handle

struct Inner {
    db: Db,
    router: ShardRouter,
    log: EventLogAdmin,
    durable_head: watch::Receiver<u64>,
    supervisor: InstrumentedAddr<HostSupervisor>,
    /// The firehose starts after the pipeline: attached once it exists.
    ring: OnceLock<RingMasks>,
    metrics: AccountAdminMetrics,
    settings: AccountAdminSettings,
    /// One action at a time (see the module doc).
    serial: Mutex<()>,
}

/// The operator's account actions. Cheap to clone.
#[derive(Clone)]
pub struct AccountAdmin(Arc<Inner>);

impl std::fmt::Debug for AccountAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountAdmin")
            .field("settings", &self.0.settings)
            .field("firehose_attached", &self.0.ring.get().is_some())
            .finish()
    }
}

impl AccountAdmin {
    /// `durable_head` is the Persister's; `log` the admin handle of the log it writes.
    pub fn new(
        db: Db,
        router: ShardRouter,
        log: EventLogAdmin,
        durable_head: watch::Receiver<u64>,
        supervisor: InstrumentedAddr<HostSupervisor>,
        metrics: AccountAdminMetrics,
        settings: AccountAdminSettings,
    ) -> AccountAdmin {
        AccountAdmin(Arc::new(Inner {
            db,
            router,
            log,
            durable_head,
            supervisor,
            ring: OnceLock::new(),
            metrics,
            settings,
            serial: Mutex::new(()),
        }))
    }

    /// Gives the takedown path the firehose's ring (`Firehose::ring_masks`), once the
    /// firehose runs. Before that (and without a firehose) takedowns mask the log only, which
    /// is all a ring built afterwards reads. A second call is ignored.
    pub fn attach_firehose(&self, ring: RingMasks) {
        if self.0.ring.set(ring).is_err() {
            tracing::warn!("a firehose is already attached to the account admin");
        }
    }

    pub fn metrics(&self) -> &AccountAdminMetrics {
        &self.0.metrics
    }

    /// Takes `did` down (see the module doc). Unknown DID: [`AccountAdminError::NotFound`],
    /// nothing emitted. Taking down a taken-down account succeeds and emits no second event
    /// (`repeated`, `seq: None`).
    pub async fn take_down(&self, did: &str) -> Result<Takedown, AccountAdminError> {
        let _one_at_a_time = self.0.serial.lock().await;
        let result = self.take_down_now(did).await;
        self.count("takedown", did, &result, |t| {
            if t.repeated {
                "takedown-repeated"
            } else {
                "takedown"
            }
        });
        result
    }

    /// Reverses a takedown (see the module doc). Unknown DID: `NotFound`; an account that is
    /// not taken down is left as it is (`seq: None`).
    pub async fn reverse_takedown(&self, did: &str) -> Result<Reversal, AccountAdminError> {
        let _one_at_a_time = self.0.serial.lock().await;
        let result = self.reverse_now(did).await;
        self.count("reversal", did, &result, |r| {
            if r.seq.is_some() {
                "reversal"
            } else {
                "reversal-not-taken-down"
            }
        });
        result
    }

    /// A page of taken-down accounts in `accounts.uid` order after the cursor `after` (none:
    /// from the first), at most `limit` (clamped to 1..=`max_page`). The cursor of the next
    /// page comes back when another page follows.
    pub async fn takedowns(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<i64>), AccountAdminError> {
        let limit = limit.clamp(1, self.0.settings.max_page.max(1));
        // One row more than asked: whether it exists says whether another page follows.
        let ask = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let client = self.0.db.client().await?;
        let rows = client
            .query(TAKEDOWNS_SQL, &[&after.unwrap_or(0), &ask])
            .await
            .map_err(DbError::from)?;
        let mut page = Vec::with_capacity(limit.min(rows.len()));
        let mut last_uid = None;
        for row in rows.iter().take(limit) {
            let uid: i64 = row.try_get(0).map_err(DbError::from)?;
            page.push(row.try_get(1).map_err(DbError::from)?);
            last_uid = Some(uid);
        }
        let next = if rows.len() > limit { last_uid } else { None };
        Ok((page, next))
    }

    /// Sets `hostname`'s account limit through the HostSupervisor (stored, live rate limits)
    /// and promotes as many of its throttled accounts as the new headroom allows, oldest
    /// first, each with an `#account` (see the module doc). Unknown host: `NotFound`.
    pub async fn change_account_limit(
        &self,
        hostname: &str,
        account_limit: i64,
    ) -> Result<LimitChange, AccountAdminError> {
        if account_limit < 0 {
            return Err(AccountAdminError::NegativeLimit);
        }
        let _one_at_a_time = self.0.serial.lock().await;
        let result = self.change_limit_now(hostname, account_limit).await;
        match &result {
            Ok(change) => {
                self.0
                    .metrics
                    .actions
                    .with_label_values(&["promotion"])
                    .inc_by(change.promoted.len() as u64);
            }
            Err(e) => {
                self.0.metrics.failed("change-limit", e);
                tracing::warn!(host = hostname, error = %e, reason = e.reason(), "account limit change failed");
            }
        }
        result
    }

    fn count<T>(
        &self,
        action: &str,
        did: &str,
        result: &Result<T, AccountAdminError>,
        label: impl FnOnce(&T) -> &'static str,
    ) {
        match result {
            Ok(done) => self
                .0
                .metrics
                .actions
                .with_label_values(&[label(done)])
                .inc(),
            Err(e) => {
                self.0.metrics.failed(action, e);
                tracing::warn!(did, action, error = %e, reason = e.reason(), "account admin action failed");
            }
        }
    }

    async fn take_down_now(&self, did: &str) -> Result<Takedown, AccountAdminError> {
        let (uid, local, announced_seq) = {
            let client = self.0.db.client().await?;
            let row = client
                .query_opt(ACCOUNT_SQL, &[&did])
                .await
                .map_err(DbError::from)?
                .ok_or(AccountAdminError::NotFound(Missing::Account))?;
            let uid: i64 = row.try_get(0).map_err(DbError::from)?;
            let local: String = row.try_get(1).map_err(DbError::from)?;
            let announced: Option<i64> = row.try_get(2).map_err(DbError::from)?;
            let repeated = local == LocalStatus::Takendown.as_str();
            if !repeated {
                client
                    .execute(TAKE_DOWN_SQL, &[&uid])
                    .await
                    .map_err(DbError::from)?;
            }
            (uid, local, announced.filter(|_| repeated))
        };
        let repeated = local == LocalStatus::Takendown.as_str();
        tracing::info!(did, uid, previous = %local, repeated, "takedown: local status stored");

        let barrier = self
            .command(did, Some(LocalStatus::Takendown), false)
            .await?
            .seq;
        tracing::info!(
            did,
            barrier,
            "takedown: the account's shard drops its events from here on"
        );
        if let Some(seq) = announced_seq {
            // Announced means masked before: masking again would hide the announcement.
            tracing::info!(
                did,
                seq,
                "takedown: already done and announced; no second #account"
            );
            return Ok(Takedown {
                seq: None,
                repeated,
                masked_records: 0,
                removed_from_ring: 0,
            });
        }
        self.wait_durable(barrier).await?;
        tracing::info!(
            did,
            barrier,
            "takedown: the account's earlier events are durable"
        );

        let hash = did_hash(did);
        let masked = self.set_masked(hash, true).await?;
        tracing::info!(
            did,
            matched = masked.records_matched,
            changed = masked.records_changed,
            "takedown: the account's stored events are masked in the event log"
        );
        let removed_from_ring = match self.0.ring.get() {
            Some(ring) => match ring.mask(hash, barrier).await {
                Ok(removed) => removed,
                Err(e) => {
                    // The Broadcaster is gone (shutdown): nothing serves its ring any more.
                    tracing::warn!(did, error = %e, "takedown: the firehose ring could not be masked");
                    0
                }
            },
            None => 0,
        };
        tracing::info!(
            did,
            removed = removed_from_ring,
            "takedown: the account's frames are out of the firehose ring"
        );

        let done = self.command(did, None, true).await?;
        {
            let client = self.0.db.client().await?;
            let seq = i64::try_from(done.seq).unwrap_or(i64::MAX);
            client
                .execute(TAKEDOWN_SEQ_SQL, &[&uid, &seq])
                .await
                .map_err(DbError::from)?;
        }
        self.wait_durable(done.seq).await?;
        tracing::info!(
            did,
            seq = done.seq,
            "takedown: #account takendown emitted and durable"
        );
        Ok(Takedown {
            seq: Some(done.seq),
            repeated,
            masked_records: masked.records_changed,
            removed_from_ring,
        })
    }

    async fn reverse_now(&self, did: &str) -> Result<Reversal, AccountAdminError> {
        let (local, takedown_seq) = {
            let client = self.0.db.client().await?;
            let row = client
                .query_opt(ACCOUNT_SQL, &[&did])
                .await
                .map_err(DbError::from)?
                .ok_or(AccountAdminError::NotFound(Missing::Account))?;
            let uid: i64 = row.try_get(0).map_err(DbError::from)?;
            let takedown_seq: Option<i64> = row.try_get(2).map_err(DbError::from)?;
            let reversed = client
                .query_opt(REVERSE_SQL, &[&uid])
                .await
                .map_err(DbError::from)?;
            let local = match reversed {
                Some(row) => row.try_get::<_, String>(0).map_err(DbError::from)?,
                None => {
                    let local: String = row.try_get(1).map_err(DbError::from)?;
                    tracing::info!(did, local = %local, "reversal: the account is not taken down; nothing to do");
                    return Ok(Reversal {
                        seq: None,
                        local_status: LocalStatus::parse(&local).unwrap_or(LocalStatus::Active),
                        published: None,
                        unmasked_records: 0,
                    });
                }
            };
            (local, takedown_seq)
        };
        let local_status = LocalStatus::parse(&local).unwrap_or(LocalStatus::Active);
        tracing::info!(did, local = %local, "reversal: local status stored");

        let hash = did_hash(did);
        let unmasked = self.set_masked(hash, false).await?;
        tracing::info!(
            did,
            changed = unmasked.records_changed,
            "reversal: the account's stored events are unmasked in the event log"
        );
        if let Some(ring) = self.0.ring.get() {
            // Everything masked came before the takedown event (or, unannounced, before now).
            let through = takedown_seq
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or_else(|| *self.0.durable_head.borrow());
            match ring.unmask(through).await {
                Ok(floor) => tracing::info!(
                    did,
                    floor,
                    "reversal: the firehose ring reads the account's events from the log"
                ),
                Err(e) => {
                    tracing::warn!(did, error = %e, "reversal: the firehose ring could not be told")
                }
            }
        }
        let done = self.command(did, Some(local_status), true).await?;
        self.wait_durable(done.seq).await?;
        tracing::info!(did, seq = done.seq, published = ?done.announced, "reversal: #account emitted and durable");
        Ok(Reversal {
            seq: Some(done.seq),
            local_status,
            published: done.announced,
            unmasked_records: unmasked.records_changed,
        })
    }

    async fn change_limit_now(
        &self,
        hostname: &str,
        account_limit: i64,
    ) -> Result<LimitChange, AccountAdminError> {
        let host_id: i64 = {
            let client = self.0.db.client().await?;
            client
                .query_opt(HOST_ID_SQL, &[&hostname])
                .await
                .map_err(DbError::from)?
                .ok_or(AccountAdminError::NotFound(Missing::Host))?
                .try_get(0)
                .map_err(DbError::from)?
        };
        let applied = self
            .0
            .supervisor
            .send(ChangeLimits {
                hostname: hostname.to_string(),
                account_limit,
            })
            .await
            .unwrap_or(false);
        if !applied {
            return Err(AccountAdminError::Supervisor);
        }
        tracing::info!(
            host = hostname,
            account_limit,
            "account limit stored and applied to the host's rate limits"
        );
        let promoted = self.promote(host_id).await?;
        if !promoted.is_empty() {
            tracing::info!(
                host = hostname,
                accounts = promoted.len(),
                "promoting throttled accounts within the new limit, oldest first"
            );
        }
        let mut change = LimitChange::default();
        let mut last = 0;
        for did in promoted {
            match self.command(&did, Some(LocalStatus::Active), true).await {
                Ok(done) => {
                    tracing::info!(did = %did, host = hostname, seq = done.seq, "promotion: throttled account is active, #account emitted");
                    last = done.seq;
                    change.promoted.push((did, done.seq));
                }
                Err(e) => {
                    tracing::warn!(did = %did, host = hostname, error = %e, "promotion: stored, but the shard did not take it");
                    self.0.metrics.failed("promotion", &e);
                    change.not_announced.push(did);
                }
            }
        }
        self.wait_durable(last).await?;
        Ok(change)
    }

    /// The promotion transaction: the DIDs made active, oldest first.
    async fn promote(&self, host_id: i64) -> Result<Vec<String>, AccountAdminError> {
        let mut client = self.0.db.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let host = tx
            .query_one(HOST_LOCK_SQL, &[&host_id])
            .await
            .map_err(DbError::from)?;
        let limit: i64 = host.try_get(0).map_err(DbError::from)?;
        let count: i64 = host.try_get(1).map_err(DbError::from)?;
        let held_back: i64 = tx
            .query_one(HELD_BACK_SQL, &[&host_id])
            .await
            .map_err(DbError::from)?
            .try_get(0)
            .map_err(DbError::from)?;
        let headroom = limit - (count - held_back);
        if headroom <= 0 {
            tx.commit().await.map_err(DbError::from)?;
            return Ok(Vec::new());
        }
        let rows = tx
            .query(PROMOTE_SQL, &[&host_id, &headroom])
            .await
            .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        let mut promoted = rows
            .iter()
            .map(|row| Ok((row.try_get::<_, i64>(1)?, row.try_get::<_, String>(0)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(DbError::from)?;
        promoted.sort_unstable();
        Ok(promoted.into_iter().map(|(_, did)| did).collect())
    }

    /// Sends a command to the account's shard and waits for its answer.
    async fn command(
        &self,
        did: &str,
        local_status: Option<LocalStatus>,
        announce: bool,
    ) -> Result<CommandDone, AccountAdminError> {
        let (done, answer) = oneshot::channel();
        self.0
            .router
            .command(AccountCommand {
                did: did.to_string(),
                local_status,
                announce,
                done,
            })
            .await
            .map_err(|_| AccountAdminError::Shard(CommandFailed::Stopped))?;
        answer
            .await
            .map_err(|_| AccountAdminError::Shard(CommandFailed::Stopped))?
            .map_err(AccountAdminError::Shard)
    }

    /// Waits until the durable head reaches `seq`, at most `durable_wait`.
    async fn wait_durable(&self, seq: u64) -> Result<(), AccountAdminError> {
        let mut head = self.0.durable_head.clone();
        match tokio::time::timeout(self.0.settings.durable_wait, head.wait_for(|h| *h >= seq)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(AccountAdminError::NotDurable { seq }),
        }
    }

    /// Sets or clears the account's flags in the log, off the async thread (it reads and
    /// rewrites every segment).
    async fn set_masked(
        &self,
        hash: u64,
        masked: bool,
    ) -> Result<crate::store::event_log::MaskReport, AccountAdminError> {
        let log = self.0.log.clone();
        tokio::task::spawn_blocking(move || log.set_masked(hash, masked))
            .await
            .map_err(|_| AccountAdminError::MaskTask)?
            .map_err(AccountAdminError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_are_stable_and_not_found_is_recognised() {
        let cases = [
            (
                AccountAdminError::NotFound(Missing::Account),
                "account-not-found",
            ),
            (AccountAdminError::NotFound(Missing::Host), "host-not-found"),
            (AccountAdminError::NegativeLimit, "negative-limit"),
            (
                AccountAdminError::Shard(CommandFailed::Halted("io")),
                "halted",
            ),
            (AccountAdminError::NotDurable { seq: 3 }, "not-durable"),
            (AccountAdminError::Supervisor, "supervisor"),
            (AccountAdminError::MaskTask, "mask-task"),
        ];
        for (error, label) in cases {
            assert_eq!(error.reason(), label);
            assert_eq!(
                error.is_not_found(),
                label.ends_with("not-found"),
                "{label}"
            );
        }
    }
}
