-- retake store, version 2: what each attempt did under the strategy ladder.
--   strategy  the ladder's strategy (reseed, reseed_jitter, revise, ...); NULL for attempts of
--             runs started before the ladder
--   prompt    the prompt a text strategy sent to the generator
--   revises   the draft a text strategy revised: 0 = the failed generation, k = attempt k
--   breakdown the scorer's categories with feedback, JSON: [{"category","score","feedback"}]
ALTER TABLE retry_attempts ADD COLUMN strategy TEXT NULL;
ALTER TABLE retry_attempts ADD COLUMN prompt TEXT NULL;
ALTER TABLE retry_attempts ADD COLUMN revises INTEGER NULL;
ALTER TABLE retry_attempts ADD COLUMN breakdown TEXT NOT NULL DEFAULT '[]';
