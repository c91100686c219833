-- Mailboxes a deliver process holds back (paused for a window, quarantined for a fault),
-- with why and until when, as their owner reports them. Only deliver knows a hold (it
-- follows the server's replies); the console's pool page and the ETA read it here. A row
-- whose `until` has passed is no hold: the reader filters, so a crashed owner's rows
-- expire on their own.
CREATE TABLE mailbox_holds (
    mailbox     text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('paused', 'quarantined')),
    reason      text NOT NULL,
    until       timestamptz NOT NULL,
    owner       uuid NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now()
);
