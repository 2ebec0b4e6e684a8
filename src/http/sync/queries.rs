//! The sync endpoints' reads: one statement each, bounded by `LIMIT` or by a unique key, over
//! the tables the ingest actors keep (`hosts`, `accounts`, `account_sync_state`).
//!
//! Pagination is keyset pagination on the compact ids (`hosts.id`, `accounts.uid`):
//! `WHERE id > $cursor ORDER BY id LIMIT $n`. Ids only grow, so a walk never repeats a row and
//! never skips one that existed when it started; a row inserted during the walk gets a larger
//! id and shows up on a later page. (A row whose inserting transaction commits after a
//! concurrent, higher id was already read can be passed over: Postgres hands out `bigserial`
//! ids before commit. The relay inserts hosts and accounts one short statement at a time, so
//! that window is milliseconds wide.)

use crate::store::postgres::{Db, DbError};

/// One `hosts` row as `listHosts` and `getHostStatus` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub id: i64,
    pub hostname: String,
    /// The upstream cursor (last persisted upstream seq).
    pub last_seq: i64,
    pub status: String,
    /// Accounts on the host that are not deleted (`hosts.account_count`, kept by a trigger).
    pub account_count: i64,
}

/// One account with a known commit, as `listRepos` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRow {
    pub uid: i64,
    pub did: String,
    pub local_status: String,
    pub upstream_status: String,
    pub rev: String,
    pub commit_cid: String,
}

/// One account by DID, with what `getRepoStatus`, `getLatestCommit` and `getRepo` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub local_status: String,
    pub upstream_status: String,
    /// The last verified commit; `None` before the first.
    pub rev: Option<String>,
    pub commit_cid: Option<String>,
    /// The account's PDS (its `hosts` row).
    pub hostname: String,
    pub no_ssl: bool,
}

const LIST_HOSTS_SQL: &str = "\
SELECT id, hostname, last_seq, status, account_count FROM hosts \
WHERE id > $1 ORDER BY id LIMIT $2";

const HOST_SQL: &str =
    "SELECT id, hostname, last_seq, status, account_count FROM hosts WHERE hostname = $1";

/// The cursor bound is written on both sides of the join: Postgres merges the two primary-key
/// scans, and without `s.uid > $1` the `account_sync_state` scan starts at its first row, so a
/// page deep into the table read every row before it (measured on 500,000 accounts: 40 ms at
/// uid 250,000, growing with the position; 1.5 ms with both bounds, wherever the page is).
const LIST_REPOS_SQL: &str = "\
SELECT a.uid, a.did, a.local_status, a.upstream_status, s.rev, s.commit_cid \
FROM accounts a JOIN account_sync_state s ON s.uid = a.uid \
WHERE a.uid > $1 AND s.uid > $1 ORDER BY a.uid LIMIT $2";

const ACCOUNT_SQL: &str = "\
SELECT a.local_status, a.upstream_status, s.rev, s.commit_cid, h.hostname, h.no_ssl \
FROM accounts a JOIN hosts h ON h.id = a.host_id \
LEFT JOIN account_sync_state s ON s.uid = a.uid \
WHERE a.did = $1";

fn host_row(row: &tokio_postgres::Row) -> Result<HostRow, DbError> {
    Ok(HostRow {
        id: row.try_get(0)?,
        hostname: row.try_get(1)?,
        last_seq: row.try_get(2)?,
        status: row.try_get(3)?,
        account_count: row.try_get(4)?,
    })
}

/// Up to `limit` hosts with `id > after`, in id order (oldest first-seen first).
pub async fn list_hosts(db: &Db, after: i64, limit: i64) -> Result<Vec<HostRow>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(LIST_HOSTS_SQL).await?;
    let rows = client.query(&stmt, &[&after, &limit]).await?;
    rows.iter().map(host_row).collect()
}

/// The host named exactly `hostname` (hostnames are stored normalised, in lower case).
pub async fn host(db: &Db, hostname: &str) -> Result<Option<HostRow>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(HOST_SQL).await?;
    let row = client.query_opt(&stmt, &[&hostname]).await?;
    row.as_ref().map(host_row).transpose()
}

/// Up to `limit` accounts with a known commit and `uid > after`, in uid order.
pub async fn list_repos(db: &Db, after: i64, limit: i64) -> Result<Vec<RepoRow>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(LIST_REPOS_SQL).await?;
    let rows = client.query(&stmt, &[&after, &limit]).await?;
    rows.iter()
        .map(|row| {
            Ok(RepoRow {
                uid: row.try_get(0)?,
                did: row.try_get(1)?,
                local_status: row.try_get(2)?,
                upstream_status: row.try_get(3)?,
                rev: row.try_get(4)?,
                commit_cid: row.try_get(5)?,
            })
        })
        .collect()
}

/// The account with this DID, if the relay knows it.
pub async fn account(db: &Db, did: &str) -> Result<Option<AccountRow>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(ACCOUNT_SQL).await?;
    let Some(row) = client.query_opt(&stmt, &[&did]).await? else {
        return Ok(None);
    };
    Ok(Some(AccountRow {
        local_status: row.try_get(0)?,
        upstream_status: row.try_get(1)?,
        rev: row.try_get(2)?,
        commit_cid: row.try_get(3)?,
        hostname: row.try_get(4)?,
        no_ssl: row.try_get(5)?,
    }))
}
