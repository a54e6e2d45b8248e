//! Integration tests: a real Temporal dev server, real SQLite files, the real worker.
#![allow(unreachable_pub)]

mod harness;

/// Adaptive retries: the choice follows the store's evidence, which is in the history; cold
/// start is the fixed ladder; insights count what the store holds.
mod adaptive;
/// The HTTP API: auth, validation, idempotent start, steering, history, metrics, OpenAPI.
mod api;
/// The HTTP API under hostile input: the documented status and JSON error body, in one table.
mod api_hostile;
/// The HTTP API's races and outages: concurrent starts, late decisions, a closed database.
mod api_races;
/// Malformed arguments and invalid policies fail clearly instead of sticking.
mod bad_input;
/// GPU budget: reservation, settlement and refusal mid-retry.
mod budget;
/// Chaos: worker processes SIGKILLed at random (seeded) while 20 retries run, on SQLite and
/// Postgres: every retry completes, recorded and charged exactly once.
mod chaos;
/// The contract as other clients see it: the plain `temporal` CLI and the `retake` binary.
mod cli;
/// Worker processes and the API started at once on a new SQLite file nobody migrated: all come
/// up, the migrations run once, retries finish recorded and charged once.
mod concurrent_start;
/// The review console in headless Chromium: images, retry-with watched live, keyboard decisions,
/// a viewer who cannot decide.
mod console_browser;
/// Creator controls: abort, escalate, review decisions, the live query, search attributes.
mod controls;
/// SIGKILLed worker processes: nothing lost, nothing charged twice.
mod crash;
/// Only files under the configured roots are opened: the API refuses a creator's draft elsewhere,
/// the worker never reads or sends one.
mod file_roots;
/// Real backends end to end: a chapter revised by an OpenAI-compatible model and scored by an LLM
/// judge up the text ladder to user intervention; an HTTP-contract job polled, and cancelled on abort.
mod ladder;
/// Every attempt and outcome in the worker's log: plain text off a terminal, or JSON lines.
mod logs;
/// The OpenAPI document: a real validator accepts it; a generated Python client drives the API.
mod openapi;
/// A database that refuses service (Postgres refusing connections, SQLite locked) pauses
/// retries; they finish once it is back, nothing lost or charged twice.
mod outage;
/// Parallel attempts: best-of-N at once on several workers, the first pass cancelling the rest,
/// budget refusals, abort and escalate with several in flight, a worker killed under one.
mod parallel;
/// Placement: infrastructure failures re-run on another worker, cool-downs, `same_worker`.
mod placement;
/// Opt-in: real ComfyUI / OpenAI-compatible servers named by RETAKE_COMFYUI_URL and
/// RETAKE_OPENAI_BASE_URL (skipped without them).
mod real_backends;
/// Truthful records: the backend's own error, its failure type, the GPU it used, outputs kept.
mod records;
/// Determinism guard: stored histories replay; a changed workflow is caught.
mod replay;
/// Retrying: fixed on a later attempt, escalated, best-of-N, not retried.
mod retry_flows;
/// The review console (`/ui`) over HTTP: sign-in, CSRF, roles, the queue, decisions through forms.
mod review_console;
/// The `retry_attempts` table and outcomes equal the workflow result.
mod store_records;
/// Only `http(s)` URLs under the configured URL roots are requested: the API refuses a creator's
/// draft elsewhere, the worker never requests one.
mod url_roots;
/// `retake runs versions`: the open retries counted by the behaviour version they recorded.
mod versions;
/// The Temporal web UI, in headless Chromium, shows a segment's workflow and search attributes.
mod web_ui;
