//! One ValidatorShard's accounts: a bounded LRU of [`AccountRecord`]s in front of Postgres.
//!
//! What it owns: the cache, and the three statements that need an answer before the shard can
//! go on ([`AccountStore::load`], [`AccountStore::create`], [`AccountStore::move_to_host`]).
//! What it never does: write sync state or upstream statuses. Those go through the
//! write-behind's `PendingWrites` once their event is durable (lesson 13 without a write per
//! event); [`AccountStore::apply`] only updates the cache, so the shard's next event sees them
//! at once.
//!
//! Bounds: at most `max_entries` records and at most `max_bytes` of estimated memory
//! ([`entry_cost`]: the record, its DID twice (map key and recency index), the upstream
//! status, and a fixed per-entry overhead for the two maps' nodes). Whichever limit is hit
//! first evicts the least recently used records; an evicted record is reloaded from Postgres
//! on its next event. Pending write-behind changes are not lost by an eviction, but a reload
//! before they land reads the older row; the shard's sync state is then at most a few seconds
//! behind, which the rev check tolerates (a retransmission is dropped as stale or, for a commit
//! that chains to a newer state, passed as a discontinuity).
//!
//! Postgres down (lesson 18): cached accounts keep working (no statement is needed for them);
//! loading or creating an unknown account fails with a transient [`StoreError`], and the shard
//! holds or retries the event instead of guessing.
//!
//! The host's account limit (PROTOCOL.md §7) is applied in one transaction: the host row is
//! locked (two shards creating accounts on one host serialize there, and so do the admin's
//! promotions of throttled accounts), and when `hosts.account_count` (the host's accounts that
//! are not deleted, kept by a trigger: schema 0003) has reached `hosts.account_limit` the
//! account is created `throttled`. Reading the maintained count costs the same for a host of
//! ten accounts and one of a million (it used to be counted, up to the limit, per creation).

use std::collections::{BTreeMap, HashMap};

use crate::atproto::cid::parse_cid_str;
use crate::atproto::tid::Tid;
use crate::atproto::validate::RepoState;
use crate::store::postgres::{Db, DbError};

use super::shard_rules::{AccountChange, AccountRecord, LocalStatus};

/// Limits of one shard's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountStoreSettings {
    pub max_entries: usize,
    /// Estimated bytes ([`entry_cost`]).
    pub max_bytes: usize,
}

impl Default for AccountStoreSettings {
    fn default() -> Self {
        // ~250 B per typical account: 200k accounts in 64 MiB per shard, the active accounts
        // of a large network over a handful of shards.
        AccountStoreSettings {
            max_entries: 200_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres failed; [`StoreError::is_transient`] says whether retrying may help.
    #[error("account store: {0}")]
    Db(#[from] DbError),
    /// The host the account would belong to does not exist.
    #[error("host {0} does not exist")]
    UnknownHost(i64),
    /// A row the schema's CHECK should have prevented.
    #[error("account row is malformed: {0}")]
    BadRow(&'static str),
}

impl StoreError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Db(e) => e.reason(),
            StoreError::UnknownHost(_) => "unknown-host",
            StoreError::BadRow(_) => "bad-row",
        }
    }

    /// True when the database, not the request, was the problem.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.is_transient())
    }
}

/// Observable state (tests, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountStoreState {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub loads: u64,
    pub created: u64,
    pub created_throttled: u64,
    pub evictions: u64,
}

/// Estimated memory of one cached record (see the module doc).
pub fn entry_cost(record: &AccountRecord) -> usize {
    // Two map nodes (hash bucket + B-tree slot) and the allocators' headers.
    const OVERHEAD: usize = 96;
    std::mem::size_of::<AccountRecord>()
        + 2 * record.did.len()
        + record.upstream_status.len()
        + OVERHEAD
}

struct Slot {
    record: AccountRecord,
    tick: u64,
    cost: usize,
}

