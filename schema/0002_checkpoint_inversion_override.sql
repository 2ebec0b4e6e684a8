-- The event-log seq up to which every event's account state is in account_sync_state and
-- accounts.upstream_status. Written in the write-behind's account statement; on start the
-- relay re-reads the log after it, so a crash between a durable event and its account
-- state loses nothing (one row).
CREATE TABLE relay_checkpoint (
    id                 smallint PRIMARY KEY CHECK (id = 1),
    account_state_seq  bigint NOT NULL CHECK (account_state_seq >= 0)
);

-- An operator's per-host override: inversion failures of this host's commits are counted
-- and the commit passes (signature still required), for one PDS implementation that does
-- not send correct sync 1.1 diffs yet, without weakening any other host.
ALTER TABLE hosts ADD COLUMN inversion_warn_only boolean NOT NULL DEFAULT false;
