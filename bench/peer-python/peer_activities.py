"""The activities, same names and JSON as the Rust worker's (activities/src/io.rs): the store
steps write the same SQLite schema and rows as the Rust worker (`peer_store.py`); generation and
scores come from the same hash-based simulator as the Rust worker's default backend
(activities/src/sim.rs)."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from temporalio import activity

import peer_domain
from peer_store import PeerStore

STEPS = 10


class Activities:
    def __init__(self, gpu_ms: int, db: str) -> None:
        self.gpu_ms = gpu_ms
        self.store = PeerStore(db)

    @activity.defn(name="load_policy")
    async def load_policy(self, req: dict) -> Optional[dict]:
        return self.store.policy(req["scene_type"])

    @activity.defn(name="reserve_budget")
    async def reserve_budget(self, req: dict) -> dict:
        return self.store.reserve(
            req["key"], req["project_id"], req["gpu_ms"], req.get("scene_type") or ""
        )

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
        scores = peer_domain.sim_scores(
            req["scene_type"], req["segment_id"], req["seed"], req.get("params") or {}
        )
        return {"scores": scores, "failures": []}

    @activity.defn(name="record_attempt")
    async def record_attempt(self, req: dict) -> None:
        self.store.record_attempt(req)

    @activity.defn(name="settle_budget")
    async def settle_budget(self, req: dict) -> None:
        self.store.settle(req["key"], req["gpu_ms"])

    @activity.defn(name="release_budget")
    async def release_budget(self, key: dict) -> None:
        self.store.settle(key, None)

    @activity.defn(name="record_outcome")
    async def record_outcome(self, req: dict) -> None:
        self.store.record_outcome(req)

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
