-- retake store, version 6: which worker ran each attempt, and the workers placement chooses from.
--   retry_attempts.worker  the worker that generated the attempt (`retake worker --worker-id`);
--                          NULL for earlier runs and attempts that never reached a worker
--   workers                one row per worker process, refreshed every few seconds while it
--                          runs: its own generate queue (where a re-run is placed), when it was
--                          last seen, until when it cools down after infrastructure failures in
--                          a row, and when placement last chose it (to spread re-runs).
--                          Times are milliseconds since the epoch by the writer's clock.
ALTER TABLE retry_attempts ADD COLUMN worker TEXT NULL;

CREATE TABLE workers (
    worker_id        TEXT PRIMARY KEY,
    task_queue       TEXT NOT NULL,
    generate_queue   TEXT NOT NULL,
    seen_at_ms       BIGINT NOT NULL,
    cooling_until_ms BIGINT NOT NULL DEFAULT 0,
    placed_at_ms     BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX workers_task_queue ON workers (task_queue, seen_at_ms);
