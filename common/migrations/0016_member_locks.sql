-- A deliver process's liveness as PostgreSQL sees it: each member holds a session-level
-- advisory lock on a connection of its own, and the server releases it the moment that
-- connection ends (a crash, kill -9, a lost host). A member whose lock is gone is dead at
-- once, whatever its `expires_at` says: the others take its mailboxes within a second
-- instead of waiting out the lease. A frozen process (SIGSTOP, a VM pause) keeps its
-- connection and its lock: for it the lease's end stays the fence.

ALTER TABLE deliver_members ADD COLUMN lock_key bigint;

-- Whether the advisory lock `key` is held in this database now; a member without a key
-- (it could not take its lock) is judged by its `expires_at` alone.
CREATE FUNCTION mailpipe_member_alive(key bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT key IS NULL OR EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND (l.classid::int8 << 32) + l.objid::int8 = key)
$$;
