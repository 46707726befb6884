"""Scoring the parser on a test set of {"text", "group", "expect"} lines (test/data/instructions.jsonl)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dino_vla.language.parser import InstructionRefused, parse


def parsed(text: str) -> dict:
    """The parse as the test set writes it: the structure, or {"refused": reason}."""
    try:
        return parse(text).to_json()
    except InstructionRefused as err:
        return {"refused": err.reason}


def same(expect: dict, got: dict) -> bool:
    """Exact match; a missing `corrections` in the expectation means none."""
    if "refused" in expect or "refused" in got:
        return expect.get("refused") == got.get("refused")
    return {**expect, "corrections": expect.get("corrections", {})} == got


def score_test_set(path: str | Path) -> dict:
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no test cases")
    cases = [json.loads(line) for line in lines]
    parsed("pick up the cup")  # the first call loads the vocabulary
    groups: dict[str, dict] = {}
    misses, times = [], []
    for case in cases:
        start = time.perf_counter()
        got = parsed(case["text"])
        times.append((time.perf_counter() - start) * 1e3)
        group = groups.setdefault(case.get("group", "-"), {"cases": 0, "exact": 0})
        group["cases"] += 1
        if same(case["expect"], got):
            group["exact"] += 1
        else:
            misses.append({"text": case["text"], "group": case.get("group", "-"), "expect": case["expect"],
                           "got": got})
    for g in groups.values():
        g["exact_rate"] = round(g["exact"] / g["cases"], 4)
    exact = sum(g["exact"] for g in groups.values())
    return {"overall": {"cases": len(cases), "exact": exact, "exact_rate": round(exact / len(cases), 4)},
            "groups": dict(sorted(groups.items())), "misses": misses,
            "median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "max_ms": float(max(times))}
