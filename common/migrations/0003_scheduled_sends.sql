-- Scheduled sends: a job may say not_before / not_after (docs/data.md, "Scheduled sends").

ALTER TABLE jobs ADD COLUMN not_before timestamptz;
ALTER TABLE jobs ADD COLUMN not_after timestamptz;

-- `expired` is final like `cancelled`: only a `delivered` (a send already under way) moves
-- it on.
CREATE OR REPLACE FUNCTION mailpipe_moves_forward(state text, since timestamptz, kind text, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN state = 'received' THEN true
        WHEN kind = 'accepted' THEN false
        WHEN state = 'delivered' THEN false
        WHEN state IN ('failed', 'cancelled', 'expired') THEN kind = 'delivered'
        WHEN kind IN ('delivered', 'failed', 'cancelled', 'expired') THEN true
        ELSE at > since OR (at = since AND kind <> state)
    END
$$;
