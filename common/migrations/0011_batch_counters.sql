-- Batch counters and a per-minute send rollup, kept by the same statement that changes a
-- job or records a send (docs/data.md, "Counters"): batch status and its ETA read a few
-- bounded rows, whatever the history kept, and the counts always add up because no job
-- changes without its counter changing in the same transaction.

-- Jobs of a batch by state (a `received` job is not accepted yet and is not counted).
-- `mailbox` is the sender of delivered jobs ('' otherwise), for per-mailbox counts; jobs
-- without a batch are counted under batch ''. Each key is split over 8 shards (by job id)
-- so that concurrent writers of one batch rarely wait on one row; a reader sums them.
CREATE TABLE batch_counts (
    batch_id    text NOT NULL,
    state       text NOT NULL,
    mailbox     text NOT NULL,
    shard       smallint NOT NULL,
    jobs        bigint NOT NULL DEFAULT 0,
    -- Recipients of unfinished jobs (what is left to send).
    recipients  bigint NOT NULL DEFAULT 0,
    -- Unfinished jobs whose last send's outcome is unknown.
    uncertain   bigint NOT NULL DEFAULT 0,
    -- Failed or bounced jobs, and delivered ones with refused recipients.
    failures    bigint NOT NULL DEFAULT 0,
    first_at    timestamptz,
    last_at     timestamptz,
    PRIMARY KEY (batch_id, state, mailbox, shard)
);

-- The columns of a job the counters read.
CREATE TYPE mailpipe_counted_job AS (
    id text, batch_id text, state text, mailbox text, recipient_count integer,
    uncertain boolean, refused jsonb, accepted_at timestamptz, created_at timestamptz,
    updated_at timestamptz
);

