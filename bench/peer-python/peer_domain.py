"""Pure retry logic of SegmentRetryWorkflow, ported from the Rust `retake-domain` crate.

Deterministic and free of I/O, so the workflow may call it (it is passed through the workflow
sandbox instead of being re-imported per run). Ported: policy defaults and JSON merge patch
(policy.rs), request validation (a subset of contract.rs), seeds (seed.rs), ChaCha8 jitter
(jitter.rs), the media strategy ladder (ladder.rs / strategy.rs), the QA gate and selection
(select.rs), stop rules (plan.rs) and the report text (report.rs).
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import struct
from typing import Any, Optional

INVALID_REQUEST = "InvalidRetryRequest"

# --------------------------------------------------------------------------------------------
# Policy (policy.rs)
# --------------------------------------------------------------------------------------------


def default_policy(profile: str = "media") -> dict:
    """RetryPolicy::for_profile serialised as JSON (what a merge patch is applied to)."""
    p = {
        "enabled": False,
        "max_attempts": 3,
        "retry_on": ["face_melt"],
        "thresholds": {
            "face": {"min": 0.6, "failure": "face_melt"},
            "motion": {"min": 0.5, "failure": "motion_score"},
        },
        "vary": {
            "cfg_scale": {"range": 0.5, "min": 1.0, "max": 30.0},
            "denoise_strength": {"range": 0.05, "min": 0.0, "max": 1.0},
        },
        "selection": "first_pass",
        "est_gpu_ms_per_attempt": 60000,
        "seed_bits": 53,
        "review_window_secs": 86400,
        "profile": "media",
        "ladder": ["reseed", "reseed_jitter"],
        "language": "en",
        "prompts": {},
    }
    if profile == "text":
        p.update(
            retry_on=["below_threshold"],
            thresholds={"overall": {"min": 0.75, "failure": "below_threshold"}},
            vary={},
            est_gpu_ms_per_attempt=30000,
            profile="text",
            ladder=["revise", "revise_with_feedback", "partial_rewrite", "user_intervention"],
            language="ko",
        )
    return p


POLICY_FIELDS = set(default_policy()) | {"cost_rule"}
STRATEGIES = {
    "reseed",
    "reseed_jitter",
    "revise",
    "revise_with_feedback",
    "partial_rewrite",
    "user_intervention",
}


def default_failure_kind(metric: str) -> str:
    return {"face": "face_melt", "motion": "motion_score", "artifacts": "artifacting"}.get(
        metric, f"low_{metric}"
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_policy(value: dict, errs: list[str]) -> Optional[dict]:
    """RetryPolicy::parse + validate (field errors prefixed `policy.`). Missing fields take the
    profile's defaults; thresholds given as a number get the default failure kind."""
    before = len(errs)

    def err(field: str, msg: str) -> None:
        errs.append(f"policy.{field}: {msg}" if field else f"policy: {msg}")

    for key in value:
        if key not in POLICY_FIELDS:
            err(key, "unknown field")
    profile = value.get("profile", "media")
    if profile not in ("media", "text"):
        err("profile", f"unknown variant {profile!r}")
        profile = "media"
    p = default_policy(profile)
    for key, v in value.items():
        if key in POLICY_FIELDS and key != "thresholds":
            p[key] = v
    if not isinstance(p["enabled"], bool):
        err("enabled", "must be a boolean")
    for field, lo, hi in (("max_attempts", 1, 10), ("seed_bits", 16, 53)):
        v = p[field]
        if not _is_uint(v) or not lo <= v <= hi:
            err(field, f"must be between {lo} and {hi}, got {v}")
    for field in ("est_gpu_ms_per_attempt", "review_window_secs"):
        if not _is_uint(p[field]):
            err(field, f"must be a non-negative integer, got {p[field]}")
    if _is_uint(p["review_window_secs"]) and p["review_window_secs"] > 30 * 86400:
        err(
            "review_window_secs",
            f"must be at most 2592000 (30 days), got {p['review_window_secs']}",
        )
    if p["selection"] not in ("first_pass", "best_of_n"):
        err("selection", f"unknown variant {p['selection']!r}")
    retry_on = p["retry_on"]
    if not isinstance(retry_on, list) or not all(isinstance(k, str) for k in retry_on):
        err("retry_on", "must be a list of failure kinds")
        retry_on = []
    retry_on = sorted(set(retry_on))
    for kind in retry_on:
        if not _NAME.match(kind):
            err("retry_on", f"{kind!r} is not a valid failure kind")
    if p["enabled"] is True and not retry_on:
        err("retry_on", "an enabled policy must name at least one failure kind to retry on")
    p["retry_on"] = retry_on
    raw_t = value.get("thresholds", p["thresholds"])
    thresholds: dict[str, dict] = {}
    if not isinstance(raw_t, dict):
        err("thresholds", "must be an object")
        raw_t = {}
    for metric, spec in raw_t.items():
        field = f"thresholds.{metric}"
        if _is_num(spec):
            t = {"min": float(spec), "failure": default_failure_kind(metric)}
        elif isinstance(spec, dict) and set(spec) == {"min", "failure"}:
            t = {"min": spec["min"], "failure": spec["failure"]}
        else:
            err(field, "must be a number or {\"min\": x, \"failure\": \"kind\"}")
            continue
        if not _NAME.match(metric):
            err(field, "metric names are letters, digits and _")
        if not _is_num(t["min"]) or not (0.0 <= t["min"] <= 1.0):
            err(f"{field}.min", f"must be within 0..=1, got {t['min']}")
        if not isinstance(t["failure"], str) or not _NAME.match(t["failure"]):
            err(f"{field}.failure", "must be a failure kind like face_melt")
        thresholds[metric] = t
    p["thresholds"] = dict(sorted(thresholds.items()))
    vary = p["vary"] if isinstance(p["vary"], dict) else {}
    if not isinstance(p["vary"], dict):
        err("vary", "must be an object")
    for param, j in vary.items():
        field = f"vary.{param}"
        if param == "seed":
            err(field, "the seed is derived per attempt, it cannot be jittered")
        if not isinstance(j, dict) or "range" not in j or set(j) - {"range", "min", "max"}:
            err(field, 'must be {"range": r, "min": lo, "max": hi}')
            continue
        if not _is_num(j["range"]) or not (j["range"] >= 0 and math.isfinite(j["range"])):
            err(f"{field}.range", f"must be a finite number ≥ 0, got {j['range']}")
    p["vary"] = dict(sorted(vary.items()))
    ladder = p["ladder"]
    if not isinstance(ladder, list) or not ladder or any(s not in STRATEGIES for s in ladder):
        err("ladder", "must name at least one strategy")
    elif any(s in ("revise", "revise_with_feedback", "partial_rewrite") for s in ladder):
        err("ladder", "text strategies are not supported by the Python benchmark peer")
    if len(errs) > before:
        return None
    return p


