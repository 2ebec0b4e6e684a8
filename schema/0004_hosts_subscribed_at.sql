-- 0004_hosts_subscribed_at: when the relay first completed a handshake with the host since its
-- cursor was last reset (NULL: never, or reset after FutureCursor).
--
-- Why: a host's cursor only moves when one of its events becomes durable, so a quiet host
-- the relay is subscribed to has last_seq = 0, and so does one whose events were all in
-- flight at a crash. Dialled "live only" after a dropped connection or a restart, such a host
-- would lose what it published in between. A subscribed host is owed everything it published
-- since, so it resumes from cursor 0 (its retained outbox; the rev check drops what is stored).
ALTER TABLE hosts ADD COLUMN subscribed_at timestamptz;

-- Hosts that already delivered events (a cursor, or a live connection) were subscribed.
UPDATE hosts SET subscribed_at = coalesce(last_connected_at, updated_at)
    WHERE last_seq > 0 OR last_connected_at IS NOT NULL;