/// The LRU itself: a map by DID plus a recency index (tick → DID). Both hold one entry per
/// record, so both are bounded by `max_entries`.
#[derive(Default)]
struct Lru {
    slots: HashMap<String, Slot>,
    recency: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    evictions: u64,
}

impl Lru {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn get(&mut self, did: &str) -> Option<&mut AccountRecord> {
        let tick = self.next_tick();
        let slot = self.slots.get_mut(did)?;
        if let Some(key) = self.recency.remove(&slot.tick) {
            self.recency.insert(tick, key);
        }
        slot.tick = tick;
        Some(&mut slot.record)
    }

    fn peek(&self, did: &str) -> Option<&AccountRecord> {
        self.slots.get(did).map(|s| &s.record)
    }

    fn remove(&mut self, did: &str) {
        if let Some(slot) = self.slots.remove(did) {
            self.recency.remove(&slot.tick);
            self.bytes -= slot.cost;
        }
    }

    fn insert(&mut self, record: AccountRecord, settings: &AccountStoreSettings) {
        self.remove(&record.did);
        let cost = entry_cost(&record);
        let tick = self.next_tick();
        self.recency.insert(tick, record.did.clone());
        self.bytes += cost;
        self.slots
            .insert(record.did.clone(), Slot { record, tick, cost });
        // Evict the oldest until within both limits; the newest entry always stays.
        while (self.slots.len() > settings.max_entries.max(1) || self.bytes > settings.max_bytes)
            && self.slots.len() > 1
        {
            let Some((_, did)) = self.recency.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&did) {
                self.bytes -= slot.cost;
                self.evictions += 1;
            }
        }
    }

    /// Re-costs a record changed in place.
    fn recost(&mut self, did: &str) {
        if let Some(slot) = self.slots.get_mut(did) {
            let cost = entry_cost(&slot.record);
            self.bytes = self.bytes - slot.cost + cost;
            slot.cost = cost;
        }
    }
}

/// One shard's accounts.
pub struct AccountStore {
    db: Db,
    settings: AccountStoreSettings,
    lru: Lru,
    state: AccountStoreState,
}

const LOAD_SQL: &str = "\
SELECT a.uid, a.did, a.host_id, a.local_status, a.upstream_status, s.rev, s.commit_cid, s.data_cid \
FROM accounts AS a LEFT JOIN account_sync_state AS s ON s.uid = a.uid WHERE a.did = $1";

/// Locks the host row: concurrent creates on one host serialize here. `account_count` is the
/// host's accounts that are not deleted (maintained by a trigger on `accounts`).
const HOST_LIMIT_SQL: &str =
    "SELECT account_limit, account_count FROM hosts WHERE id = $1 FOR UPDATE";

const INSERT_SQL: &str = "\
INSERT INTO accounts (did, host_id, local_status) VALUES ($1, $2, $3) \
ON CONFLICT (did) DO NOTHING RETURNING uid";

const MOVE_SQL: &str = "UPDATE accounts SET host_id = $2, updated_at = now() WHERE did = $1";

impl AccountStore {
    pub fn new(db: Db, settings: AccountStoreSettings) -> AccountStore {
        AccountStore {
            db,
            settings,
            lru: Lru::default(),
            state: AccountStoreState::default(),
        }
    }

    pub fn state(&self) -> AccountStoreState {
        AccountStoreState {
            entries: self.lru.slots.len(),
            bytes: self.lru.bytes,
            evictions: self.lru.evictions,
            ..self.state
        }
    }

    /// The cached record, without touching Postgres (and without counting as a use).
    pub fn cached(&self, did: &str) -> Option<&AccountRecord> {
        self.lru.peek(did)
    }

    /// The account, from the cache or else from Postgres (`Ok(None)`: no such account).
    pub async fn load(&mut self, did: &str) -> Result<Option<&AccountRecord>, StoreError> {
        if self.lru.slots.contains_key(did) {
            self.state.hits += 1;
            return Ok(self.lru.get(did).map(|r| &*r));
        }
        let client = self.db.client().await?;
        let row = client
            .query_opt(LOAD_SQL, &[&did])
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.state.loads += 1;
        let record = record_from_row(&row)?;
        self.lru.insert(record, &self.settings);
        Ok(self.lru.peek(did))
    }

