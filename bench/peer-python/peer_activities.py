"""The activities, same names and JSON as the Rust worker's (activities/src/io.rs), backed by
an in-memory simulator: no policy store, an unlimited budget, scores from the same hash-based
simulator as the Rust worker's default backend (activities/src/sim.rs)."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from temporalio import activity

import peer_domain

STEPS = 10


class Activities:
    def __init__(self, gpu_ms: int) -> None:
        self.gpu_ms = gpu_ms

    @activity.defn(name="load_policy")
    async def load_policy(self, req: dict) -> Optional[dict]:
        return None  # no stored policy: the request's override over the defaults

    @activity.defn(name="reserve_budget")
    async def reserve_budget(self, req: dict) -> dict:
        return {"status": "granted", "gpu_ms": req["gpu_ms"]}

    @activity.defn(name="generate")
    async def generate(self, req: dict) -> dict:
        """Simulated GPU work: `gpu_ms` in 10 steps, heartbeating each; a retried attempt
        resumes from its last heartbeat (like the Rust simulator)."""
        details = activity.info().heartbeat_details
        done = 0
        if details:
            try:
                done = min(int(details[0]), STEPS)
            except (TypeError, ValueError):
                done = 0
        step = (self.gpu_ms // STEPS) / 1000.0
        for i in range(done, STEPS):
            await asyncio.sleep(step)
            activity.heartbeat(i + 1)
        return {
            "output_uri": f"sim://{req['segment_id']}/{req['seed']}.mp4",
            "gpu_ms": self.gpu_ms,
        }

    @activity.defn(name="score_qa")
    async def score_qa(self, req: dict) -> dict:
        scores = peer_domain.sim_scores(req["segment_id"], req["seed"], req.get("params") or {})
        return {"scores": scores, "failures": []}

    @activity.defn(name="record_attempt")
    async def record_attempt(self, req: dict) -> None:
        return None

    @activity.defn(name="settle_budget")
    async def settle_budget(self, req: dict) -> None:
        return None

    @activity.defn(name="release_budget")
    async def release_budget(self, key: dict) -> None:
        return None

    @activity.defn(name="record_outcome")
    async def record_outcome(self, req: dict) -> None:
        return None

    def all(self) -> list[Any]:
        return [
            self.load_policy,
            self.reserve_budget,
            self.generate,
            self.score_qa,
            self.record_attempt,
            self.settle_budget,
            self.release_budget,
            self.record_outcome,
        ]
