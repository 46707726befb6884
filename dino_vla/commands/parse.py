"""`dino-vla parse`: what the robot understands of an instruction, as JSON; or the whole instruction test set
scored (exact structures, per group) with the parser's latency."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("parse", help="an instruction's structure (action, target, attributes, relation, "
                              "corrections) as JSON; exit 2 with the reason when it is refused")
    p.add_argument("instruction", nargs="?", help='e.g. "grab the red mug left of the bowl"')
    p.add_argument("--test-set", metavar="JSONL", help="score a test set of {text, expect} lines instead "
                   "(e.g. test/data/instructions.jsonl): exact-match rate per group, latency, every miss")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.language import InstructionRefused, parse

    if args.test_set:
        return _score(args.test_set)
    if args.instruction is None:
        print("dino-vla parse: give an instruction (or --test-set FILE)", file=sys.stderr)
        return 2
    try:
        instruction = parse(args.instruction)
    except InstructionRefused as err:
        print(json.dumps({"refused": err.reason, "message": str(err)}, indent=2))
        print(f"dino-vla parse: {err}", file=sys.stderr)
        return 2
    print(json.dumps(instruction.to_json(), indent=2))
    return 0


def _score(path: str) -> int:
    from dino_vla.language.evaluation import score_test_set

    try:
        report = score_test_set(path)
    except (OSError, ValueError) as err:
        print(f"dino-vla parse: {err}", file=sys.stderr)
        return 1
    for miss in report["misses"]:
        print(f"MISS [{miss['group']}] {miss['text']!r}\n  expected {json.dumps(miss['expect'])}\n"
              f"  got      {json.dumps(miss['got'])}")
    for group, s in report["groups"].items():
        print(f"{group:16s} {s['exact']:4d}/{s['cases']:<4d} {s['exact_rate']:.1%}")
    o = report["overall"]
    print(f"{'overall':16s} {o['exact']:4d}/{o['cases']:<4d} {o['exact_rate']:.1%} | parse median "
          f"{report['median_ms']:.2f} ms, p95 {report['p95_ms']:.2f} ms, max {report['max_ms']:.2f} ms")
    return 0
