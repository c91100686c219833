-- A batch's progress over time for the console's chart: jobs delivered and failed per
-- minute, kept by the statement that records the events (as `mailbox_minutes` is), so
-- drawing it reads at most a few hundred rows whatever the batch's size.
CREATE TABLE batch_minutes (
    batch_id   text NOT NULL,
    minute     timestamptz NOT NULL,
    delivered  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, minute)
);

CREATE FUNCTION mailpipe_count_batch_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_minutes AS b (batch_id, minute, delivered, failed)
    SELECT j.batch_id, date_bin('1 minute', n.at, TIMESTAMPTZ 'epoch'),
           count(*) FILTER (WHERE n.kind = 'delivered'),
           count(*) FILTER (WHERE n.kind <> 'delivered')
    FROM new_rows n JOIN jobs j ON j.id = n.job_id
    WHERE n.kind IN ('delivered', 'failed', 'bounced') AND j.batch_id IS NOT NULL
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (batch_id, minute) DO UPDATE
        SET delivered = b.delivered + EXCLUDED.delivered, failed = b.failed + EXCLUDED.failed;
    RETURN NULL;
END
$$;

CREATE TRIGGER batch_minutes_insert AFTER INSERT ON job_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_batch_minutes();

-- The last week's history, so running batches have their chart at once.
INSERT INTO batch_minutes (batch_id, minute, delivered, failed)
SELECT j.batch_id, date_bin('1 minute', e.at, TIMESTAMPTZ 'epoch'),
       count(*) FILTER (WHERE e.kind = 'delivered'),
       count(*) FILTER (WHERE e.kind <> 'delivered')
FROM job_events e JOIN jobs j ON j.id = e.job_id
WHERE e.kind IN ('delivered', 'failed', 'bounced') AND j.batch_id IS NOT NULL
  AND e.at > now() - interval '7 days'
GROUP BY 1, 2;