def resolve_policy(stored: Optional[dict], override: Optional[dict], errs: list[str]):
    """RetryPolicy::resolve: the override merged over the stored policy (or the defaults of the
    profile the override names) as a JSON merge patch."""
    profile = "media"
    if isinstance(override, dict) and override.get("profile") == "text":
        profile = "text"
    merged = copy.deepcopy(stored) if stored is not None else default_policy(profile)
    if override is not None:
        merged = merge_patch(merged, override)
    if not isinstance(merged, dict):
        errs.append("policy: a policy must be a JSON object")
        return None
    return parse_policy(merged, errs)


# --------------------------------------------------------------------------------------------
# Request (contract.rs, a subset of its checks)
# --------------------------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def parse_request(value: Any) -> tuple[Optional[dict], list[str]]:
    errs: list[str] = []
    if not isinstance(value, dict):
        return None, [": the workflow argument must be a JSON object"]
    req: dict[str, Any] = {}
    for field in ("segment_id", "project_id", "scene_type"):
        v = value.get(field)
        if isinstance(v, bool) or v is None:
            errs.append(f"{field}: is required" if v is None else f"{field}: must be a string")
            continue
        if _is_num(v):
            v = str(v)
        if not isinstance(v, str):
            errs.append(f"{field}: must be a string, got {v}")
        elif not _ID.match(v):
            errs.append(f"{field}: must be 1-128 ASCII letters, digits and - _ . :, got {v!r}")
        else:
            req[field] = v
    params = value.get("params")
    if params is None:
        errs.append("params: is required")
    elif not isinstance(params, dict):
        errs.append("params: must be a JSON object")
    elif "seed" not in params:
        errs.append("params.seed: is required")
    elif not _is_uint(params["seed"]) or params["seed"] >= 2**64:
        errs.append(f"params.seed: must be a non-negative integer below 2^64, got {params['seed']}")
    else:
        req["params"] = params
    qa = value.get("failed_qa") or {}
    if not isinstance(qa, dict):
        errs.append("failed_qa: must be a JSON object")
        qa = {}
    scores = qa.get("scores") or {}
    failures = qa.get("failures") or []
    if not isinstance(scores, dict):
        errs.append("failed_qa.scores: must be a map of metric to score")
        scores = {}
    for metric, s in scores.items():
        if not _is_num(s) or not (0.0 <= s <= 1.0):
            errs.append(f"failed_qa.scores.{metric}: must be within 0..=1, got {s}")
    if not isinstance(failures, list) or not all(isinstance(f, str) for f in failures):
        errs.append("failed_qa.failures: must be a list of strings")
        failures = []
    req["failed_qa"] = {"scores": scores, "failures": failures}
    policy = value.get("policy")
    if policy is not None and not isinstance(policy, dict):
        errs.append(f"policy: must be a JSON object, got {policy}")
    req["policy"] = policy
    for key in value:
        if key not in ("segment_id", "project_id", "scene_type", "params", "failed_qa", "policy"):
            errs.append(f"{key}: unknown field")
    return (None if errs else req), errs


