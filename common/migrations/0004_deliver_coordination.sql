-- deliver across crashes and processes (docs/deliver.md, "Several processes, one pool").

-- Every SMTP send, written before MAIL FROM and closed by its outcome: the quota ledger.
-- A send still open when its process died counts at `deadline`, the latest instant the
-- server could have counted it.
CREATE TABLE sends (
    id                   uuid PRIMARY KEY,
    mailbox              text NOT NULL,
    tenant               text,
    job_id               text NOT NULL,
    message_id           text NOT NULL,
    -- The deliver process and the mailbox lease's fencing token it sent under.
    owner                uuid NOT NULL,
    token                bigint NOT NULL,
    recipients           integer NOT NULL,
    external_recipients  integer NOT NULL,
    started_at           timestamptz NOT NULL,
    deadline             timestamptz NOT NULL,
    ended_at             timestamptz,
    -- NULL while open; accepted | counted (refused or lost after the data) | not_counted
    -- (ended before the data) | uncertain (no reply after the data, or its process died)
    outcome              text,
    -- For an uncertain send: resent | marked_sent (by an operator or the pool's policy).
    resolution           text,
    resolved_at          timestamptz
);

-- The ledger rebuild of one mailbox: its sends inside the longest window.
CREATE INDEX sends_by_mailbox ON sends (mailbox, started_at);
-- Tenant windows shared by mailboxes that other processes own.
CREATE INDEX sends_by_tenant ON sends (tenant, started_at) WHERE external_recipients > 0;
-- The check before each send, and `mailpipe-ingest uncertain`.
CREATE INDEX sends_by_job ON sends (job_id, started_at);
CREATE INDEX sends_unresolved ON sends (started_at) WHERE outcome IS NULL OR (outcome = 'uncertain' AND resolution IS NULL);

-- Live deliver processes: each renews its row; a row past `expires_at` is a dead process.
CREATE TABLE deliver_members (
    id            uuid PRIMARY KEY,
    host          text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);

-- Which process may send through a mailbox, until when. `token` grows with every change of
-- owner: a write-ahead send is only written under the current owner and token.
CREATE TABLE mailbox_leases (
    mailbox      text PRIMARY KEY,
    owner        uuid,
    token        bigint NOT NULL DEFAULT 0,
    expires_at   timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at  timestamptz
);

-- The quota ledger is `sends` now; the events' index for it is not read any more.
DROP INDEX IF EXISTS job_events_sends;
