-- retake store, version 4: reservations learn from a scene type's latest attempts
-- (the GPU-time quantile over the last N rows of a scene type), so those rows are indexed.
CREATE INDEX retry_attempts_scene_type ON retry_attempts (scene_type, id);
