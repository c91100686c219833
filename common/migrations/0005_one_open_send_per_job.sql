-- One open send per job, whatever the number of deliver processes: a second copy of a
-- message (a publisher's retry, a redelivery) handled by another process cannot write its
-- send ahead while the first one's is open (docs/deliver.md, "One send per job").
CREATE UNIQUE INDEX sends_one_open_per_job ON sends (job_id) WHERE outcome IS NULL;
