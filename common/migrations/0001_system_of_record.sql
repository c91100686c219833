-- mailpipe's system of record: jobs, their events (the audit trail) and batches.
-- docs/data.md describes every table, column and state.

CREATE TABLE batches (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               text PRIMARY KEY,
    batch_id         text,
    template         text,
    -- To + Cc + Bcc, lower-cased, for "which invoices went to this address".
    recipients       text[] NOT NULL DEFAULT '{}',
    recipient_count  integer NOT NULL DEFAULT 0,
    -- SHA-256 of the job as submitted: the same id with other content is refused.
    content_hash     bytea,
    -- received | accepted | rendered | retrying | delivered | failed
    state            text NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    mailbox          text,
    message_id       text,
    smtp_code        integer,
    smtp_enhanced    text,
    smtp_text        text,
    reason           text,
    refused          jsonb NOT NULL DEFAULT '[]',
    uncertain        boolean NOT NULL DEFAULT false,
    -- The ingest publish holding a `received` job, and since when (see docs/data.md).
    claim            uuid,
    claimed_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    accepted_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_by_batch ON jobs (batch_id, state);
CREATE INDEX jobs_unfinished ON jobs (batch_id) WHERE state NOT IN ('delivered', 'failed');
CREATE INDEX jobs_by_update ON jobs (updated_at);
CREATE INDEX jobs_by_recipient ON jobs USING gin (recipients);

CREATE TABLE job_events (
    id                   bigserial PRIMARY KEY,
    job_id               text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind                 text NOT NULL,
    at                   timestamptz NOT NULL,
    mailbox              text,
    tenant               text,
    recipients           integer NOT NULL DEFAULT 0,
    external_recipients  integer NOT NULL DEFAULT 0,
    uncertain            boolean NOT NULL DEFAULT false,
    -- The event as the stages' contract writes it (common/src/contract/event.rs).
    event                jsonb NOT NULL
);

-- One row per event: recording the same event twice (a redelivery) adds nothing.
CREATE UNIQUE INDEX job_events_by_job ON job_events (job_id, at, kind);
-- What deliver reads at start to rebuild its quota windows: sends inside the last day.
CREATE INDEX job_events_sends ON job_events (at) WHERE kind = 'delivered' OR uncertain;

-- Whether an event of `kind` stamped `at` moves a job that is in `state` since `since`.
-- A job only moves forward, whatever order events arrive in and however hosts' clocks
-- differ: `received` (claimed, not yet confirmed) gives way to anything; `accepted` never
-- replaces a known state (a second accept is a duplicate); `delivered` is final; `failed`
-- gives way only to `delivered` (a dead letter replayed and then delivered); a final event
-- beats a non-final one whatever the stamps; between non-final ones the later stamp wins.
CREATE FUNCTION mailpipe_moves_forward(state text, since timestamptz, kind text, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN state = 'received' THEN true
        WHEN kind = 'accepted' THEN false
        WHEN state = 'delivered' THEN false
        WHEN state = 'failed' THEN kind = 'delivered'
        WHEN kind IN ('delivered', 'failed') THEN true
        ELSE at > since OR (at = since AND kind <> state)
    END
$$;