-- Adds the new rows `n` to their batches' counters and takes the old rows `o` away.
CREATE FUNCTION mailpipe_count_rows(o mailpipe_counted_job[], n mailpipe_counted_job[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO batch_counts AS c (batch_id, state, mailbox, shard, jobs, recipients,
                                   uncertain, failures, first_at, last_at)
    SELECT batch_id, state, mailbox, shard, sum(sign), sum(sign * recipients),
           sum(sign * uncertain), sum(sign * failures), min(first_at), max(last_at)
    FROM (
        SELECT r.sign, coalesce(r.batch_id, '') AS batch_id, r.state,
               CASE WHEN r.state = 'delivered' THEN coalesce(r.mailbox, '') ELSE '' END AS mailbox,
               (abs(hashtext(r.id)) % 8)::smallint AS shard,
               CASE WHEN r.final THEN 0 ELSE r.recipient_count END AS recipients,
               CASE WHEN r.uncertain AND NOT r.final THEN 1 ELSE 0 END AS uncertain,
               CASE WHEN r.state IN ('failed', 'bounced')
                         OR (r.state = 'delivered' AND r.refused <> '[]'::jsonb)
                    THEN 1 ELSE 0 END AS failures,
               CASE WHEN r.sign > 0 THEN coalesce(r.accepted_at, r.created_at) END AS first_at,
               CASE WHEN r.sign > 0 THEN r.updated_at END AS last_at
        FROM (
            SELECT -1 AS sign, x.*, x.state IN ('delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed') AS final
            FROM unnest(o) x WHERE x.state <> 'received'
            UNION ALL
            SELECT 1, x.*, x.state IN ('delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed')
            FROM unnest(n) x WHERE x.state <> 'received'
        ) r
    ) d
    GROUP BY batch_id, state, mailbox, shard
    -- One order for every writer: two statements never wait on each other's rows crosswise.
    ORDER BY batch_id, state, mailbox, shard
    ON CONFLICT (batch_id, state, mailbox, shard) DO UPDATE SET
        jobs = c.jobs + EXCLUDED.jobs,
        recipients = c.recipients + EXCLUDED.recipients,
        uncertain = c.uncertain + EXCLUDED.uncertain,
        failures = c.failures + EXCLUDED.failures,
        first_at = LEAST(c.first_at, EXCLUDED.first_at),
        last_at = GREATEST(c.last_at, EXCLUDED.last_at)
$$;

-- Statement-level, with transition tables: a cancel of 20,000 jobs is one pass, and rows
-- a statement did not change in a counted way (a claim refresh) add nothing.
CREATE FUNCTION mailpipe_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o mailpipe_counted_job[] := '{}';
    n mailpipe_counted_job[] := '{}';
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT coalesce(array_agg(ROW(x.id, x.batch_id, x.state, x.mailbox, x.recipient_count, x.uncertain, x.refused, x.accepted_at, x.created_at, x.updated_at)::mailpipe_counted_job), '{}')
        INTO n FROM new_rows x;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT coalesce(array_agg(ROW(x.id, x.batch_id, x.state, x.mailbox, x.recipient_count, x.uncertain, x.refused, x.accepted_at, x.created_at, x.updated_at)::mailpipe_counted_job), '{}')
        INTO o FROM old_rows x;
    ELSE
        SELECT coalesce(array_agg(a), '{}'), coalesce(array_agg(b), '{}') INTO o, n FROM (
            SELECT ROW(x.id, x.batch_id, x.state, x.mailbox, x.recipient_count, x.uncertain, x.refused, x.accepted_at, x.created_at, x.updated_at)::mailpipe_counted_job AS a,
                   ROW(y.id, y.batch_id, y.state, y.mailbox, y.recipient_count, y.uncertain, y.refused, y.accepted_at, y.created_at, y.updated_at)::mailpipe_counted_job AS b
            FROM old_rows x JOIN new_rows y USING (id)
        ) changed WHERE a IS DISTINCT FROM b AND ((a).state <> 'received' OR (b).state <> 'received');
    END IF;
    IF cardinality(o) > 0 OR cardinality(n) > 0 THEN
        PERFORM mailpipe_count_rows(o, n);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER batch_counts_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_jobs();
CREATE TRIGGER batch_counts_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_jobs();
CREATE TRIGGER batch_counts_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_jobs();

-- The jobs already on record (the triggers exist first: writers wait for this transaction).
SELECT mailpipe_count_rows('{}', (SELECT coalesce(array_agg(ROW(j.id, j.batch_id, j.state, j.mailbox, j.recipient_count, j.uncertain, j.refused, j.accepted_at, j.created_at, j.updated_at)::mailpipe_counted_job), '{}') FROM jobs j));

-- Recipients each mailbox delivered to per minute, for the ETA (it needs the windows'
-- use, not each send). Kept by the statement that records a `delivered` event.
CREATE TABLE mailbox_minutes (
    mailbox     text NOT NULL,
    minute      timestamptz NOT NULL,
    recipients  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, minute)
);
CREATE INDEX mailbox_minutes_by_minute ON mailbox_minutes (minute);

CREATE FUNCTION mailpipe_count_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mailbox_minutes AS m (mailbox, minute, recipients)
    SELECT mailbox, date_bin('1 minute', at, TIMESTAMPTZ 'epoch'), sum(recipients)
    FROM new_rows WHERE kind = 'delivered' AND mailbox IS NOT NULL
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (mailbox, minute) DO UPDATE SET recipients = m.recipients + EXCLUDED.recipients;
    RETURN NULL;
END
$$;

CREATE TRIGGER mailbox_minutes_insert AFTER INSERT ON job_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_minutes();

INSERT INTO mailbox_minutes (mailbox, minute, recipients)
SELECT mailbox, date_bin('1 minute', at, TIMESTAMPTZ 'epoch'), sum(recipients)
FROM job_events WHERE kind = 'delivered' AND mailbox IS NOT NULL
  AND at > now() - interval '2 days'
GROUP BY 1, 2;

-- A batch's failures, listed in its report, without reading its delivered jobs.
CREATE INDEX jobs_failures ON jobs (batch_id, updated_at, id)
    WHERE state IN ('failed', 'bounced') OR (state = 'delivered' AND refused <> '[]'::jsonb);
-- A batch's scheduled jobs (the report counts those not due yet).
CREATE INDEX jobs_scheduled ON jobs (batch_id, not_before)
    WHERE not_before IS NOT NULL
      AND state NOT IN ('received', 'delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed');
