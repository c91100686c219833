-- Which reports are trusted (docs/deliver.md, "Which reports are trusted"): a report
-- changes a job or the suppression list only when its original's Message-ID is a send of
-- the mailbox it was read from. That decision looks the send up by its Message-ID.
CREATE INDEX sends_by_message_id ON sends (message_id);

-- Why a report was refused (`outcome = 'untrusted'`), for the person who looks at the
-- folder it was moved to.
ALTER TABLE handled_reports ADD COLUMN reason text;
