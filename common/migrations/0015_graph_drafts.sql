-- The Graph transport (docs/deliver.md, "The Graph transport") sends in two steps: a draft
-- created from our MIME (with our Message-ID), then that draft sent. The draft's id is noted
-- on the write-ahead send between the two, so a send left open or uncertain names the draft
-- an operator (or the Drafts / Sent Items lookup) can find. NULL for SMTP sends.
ALTER TABLE sends ADD COLUMN graph_draft_id text;
