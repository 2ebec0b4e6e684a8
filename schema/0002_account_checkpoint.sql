-- The event-log seq up to which every event's account state is in account_sync_state and
-- accounts.upstream_status. Written in the write-behind's account statement; on start the
-- relay re-reads the log after it, so a crash between a durable event and its account
-- state loses nothing (one row).
CREATE TABLE relay_checkpoint (
    id                 smallint PRIMARY KEY CHECK (id = 1),
    account_state_seq  bigint NOT NULL CHECK (account_state_seq >= 0)
);
