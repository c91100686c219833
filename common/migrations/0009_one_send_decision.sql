-- One transaction decides every send (docs/architecture.md, "The send decision").
--
-- mailpipe_open_send checks and records together, under the row locks that make it exact
-- across deliver processes, in a fixed order (batch, job, mailbox lease, tenant) that cancel
-- shares (batch, then jobs), so the two never deadlock:
--   1. the batch row, FOR SHARE: a cancel or pause (which updates the row) waits for decisions
--      in progress and every later decision sees it;
--   2. the job row, FOR UPDATE: two copies of one job decide one after the other, and the
--      second sees the first's open or accepted send;
--   3. the mailbox lease, FOR SHARE: the fence; a takeover waits until the send is on record,
--      then finds it open and settles it;
--   4. the tenant's budget row, FOR UPDATE, when the send has external recipients and the
--      tenant has a limit: two processes never both take the last room of the window.
-- The answer says what to do: 'written' (send it) or why not.

CREATE TABLE tenant_budgets (
    tenant  text PRIMARY KEY
);

-- Jobs whose last send ended uncertain are found without scanning (batch status counts them).
CREATE INDEX jobs_uncertain ON jobs (batch_id) WHERE uncertain;

CREATE FUNCTION mailpipe_open_send(
    p_id uuid, p_mailbox text, p_tenant text, p_job text, p_batch text, p_message_id text,
    p_owner uuid, p_token bigint, p_recipients text[], p_external integer, p_budget float8,
    p_uncertain_hold float8, p_tenant_limit integer, p_tenant_window float8)
