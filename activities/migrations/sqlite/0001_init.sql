-- retake store, version 1.
--
-- Written for SQLite but kept close to portable SQL so a Postgres migration can mirror it:
-- only `INTEGER PRIMARY KEY AUTOINCREMENT` below is SQLite-specific (Postgres: BIGSERIAL or
-- GENERATED ALWAYS AS IDENTITY). Timestamps are RFC 3339 UTC text with milliseconds, generated
-- by the application. JSON columns hold serde_json text.

-- Retry policy per scene type (validated JSON).
CREATE TABLE retry_policies (
    scene_type TEXT NOT NULL PRIMARY KEY,
    policy     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- GPU budget per project. limit_ms NULL: no limit, GPU time is still tracked.
CREATE TABLE project_budgets (
    project_id  TEXT NOT NULL PRIMARY KEY,
    limit_ms    BIGINT NULL,
    reserved_ms BIGINT NOT NULL DEFAULT 0,
    spent_ms    BIGINT NOT NULL DEFAULT 0,
    updated_at  TEXT NOT NULL,
    CHECK (limit_ms IS NULL OR limit_ms >= 0),
    CHECK (reserved_ms >= 0),
    CHECK (spent_ms >= 0)
);

-- One reservation per attempt key; its row is the idempotency record of reserve/settle/release.
-- For status 'refused', reserved_ms is the requested amount (never added to the project) and
-- limit_ms/committed_ms record what the refusal saw.
CREATE TABLE budget_reservations (
    workflow_id  TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    project_id   TEXT NOT NULL REFERENCES project_budgets (project_id),
    reserved_ms  BIGINT NOT NULL,
    spent_ms     BIGINT NULL,
    status       TEXT NOT NULL,
    limit_ms     BIGINT NULL,
    committed_ms BIGINT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workflow_id, run_id, attempt),
    CHECK (status IN ('reserved', 'settled', 'released', 'refused'))
);

CREATE INDEX budget_reservations_project ON budget_reservations (project_id);

-- Every attempt of every retry run.
CREATE TABLE retry_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    segment_id      TEXT NOT NULL,
    project_id      TEXT NOT NULL,
    scene_type      TEXT NOT NULL,
    workflow_id     TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    seed            BIGINT NOT NULL,
    params          TEXT NOT NULL,
    original_params TEXT NOT NULL,
    jitter          TEXT NOT NULL,
    scores          TEXT NOT NULL,
    failures        TEXT NOT NULL,
    passed          BOOLEAN NOT NULL,
    status          TEXT NOT NULL,
    gpu_ms          BIGINT NOT NULL,
    output_uri      TEXT NULL,
    error           TEXT NULL,
    selected        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (workflow_id, run_id, attempt)
);

CREATE INDEX retry_attempts_segment ON retry_attempts (segment_id);

-- How each retry run ended (or stands, while it waits for review). review: 'pending' while an
-- escalation awaits a human (also after the review window ended without a decision), 'accepted' /
-- 'rejected' / 'retrying' after a reviewer's decision, else 'none'. decisions: JSON list of every
-- creator signal and review decision, with who made it.
CREATE TABLE segment_retries (
    workflow_id      TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    segment_id       TEXT NOT NULL,
    project_id       TEXT NOT NULL,
    scene_type       TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    selected_attempt INTEGER NULL,
    gpu_ms_total     BIGINT NOT NULL,
    report           TEXT NOT NULL,
    review           TEXT NOT NULL,
    decisions        TEXT NOT NULL DEFAULT '[]',
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (workflow_id, run_id),
    CHECK (review IN ('none', 'pending', 'accepted', 'rejected', 'retrying'))
);

CREATE INDEX segment_retries_segment ON segment_retries (segment_id);
