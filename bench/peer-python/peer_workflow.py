"""SegmentRetryWorkflow with the Python SDK: the same activity sequence, options, search
attributes, signals and query as the Rust workflow (workflows/src/segment_retry.rs and
attempts.rs)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Optional

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    import peer_domain as d

SEGMENT_ID = SearchAttributeKey.for_keyword("SegmentId")
PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
SCENE_TYPE = SearchAttributeKey.for_keyword("SceneType")
RETRY_OUTCOME = SearchAttributeKey.for_keyword("RetryOutcome")

NON_RETRYABLE = ["InvalidData", "BackendRejected"]
HEARTBEAT_TIMEOUT = timedelta(seconds=3)
LADDER_PATCH = "strategy-ladder"


def _retry(max_attempts: int, max_interval_s: int) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max_interval_s),
        maximum_attempts=max_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )


STORE_RETRY = _retry(0, 30)  # 0 = unlimited
LONG_RETRY = _retry(5, 10)


@workflow.defn(name="SegmentRetryWorkflow")
class SegmentRetryWorkflow:
    def __init__(self) -> None:
        self.phase = "starting"
        self.segment_id = ""
        self.project_id = ""
        self.scene_type = ""
        self.policy: Optional[dict] = None
        self.attempts: list[dict] = []
        self.running: Optional[int] = None
        self.running_handle: Optional[workflow.ActivityHandle] = None
        self.events: list[dict] = []
        self.abort_event: Optional[dict] = None
        self.escalate_event: Optional[dict] = None
        self.result: Optional[dict] = None
        # Per run:
        self.req: dict = {}
        self.wf_id = ""
        self.run_id = ""

    # ---------------------------------------------------------------- run

    @workflow.run
    async def run(self, input: Any) -> dict:
        req, errs = d.parse_request(input)
        if req is None:
            raise ApplicationError(
                d.invalid_message(errs), type=d.INVALID_REQUEST, non_retryable=True
            )
        info = workflow.info()
        self.req, self.wf_id, self.run_id = req, info.workflow_id, info.run_id
        self.segment_id, self.project_id = req["segment_id"], req["project_id"]
        self.scene_type = req["scene_type"]
        workflow.upsert_search_attributes(
            [
                SEGMENT_ID.value_set(self.segment_id),
                PROJECT_ID.value_set(self.project_id),
                SCENE_TYPE.value_set(self.scene_type),
                RETRY_OUTCOME.value_set("running"),
            ]
        )
        workflow.set_current_details(f"Segment {self.segment_id}: loading policy")
        stored = await self._store(
            "load_policy",
            {"scene_type": self.scene_type},
            f"load policy · {self.scene_type}",
        )
        errs = []
        policy = d.resolve_policy(stored, req["policy"], errs)
        if policy is None:
            raise ApplicationError(
                d.invalid_message(errs), type=d.INVALID_REQUEST, non_retryable=True
            )
        self.policy = policy
        self.phase = "retrying"
        why_not = d.should_retry(policy, req["failed_qa"])
        if why_not is not None:
            result, review = d.not_retried(req, why_not), "none"
        else:
            result, review = await self._retry_and_review()
        result["decisions"] = list(self.events)
        self.phase = "finished"
        self.result = result
        workflow.upsert_search_attributes([RETRY_OUTCOME.value_set(result["outcome"])])
        workflow.set_current_details(result["report"])
        await self._record_outcome(result, review)
        return result

    # ---------------------------------------------------------------- signals and query

    @workflow.signal(name="abort")
    def abort(self, payload: Any = None) -> None:
        if self.phase == "finished" or self.abort_event is not None:
            return
        event = d.creator_event("abort", payload)
        if self.running_handle is not None and not self.running_handle.done():
            self.running_handle.cancel()
        self.events.append(event)
        self.abort_event = event

    @workflow.signal(name="escalate")
    def escalate(self, payload: Any = None) -> None:
        if self.phase in ("finished", "awaiting_review") or self.escalate_event is not None:
            return
        event = d.creator_event("escalate", payload)
        self.events.append(event)
        self.escalate_event = event

    @workflow.query(name="report")
    def report(self) -> dict:
        if self.result is not None:
            r = self.result
            return {
                "phase": self.phase,
                "segment_id": r["segment_id"],
                "project_id": r["project_id"],
                "scene_type": r["scene_type"],
                "outcome": r["outcome"],
                "reason": r["reason"],
                "selected_attempt": r["selected_attempt"],
                "running_attempt": None,
                "attempts": r["attempts"],
                "gpu_ms_total": r["gpu_ms_total"],
                "report": r["report"],
                "decisions": list(self.events),
            }
        policy = self.policy or d.default_policy()
        running = self.running
        return {
            "phase": self.phase,
            "segment_id": self.segment_id,
            "project_id": self.project_id,
            "scene_type": self.scene_type,
            "outcome": None,
            "reason": (
                f"attempt {running} of {policy['max_attempts']} running"
                if running is not None
                else "starting"
            ),
            "selected_attempt": None,
            "running_attempt": running,
            "attempts": list(self.attempts),
            "gpu_ms_total": sum(a["gpu_ms"] for a in self.attempts),
            "report": d.progress(self.segment_id, policy, self.attempts, running),
            "decisions": list(self.events),
        }

    # ---------------------------------------------------------------- helpers

    def _key(self, k: int) -> dict:
        return {"workflow_id": self.wf_id, "run_id": self.run_id, "attempt": k}

    async def _store(self, name: str, arg: Any, summary: str) -> Any:
        # Local activities, as the Rust worker's store steps (workflows/src/store_steps.rs).
        return await workflow.execute_local_activity(
            name,
            arg,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
            local_retry_threshold=timedelta(milliseconds=500),
            summary=summary,
        )

    async def _record_outcome(self, result: dict, review: str) -> None:
        await self._store(
            "record_outcome",
            {
                "workflow_id": self.wf_id,
                "run_id": self.run_id,
                "result": result,
                "review": review,
            },
            f"record outcome · {result['outcome']} · review {review}",
        )

    def _conclude(self, stop: dict) -> dict:
        result = d.conclude(self.req, self.policy, list(self.attempts), stop)
        result["decisions"] = list(self.events)
        return result

    def _creator_stop(self) -> Optional[dict]:
        if self.abort_event is not None:
            e = self.abort_event
            return {"kind": "aborted", "by": e["by"], "reason": e["reason"]}
        if self.escalate_event is not None:
            e = self.escalate_event
            return {"kind": "escalated", "by": e["by"], "reason": e["reason"]}
        return None

    # ---------------------------------------------------------------- attempts and review

    async def _retry_and_review(self) -> tuple[dict, str]:
        # The Rust workflow plans with the strategy ladder behind this patch (its marker and
        # TemporalChangeVersion upsert are in every new history); the same call keeps the
        # histories alike. Only the ladder path is implemented.
        workflow.patched(LADDER_PATCH)
        stop = await self._attempts(0)
        result = self._conclude(stop)
        if result["outcome"] != "escalated":
            return result, "none"
        window = self.policy["review_window_secs"]
        if window == 0:
            return result, "pending"
        return await self._await_review(result, window)

    async def _await_review(self, result: dict, window: int) -> tuple[dict, str]:
        """Record the escalation, then wait for an abort or the end of the window (the `decide`
        update of the Rust workflow is not implemented)."""
        self.phase = "awaiting_review"
        self.result = result
        workflow.upsert_search_attributes([RETRY_OUTCOME.value_set("awaiting_review")])
        workflow.set_current_details(
            f"{result['report']} — awaiting a creator's decision (update `decide`) "
            f"for up to {window} s"
        )
        await self._record_outcome(result, "pending")
        try:
            await workflow.wait_condition(
                lambda: self.abort_event is not None, timeout=timedelta(seconds=window)
            )
        except asyncio.TimeoutError:
            return d.review_expired(result, window), "pending"
        e = self.abort_event
        return self._conclude({"kind": "aborted", "by": e["by"], "reason": e["reason"]}), "none"

    async def _attempts(self, round_start: int) -> dict:
        while True:
            what, plan = d.plan_next(self.req, self.policy, self.attempts, round_start)
            if what == "stop":
                return plan
            k = plan["attempt"]
            stop = self._creator_stop()
            if stop is not None:
                return stop
            stop = await self._reserve(k)
            if stop is not None:
                return stop
            stop = self._creator_stop()
            if stop is not None and stop["kind"] == "aborted":
                await self._release(k)
                return stop
            self.running = k
            record = await self._generate_and_score(plan)
            self.running = None
            self.running_handle = None
            await self._store(
                "record_attempt",
                {
                    "key": self._key(k),
                    "segment_id": self.segment_id,
                    "project_id": self.project_id,
                    "scene_type": self.scene_type,
                    "record": record,
                },
                f"attempt {k} · record · {record['status']}",
            )
            self.attempts.append(record)

    async def _reserve(self, k: int) -> Optional[dict]:
        est = self.policy["est_gpu_ms_per_attempt"]
        answer = await self._store(
            "reserve_budget",
            {
                "key": self._key(k),
                "project_id": self.project_id,
                "gpu_ms": est,
                "scene_type": self.scene_type,
            },
            f"attempt {k} · reserve {est} GPU ms",
        )
        if isinstance(answer, dict) and answer.get("status") == "refused":
            return {
                "kind": "budget_refused",
                "attempt": k,
                "detail": (
                    f"{answer.get('requested_ms')} GPU ms requested, "
                    f"{answer.get('committed_ms')} of {answer.get('limit_ms')} already committed"
                ),
            }
        return None

    async def _release(self, k: int) -> None:
        await self._store("release_budget", self._key(k), f"attempt {k} · release budget")

    async def _generate_and_score(self, plan: dict) -> dict:
        k, seed, strategy = plan["attempt"], plan["seed"], plan["strategy"]
        max_attempts = self.policy["max_attempts"]
        workflow.set_current_details(
            f"Segment {self.segment_id}: attempt {k}/{max_attempts} · {strategy} "
            f"generating (seed {seed})"
        )
        self.running_handle = workflow.start_activity(
            "generate",
            {
                "key": self._key(k),
                "segment_id": self.segment_id,
                "scene_type": self.scene_type,
                "seed": seed,
                "params": plan["params"],
                "strategy": strategy,
            },
            start_to_close_timeout=timedelta(seconds=3600),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=LONG_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"attempt {k} · generate · {strategy} · seed {seed:#x}",
        )
        if self.abort_event is not None:
            self.running_handle.cancel()
        try:
            generated = await self.running_handle
        except ActivityError as e:
            await self._release(k)
            if self.abort_event is not None and isinstance(e.cause, CancelledError):
                return d.aborted_record(plan, self.abort_event["by"])
            return d.errored_record(plan, 0, f"generation failed: {e.cause or e}")
        workflow.set_current_details(
            f"Segment {self.segment_id}: attempt {k}/{max_attempts} scoring"
        )
        self.running_handle = workflow.start_activity(
            "score_qa",
            {
                "key": self._key(k),
                "segment_id": self.segment_id,
                "scene_type": self.scene_type,
                "seed": seed,
                "params": plan["params"],
                "output_uri": generated["output_uri"],
            },
            start_to_close_timeout=timedelta(seconds=600),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=LONG_RETRY,
            summary=f"attempt {k} · score QA · seed {seed:#x}",
        )
        if self.abort_event is not None:
            self.running_handle.cancel()
        scored: Optional[dict] = None
        error: Optional[ActivityError] = None
        try:
            scored = await self.running_handle
        except ActivityError as e:
            error = e
        self.running_handle = None
        gpu_ms = generated["gpu_ms"]
        await self._store(
            "settle_budget",
            {"key": self._key(k), "project_id": self.project_id, "gpu_ms": gpu_ms},
            f"attempt {k} · settle {gpu_ms} GPU ms",
        )
        if scored is not None:
            return d.scored_record(plan, self.policy, scored, gpu_ms, generated["output_uri"])
        if self.abort_event is not None and isinstance(error.cause, CancelledError):
            return d.aborted_record(plan, self.abort_event["by"], gpu_ms)
        return d.errored_record(plan, gpu_ms, f"QA scoring failed: {error.cause or error}")
