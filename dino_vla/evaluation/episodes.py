"""The one closed-loop episode runner of every simulated benchmark and evaluation (`bench-pick`, `eval`).

An episode is one seeded scene grasped by one or more methods in turn (the scene reset between them); each
method's attempt is classified the same way (the target lifted, something else lifted, or why nothing was),
and every report is summarised the same way: rates, medians, failure counts per method, overall and per
target, as a table and as JSON with every episode."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from dino_vla.sim.mujoco_sim import GraspOutcome


@dataclass(frozen=True)
class Attempt:
    """What one method did in one scene."""

    success: bool               # the target was lifted and held
    correct_object: bool        # the method chose the target (before anything moved)
    wrong_object: bool          # something other than the target was lifted
    failure: str                # "" on success; else a refusal reason, "lifted <name>" or the executor's reason
    decision_ms: float | None   # the method's decision (perception it computes itself + planning), no motion
    metrics: dict[str, float | None] = field(default_factory=dict)   # method-specific measures, e.g. errors
    commanded: bool = True      # a grasp was sent (False: the method refused)


def executed(outcome: GraspOutcome, target: str, correct_object: bool, decision_ms: float | None,
             **metrics: float | None) -> Attempt:
    """An attempt whose grasp was executed: classified by what the simulator saw lifted."""
    lifted = outcome.lifted_object if outcome.success else None
    failure = "" if lifted == target else f"lifted {lifted}" if lifted else outcome.reason
    return Attempt(lifted == target, correct_object, lifted not in (None, target), failure, decision_ms, metrics)


def refused(reason: str, correct_object: bool = False, decision_ms: float | None = None,
            **metrics: float | None) -> Attempt:
    """An attempt that commanded nothing."""
    return Attempt(False, correct_object, False, reason, decision_ms, metrics, commanded=False)


def expecting_refusal(attempt: Attempt) -> Attempt:
    """The same attempt judged where the named object is absent: success is refusing with no_object."""
    right = not attempt.commanded and attempt.failure == "no_object"
    failure = "" if right else attempt.failure or "grasped an object that was not asked for"
    return replace(attempt, success=right, correct_object=right, failure=failure)


@dataclass(frozen=True)
class Episode:
    seed: int
    target: str
    instruction: str
    objects: int                    # objects in the scene
    attempts: dict[str, Attempt]    # method -> what it did


def run_episodes(seeds: Iterable[int], run: Callable[[int], Episode], description: str,
                 progress: bool = True) -> list[Episode]:
    seeds = list(seeds)
    return [run(seed) for seed in tqdm(seeds, desc=description, unit="scene", file=sys.stderr,
                                       disable=not progress)]


def rate(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def median(values: Iterable[float | None], digits: int = 2) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), digits) if values else None


def summarise(episodes: list[Episode], method: str) -> dict:
    attempts = [e.attempts[method] for e in episodes]
    failures: dict[str, int] = {}
    for a in attempts:
        if not a.success:
            failures[a.failure] = failures.get(a.failure, 0) + 1
    metrics = dict.fromkeys(name for a in attempts for name in a.metrics)
    return {"episodes": len(attempts),
            "success_rate": rate(a.success for a in attempts),
            "correct_object_rate": rate(a.correct_object for a in attempts),
            "wrong_object_rate": rate(a.wrong_object for a in attempts),
            "refusal_rate": rate(not a.commanded for a in attempts),
            "median_decision_ms": median(a.decision_ms for a in attempts),
            **{f"median_{name}": median(a.metrics.get(name) for a in attempts) for name in metrics},
            "failures": dict(sorted(failures.items()))}


def ratio(a: float | None, b: float | None, digits: int = 4) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def report(episodes: list[Episode], methods: tuple[str, ...], baseline: str | None = None, **about) -> dict:
    """`about` (what was run: checkpoint, perception, seeds...), the summaries of every method overall and per
    target, each method's success and decision time relative to `baseline`, and every episode."""
    targets = sorted({e.target for e in episodes})
    overall = {m: summarise(episodes, m) for m in methods}
    out = {**about, "methods": list(methods), "overall": overall,
           "per_target": {t: {m: summarise([e for e in episodes if e.target == t], m) for m in methods}
                          for t in targets}}
    if baseline is not None:
        b = overall[baseline]
        out["relative_to_" + baseline] = {
            m: {"success": ratio(overall[m]["success_rate"], b["success_rate"]),
                "decision_time": ratio(overall[m]["median_decision_ms"], b["median_decision_ms"], 2)}
            for m in methods if m != baseline}
    out["episodes"] = [asdict(e) for e in episodes]
    return out


def table_lines(result: dict, labels: dict[str, str] | None = None) -> list[str]:
    """Per target and overall, for each method: episodes, success, correct object, wrong object lifted, refused
    (nothing commanded) and median decision time, then its own medians; then the ratios to the baseline and the
    failures."""
    methods = result["methods"]
    labels = labels or {}
    columns = {m: [k for k in result["overall"][m] if k.startswith("median_") and k != "median_decision_ms"]
               for m in methods}
    headers = {m: ["success", "correct", "wrong", "refused", "ms"] + [k[len("median_"):] for k in columns[m]]
               for m in methods}
    widths = {m: [max(8, len(h)) for h in headers[m]] for m in methods}
    block = {m: sum(widths[m]) + len(widths[m]) for m in methods}
    lines = [f"{'':10s} {'':>4s}" + "".join(f" | {labels.get(m, m):^{block[m] - 1}s}" for m in methods),
             f"{'target':10s} {'n':>4s}" + "".join(" | " + " ".join(f"{h:>{w}s}" for h, w in zip(headers[m], widths[m]))
                                                for m in methods)]
    rows = [*((t, s) for t, s in result["per_target"].items()), ("overall", result["overall"])]
    for name, summary in rows:
        cells = []
        for m in methods:
            s = summary[m]
            values = [_percent(s["success_rate"]), _percent(s["correct_object_rate"]),
                      _percent(s["wrong_object_rate"]), _percent(s["refusal_rate"]), _number(s["median_decision_ms"])]
            values += [_number(s.get(k)) for k in columns[m]]   # a target whose attempts all refused has none
            cells.append(" ".join(f"{v:>{w}s}" for v, w in zip(values, widths[m])))
        lines.append(f"{name:10s} {summary[methods[0]]['episodes']:4d}" + "".join(f" | {c}" for c in cells))
    for key, ratios in ((k, v) for k, v in result.items() if k.startswith("relative_to_")):
        baseline = labels.get(key[len("relative_to_"):], key[len("relative_to_"):])
        for m, r in ratios.items():
            lines.append(f"{labels.get(m, m)} / {baseline}: success x{_number(r['success'], 3)}, "
                         f"decision time x{_number(r['decision_time'], 1)}")
    lines.append("failures: " + "; ".join(f"{labels.get(m, m)} {result['overall'][m]['failures']}" for m in methods))
    return lines


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
