//! What requestCrawl admission reads and the crawl admin settings write: the operator's
//! switches in `relay_settings` (public crawl enabled, new hosts per day), the `domain_bans`
//! table, and the few `hosts` reads admission needs (is this host known, how many hosts did
//! public requests add in the last 24 hours).
//!
//! Why these are plain statements and not HostSupervisor messages: admission runs on the HTTP
//! workers, and every check before the final `AddHost` is a read (or an operator's write of a
//! setting); none of it needs the supervisor's state, so the supervisor's mailbox only ever
//! sees hosts that passed. Each function is one bounded statement (a key, a `LIMIT`, an
//! aggregate over the `created_at` index).
//!
//! Settings are JSON values by key: `public_crawl_enabled` (a boolean) and
//! `new_hosts_per_day` (a number). A stored value wins over the command-line default; a value
//! of the wrong shape (written by hand) is ignored with a warning, so the default applies.

use std::time::Duration;

use crate::store::postgres::{Db, DbError};

/// `relay_settings` key of the public requestCrawl switch.
pub const PUBLIC_CRAWL_KEY: &str = "public_crawl_enabled";
/// `relay_settings` key of the new-hosts-per-day limit.
pub const NEW_HOSTS_PER_DAY_KEY: &str = "new_hosts_per_day";

/// Most domain bans `listDomainBans` returns (the table is operator-written and small; the
/// bound only keeps one answer finite).
pub const MAX_LISTED_DOMAIN_BANS: i64 = 100_000;

/// The crawl settings an operator stored; `None` where nothing (usable) is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredCrawlSettings {
    pub public_crawl_enabled: Option<bool>,
    pub new_hosts_per_day: Option<u32>,
}

/// Reads both settings in one statement.
pub async fn load_settings(db: &Db) -> Result<StoredCrawlSettings, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT key, value::text FROM relay_settings WHERE key = ANY($1)",
            &[&[PUBLIC_CRAWL_KEY, NEW_HOSTS_PER_DAY_KEY].as_slice()],
        )
        .await?;
    let mut stored = StoredCrawlSettings::default();
    for row in rows {
        let key: String = row.try_get(0)?;
        let text: String = row.try_get(1)?;
        // jsonb's own text form always parses; `Null` (never stored) fails both shapes below.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match key.as_str() {
            PUBLIC_CRAWL_KEY => match value.as_bool() {
                Some(on) => stored.public_crawl_enabled = Some(on),
                None => tracing::warn!(%key, %value, "stored setting is not a boolean; ignored"),
            },
            NEW_HOSTS_PER_DAY_KEY => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => stored.new_hosts_per_day = Some(n),
                None => tracing::warn!(%key, %value, "stored setting is not a count; ignored"),
            },
            _ => {}
        }
    }
    Ok(stored)
}

async fn store_setting(db: &Db, key: &str, value: serde_json::Value) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO relay_settings (key, value) VALUES ($1, $2::text::jsonb) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            &[&key, &value.to_string()],
        )
        .await?;
    Ok(())
}

/// Stores the public requestCrawl switch.
pub async fn set_public_crawl_enabled(db: &Db, enabled: bool) -> Result<(), DbError> {
    store_setting(db, PUBLIC_CRAWL_KEY, serde_json::Value::Bool(enabled)).await
}

/// Stores the new-hosts-per-day limit.
pub async fn set_new_hosts_per_day(db: &Db, limit: u32) -> Result<(), DbError> {
    store_setting(db, NEW_HOSTS_PER_DAY_KEY, serde_json::Value::from(limit)).await
}

/// Every banned domain, in name order.
pub async fn list_domain_bans(db: &Db) -> Result<Vec<String>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT domain FROM domain_bans ORDER BY domain LIMIT $1",
            &[&MAX_LISTED_DOMAIN_BANS],
        )
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Adds a (normalised) domain ban; `false` when it was already there.
pub async fn ban_domain(db: &Db, domain: &str) -> Result<bool, DbError> {
    let client = db.client().await?;
    let inserted = client
        .execute(
            "INSERT INTO domain_bans (domain) VALUES ($1) ON CONFLICT (domain) DO NOTHING",
            &[&domain],
        )
        .await?;
    Ok(inserted == 1)
}

/// Removes a domain ban; `false` when there was none.
pub async fn unban_domain(db: &Db, domain: &str) -> Result<bool, DbError> {
    let client = db.client().await?;
    let deleted = client
        .execute("DELETE FROM domain_bans WHERE domain = $1", &[&domain])
        .await?;
    Ok(deleted > 0)
}

/// The first of `candidates` (a host and its parent domains) that is banned, if any.
pub async fn banned_domain_among(
    db: &Db,
    candidates: &[String],
) -> Result<Option<String>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT domain FROM domain_bans WHERE domain = ANY($1) \
             ORDER BY length(domain) LIMIT 1",
            &[&candidates],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(DbError::from)
}

/// Sets every known host equal to or under `domain` (port ignored, so a ban of `localhost`
/// covers `localhost:PORT`) that is not banned yet to `banned` and returns their hostnames,
/// at most `limit` (a second call takes the next ones).
/// `domain` is normalised, so it holds no `LIKE` wildcard (`%`, `_`) or backslash.
pub async fn ban_hosts_under(db: &Db, domain: &str, limit: i64) -> Result<Vec<String>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "UPDATE hosts SET status = 'banned', updated_at = now() WHERE id IN ( \
               SELECT id FROM hosts \
               WHERE status <> 'banned' \
                 AND (split_part(hostname, ':', 1) = $1 \
                      OR split_part(hostname, ':', 1) LIKE '%.' || $1) \
               ORDER BY id LIMIT $2) \
             RETURNING hostname",
            &[&domain, &limit],
        )
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// The stored status of `hostname` (stored normalised), if the relay knows it.
pub async fn host_status(db: &Db, hostname: &str) -> Result<Option<String>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt("SELECT status FROM hosts WHERE hostname = $1", &[&hostname])
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(DbError::from)
}

/// Hosts that public requestCrawl added in the last 24 hours (operator-added ones do not
/// count), and how long until the oldest of them leaves that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentPublicHosts {
    pub count: u64,
    /// `None` when there are none.
    pub oldest_leaves_in: Option<Duration>,
}

/// One aggregate over the `created_at` index.
pub async fn recent_public_hosts(db: &Db) -> Result<RecentPublicHosts, DbError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*), \
                    ceil(extract(epoch FROM min(created_at) + interval '24 hours' - now()))::float8 \
             FROM hosts WHERE created_at > now() - interval '24 hours' AND NOT admin_added",
            &[],
        )
        .await?;
    let count: i64 = row.try_get(0)?;
    let leaves: Option<f64> = row.try_get(1)?;
    Ok(RecentPublicHosts {
        count: u64::try_from(count).unwrap_or(0),
        oldest_leaves_in: leaves.map(|s| Duration::from_secs(s.clamp(0.0, 86_400.0) as u64)),
    })
}
