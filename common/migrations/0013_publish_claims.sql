-- A publish's claim is one row with a heartbeat, not a timestamp on each job it holds.
--
-- Refreshing a claim used to be one UPDATE over every job the publish held: for a
-- million-line submission, a million rows rewritten every minute (and, once, a statement
-- that ran past the statement timeout and failed the whole submission). Now a refresh
-- touches one row; a claim is stale when its heartbeat is, and a take-over marks the claim
-- it took from, so that publish (if it still runs) learns it must re-read what it holds.

CREATE TABLE publish_claims (
    claim      uuid PRIMARY KEY,
    heartbeat  timestamptz NOT NULL DEFAULT now(),
    -- Some of its jobs were taken over by a resubmission after the heartbeat went stale.
    taken_from boolean NOT NULL DEFAULT false
);

-- Claims in flight while this migration runs keep their age.
INSERT INTO publish_claims (claim, heartbeat)
SELECT claim, max(claimed_at) FROM jobs
WHERE claim IS NOT NULL AND state = 'received'
GROUP BY claim
ON CONFLICT DO NOTHING;

CREATE INDEX publish_claims_heartbeat ON publish_claims (heartbeat);

-- Releasing a claim and reading what a taken-from claim still holds find its jobs here;
-- confirmed jobs leave the index (their claim is cleared).
CREATE INDEX jobs_claim ON jobs (claim) WHERE claim IS NOT NULL;
