-- 0003_account_admin: what admin takedowns and host-limit promotions need, and a maintained
-- hosts.account_count.

-- A takedown remembers whether the account was throttled by its host's limit, so reversing
-- it gives the throttle back (rookery never un-throttles by reversal), and the seq of the
-- relay's own `#account {takendown}` once it was emitted (NULL: not announced yet, so a
-- repeated takedown announces it; a repeated one that was announced emits nothing).
ALTER TABLE accounts ADD COLUMN throttled_before_takedown boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN takedown_seq bigint;

-- hosts.account_count: the host's accounts that are not deleted (PROTOCOL.md §7; indigo
-- never decrements on deletion). Kept by a trigger rather than by each writer: accounts are
-- created by the shards' account store, moved by migrations, and marked deleted by the
-- write-behind's batched status statement, and a trigger is exact on all three paths (and
-- on any manual SQL) at the cost of one host-row update per such change. The WHEN clause
-- keeps every other update (sync state, other statuses, local status) free of it.
CREATE FUNCTION accounts_maintain_host_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.upstream_status <> 'deleted' THEN
        UPDATE hosts SET account_count = account_count - 1 WHERE id = OLD.host_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.upstream_status <> 'deleted' THEN
        UPDATE hosts SET account_count = account_count + 1 WHERE id = NEW.host_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_host_count_insert_delete AFTER INSERT OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_maintain_host_count();
CREATE TRIGGER accounts_host_count_update AFTER UPDATE OF host_id, upstream_status ON accounts
    FOR EACH ROW
    WHEN (OLD.host_id IS DISTINCT FROM NEW.host_id
          OR (OLD.upstream_status = 'deleted') IS DISTINCT FROM (NEW.upstream_status = 'deleted'))
    EXECUTE FUNCTION accounts_maintain_host_count();

-- The column was never written before this migration.
UPDATE hosts AS h SET account_count = (
    SELECT count(*) FROM accounts AS a WHERE a.host_id = h.id AND a.upstream_status <> 'deleted'
);