    /// Creates the account on `host_id`, `throttled` when the host already holds
    /// `account_limit` accounts that are not deleted (one transaction). An account that
    /// already exists is loaded instead.
    pub async fn create(&mut self, did: &str, host_id: i64) -> Result<&AccountRecord, StoreError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let host = tx
            .query_opt(HOST_LIMIT_SQL, &[&host_id])
            .await
            .map_err(DbError::from)?
            .ok_or(StoreError::UnknownHost(host_id))?;
        let limit: i64 = host.try_get(0).map_err(DbError::from)?;
        let count: i64 = host.try_get(1).map_err(DbError::from)?;
        let local = if count >= limit {
            LocalStatus::Throttled
        } else {
            LocalStatus::Active
        };
        let inserted = tx
            .query_opt(INSERT_SQL, &[&did, &host_id, &local.as_str()])
            .await
            .map_err(DbError::from)?;
        let created = inserted.is_some();
        let record = match inserted {
            Some(row) => AccountRecord {
                uid: row.try_get(0).map_err(DbError::from)?,
                did: did.to_string(),
                host_id,
                local_status: local,
                upstream_status: super::shard_rules::UPSTREAM_ACTIVE.to_string(),
                sync: None,
                upstream_recheck_after: None,
            },
            None => {
                let row = tx
                    .query_one(LOAD_SQL, &[&did])
                    .await
                    .map_err(DbError::from)?;
                record_from_row(&row)?
            }
        };
        tx.commit().await.map_err(DbError::from)?;
        if created {
            self.state.created += 1;
            if local == LocalStatus::Throttled {
                self.state.created_throttled += 1;
            }
        }
        self.lru.insert(record, &self.settings);
        self.lru
            .peek(did)
            .ok_or(StoreError::BadRow("account evicted on insert"))
    }

    /// Applies a change to the cached record (Postgres gets it through the write-behind).
    /// A record that is not cached is left alone: its next load reads Postgres.
    pub fn apply(&mut self, did: &str, change: &AccountChange) {
        if let Some(record) = self.lru.get(did) {
            if let Some(sync) = change.sync {
                record.sync = Some(sync);
            }
            if let Some(status) = &change.upstream_status {
                record.upstream_status.clone_from(status);
            }
            self.lru.recost(did);
        }
    }

    /// An operator changed the account's local status (takedown, reversal, promotion), which
    /// Postgres already has: the cached record follows, so the shard's next event of the
    /// account is decided with it. A record that is not cached reads it on its next load.
    pub fn set_local_status(&mut self, did: &str, status: LocalStatus) {
        if let Some(record) = self.lru.get(did) {
            record.local_status = status;
        }
    }

    /// Records when the account's upstream status may next be re-checked.
    pub fn set_upstream_recheck_after(&mut self, did: &str, at_micros: u64) {
        if let Some(record) = self.lru.get(did) {
            record.upstream_recheck_after = Some(at_micros);
        }
    }

    /// Migration: the account now belongs to `new_host_id`. The cache changes first, so the
    /// shard's rules see the move even if Postgres is down; the error then says the row was
    /// not written (the next event from the new host after a reload moves it again).
    pub async fn move_to_host(&mut self, did: &str, new_host_id: i64) -> Result<(), StoreError> {
        if let Some(record) = self.lru.get(did) {
            record.host_id = new_host_id;
        }
        let client = self.db.client().await?;
        client
            .execute(MOVE_SQL, &[&did, &new_host_id])
            .await
            .map_err(DbError::from)?;
        Ok(())
    }

    /// Forgets a cached account (e.g. after an admin change made in Postgres).
    pub fn invalidate(&mut self, did: &str) {
        self.lru.remove(did);
    }
}

