-- Outcome webhooks from a durable outbox (docs/webhooks.md).
--
-- An event is born in the database, in the transaction that records the outcome, by a
-- trigger: no stage can record an outcome and forget its webhook, and no stage's code
-- knows about webhooks. ingest's dispatcher fans each event out to the endpoints it
-- goes to (one `webhook_deliveries` row each) and delivers them until acknowledged or
-- expired.

-- A batch's callback URL, given at submission (`callback_url=`); checked by ingest.
ALTER TABLE batches ADD COLUMN callback_url text;

CREATE TABLE webhook_events (
    -- `msg_` + 32 hex digits: the Standard Webhooks `webhook-id`, the same on every try.
    id             text PRIMARY KEY,
    -- `job:<id>:<outcome>` or `batch:<id>:completed`: the same outcome recorded twice
    -- (a replay, a redelivered message) is one event.
    dedupe_key     text NOT NULL UNIQUE,
    -- job.delivered | job.failed | job.bounced | job.cancelled | job.expired |
    -- job.suppressed | job.uncertain | batch.completed
    type           text NOT NULL,
    job_id         text,
    batch_id       text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The body sent, byte for byte on every try: {"type", "timestamp", "data"}.
    payload        jsonb NOT NULL,
    -- Not yet given its deliveries by a dispatcher.
    fanned_out     boolean NOT NULL DEFAULT false,
    -- A final outcome of a batch's job, not yet looked at by the batch-completion sweep.
    batch_pending  boolean NOT NULL DEFAULT false
);

CREATE INDEX webhook_events_to_fan_out ON webhook_events (created_at) WHERE NOT fanned_out;
CREATE INDEX webhook_events_batch_sweep ON webhook_events (created_at) WHERE batch_pending;
CREATE INDEX webhook_events_by_age ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- `callback` (the batch's URL) or the name of an `[[ingest.webhooks.endpoints]]`.
    endpoint         text NOT NULL,
    url              text NOT NULL,
    -- pending | delivered | expired | gone (the receiver answered 410)
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    -- When it may be tried next; while a dispatcher holds it, the end of its hold.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (state, created_at);

-- A time as the payloads write it: RFC 3339 in UTC, microseconds, whatever the session's
-- TimeZone.
CREATE FUNCTION mailpipe_webhook_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- Records one event (once per dedupe key).
CREATE FUNCTION mailpipe_webhook_record(kind text, dedupe text, job text, batch text,
                                        at timestamptz, data jsonb, sweep boolean)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_events (id, dedupe_key, type, job_id, batch_id, payload, batch_pending)
    VALUES ('msg_' || replace(gen_random_uuid()::text, '-', ''), dedupe, kind, job, batch,
            jsonb_build_object('type', kind, 'timestamp', mailpipe_webhook_time(at), 'data', data),
            sweep AND batch IS NOT NULL)
    ON CONFLICT (dedupe_key) DO NOTHING
$$;

-- A job moved into a final state. The state is matched as text, so a final state added
-- later (`bounced`, `suppressed`) fires too. The stage's event recorded with the move (in
-- the same statement) rides along as `data.event`.
CREATE FUNCTION mailpipe_webhook_job_outcome() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    recorded jsonb;
BEGIN
    SELECT e.event INTO recorded FROM job_events e
    WHERE e.job_id = NEW.id AND e.at = NEW.updated_at AND e.kind = NEW.state
    LIMIT 1;
    PERFORM mailpipe_webhook_record(
        'job.' || NEW.state, 'job:' || NEW.id || ':' || NEW.state, NEW.id, NEW.batch_id,
        NEW.updated_at,
        jsonb_build_object(
            'job_id', NEW.id, 'batch', NEW.batch_id, 'state', NEW.state,
            'at', mailpipe_webhook_time(NEW.updated_at), 'attempt', NEW.attempt,
            'recipients', to_jsonb(NEW.recipients), 'mailbox', NEW.mailbox,
            'message_id', NEW.message_id,
            'smtp', CASE WHEN NEW.smtp_code IS NULL THEN NULL ELSE jsonb_build_object(
                'code', NEW.smtp_code, 'enhanced', NEW.smtp_enhanced, 'text', NEW.smtp_text) END,
            'reason', NEW.reason, 'refused', NEW.refused, 'event', recorded),
        true);
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_job_outcome_insert AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('delivered', 'failed', 'bounced', 'cancelled', 'expired', 'suppressed'))
    EXECUTE FUNCTION mailpipe_webhook_job_outcome();
CREATE TRIGGER webhook_job_outcome_update AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('delivered', 'failed', 'bounced', 'cancelled', 'expired', 'suppressed')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION mailpipe_webhook_job_outcome();

-- A send closed `uncertain` (no reply after the data, or its process died mid-send and a
-- successor or an operator closed it): the one place every uncertain send is written.
-- Once per job; a later `delivered` (found in the Sent Items, or resent) fires its own.
CREATE FUNCTION mailpipe_webhook_uncertain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    batch text;
    tries integer;
BEGIN
    SELECT j.batch_id, j.attempt INTO batch, tries FROM jobs j WHERE j.id = NEW.job_id;
    PERFORM mailpipe_webhook_record(
        'job.uncertain', 'job:' || NEW.job_id || ':uncertain', NEW.job_id, batch,
        COALESCE(NEW.ended_at, now()),
        jsonb_build_object(
            'job_id', NEW.job_id, 'batch', batch, 'state', 'uncertain',
            'at', mailpipe_webhook_time(COALESCE(NEW.ended_at, now())), 'attempt', tries,
            'mailbox', NEW.mailbox, 'message_id', NEW.message_id, 'send_id', NEW.id,
            'started_at', mailpipe_webhook_time(NEW.started_at)),
        false);
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_uncertain_insert AFTER INSERT ON sends FOR EACH ROW
    WHEN (NEW.outcome = 'uncertain')
    EXECUTE FUNCTION mailpipe_webhook_uncertain();
CREATE TRIGGER webhook_uncertain_update AFTER UPDATE OF outcome ON sends FOR EACH ROW
    WHEN (NEW.outcome = 'uncertain' AND OLD.outcome IS DISTINCT FROM 'uncertain')
    EXECUTE FUNCTION mailpipe_webhook_uncertain();
