"""From a parsed instruction to Grounding DINO text prompts.

Grounding DINO scores boxes against a prompt of lower-case phrases, each ending in "." ("red mug.
laptop."). It grounds noun phrases, not commands: the instruction is understood by `dino_vla.language`
(verb, politeness, word order, typos, attributes, relations), and only the object phrases it names (the
target, then any reference objects) become the prompt. Attributes stay in the phrases, since they help the
detector rank boxes, but the pick checks them itself (colour under the mask, size and relations in 3D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dino_vla.language import Instruction, InstructionError, InstructionRefused, parse

__all__ = ["OBJECT", "GroundingQuery", "InstructionError", "InstructionRefused", "normalise_phrases",
           "parse_instruction", "prompt_from_phrases"]

OBJECT = "object"   # the one phrase of class-agnostic detections and masks (masks_scope all_objects)


@dataclass(frozen=True)
class GroundingQuery:
    """What perception is asked to find for one instruction."""

    instruction: str
    target: str                          # the target's detector phrase ("big red mug")
    references: tuple[str, ...] = ()     # the relation's reference phrases
    parsed: Instruction | None = None    # None for every_object: the instruction is only carried along

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.target, *self.references)))

    @property
    def prompt(self) -> str:
        return prompt_from_phrases(self.phrases)

    @classmethod
    def every_object(cls, instruction: str) -> "GroundingQuery":
        """Every object, whatever the instruction names (for the policy, which grounds the words itself)."""
        return cls(instruction=instruction, target=OBJECT)


def parse_instruction(text: str) -> GroundingQuery:
    """The query for one instruction, or InstructionRefused (an InstructionError) with its reason code."""
    parsed = parse(text)
    references = tuple(r.phrase for r in parsed.relation.references) if parsed.relation else ()
    return GroundingQuery(text, parsed.target.phrase, references, parsed)


def normalise_phrases(phrases: Sequence[str]) -> tuple[str, ...]:
    """Phrases as Grounding DINO sees them: lower case, single spaces, no surrounding dots; duplicates
    dropped, order kept. The detector labels boxes with these, so they must match the prompt exactly."""
    if isinstance(phrases, str) or not phrases:
        raise InstructionError(
            f"Cannot build a prompt from {phrases!r}: expected a non-empty list of phrases.")
    cleaned = []
    for phrase in phrases:
        text = " ".join(phrase.lower().split()).strip(" .") if isinstance(phrase, str) else ""
        # An inner "." would split one phrase into two in the prompt, silently changing its meaning.
        if not any(c.isalpha() for c in text) or "." in text:
            raise InstructionError(
                f"Invalid phrase {phrase!r} in {list(phrases)!r}: each phrase must be a string "
                "with at least one letter and no inner '.'.")
        cleaned.append(text)
    return tuple(dict.fromkeys(cleaned))


def prompt_from_phrases(phrases: Sequence[str]) -> str:
    """Join phrases in Grounding DINO's format ("red mug. laptop.")."""
    return " ".join(f"{p}." for p in normalise_phrases(phrases))
