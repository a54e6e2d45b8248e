"""The peer's store: the same SQLite schema as the Rust worker (its migrations, applied from
`activities/migrations/sqlite`) and the same writes per step, each in its own write transaction
(`BEGIN IMMEDIATE`), so the benchmark compares equal work. The statements mirror
`activities/src/store/{budget,attempts,stats}.rs`: a reservation row per attempt key plus the
project's reserved total (after reading the scene type's recent GPU times), the settle or release
of that row and the project's totals, the attempt row upserted, the run's outcome upserted with the
selected attempt marked and leftover reservations released."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

MIGRATIONS = Path(__file__).resolve().parents[2] / "activities" / "migrations" / "sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PeerStore:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.execute("PRAGMA foreign_keys=ON")
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'retry_attempts'"
        ).fetchone()
        if not exists:
            for f in sorted(MIGRATIONS.glob("*.sql")):
                self.db.executescript(f.read_text())

    def _write(self, fn):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(self.db)
            self.db.execute("COMMIT")
            return out
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def policy(self, scene_type: str) -> Optional[dict]:
        row = self.db.execute(
            "SELECT policy FROM retry_policies WHERE scene_type = ?", (scene_type,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def reserve(self, key: dict, project_id: str, gpu_ms: int, scene_type: str) -> dict:
        # The estimate grows to the scene type's 90th percentile of recent GPU times.
        recent = [
            r[0]
            for r in self.db.execute(
                "SELECT gpu_ms FROM retry_attempts WHERE scene_type = ? AND gpu_ms > 0 "
                "ORDER BY id DESC LIMIT 200",
                (scene_type,),
            )
        ]
        if recent:
            recent.sort()
            gpu_ms = max(gpu_ms, recent[min(len(recent) - 1, int(0.9 * len(recent)))])
        k = (key["workflow_id"], key["run_id"], key["attempt"])

        def tx(db):
            now = _now()
            db.execute(
                "INSERT INTO project_budgets (project_id, updated_at) VALUES (?, ?) "
                "ON CONFLICT (project_id) DO NOTHING",
                (project_id, now),
            )
            held = db.execute(
                "SELECT status, reserved_ms FROM budget_reservations "
                "WHERE workflow_id = ? AND run_id = ? AND attempt = ?",
                k,
            ).fetchone()
            if held:
                return {"status": "granted", "gpu_ms": held[1]}
            limit_ms, reserved, spent = db.execute(
                "SELECT limit_ms, reserved_ms, spent_ms FROM project_budgets WHERE project_id = ?",
                (project_id,),
            ).fetchone()
            if limit_ms is not None and reserved + spent + gpu_ms > limit_ms:
                return {
                    "status": "refused",
                    "limit_ms": limit_ms,
                    "committed_ms": reserved + spent,
                    "requested_ms": gpu_ms,
                }
            db.execute(
                "INSERT INTO budget_reservations (workflow_id, run_id, attempt, project_id, "
                "reserved_ms, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?)",
                (*k, project_id, gpu_ms, now, now),
            )
            db.execute(
                "UPDATE project_budgets SET reserved_ms = reserved_ms + ?, updated_at = ? "
                "WHERE project_id = ?",
                (gpu_ms, now, project_id),
            )
            return {"status": "granted", "gpu_ms": gpu_ms}

        return self._write(tx)

    def settle(self, key: dict, spent_ms: Optional[int]) -> None:
        """Settle with `spent_ms`, or release when it is None."""
        k = (key["workflow_id"], key["run_id"], key["attempt"])

        def tx(db):
            now = _now()
            row = db.execute(
                "SELECT project_id, reserved_ms, status FROM budget_reservations "
                "WHERE workflow_id = ? AND run_id = ? AND attempt = ?",
                k,
            ).fetchone()
            if not row or row[2] != "reserved":
                return
            project_id, reserved, _ = row
            status = "released" if spent_ms is None else "settled"
            db.execute(
                "UPDATE budget_reservations SET status = ?, spent_ms = ?, updated_at = ? "
                "WHERE workflow_id = ? AND run_id = ? AND attempt = ?",
                (status, spent_ms, now, *k),
            )
            db.execute(
                "UPDATE project_budgets SET reserved_ms = reserved_ms - ?, "
                "spent_ms = spent_ms + ?, updated_at = ? WHERE project_id = ?",
                (reserved, spent_ms or 0, now, project_id),
            )

        self._write(tx)

    def _upsert_attempt(
        self, db, key: dict, seg: str, proj: str, scene: str, r: dict, keep: bool = False
    ) -> None:
        now = _now()
        conflict = (
            "ON CONFLICT (workflow_id, run_id, attempt) DO NOTHING"
            if keep
            else "ON CONFLICT (workflow_id, run_id, attempt) DO UPDATE SET scores = excluded.scores, "
            "failures = excluded.failures, passed = excluded.passed, status = excluded.status, "
            "gpu_ms = excluded.gpu_ms, output_uri = excluded.output_uri, error = excluded.error, "
            "updated_at = excluded.updated_at"
        )
        db.execute(
            "INSERT INTO retry_attempts (segment_id, project_id, scene_type, workflow_id, run_id, "
            "attempt, seed, params, original_params, jitter, scores, failures, passed, status, "
            "gpu_ms, output_uri, error, created_at, updated_at, strategy, prompt, revises, "
            "breakdown, error_type, note, variation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            + conflict,
            (
                seg, proj, scene, key["workflow_id"], key["run_id"], r["attempt"], r["seed"],
                json.dumps(r.get("params")), json.dumps(r.get("original_params")),
                json.dumps(r.get("jitter")), json.dumps(r.get("scores")),
                json.dumps(r.get("failures")), bool(r.get("passed")), r.get("status", ""),
                r.get("gpu_ms", 0), r.get("output_uri"), r.get("error"), now, now,
                r.get("strategy"), r.get("prompt"), r.get("revises"),
                json.dumps(r.get("breakdown") or []), r.get("error_type"), r.get("note"),
                json.dumps(r["variation"]) if r.get("variation") else None,
            ),
        )

    def record_attempt(self, req: dict) -> None:
        self._write(
            lambda db: self._upsert_attempt(
                db, req["key"], req["segment_id"], req["project_id"], req["scene_type"],
                req["record"],
            )
        )

    def record_outcome(self, req: dict) -> None:
        res, wf, run = req["result"], req["workflow_id"], req["run_id"]

        def tx(db):
            now = _now()
            for a in res.get("attempts", []):
                key = {"workflow_id": wf, "run_id": run}
                # Attempts whose record_attempt was lost; recorded ones are kept as they are.
                self._upsert_attempt(
                    db, key, res["segment_id"], res["project_id"], res["scene_type"], a, keep=True
                )
            db.execute(
                "INSERT INTO segment_retries (workflow_id, run_id, segment_id, project_id, "
                "scene_type, outcome, reason, selected_attempt, gpu_ms_total, report, review, "
                "decisions, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workflow_id, run_id) DO UPDATE SET outcome = excluded.outcome, "
                "reason = excluded.reason, selected_attempt = excluded.selected_attempt, "
                "gpu_ms_total = excluded.gpu_ms_total, report = excluded.report, "
                "review = excluded.review, decisions = excluded.decisions, "
                "updated_at = excluded.updated_at",
                (
                    wf, run, res["segment_id"], res["project_id"], res["scene_type"],
                    res["outcome"], res.get("reason", ""), res.get("selected_attempt"),
                    res.get("gpu_ms_total", 0), res.get("report", ""), req["review"],
                    json.dumps(res.get("decisions") or []), now, now,
                ),
            )
            db.execute(
                "UPDATE retry_attempts SET selected = (attempt IS ?) WHERE workflow_id = ? AND run_id = ?",
                (res.get("selected_attempt"), wf, run),
            )
            held = db.execute(
                "SELECT attempt FROM budget_reservations WHERE workflow_id = ? AND run_id = ? "
                "AND status = 'reserved'",
                (wf, run),
            ).fetchall()
            for (attempt,) in held:
                db.execute(
                    "UPDATE budget_reservations SET status = 'released', updated_at = ? "
                    "WHERE workflow_id = ? AND run_id = ? AND attempt = ?",
                    (now, wf, run, attempt),
                )

        self._write(tx)
