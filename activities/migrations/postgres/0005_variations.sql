-- retake store, version 5: what each attempt varied, counted for adaptive retries.
--   retry_attempts.variation  the attempt's variation as JSON (arms, moves, targets, how and why
--                             it was chosen, its quality gain); NULL for earlier runs
--   attempt_arms              one row per scored attempt × target failure kind × arm: what
--                             insights and the adaptive choice count. attempt_id is the attempt's
--                             retry_attempts.id, so "the latest N attempts" does not depend on
--                             worker clocks. gain_e4 is the quality gain in ten-thousandths.
ALTER TABLE retry_attempts ADD COLUMN variation TEXT NULL;

CREATE TABLE attempt_arms (
    workflow_id  TEXT COLLATE "C" NOT NULL,
    run_id       TEXT COLLATE "C" NOT NULL,
    attempt      INTEGER NOT NULL,
    attempt_id   BIGINT NOT NULL,
    scene_type   TEXT COLLATE "C" NOT NULL,
    scope        TEXT COLLATE "C" NOT NULL,
    failure_kind TEXT COLLATE "C" NOT NULL,
    arm          TEXT COLLATE "C" NOT NULL,
    passed       BOOLEAN NOT NULL,
    gain_e4      BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, run_id, attempt, failure_kind, arm)
);

CREATE INDEX attempt_arms_scene_type ON attempt_arms (scene_type, scope, attempt_id);
