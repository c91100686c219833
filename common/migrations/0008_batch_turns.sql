-- Lanes and fair share (docs/deliver.md, "Lanes and fair share"): every batch gets a turn
-- number when it is first recorded; ingest maps it onto one of `rabbitmq.bulk_queues` deliver
-- queues, so that consecutive batches wait in different queues and progress side by side.

CREATE SEQUENCE batch_turns;
ALTER TABLE batches ADD COLUMN turn bigint NOT NULL DEFAULT nextval('batch_turns');
ALTER SEQUENCE batch_turns OWNED BY batches.turn;
