"""Turn a spoken or typed robot instruction into Grounding DINO text prompts.

Grounding DINO scores boxes against a prompt of lower-case phrases, each ending in "." ("red mug.
laptop."). It grounds nouns, not commands, so the verb, politeness, determiners and pronouns are
stripped and only the objects are kept. This is a small rule-based parser, not a language model:
it is meant to be predictable and to fail loudly with a message a user can act on.

Choices worth knowing:
  * "and", "then" and commas separate objects without relating them: "pick up the cup and the
    spoon" gives target "cup", references ("spoon",) and relation None. A verb after "and"/"then"
    starts a follow-up clause whose verb is skipped, so "pick up the cup and put it in the bin"
    still grounds "cup. bin." with relation "in".
  * Only the target is required. References that end up empty (a dangling "in", a pronoun such as
    "it" or "me", or a bare position such as "on the left") are dropped, not errors: they name
    nothing Grounding DINO could find.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MAX_INSTRUCTION_CHARS = 500

KNOWN_VERBS: tuple[str, ...] = (
    "pick up", "pick", "grab", "grasp", "take", "lift", "get", "fetch", "hold", "put", "place",
    "move", "bring", "hand me", "give me", "hand", "give", "show me", "find", "locate", "look for",
    "point at", "point to", "push", "pull", "touch", "drop",
)
RELATIONS: tuple[str, ...] = (
    "on top of", "to the left of", "to the right of", "on the left of", "on the right of",
    "left of", "right of", "next to", "close to", "in front of", "out of", "inside of", "behind",
    "beside", "near", "between", "in", "into", "inside", "on", "onto", "under", "underneath",
    "below", "beneath", "above", "over", "at", "to", "from", "by", "with", "toward", "towards",
    "off", "against",
)
_POLITE_PREFIXES = (
    "please", "kindly", "hey", "hi", "hello", "ok", "okay", "so", "now", "and", "then", "robot",
    ",", "can you", "could you", "would you", "will you", "i want you to", "i need you to",
    "i'd like you to", "i would like you to", "go ahead and", "try to",
)
_POLITE_SUFFIXES = ("please", "now", "right now", "thanks", "thank you", "for me", ",")
_CONJUNCTIONS = frozenset({"and", "then", ","})
_DETERMINERS = frozenset(
    "the a an this that these those my your our his her their its some any".split())
_PRONOUNS = frozenset("it them me us you him".split())
# Particles of phrasal verbs left at the end of an object: "pick the bottle up".
_PARTICLES = frozenset({"up", "down", "away", "back"})
# A reference made only of these describes a place, not an object to ground ("on the left").
_POSITIONS = frozenset(
    "left right top bottom middle center centre front back side edge corner end far hand".split())
# Longest first, so "pick up" wins over "pick" and "to the left of" over "to".
_VERB_TOKENS = sorted((tuple(v.split()) for v in KNOWN_VERBS), key=len, reverse=True)
_RELATION_TOKENS = sorted((tuple(r.split()) for r in RELATIONS), key=len, reverse=True)
_PREFIX_TOKENS = sorted((tuple(p.split()) for p in _POLITE_PREFIXES), key=len, reverse=True)
_SUFFIX_TOKENS = sorted((tuple(s.split()) for s in _POLITE_SUFFIXES), key=len, reverse=True)
_TOKEN = re.compile(r"[^\W_]+(?:['-][^\W_]+)*|,")


class InstructionError(ValueError):
    """An instruction that cannot be turned into a Grounding DINO prompt."""


OBJECT = "object"   # the one phrase of class-agnostic detections and masks (masks_scope all_objects)


@dataclass(frozen=True)
class GroundingQuery:
    instruction: str
    verb: str
    target: str
    references: tuple[str, ...] = ()
    relation: str | None = None

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.target, *self.references)))

    @property
    def prompt(self) -> str:
        return prompt_from_phrases(self.phrases)

    @classmethod
    def every_object(cls, instruction: str) -> "GroundingQuery":
        """Every object, whatever the instruction names: the instruction is only carried along (for the
        policy, which grounds the words itself), so it is not parsed."""
        return cls(instruction=instruction, verb="", target=OBJECT)


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


def _fail(text: object, problem: str) -> InstructionError:
    return InstructionError(
        f"Cannot parse instruction {text!r}: {problem}. "
        "Expected a command such as 'pick up the red mug next to the laptop'.")


def _match(tokens: list[str], i: int, table: list[tuple[str, ...]]) -> tuple[str, ...] | None:
    return next((t for t in table if tuple(tokens[i:i + len(t)]) == t), None)


def _strip_politeness(tokens: list[str]) -> list[str]:
    changed = True
    while changed and tokens:
        changed = False
        if p := _match(tokens, 0, _PREFIX_TOKENS):
            tokens, changed = tokens[len(p):], True
        elif s := next((s for s in _SUFFIX_TOKENS if tuple(tokens[-len(s):]) == s), None):
            tokens, changed = tokens[:-len(s)], True
        elif not _match(tokens, 0, _VERB_TOKENS) and "," in tokens[:4]:
            # A vocative such as "Alice," before the command: the name is not an object.
            tokens, changed = tokens[tokens.index(",") + 1:], True
    return tokens


def _clean(words: list[str]) -> list[str]:
    words = [w for w in words if w not in _DETERMINERS and w not in _PRONOUNS]
    while words and words[-1] in _PARTICLES:
        words.pop()
    return words


def parse_instruction(text: str) -> GroundingQuery:
    """Parse e.g. "grab the red mug next to the laptop" into a GroundingQuery."""
    if not isinstance(text, str):
        raise _fail(text, f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise _fail(text[:60] + "...", f"it is {len(text)} characters long, more than the "
                    f"{MAX_INSTRUCTION_CHARS} allowed for one command")
    if not text.strip():
        raise _fail(text, "it is empty")
    tokens = _strip_politeness(_TOKEN.findall(text.lower()))
    if not any(t != "," for t in tokens):
        raise _fail(text, "it contains no words")
    verb_tokens = _match(tokens, 0, _VERB_TOKENS)
    if verb_tokens is None:
        raise _fail(text, f"it does not start with a known verb (known verbs: "
                    f"{', '.join(KNOWN_VERBS)})")
    verb = " ".join(verb_tokens)

    # Split the rest into segments, each tagged with what links it to the one before.
    segments: list[tuple[str | None, list[str]]] = [(None, [])]
    i = len(verb_tokens)
    while i < len(tokens):
        if tokens[i] in _CONJUNCTIONS:
            i += 1
            follow_up_verb = _match(tokens, i, _VERB_TOKENS)
            i += len(follow_up_verb or ())
            segments.append((None, []))
        elif relation := _match(tokens, i, _RELATION_TOKENS):
            segments.append((" ".join(relation), []))
            i += len(relation)
        else:
            segments[-1][1].append(tokens[i])
            i += 1

    target_words = segments[0][1]
    # "pick the bottle up" means "pick up": fold a trailing particle back into the verb.
    particle = target_words[-1] if target_words and target_words[-1] in _PARTICLES else ""
    if f"{verb} {particle}" in KNOWN_VERBS:
        verb = f"{verb} {particle}"
    target = " ".join(_clean(target_words))
    if not target:
        raise _fail(text, f"the verb '{verb}' is not followed by an object to act on "
                    "(a pronoun such as 'it' names nothing to look for)")
    references, relation = [], None
    for link, words in segments[1:]:
        words = _clean(words)
        if not words or all(p in _POSITIONS for w in words for p in w.split("-")):
            continue
        if not references:
            relation = link
        references.append(" ".join(words))
    for phrase in (target, *references):
        if not any(c.isalpha() for c in phrase):
            raise _fail(text, f"the object '{phrase}' has no letters; name the object in words")
    return GroundingQuery(text, verb, target, tuple(references), relation)
