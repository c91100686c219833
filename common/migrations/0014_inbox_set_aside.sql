-- Inbox messages deliver's reader looked at and must not fetch again before they leave the
-- Inbox: those too large to fetch (deliver.graph.max_message_bytes). The reader moves every
-- message it has looked at out of the Inbox; a row here covers the time between the one
-- fetch that found the message too large and the move that sets it aside, so a failed
-- move, a crash or a restart in between only moves it, never fetches it again.
--
-- Keyed by the message's Graph id, which is stable while the message stays in the Inbox and
-- changes when it is moved: the reader deletes the row once the move is done (a row whose
-- message left some other way goes with the retention).
CREATE TABLE inbox_set_aside (
    mailbox             text NOT NULL,   -- lower case
    graph_id            text NOT NULL,
    internet_message_id text,
    reason              text NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox, graph_id)
);

CREATE INDEX inbox_set_aside_by_time ON inbox_set_aside (recorded_at);
