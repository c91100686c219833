-- Token roles (SECURITY.md, "Who may do what"): a batch remembers the owner label of the
-- API token that created it, so a `submit` token sees and controls only its own batches.
-- NULL: created by a token without an owner label, by `submit` on the command line, or
-- before this migration; only `read` and `operate` tokens see those.
ALTER TABLE batches ADD COLUMN owner text;
