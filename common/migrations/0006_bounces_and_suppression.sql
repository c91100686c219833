-- After Exchange says 250: non-delivery reports move a job to `bounced`, hard bounces and
-- RCPT refusals feed a global suppression list, and deliver drops suppressed recipients
-- (a job left with none ends `suppressed`). docs/data.md, "Bounces and suppression".

-- Recipients deliver dropped before the send because they are suppressed:
-- [{"address", "reason", "source"}].
ALTER TABLE jobs ADD COLUMN suppressed jsonb NOT NULL DEFAULT '[]';

-- An NDR names the original by its Message-ID: finding the job must not scan.
CREATE INDEX jobs_by_message_id ON jobs (message_id) WHERE message_id IS NOT NULL;

-- Every report (NDR, DSN) read from a pool mailbox, once: keyed by the mailbox and the
-- report's Graph id or its own Message-ID, so a report recorded twice (a crash between
-- the record and moving it out of the Inbox, a restart) changes nothing.
CREATE TABLE handled_reports (
    mailbox     text NOT NULL,
    report_key  text NOT NULL,
    -- The job it was matched to (none: no job of ours, nothing recorded for it).
    job_id      text,
    -- bounced | unmatched
    outcome     text NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox, report_key)
);
CREATE INDEX handled_reports_by_time ON handled_reports (handled_at);

-- Addresses never sent to again, for every sender (global: a dead address is dead for
-- every tenant of the pool).
CREATE TABLE suppressions (
    -- Lower-cased: the key.
    address     text PRIMARY KEY,
    -- As first seen (an NDR's Final-Recipient, the operator's spelling).
    original    text NOT NULL,
    -- bounce | rcpt_refused | operator
    source      text NOT NULL CHECK (source IN ('bounce', 'rcpt_refused', 'operator')),
    reason      text NOT NULL,
    -- The DSN status (bounce) or the enhanced code of the RCPT reply (rcpt_refused).
    status      text,
    job_id      text,
    mailbox     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text
);
CREATE INDEX suppressions_by_time ON suppressions (created_at);

-- `bounced` is the last word: an NDR proves the server took the message, so it beats every
-- state (a `delivered`, an uncertain `retrying`, a `failed` that gave up on an uncertain
-- send); a later NDR for the same job updates the row (the last bounce's status), nothing
-- else moves a bounced job. `suppressed` is final like `cancelled`: only a `delivered` (a
-- send already under way) or a `bounced` moves it on.
CREATE OR REPLACE FUNCTION mailpipe_moves_forward(state text, since timestamptz, kind text, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN state = 'received' THEN true
        WHEN kind = 'accepted' THEN false
        WHEN state = 'bounced' THEN kind = 'bounced' AND at > since
        WHEN kind = 'bounced' THEN true
        WHEN state = 'delivered' THEN false
        WHEN state IN ('failed', 'cancelled', 'expired', 'suppressed') THEN kind = 'delivered'
        WHEN kind IN ('delivered', 'failed', 'cancelled', 'expired', 'suppressed') THEN true
        ELSE at > since OR (at = since AND kind <> state)
    END
$$;