fn record_from_row(row: &tokio_postgres::Row) -> Result<AccountRecord, StoreError> {
    let get_err = |e: tokio_postgres::Error| StoreError::Db(DbError::from(e));
    let local: String = row.try_get(3).map_err(get_err)?;
    let rev: Option<String> = row.try_get(5).map_err(get_err)?;
    let commit: Option<String> = row.try_get(6).map_err(get_err)?;
    let data: Option<String> = row.try_get(7).map_err(get_err)?;
    let sync = match (rev, commit, data) {
        (Some(rev), Some(commit), Some(data)) => Some(RepoState {
            rev: Tid::parse(&rev).map_err(|_| StoreError::BadRow("rev"))?,
            commit: parse_cid_str(&commit).map_err(|_| StoreError::BadRow("commit_cid"))?,
            data: parse_cid_str(&data).map_err(|_| StoreError::BadRow("data_cid"))?,
        }),
        _ => None,
    };
    Ok(AccountRecord {
        uid: row.try_get(0).map_err(get_err)?,
        did: row.try_get(1).map_err(get_err)?,
        host_id: row.try_get(2).map_err(get_err)?,
        local_status: LocalStatus::parse(&local).ok_or(StoreError::BadRow("local_status"))?,
        upstream_status: row.try_get(4).map_err(get_err)?,
        sync,
        upstream_recheck_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(did: &str) -> AccountRecord {
        AccountRecord {
            uid: 1,
            did: did.to_string(),
            host_id: 1,
            local_status: LocalStatus::Active,
            upstream_status: "active".into(),
            sync: None,
            upstream_recheck_after: None,
        }
    }

    #[test]
    fn lru_is_bounded_by_entries_and_bytes_and_evicts_the_oldest() {
        let by_entries = AccountStoreSettings {
            max_entries: 3,
            max_bytes: usize::MAX,
        };
        let mut lru = Lru::default();
        for i in 0..5 {
            lru.insert(record(&format!("did:plc:{i}")), &by_entries);
            if i == 2 {
                // Touch 0: 1 becomes the oldest.
                assert!(lru.get("did:plc:0").is_some());
            }
        }
        assert_eq!(lru.slots.len(), 3);
        assert_eq!(lru.recency.len(), 3);
        assert!(lru.peek("did:plc:0").is_some(), "recently used survives");
        assert!(lru.peek("did:plc:1").is_none() && lru.peek("did:plc:2").is_none());
        assert_eq!(lru.evictions, 2);

        let one = entry_cost(&record("did:plc:0"));
        let by_bytes = AccountStoreSettings {
            max_entries: 1000,
            max_bytes: 2 * one,
        };
        let mut lru = Lru::default();
        for i in 0..10 {
            lru.insert(record(&format!("did:plc:{i}")), &by_bytes);
            assert!(lru.bytes <= 2 * one);
        }
        assert_eq!(lru.slots.len(), 2);
        // A record larger than the whole budget still stays (the newest is never evicted).
        let mut big = record("did:plc:big");
        big.upstream_status = "x".repeat(4 * one);
        lru.insert(big, &by_bytes);
        assert_eq!(lru.slots.len(), 1);
        lru.remove("did:plc:big");
        assert_eq!((lru.slots.len(), lru.recency.len(), lru.bytes), (0, 0, 0));
    }

    #[test]
    fn reinsert_and_recost_keep_the_byte_count_exact() {
        let settings = AccountStoreSettings::default();
        let mut lru = Lru::default();
        lru.insert(record("did:plc:a"), &settings);
        lru.insert(record("did:plc:a"), &settings);
        assert_eq!(lru.slots.len(), 1);
        assert_eq!(lru.recency.len(), 1);
        if let Some(r) = lru.get("did:plc:a") {
            r.upstream_status = "deactivated".into();
        }
        lru.recost("did:plc:a");
        assert_eq!(
            lru.bytes,
            entry_cost(lru.peek("did:plc:a").expect("cached"))
        );
    }
}
