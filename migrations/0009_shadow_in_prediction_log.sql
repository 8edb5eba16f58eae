-- Shadow scoring record by record (README "Watching the model in production"): a logged record
-- of a bundle that was also shadow-scored (the same stable hash chooses both) carries the
-- shadow model's prediction beside the served one, so feedback can judge both on the same
-- records. Null when the bundle was not shadowed, or the shadow skipped or failed its batch.
-- shadow_latency_ratio is the shadow's prediction time over the served model's for the batch
-- the record was in.
ALTER TABLE prediction_log
    ADD COLUMN shadow_version       bigint,
    ADD COLUMN shadow_class         smallint,
    ADD COLUMN shadow_score         double precision,
    ADD COLUMN shadow_latency_ratio double precision;
