"""Instruction understanding (dino_vla.language): the public test set (test/data/instructions.jsonl, written
by hand to the rules in test/data/INSTRUCTIONS.md) and the behaviours behind it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dino_vla.language import REFUSALS, RELATION_TYPES, InstructionRefused, ObjectPhrase, parse
from dino_vla.language.evaluation import parsed, same, score_test_set

DATA = Path(__file__).resolve().parents[1] / "data"
TEST_SET = DATA / "instructions.jsonl"
HELD_OUT = DATA / "instructions_heldout.jsonl"   # written later, by another hand, never tuned on


def test_the_test_set_is_large_and_covers_every_case():
    cases = [json.loads(line) for line in TEST_SET.read_text().splitlines() if line.strip()]
    assert len(cases) >= 300 and len({c["text"] for c in cases}) == len(cases)
    refusals = {c["expect"]["refused"] for c in cases if "refused" in c["expect"]}
    relations = {c["expect"]["relation"]["type"] for c in cases
                 if "refused" not in c["expect"] and c["expect"]["relation"]}
    assert refusals == set(REFUSALS) and relations == set(RELATION_TYPES)
    assert any(c["expect"].get("corrections") for c in cases)


@pytest.mark.parametrize("path", [TEST_SET, HELD_OUT], ids=["test-set", "held-out"])
def test_the_parser_gets_at_least_98_percent_of_each_set_exactly(path):
    report = score_test_set(path)
    misses = "\n".join(f"{m['text']!r}: expected {m['expect']}, got {m['got']}" for m in report["misses"])
    assert report["overall"]["exact_rate"] >= 0.98, misses
    assert all(g["exact_rate"] >= 0.9 for g in report["groups"].values()), report["groups"]


@pytest.mark.parametrize("text, target, relation", [
    ("pick up the cup", ObjectPhrase("cup"), None),
    ("Could you please grab the red mug next to the laptop?", ObjectPhrase("mug", "red"), "near"),
    ("that mug over there - lift it", ObjectPhrase("mug"), None),
    ("the red cup, grab it please", ObjectPhrase("cup", "red"), None),
    ("collect the mug", ObjectPhrase("mug"), None),
    ("pick up the stapler", ObjectPhrase("stapler"), None),
    ("grab the orange", ObjectPhrase("orange"), None),
    ("hand me the tallest jar", ObjectPhrase("jar", size="tall"), None),
    ("pick up the big red coffee mugs", ObjectPhrase("coffee mug", "red", "big"), None),
    ("take the leftmost cup", ObjectPhrase("cup"), "leftmost"),
    ("grab the cup on the far right", ObjectPhrase("cup"), "rightmost"),
    ("bring me the ball between the red cup and the blue box", ObjectPhrase("ball"), "between"),
    ("get the bowl farthest from the robot", ObjectPhrase("bowl"), "farthest"),
])
def test_phrasings(text, target, relation):
    instruction = parse(text)
    assert instruction.target == target and instruction.text == text
    assert (instruction.relation.type if instruction.relation else None) == relation


def test_relations_carry_their_references_and_anchors():
    between = parse("bring me the ball between the red cup and the blue box").relation
    assert between.references == (ObjectPhrase("cup", "red"), ObjectPhrase("box", "blue")) and between.anchor is None
    nearest = parse("pick up the cup nearest the camera").relation
    assert (nearest.type, nearest.references, nearest.anchor) == ("nearest", (), "camera")
    farthest = parse("pick up the cup farthest from the bowl").relation
    assert (farthest.type, farthest.references, farthest.anchor) == ("farthest", (ObjectPhrase("bowl"),), None)
    assert parse("grab the small green block left of the big bowl").phrases == ("small green block", "big bowl")


def test_typos_of_known_words_are_corrected_and_reported():
    instruction = parse("lfit the rde mgu")
    assert instruction.target == ObjectPhrase("mug", "red") and instruction.action == "pick"
    assert dict(instruction.corrections) == {"lfit": "lift", "rde": "red", "mgu": "mug"}
    assert instruction.to_json()["corrections"] == {"lfit": "lift", "rde": "red", "mgu": "mug"}


def test_real_words_and_unknown_nouns_are_not_corrected():
    for text, noun in (("grab the jug", "jug"), ("pick up the headphones", "headphones"),
                       ("pass me the salt shaker", "salt shaker"), ("grab the cap", "cap")):
        instruction = parse(text)
        assert instruction.target.noun == noun and instruction.corrections == (), text


@pytest.mark.parametrize("text, reason", [
    ("hello there", "not_an_instruction"), ("what time is it?", "not_an_instruction"), ("", "not_an_instruction"),
    ("!!!", "not_an_instruction"), ("grab the thing", "no_object"), ("pick it up", "no_object"),
    ("take that one", "no_object"), ("throw the cup", "unsupported_action"),
    ("put the cup in the bin", "unsupported_action"), ("could you please push the red box", "unsupported_action"),
])
def test_refusals_have_a_reason_and_quote_the_instruction(text, reason):
    with pytest.raises(InstructionRefused) as err:
        parse(text)
    assert err.value.reason == reason and repr(text) in str(err.value)
    assert parsed(text) == {"refused": reason}


def test_bad_input_is_refused_not_crashed_on():
    for bad in (None, 42, "x" * 501, "   "):
        with pytest.raises(InstructionRefused) as err:
            parse(bad)
        assert err.value.reason == "not_an_instruction"


def test_exact_match_treats_missing_corrections_as_none():
    got = parse("pick up the cup").to_json()
    assert same({k: v for k, v in got.items() if k != "corrections"}, got)
    assert not same({**got, "action": "find"}, got) and not same({"refused": "no_object"}, got)
