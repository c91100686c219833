-- Batch control: a batch can be paused, resumed and cancelled (docs/data.md, "Batch control").

ALTER TABLE batches ADD COLUMN control text NOT NULL DEFAULT 'running';
ALTER TABLE batches ADD COLUMN control_changed_at timestamptz;

-- `cancelled` is final like `failed`: only a `delivered` (a send already under way when the
-- batch was cancelled) moves a cancelled job on.
CREATE OR REPLACE FUNCTION mailpipe_moves_forward(state text, since timestamptz, kind text, at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN state = 'received' THEN true
        WHEN kind = 'accepted' THEN false
        WHEN state = 'delivered' THEN false
        WHEN state IN ('failed', 'cancelled') THEN kind = 'delivered'
        WHEN kind IN ('delivered', 'failed', 'cancelled') THEN true
        ELSE at > since OR (at = since AND kind <> state)
    END
$$;