RETURNS TABLE (verdict text, until timestamptz, detail text, mailbox text,
               recipients integer, external_recipients integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_state     text;
    v_control   text;
    v_send      record;
    v_listed    text;
    v_used      bigint;
    v_until     timestamptz;
BEGIN
    -- A retry of this very call whose commit's answer was lost finds its own row.
    SELECT s.outcome INTO v_send FROM sends s WHERE s.id = p_id;
    IF FOUND THEN
        RETURN QUERY SELECT CASE WHEN v_send.outcome IS NULL THEN 'written' ELSE 'fenced' END,
                            NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;

    -- 1. The batch's control. Its row is made sure of first (a cancel creating it at this
    --    instant is waited for), so there is always a row to lock.
    IF p_batch IS NOT NULL THEN
        INSERT INTO batches (id) VALUES (p_batch) ON CONFLICT (id) DO NOTHING;
        SELECT b.control INTO v_control FROM batches b WHERE b.id = p_batch FOR SHARE;
    END IF;

    -- 2. The job. One not on record yet (accepted before the database was deployed) gets a row,
    --    so that it can be locked like any other.
    INSERT INTO jobs (id, batch_id, state, message_id) VALUES (p_job, p_batch, 'rendered', p_message_id)
    ON CONFLICT (id) DO NOTHING;
    SELECT j.state INTO v_state FROM jobs j WHERE j.id = p_job FOR UPDATE;
    IF v_state IN ('delivered', 'bounced', 'suppressed') THEN
        RETURN QUERY SELECT 'duplicate', NULL::timestamptz, v_state, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    ELSIF v_state = 'cancelled' OR v_control = 'cancelled' THEN
        RETURN QUERY SELECT 'cancelled', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    ELSIF v_state = 'expired' THEN
        RETURN QUERY SELECT 'expired', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;

    -- Accepted before (its outcome recorded, the job's not: a crash in between), or marked
    -- sent by an operator: never again.
    SELECT s.mailbox, s.recipients, s.external_recipients, s.ended_at INTO v_send
    FROM sends s
    WHERE s.job_id = p_job AND (s.outcome = 'accepted' OR s.resolution = 'marked_sent')
    ORDER BY s.started_at DESC LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 'accepted', v_send.ended_at, NULL::text, v_send.mailbox,
                            v_send.recipients, v_send.external_recipients;
        RETURN;
    END IF;

    -- Open: sent right now by another process, or its process died (past the deadline: it
    -- becomes uncertain here, visibly, see mailpipe_mark_uncertain).
    SELECT s.id, s.deadline INTO v_send FROM sends s WHERE s.job_id = p_job AND s.outcome IS NULL;
    IF FOUND THEN
        IF v_send.deadline > now() THEN
            RETURN QUERY SELECT 'in_flight', v_send.deadline, NULL::text, NULL::text, NULL::integer, NULL::integer;
            RETURN;
        END IF;
        PERFORM mailpipe_end_uncertain(ARRAY[v_send.id]);
    END IF;

    -- Uncertain and undecided: held for an operator (no p_uncertain_hold), or until the
    -- server surely let it go.
    SELECT s.ended_at INTO v_send FROM sends s
    WHERE s.job_id = p_job AND s.outcome = 'uncertain' AND s.resolution IS NULL
    ORDER BY s.started_at DESC LIMIT 1;
    IF FOUND THEN
        IF p_uncertain_hold IS NULL THEN
            RETURN QUERY SELECT 'uncertain', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
            RETURN;
        ELSIF v_send.ended_at + make_interval(secs => p_uncertain_hold) > now() THEN
            RETURN QUERY SELECT 'uncertain', v_send.ended_at + make_interval(secs => p_uncertain_hold),
                                NULL::text, NULL::text, NULL::integer, NULL::integer;
            RETURN;
        END IF;
    END IF;

    IF v_control = 'paused' THEN
        RETURN QUERY SELECT 'paused', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;

    -- Suppressed since the message was screened: screened again by the caller.
    SELECT string_agg(x.address, ',') INTO v_listed FROM suppressions x WHERE x.address = ANY(p_recipients);
    IF v_listed IS NOT NULL THEN
        RETURN QUERY SELECT 'suppressed', NULL::timestamptz, v_listed, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;

    -- 3. The fence, on the database's clock.
    PERFORM 1 FROM mailbox_leases l
    WHERE l.mailbox = p_mailbox AND l.owner = p_owner AND l.token = p_token AND l.expires_at > now()
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'fenced', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;

    -- 4. The tenant's external-recipient window: every send any process made that the server
    --    may have counted (an open one at its deadline, the latest it could count).
    IF p_external > 0 AND p_tenant IS NOT NULL AND p_tenant_limit IS NOT NULL THEN
        INSERT INTO tenant_budgets (tenant) VALUES (p_tenant) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM tenant_budgets t WHERE t.tenant = p_tenant FOR UPDATE;
        WITH counted AS (
            SELECT COALESCE(s.ended_at, s.deadline) AS at, s.external_recipients AS n
            FROM sends s
            WHERE s.tenant = p_tenant AND s.external_recipients > 0
              AND s.started_at > now() - make_interval(secs => p_tenant_window) - interval '1 hour'
              AND (s.outcome IS NULL OR s.outcome <> 'not_counted')
              AND COALESCE(s.ended_at, s.deadline) > now() - make_interval(secs => p_tenant_window)
        ), running AS (
            SELECT at, sum(n) OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS freed,
                   sum(n) OVER () AS used
            FROM counted
        )
        SELECT max(r.used), min(r.at) FILTER (WHERE r.freed >= r.used + p_external - p_tenant_limit)
        INTO v_used, v_until FROM running r;
        IF COALESCE(v_used, 0) + p_external > p_tenant_limit THEN
            RETURN QUERY SELECT 'tenant_full',
                                COALESCE(v_until, now()) + make_interval(secs => p_tenant_window),
                                format('%s of %s external recipients in the window', v_used, p_tenant_limit),
                                NULL::text, NULL::integer, NULL::integer;
            RETURN;
        END IF;
    END IF;

    -- Sending again settles an uncertain send as resent (its policy allowed it above).
    UPDATE sends SET resolution = 'resend', resolved_at = now()
    WHERE job_id = p_job AND outcome = 'uncertain' AND resolution IS NULL;

    INSERT INTO sends (id, mailbox, tenant, job_id, message_id, owner, token, recipients,
                       external_recipients, started_at, deadline)
    VALUES (p_id, p_mailbox, p_tenant, p_job, p_message_id, p_owner, p_token,
            COALESCE(array_length(p_recipients, 1), 0), p_external, now(),
            now() + make_interval(secs => p_budget));
    RETURN QUERY SELECT 'written', NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::integer;
END
$$;

-- Ends open sends as uncertain (their process died: counted at their deadline) and makes it
-- visible on their jobs: `uncertain`, state `retrying`, and an event, in the same statement.
-- Returns the jobs.
CREATE FUNCTION mailpipe_end_uncertain(p_ids uuid[])
RETURNS SETOF text LANGUAGE sql AS $$
    WITH ended AS (
        UPDATE sends SET outcome = 'uncertain', ended_at = deadline
        WHERE id = ANY(p_ids) AND outcome IS NULL
        RETURNING job_id, mailbox, tenant, deadline, recipients, external_recipients
    ), marked AS (
        UPDATE jobs j SET uncertain = true,
               state = CASE WHEN j.state IN ('accepted', 'rendered', 'retrying', 'failed')
                            THEN 'retrying' ELSE j.state END,
               reason = 'uncertain: its deliver process stopped during the send; the server may have accepted it',
               updated_at = greatest(j.updated_at, e.deadline)
        FROM ended e
        WHERE j.id = e.job_id AND j.state NOT IN ('delivered', 'bounced', 'suppressed', 'cancelled', 'expired')
        RETURNING j.id, j.batch_id, j.attempt, j.updated_at
    ), events AS (
        INSERT INTO job_events (job_id, kind, at, mailbox, tenant, recipients, external_recipients,
                                uncertain, event)
        SELECT e.job_id, 'retrying', m.updated_at, e.mailbox, e.tenant, e.recipients,
               e.external_recipients, true,
               jsonb_build_object('v', 1, 'job_id', e.job_id, 'batch', m.batch_id, 'kind', 'retrying',
                                  'attempt', m.attempt, 'uncertain', true, 'mailbox', e.mailbox,
                                  'reason', 'uncertain: its deliver process stopped during the send; the server may have accepted it',
                                  'at', m.updated_at)
        FROM ended e JOIN marked m ON m.id = e.job_id
        ON CONFLICT (job_id, at, kind) DO NOTHING
    )
    SELECT job_id FROM ended
$$;
