-- Statements that move many jobs (a cancel of a month-end batch) stay linear, whatever the
-- connection ran before.
--
-- 1. The statement-level triggers join their transition tables (old_rows, new_rows).
--    PL/pgSQL keeps the plan of such a query for the session, made at its first call: on a
--    connection that first moved one job (every send does), that is a nested loop, and the
--    same plan then joins 20,000 × 20,000 rows (a cancel on a pooled connection ran past the
--    30 s statement timeout; 11,000 jobs took over 60 s). With nested loops off inside those
--    functions the plan is a hash or merge join at any size.
-- 2. A job's final outcome is recorded for webhooks by one INSERT per statement instead of a
--    PL/pgSQL call per job (2.6 s of a 20,000-job cancel's 3.3 s). Same events, same dedupe
--    keys, same payloads as 0007's row triggers.

ALTER FUNCTION mailpipe_count_jobs() SET enable_nestloop = off;

DROP TRIGGER webhook_job_outcome_insert ON jobs;
DROP TRIGGER webhook_job_outcome_update ON jobs;
DROP FUNCTION mailpipe_webhook_job_outcome();

-- The jobs that entered a final state, collected first (a hash join of the transition
-- tables, as the counters' trigger does), then recorded with one INSERT; their stage's
-- event recorded with the move (in the same statement) rides along as `data.event`.
CREATE FUNCTION mailpipe_webhook_job_outcomes() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off AS $$
DECLARE
    moved jobs[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n) INTO moved FROM new_rows n
        WHERE n.state IN ('delivered', 'failed', 'bounced', 'cancelled', 'expired', 'suppressed');
    ELSE
        SELECT array_agg(y) INTO moved FROM old_rows x JOIN new_rows y USING (id)
        WHERE y.state IN ('delivered', 'failed', 'bounced', 'cancelled', 'expired', 'suppressed')
          AND x.state IS DISTINCT FROM y.state;
    END IF;
    IF moved IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (id, dedupe_key, type, job_id, batch_id, payload, batch_pending)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
           'job:' || j.id || ':' || j.state, 'job.' || j.state, j.id, j.batch_id,
           jsonb_build_object('type', 'job.' || j.state,
                              'timestamp', mailpipe_webhook_time(j.updated_at),
                              'data', mailpipe_webhook_job_data(j, e.event)),
           j.batch_id IS NOT NULL
    FROM unnest(moved) j
    LEFT JOIN LATERAL (SELECT ev.event FROM job_events ev
                       WHERE ev.job_id = j.id AND ev.at = j.updated_at AND ev.kind = j.state
                       LIMIT 1) e ON true
    ORDER BY j.id
    ON CONFLICT (dedupe_key) DO NOTHING;
    RETURN NULL;
END
$$;

-- The `data` of a job outcome event, as 0007 wrote it.
CREATE FUNCTION mailpipe_webhook_job_data(j jobs, recorded jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'job_id', j.id, 'batch', j.batch_id, 'state', j.state,
        'at', mailpipe_webhook_time(j.updated_at), 'attempt', j.attempt,
        'recipients', to_jsonb(j.recipients), 'mailbox', j.mailbox,
        'message_id', j.message_id,
        'smtp', CASE WHEN j.smtp_code IS NULL THEN NULL ELSE jsonb_build_object(
            'code', j.smtp_code, 'enhanced', j.smtp_enhanced, 'text', j.smtp_text) END,
        'reason', j.reason, 'refused', j.refused, 'event', recorded)
$$;

-- Transition tables cannot go with a column list (`UPDATE OF state`): the statement-level
-- trigger runs for every UPDATE of jobs and finds nothing to do when no state moved.
CREATE TRIGGER webhook_job_outcome_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_webhook_job_outcomes();
CREATE TRIGGER webhook_job_outcome_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_webhook_job_outcomes();