def invalid_message(errs: list[str]) -> str:
    return "invalid input: " + "; ".join(errs)


# --------------------------------------------------------------------------------------------
# Seeds (seed.rs) and jitter (jitter.rs)
# --------------------------------------------------------------------------------------------


def _candidate(segment_id: str, original: int, attempt: int, salt: int, bits: int) -> int:
    msg = b"retake/seed/v1\0" + segment_id.encode() + f"\0{original}\0{attempt}\0{salt}".encode()
    return int.from_bytes(hashlib.sha256(msg).digest()[:8], "big") % (1 << bits)


def attempt_seeds(segment_id: str, original: int, attempts: int, bits: int) -> list[int]:
    seeds: list[int] = []
    for k in range(1, attempts + 1):
        salt = 0
        while True:
            s = _candidate(segment_id, original, k, salt, bits)
            if s != original and s not in seeds:
                break
            salt += 1
        seeds.append(s)
    return seeds


def attempt_seed(segment_id: str, original: int, attempt: int, bits: int) -> int:
    return attempt_seeds(segment_id, original, attempt, bits)[-1]


_M32 = 0xFFFFFFFF


def _chacha8_block(key: bytes, counter: int = 0) -> list[int]:
    """One ChaCha block with 8 rounds, 64-bit counter and stream 0 (rand_chacha's layout)."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key))
    state += [counter & _M32, counter >> 32, 0, 0]
    x = state[:]

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & _M32
        x[d] ^= x[a]
        x[d] = ((x[d] << 16) | (x[d] >> 16)) & _M32
        x[c] = (x[c] + x[d]) & _M32
        x[b] ^= x[c]
        x[b] = ((x[b] << 12) | (x[b] >> 20)) & _M32
        x[a] = (x[a] + x[b]) & _M32
        x[d] ^= x[a]
        x[d] = ((x[d] << 8) | (x[d] >> 24)) & _M32
        x[c] = (x[c] + x[d]) & _M32
        x[b] ^= x[c]
        x[b] = ((x[b] << 7) | (x[b] >> 25)) & _M32

    for _ in range(4):  # 8 rounds = 4 double rounds
        qr(0, 4, 8, 12)
        qr(1, 5, 9, 13)
        qr(2, 6, 10, 14)
        qr(3, 7, 11, 15)
        qr(0, 5, 10, 15)
        qr(1, 6, 11, 12)
        qr(2, 7, 8, 13)
        qr(3, 4, 9, 14)
    return [(x[i] + state[i]) & _M32 for i in range(16)]


def _chacha8_u64s(seed: int, n: int) -> list[int]:
    """The first `n` `next_u64` values of ChaCha8Rng::from_seed(seed as 8 LE bytes + 24 zeros)."""
    key = seed.to_bytes(8, "little") + bytes(24)
    words: list[int] = []
    block = 0
    while len(words) < 2 * n:
        words += _chacha8_block(key, block)
        block += 1
    return [words[2 * i] | (words[2 * i + 1] << 32) for i in range(n)]


def _round_half_away(x: float, digits: int) -> float:
    f = 10.0**digits
    y = abs(x) * f
    r = math.floor(y + 0.5)
    return math.copysign(r / f, x)


def apply_jitter(original: dict, vary: dict, seed: int) -> tuple[dict, list[dict]]:
    params = dict(original)
    params["seed"] = seed
    changes: list[dict] = []
    if not vary:
        return params, changes
    draws = _chacha8_u64s(seed, len(vary))
    for (name, spec), x in zip(sorted(vary.items()), draws):
        orig = original.get(name)
        if not _is_num(orig):
            continue
        orig = float(orig)
        u = (x >> 11) / float(1 << 53)
        value = orig + (2.0 * u - 1.0) * spec["range"]
        if spec.get("min") is not None:
            value = max(value, spec["min"])
        if spec.get("max") is not None:
            value = min(value, spec["max"])
        value = _round_half_away(value, 4)
        params[name] = value
        changes.append({"param": name, "original": orig, "value": value})
    return params, changes


# --------------------------------------------------------------------------------------------
# Planning (plan.rs, ladder.rs for the media strategies)
# --------------------------------------------------------------------------------------------


def retryable(policy: dict, failures: list[str]) -> list[str]:
    return [f for f in failures if f in policy["retry_on"]]


def should_retry(policy: dict, failed_qa: dict) -> Optional[str]:
    """None to retry, else why not."""
    if not policy["enabled"]:
        return "auto-retry is not enabled for this scene type (policies are opt-in)"
    failures = failed_qa["failures"]
    if not failures:
        return "the failed QA result lists no failure kinds"
    if not retryable(policy, failures):
        return (
            f"none of the failures ({', '.join(failures)}) is one the policy retries on "
            f"({', '.join(policy['retry_on'])})"
        )
    return None


def rung(ladder: list[str], attempt: int) -> str:
    i = max(attempt - 1, 0)
    return ladder[i] if i < len(ladder) else ladder[-1]


def next_attempt(policy: dict, attempts: list[dict], round_start: int):
    """plan::next: ("go", k) or ("stop", stop dict)."""
    if attempts and attempts[-1]["attempt"] > round_start:
        last = attempts[-1]
        if last["passed"] and policy["selection"] == "first_pass":
            return "stop", {"kind": "passed"}
        if last["status"] == "failed" and not retryable(policy, last["failures"]):
            return "stop", {
                "kind": "not_retryable",
                "attempt": last["attempt"],
                "failures": list(last["failures"]),
            }
    if len(attempts) >= policy["max_attempts"]:
        return "stop", {"kind": "attempts_used"}
    return "go", len(attempts) + 1


def plan_next(req: dict, policy: dict, attempts: list[dict], round_start: int):
    """ladder::next for media strategies: ("go", plan) or ("stop", stop)."""
    what, v = next_attempt(policy, attempts, round_start)
    if what == "stop":
        if v["kind"] == "attempts_used":
            return "stop", intervention(req, policy, attempts, len(attempts) + 1)
        return what, v
    k = v
    rule = policy.get("cost_rule")
    if isinstance(rule, dict) and rule.get("fix_chance"):
        chances = rule["fix_chance"]
        chance = chances[k - 1] if k - 1 < len(chances) else chances[-1]
        saving = chance * rule.get("review_cost_gpu_ms", 0)
        if saving < policy["est_gpu_ms_per_attempt"]:
            return "stop", {
                "kind": "not_worth_it",
                "attempt": k,
                "chance": chance,
                "cost_ms": policy["est_gpu_ms_per_attempt"],
                "saving_ms": saving,
            }
    strategy = rung(policy["ladder"], k - min(round_start, k - 1))
    if strategy == "user_intervention":
        return "stop", intervention(req, policy, attempts, k)
    return "go", plan_attempt(req, policy, k, strategy)


def plan_attempt(req: dict, policy: dict, k: int, strategy: str) -> dict:
    params = req["params"]
    seed = attempt_seed(req["segment_id"], params["seed"], k, policy["seed_bits"])
    vary = policy["vary"] if strategy != "reseed" else {}
    new_params, jitter = apply_jitter(params, vary, seed)
    return {
        "attempt": k,
        "seed": seed,
        "params": new_params,
        "original_params": params,
        "jitter": jitter,
        "strategy": strategy,
    }


def _percent(score: float) -> int:
    return int(_round_half_away(min(max(score, 0.0), 1.0) * 100.0, 0))


def _overall(scores: dict) -> Optional[float]:
    if "overall" in scores:
        return scores["overall"]
    return sum(scores.values()) / len(scores) if scores else None


def quality(policy: dict, scores: dict) -> float:
    if policy["thresholds"]:
        ranked = [scores.get(m, 0.0) for m in policy["thresholds"]]
    else:
        ranked = list(scores.values())
    return sum(ranked) / len(ranked) if ranked else 0.0


def intervention(req: dict, policy: dict, attempts: list[dict], k: int) -> dict:
    """The escalation that ends the ladder (media, English: the built-in template)."""
    scored = [a for a in attempts if a["status"] in ("passed", "failed")]
    overalls = [o for o in (_overall(a["scores"]) for a in scored) if o is not None]
    best = max(overalls) if overalls else _overall(req["failed_qa"]["scores"])
    if "overall" in policy["thresholds"]:
        words = str(_percent(policy["thresholds"]["overall"]["min"]))
    else:
        words = ", ".join(f"{m} {_percent(t['min'])}" for m, t in policy["thresholds"].items())
    template = (policy.get("prompts") or {}).get(
        "user_intervention",
        "Segment {segment} did not pass QA ({threshold}) after {attempts} attempts "
        "(best score {best_score}). It needs a human review.",
    )
    values = {
        "segment": req["segment_id"],
        "chapter": req["segment_id"],
        "threshold": words,
        "attempts": str(len(attempts)),
        "attempt": str(k),
        "best_score": "?" if best is None else str(_percent(best)),
    }
    message = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
    return {"kind": "user_intervention", "attempt": k, "message": message}


def gate(policy: dict, qa: dict) -> list[str]:
    failures = list(qa.get("failures") or [])
    scores = qa.get("scores") or {}
    for metric, t in policy["thresholds"].items():
        s = scores.get(metric)
        if s is None or s < t["min"]:
            failures.append(t["failure"])
    return sorted(set(failures))


def _record(plan: dict, scores, failures, gpu_ms, output_uri, error, status=None) -> dict:
    if status is None:
        status = "error" if error is not None else ("passed" if not failures else "failed")
    r = {
        "attempt": plan["attempt"],
        "seed": plan["seed"],
        "params": plan["params"],
        "original_params": plan["original_params"],
        "jitter": plan["jitter"],
        "scores": dict(sorted(scores.items())),
        "passed": status == "passed",
        "failures": failures,
        "gpu_ms": gpu_ms,
        "status": status,
    }
    if output_uri is not None:
        r["output_uri"] = output_uri
    if error is not None:
        r["error"] = error
    if plan.get("strategy") is not None:
        r["strategy"] = plan["strategy"]
    return r


def scored_record(plan: dict, policy: dict, qa: dict, gpu_ms: int, output_uri: str) -> dict:
    return _record(plan, qa.get("scores") or {}, gate(policy, qa), gpu_ms, output_uri, None)


def errored_record(plan: dict, gpu_ms: int, error: str) -> dict:
    return _record(plan, {}, [], gpu_ms, None, error)


def aborted_record(plan: dict, by: str, gpu_ms: int = 0) -> dict:
    return _record(plan, {}, [], gpu_ms, None, f"aborted by {by}", status="aborted")


def select(policy: dict, attempts: list[dict]) -> Optional[int]:
    passing = [a for a in attempts if a["passed"]]
    if not passing:
        return None
    if policy["selection"] == "first_pass":
        return passing[0]["attempt"]
    best = passing[0]
    for a in passing[1:]:
        if quality(policy, a["scores"]) > quality(policy, best["scores"]):
            best = a
    return best["attempt"]


# --------------------------------------------------------------------------------------------
# Results and report text (plan.rs, report.rs)
# --------------------------------------------------------------------------------------------


def _attempt_part(policy: dict, a: dict) -> str:
    if a["status"] == "aborted":
        return f"aborted attempt {a['attempt']}"
    if a["status"] == "error":
        return f"error on attempt {a['attempt']} ({(a.get('error') or 'unknown error')[:60]})"
    shown = [
        f"{m} {a['scores'][m]:.2f}"
        for m, t in policy["thresholds"].items()
        if (t["failure"] in policy["retry_on"] or t["failure"] in a["failures"])
        and m in a["scores"]
    ]
    if not shown:
        shown = [f"{m} {s:.2f}" for m, s in sorted(a["scores"].items())]
    verdict = "passed" if a["passed"] else "failed"
    if not shown:
        return f"{verdict} attempt {a['attempt']}"
    return f"{verdict} attempt {a['attempt']} ({', '.join(shown)})"


def progress(segment_id: str, policy: dict, attempts: list[dict], running: Optional[int]) -> str:
    parts = [_attempt_part(policy, a) for a in attempts]
    if running is not None:
        parts.append(f"attempt {running} running")
    if not parts:
        return f"Segment {segment_id}: starting"
    return f"Segment {segment_id}: {', '.join(parts)}"


def not_retried(req: dict, reason: str) -> dict:
    return {
        "segment_id": req["segment_id"],
        "project_id": req["project_id"],
        "scene_type": req["scene_type"],
        "outcome": "not_retried",
        "reason": reason,
        "selected_attempt": None,
        "attempts": [],
        "gpu_ms_total": 0,
        "report": f"Segment {req['segment_id']}: not retried ({reason})",
        "decisions": [],
    }


def conclude(req: dict, policy: dict, attempts: list[dict], stop: dict) -> dict:
    selected = select(policy, attempts)
    kind = stop["kind"]
    if kind == "aborted":
        outcome, reason = "aborted", f"aborted by {stop['by']}: {stop['reason']}"
    elif selected is not None:
        outcome = "passed"
        if policy["selection"] == "first_pass":
            reason = f"attempt {selected} passed QA"
        else:
            n = sum(1 for a in attempts if a["passed"])
            reason = f"attempt {selected} scored highest of the {n} passing attempts"
    elif kind == "budget_refused":
        outcome = "budget_exhausted"
        reason = f"the project budget refused attempt {stop['attempt']}: {stop['detail']}"
    elif kind == "escalated":
        outcome = "escalated"
        reason = f"escalated by {stop['by']}: {stop['reason']}; flagged for human review"
    elif kind == "user_intervention":
        outcome, reason = "escalated", stop["message"]
    elif kind == "not_worth_it":
        outcome = "escalated"
        reason = (
            f"stopped before attempt {stop['attempt']} by the cost rule: it would fix the "
            f"segment with chance {stop['chance']:.2f}, saving {stop['saving_ms']:.0f} GPU ms "
            f"of review against {stop['cost_ms']} GPU ms per attempt; flagged for human review"
        )
    elif kind == "not_retryable":
        outcome = "escalated"
        reason = (
            f"attempt {stop['attempt']} failed on {', '.join(stop['failures'])}, which the "
            "policy does not retry on; flagged for human review"
        )
    else:
        outcome = "escalated"
        reason = f"all {len(attempts)} attempts failed QA; flagged for human review"

    line = f"Segment {req['segment_id']}: "
    line += ", ".join(_attempt_part(policy, a) for a in attempts) if attempts else "no attempts"
    if outcome == "passed":
        if selected is not None and policy["selection"] == "best_of_n":
            n = sum(1 for a in attempts if a["passed"])
            line += f"; selected attempt {selected} (best of {n} passing)"
    elif outcome == "escalated":
        line += "; escalated for human review"
    elif kind == "budget_refused":
        line += f"; budget exhausted before attempt {stop['attempt']}"
    elif outcome == "aborted":
        line += f"; aborted by {stop['by']}"
    return {
        "segment_id": req["segment_id"],
        "project_id": req["project_id"],
        "scene_type": req["scene_type"],
        "outcome": outcome,
        "reason": reason,
        "selected_attempt": selected,
        "attempts": list(attempts),
        "gpu_ms_total": sum(a["gpu_ms"] for a in attempts),
        "report": line,
        "decisions": [],
    }


def review_expired(result: dict, window_secs: int) -> dict:
    result = dict(result)
    if window_secs > 0:
        result["reason"] += f" (no decision within the {window_secs} s review window)"
    return result


def creator_event(action: str, payload: Any) -> dict:
    """CreatorEvent::from_signal: lenient (a bare string is the reason)."""
    if isinstance(payload, str):
        reason, by = payload, ""
    elif isinstance(payload, dict):
        reason = payload.get("reason") if isinstance(payload.get("reason"), str) else ""
        by = payload.get("by") if isinstance(payload.get("by"), str) else ""
        reason, by = reason.strip(), by.strip()
    else:
        reason, by = "", ""
    return {"action": action, "by": by or "unknown", "reason": reason}


# --------------------------------------------------------------------------------------------
# The simulated scorer (activities/src/sim.rs), so results match the Rust worker's simulator
# --------------------------------------------------------------------------------------------


def _unit(*parts: bytes) -> float:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return (int.from_bytes(h.digest()[:8], "big") >> 11) / float(1 << 53)


def _round3(x: float) -> float:
    return math.floor(min(max(x, 0.0), 1.0) * 1000.0 + 0.5) / 1000.0


_BIASES = [
    ("cfg_scale", False, 7.2),
    ("cfg_scale", True, 7.8),
    ("denoise_strength", True, 0.63),
    ("denoise_strength", False, 0.57),
]


def sim_bias_holds(scene_type: str, params: dict) -> bool:
    """Whether `params` lie in the region where the scene type's directional segments pass
    (`Simulator::bias` / `Bias::holds`)."""
    param, up, bound = _BIASES[min(int(_unit(b"retake/sim/bias", scene_type.encode()) * 4.0), 3)]
    v = params.get(param)
    v = float(v) if _is_num(v) else (7.5 if param == "cfg_scale" else 0.6)
    return v >= bound - 1e-9 if up else v <= bound + 1e-9


def sim_scores(scene_type: str, segment_id: str, seed: int, params: dict) -> dict:
    s = segment_id.encode()
    systematic_face = _unit(b"retake/sim/profile", s, b"face") < 0.15
    systematic_motion = _unit(b"retake/sim/profile", s, b"motion") < 0.10
    directional = (
        not systematic_face
        and not systematic_motion
        and _unit(b"retake/sim/profile", s, b"direction") < 0.25
    )
    face_floor = 0.15 + 0.2 * _unit(b"retake/sim/profile", s, b"floor")
    seed_bytes = seed.to_bytes(8, "big")
    u_face = _unit(b"retake/sim/face", s, seed_bytes)
    u_motion = _unit(b"retake/sim/motion", s, seed_bytes)
    cfg = params.get("cfg_scale")
    cfg = float(cfg) if _is_num(cfg) else 7.5
    if systematic_face:
        face = 0.2 + 0.25 * u_face
    elif directional and not sim_bias_holds(scene_type, params):
        face = face_floor + 0.25 * u_face
    else:
        face = face_floor + 0.7 * u_face - 0.04 * abs(cfg - 7.5)
    motion = 0.1 + 0.3 * u_motion if systematic_motion else 0.55 + 0.4 * u_motion
    return {"face": _round3(face), "motion": _round3(motion)}
