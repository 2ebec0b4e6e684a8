-- 0001_init: the relay's relational state. The event log itself lives in files under the
-- data dir, not here. Status columns are text with CHECK constraints (not enums) so a later
-- migration can add a value without ALTER TYPE.

-- PDS hosts the relay subscribes to (or refused). `last_seq` is the upstream cursor: the
-- highest upstream seq whose event was sequenced or deliberately dropped.
CREATE TABLE hosts (
    id                    bigserial PRIMARY KEY,
    hostname              text NOT NULL UNIQUE,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'idle', 'offline', 'throttled', 'banned')),
    last_seq              bigint NOT NULL DEFAULT 0,
    account_count         bigint NOT NULL DEFAULT 0,
    account_limit         bigint NOT NULL DEFAULT 100,
    account_limit_alerts_silenced boolean NOT NULL DEFAULT false,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    -- trusted: configured domain suffix (higher rate and account limits)
    trusted               boolean NOT NULL DEFAULT false,
    -- no_ssl: dial ws:// and http:// (only for admin-added hosts)
    no_ssl                boolean NOT NULL DEFAULT false,
    -- admin_added: added through /admin/pds/requestCrawl (may be localhost:PORT)
    admin_added           boolean NOT NULL DEFAULT false,
    -- ssrf_exempt: skip public-IP checks for this host only (admin path)
    ssrf_exempt           boolean NOT NULL DEFAULT false,
    -- relay_allowed: an operator allowed this upstream even though it identifies as a relay
    relay_allowed         boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    last_connected_at     timestamptz
);
CREATE INDEX hosts_status_idx ON hosts (status);
-- requestCrawl's new-hosts-per-day limit counts recent rows.
CREATE INDEX hosts_created_at_idx ON hosts (created_at);

-- Accounts seen from their PDS. `uid` is the compact internal id (pagination cursor of
-- listRepos and /admin/repo/takedowns); `did` is the protocol identity.
CREATE TABLE accounts (
    uid              bigserial PRIMARY KEY,
    did              text NOT NULL UNIQUE,
    host_id          bigint NOT NULL REFERENCES hosts (id),
    -- relay-side status: takedowns and host-limit throttling
    local_status     text NOT NULL DEFAULT 'active'
                     CHECK (local_status IN ('active', 'takendown', 'throttled')),
    -- status from the PDS's #account events (open set of knownValues, so no CHECK)
    upstream_status  text NOT NULL DEFAULT 'active',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_host_idx ON accounts (host_id, uid);
CREATE INDEX accounts_takendown_idx ON accounts (uid) WHERE local_status = 'takendown';
-- Raising a host's limit promotes its throttled accounts oldest first.
CREATE INDEX accounts_throttled_idx ON accounts (host_id, created_at, uid)
    WHERE local_status = 'throttled';

-- The last verified commit of each account (sync 1.1 state: rev order, prevData check,
-- getLatestCommit, listRepos).
CREATE TABLE account_sync_state (
    uid         bigint PRIMARY KEY REFERENCES accounts (uid) ON DELETE CASCADE,
    rev         text NOT NULL,
    commit_cid  text NOT NULL,
    data_cid    text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Domain bans: a host equal to or under a banned domain is refused.
CREATE TABLE domain_bans (
    id          bigserial PRIMARY KEY,
    domain      text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Second-level cache of resolved identities (the first level is in memory). A negative
-- row records "not found / tombstoned / broken" until expires_at.
CREATE TABLE did_cache (
    did          text PRIMARY KEY,
    document     jsonb,
    signing_key  text,
    pds_host     text,
    pds_endpoint text,
    handle       text,
    negative     boolean NOT NULL DEFAULT false,
    resolved_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX did_cache_expires_at_idx ON did_cache (expires_at);

-- Operator settings changed through the admin API that must survive a restart
-- (requestCrawl enabled, new hosts per day), as small JSON values by key.
CREATE TABLE relay_settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
