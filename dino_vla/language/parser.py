"""Instruction understanding: what a person says to the robot -> an action, a target object phrase (noun,
colour, size) and an optional spatial relation to reference objects; or a refusal with a reason code.

A deterministic lexicon-and-chunk parser, not a statistical one: it finds the action verb wherever it stands,
drops politeness and framing, chunks the rest into noun phrases and relation phrases, resolves a pronoun
object to a phrase said elsewhere ("that mug over there - lift it"), and corrects near-misses of its own
vocabulary (reporting each correction). Why not a statistical pipeline: the sentences a robot is given are
short imperatives over a small grammar, every decision here can be read and tested, it runs in well under a
millisecond offline, and it needs no model download (the one English pipeline on the package index is an
unofficial re-upload). Unknown nouns are kept as said: the vocabulary is open."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from dino_vla.language import vocabulary as V

MAX_CHARS = 500
REFUSALS = ("not_an_instruction", "no_object", "unsupported_action")
RELATION_TYPES = ("left_of", "right_of", "in_front_of", "behind", "near", "between", "nearest", "farthest",
                  "leftmost", "rightmost")

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[,.!?;:]|\s[-–—]+\s")
_SKIP = frozenset("is are was were be been which who where sitting standing lying located placed positioned kept "
                  "coloured colored color colour shaped looking".split())
_VOCATIVES = ("hey robot", "hi robot", "hello robot", "ok robot", "okay robot", "robot")
_VERB_WORDS = frozenset(p.split()[0] for p in (*V.PICK_VERBS, *V.FIND_VERBS, *V.UNSUPPORTED_VERBS))
_RECIPIENTS = frozenset("me us him her you".split())   # "bring me the cup": who gets it, not what
_REQUESTS = ("i would like", "i want", "i need", "can i have", "could i have", "may i have", "can i get",
             "could i get", "give me")


class InstructionError(ValueError):
    """An instruction, or detector phrases, that cannot be acted on."""


class InstructionRefused(InstructionError):
    """An instruction the robot will not act on; `reason` is one of REFUSALS."""

    def __init__(self, reason: str, text: object, why: str):
        super().__init__(f"refused {text!r} ({reason}): {why}")
        self.reason = reason


@dataclass(frozen=True)
class ObjectPhrase:
    noun: str
    colour: str | None = None
    size: str | None = None

    @property
    def phrase(self) -> str:
        """As a detector prompt phrase: "big red mug"."""
        return " ".join(w for w in (self.size, self.colour, self.noun) if w)

    def to_json(self) -> dict:
        return {"noun": self.noun, "colour": self.colour, "size": self.size}


@dataclass(frozen=True)
class Relation:
    type: str                                   # one of RELATION_TYPES
    references: tuple[ObjectPhrase, ...] = ()
    anchor: str | None = None                   # "camera" or "robot" for nearest/farthest

    def to_json(self) -> dict:
        return {"type": self.type, "references": [r.to_json() for r in self.references], "anchor": self.anchor}


@dataclass(frozen=True)
class Instruction:
    text: str
    action: str                                  # "pick" or "find"
    target: ObjectPhrase
    relation: Relation | None = None
    corrections: tuple[tuple[str, str], ...] = ()   # (as typed, as understood)
    verb: str = ""

    @property
    def phrases(self) -> tuple[str, ...]:
        """What a detector must find: the target's phrase, then every reference's."""
        refs = self.relation.references if self.relation else ()
        return tuple(dict.fromkeys(p.phrase for p in (self.target, *refs)))

    def to_json(self) -> dict:
        return {"action": self.action, "target": self.target.to_json(),
                "relation": self.relation.to_json() if self.relation else None,
                "corrections": dict(self.corrections)}


# ---- tokens ---------------------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    lowered = text.lower().replace("’", "'")
    out = []
    for token in _TOKEN.findall(f" {lowered} "):
        token = token.strip()
        if token in V.CONTRACTIONS:
            out += V.CONTRACTIONS[token].split()
        elif token[:1] in "-–—":
            out.append("-")
        elif "'" in token:
            out.append(token.split("'")[0])   # possessives: "the robot's" -> "robot"
        else:
            out.append(token)
    return out


@lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    lexicon = (*V.PICK_VERBS, *V.FIND_VERBS, *V.UNSUPPORTED_VERBS, *V.COLOURS, *V.SIZES, *V.RELATIONS,
               *V.POSITIONAL_PHRASES, *V.SUPERLATIVES, *V.POLITENESS, *V.DETERMINERS, *V.PRONOUNS, *V.VAGUE_NOUNS,
               *V.PARTICLES, *V.CONJUNCTIONS, *V.PLACE_PREPOSITIONS, *V.KNOWN_NOUNS, *_SKIP, *_VOCATIVES,
               *_REQUESTS, *V.ANCHORS)
    return frozenset(w for p in lexicon for w in p.split()) | V.english_words()


def _correct(tokens: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Near-misses of the parser's own vocabulary replaced; real words and unknown nouns kept. A correction
    keeps the first letter (slips rarely change it: "lfit", "rde", "mgu") and is the one candidate at the least
    distance, ties broken by the closer alignment ("spon" is "spoon", not "spin")."""
    from rapidfuzz import fuzz, process
    from rapidfuzz.distance import OSA

    known, vocabulary = _known(), V.correctable_words()
    out, corrections = [], []
    for token in tokens:
        if token in known or _singular(token) in known or not token.isalpha() or len(token) < 3:
            out.append(token)
            continue
        limit = 1 if len(token) <= 5 else 2
        found = [(word, distance) for word, distance, _ in process.extract(
            token, vocabulary, scorer=OSA.distance, limit=None, score_cutoff=limit) if word[0] == token[0]]
        best = min((d for _, d in found), default=None)
        ranked = sorted(((fuzz.ratio(token, w), w) for w, d in found if d == best), reverse=True)
        unique = ranked and (len(ranked) == 1 or ranked[0][0] > ranked[1][0])
        # not the word itself with an ending added: "shaker" is no misspelt "shake"
        if unique and not _derived(token, ranked[0][1]):
            out.append(ranked[0][1])
            corrections.append((token, ranked[0][1]))
        else:
            out.append(token)
    return out, corrections


def _derived(token: str, word: str) -> bool:
    endings = ("s", "es", "ed", "er", "ers", "ing", "y", "ly")
    stem = word[:-1] if word.endswith("e") else word      # "shake" -> "shaker", "shaking"
    return (token.startswith(word) and token[len(word):] in endings) or \
        (token.startswith(stem) and token[len(stem):] in endings)


def _lemma(token: str, verbs: frozenset[str]) -> str:
    """A verb's -ing/-s/-ed form as the verb ("picking" -> "pick", "fetching" -> "fetch", "grabbed" -> "grab")."""
    for ending in ("ing", "ed", "es", "s"):
        if token.endswith(ending) and len(token) > len(ending) + 2:
            stem = token[:-len(ending)]
            for candidate in (stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else ""):
                if candidate in verbs:
                    return candidate
    return token


def _match(tokens: list[str], i: int, phrases) -> str | None:
    """The longest of `phrases` starting at tokens[i]."""
    best = None
    for phrase in phrases:
        words = phrase.split()
        if tokens[i:i + len(words)] == words and (best is None or len(words) > len(best.split())):
            best = phrase
    return best


def _strip(tokens: list[str], phrases) -> list[str]:
    out, i = [], 0
    while i < len(tokens):
        found = _match(tokens, i, phrases)
        if found:
            i += len(found.split())
        else:
            out.append(tokens[i])
            i += 1
    return out


# ---- phrases ------------------------------------------------------------------------------------------

def _singular(word: str) -> str:
    if word in V.SINGULAR_IN_S:
        return word
    if word in V.IRREGULAR_PLURALS:
        return V.IRREGULAR_PLURALS[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches", "shes", "zes")) and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


@dataclass
class _Chunk:
    """A run of words between boundaries: a noun phrase, a pronoun, or a marker."""

    kind: str                       # "np", "pronoun", "relation", "position", "place", "sep", "verb"
    words: list[str] = field(default_factory=list)
    value: str = ""                 # relation/position type, verb phrase


def _chunks(tokens: list[str]) -> list[_Chunk]:
    verbs = (*V.PICK_VERBS, *V.FIND_VERBS, *V.UNSUPPORTED_VERBS)
    chunks: list[_Chunk] = []
    i = 0

    def np() -> _Chunk:
        if not chunks or chunks[-1].kind != "np":
            chunks.append(_Chunk("np"))
        return chunks[-1]

    while i < len(tokens):
        token = tokens[i]
        if token in ",.!?;:-" or token in V.CONJUNCTIONS:
            chunks.append(_Chunk("sep", [token]))
            i += 1
            continue
        position = _match(tokens, i, V.POSITIONAL_PHRASES)
        relation = _match(tokens, i, V.RELATIONS)
        if position and not (relation and len(relation.split()) > len(position.split())):
            chunks.append(_Chunk("position", value=V.POSITIONAL_PHRASES[position]))
            i += len(position.split())
            continue
        if relation:
            chunks.append(_Chunk("relation", value=relation))
            i += len(relation.split())
            continue
        verb = _match(tokens, i, verbs)
        # a verb inside a noun phrase or after a determiner is a noun or adjective ("the open box")
        inside = (chunks and chunks[-1].kind == "np" and chunks[-1].words) or (i and tokens[i - 1] in V.DETERMINERS)
        if verb and not (inside and token not in V.PICK_VERBS and token not in V.FIND_VERBS):
            chunks.append(_Chunk("verb", value=verb))
            i += len(verb.split())
            continue
        if token in V.PLACE_PREPOSITIONS:
            chunks.append(_Chunk("place"))
            i += 1
            continue
        if token in V.DETERMINERS and token not in ("that", "this", "these", "those") or token in _SKIP:
            if chunks and chunks[-1].kind == "np" and chunks[-1].words and token not in _SKIP:
                chunks.append(_Chunk("sep"))   # "the cup the bowl": two phrases
            i += 1
            continue
        if token in V.PRONOUNS and not (token in ("this", "that", "these", "those") and i + 1 < len(tokens)
                                        and _content(tokens[i + 1])):
            chunks.append(_Chunk("pronoun", [token]))
            i += 1
            continue
        if token in ("this", "that", "these", "those"):   # a demonstrative before a noun
            i += 1
            continue
        if token in V.PARTICLES:
            chunks.append(_Chunk("sep", [token]))
            i += 1
            continue
        if token.isdigit():
            i += 1
            continue
        np().words.append(token)
        i += 1
    return chunks


def _content(token: str) -> bool:
    return token.isalpha() and token not in V.PLACE_PREPOSITIONS and token not in V.PARTICLES \
        and token not in V.CONJUNCTIONS and token not in V.PRONOUNS and token not in _SKIP


def _phrase(words: list[str]) -> tuple[ObjectPhrase | None, str | None]:
    """(the object a noun phrase names, or None when it names nothing; its leftmost/rightmost, if said)."""
    colour = size = position = None
    rest = []
    for w in words:
        if w in V.COLOURS and colour is None:
            colour = V.COLOURS[w]
        elif w in V.SIZES and size is None:
            size = V.SIZES[w]
        elif w in V.SUPERLATIVES:
            position = V.SUPERLATIVES[w]
        else:
            rest.append(w)
    if not rest and colour is not None:   # "grab the orange": the colour word is the noun
        rest, colour = [next(w for w in reversed(words) if w in V.COLOURS)], None
    if not rest:
        return None, position
    rest[-1] = _singular(rest[-1])
    if rest[-1] in V.VAGUE_NOUNS:
        return None, position
    return ObjectPhrase(" ".join(rest), colour, size), position


# ---- the parse ------------------------------------------------------------------------------------------

def parse(text: str) -> Instruction:
    """Parse one instruction; InstructionRefused (with .reason) when the robot should not act on it."""
    if not isinstance(text, str):
        raise InstructionRefused("not_an_instruction", text, f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise InstructionRefused("not_an_instruction", text[:60] + "...",
                                 f"{len(text)} characters is more than one command ({MAX_CHARS} at most)")
    tokens = _tokens(text)
    if not any(t.isalpha() for t in tokens):
        raise InstructionRefused("not_an_instruction", text, "it has no words")
    tokens, corrections = _correct(tokens)
    # a verb form right after a determiner is a noun's modifier ("the cutting board")
    tokens = [t if i and tokens[i - 1] in V.DETERMINERS else _lemma(t, _VERB_WORDS) for i, t in enumerate(tokens)]
    request = _match(tokens, 0, _REQUESTS)
    if request:   # "i need the mug": the request is the verb; "i'd like you to put ...": a wrapper
        tokens = tokens[len(request.split()):]
        if tokens[:1] == ["you"]:
            tokens = tokens[2:] if tokens[1:2] == ["to"] else tokens[1:]
    tokens = _strip_vocative(tokens)
    tokens = _strip(tokens, V.POLITENESS)
    chunks = _chunks(tokens)
    verbs = [c for c in chunks if c.kind == "verb"]
    unsupported = [c.value for c in verbs if c.value in V.UNSUPPORTED_VERBS]
    if unsupported:
        raise InstructionRefused("unsupported_action", text, f"the robot does not {unsupported[0]} things: it "
                                 "picks objects up or finds them (e.g. 'pick up the red mug')")
    if not verbs and not request:
        raise InstructionRefused("not_an_instruction", text, "it does not ask the robot to pick up or find "
                                 "anything (e.g. 'pick up the red mug', 'where is the cup?')")
    verb = verbs[0].value if verbs else "give me"
    action = "find" if verb in V.FIND_VERBS else "pick"
    at = chunks.index(verbs[0]) if verbs else -1
    target, position, after = _target(chunks, at)
    if target is None:
        raise InstructionRefused("no_object", text, "it does not name an object to look for ('it', 'that one' "
                                 "or 'the thing' name nothing a camera can find)")
    relation = _relation(chunks, after, position)
    return Instruction(text, action, target, relation, tuple(corrections), verb)


def _strip_vocative(tokens: list[str]) -> list[str]:
    """"robot, ..." / "hey robot ..." at the start is an address, not an object ("the robot" later is)."""
    vocative = _match(tokens, 0, _VOCATIVES)
    if vocative and (vocative != "robot" or tokens[1:2] in ([","], [])):
        return tokens[len(vocative.split()):]
    return tokens


def _target(chunks: list[_Chunk], verb_at: int) -> tuple[ObjectPhrase | None, str | None, int]:
    """(target, its leftmost/rightmost, index of the chunk after it). The verb's object, or, when that is a
    pronoun or missing, a noun phrase said before the verb ("the red cup - grab it")."""
    def object_after(start: int):
        for j in range(start, len(chunks)):
            c = chunks[j]
            if c.kind == "np":
                if j > 0 and chunks[j - 1].kind == "place":
                    continue
                return j
            if c.kind == "pronoun" and c.words[0] not in _RECIPIENTS:
                return None
            if c.kind in ("relation", "verb"):
                return None
        return None

    j = object_after(verb_at + 1)
    if j is None:   # a pronoun object: the phrase it stands for, said before the verb or after a pause
        j = next((k for k in range(verb_at) if chunks[k].kind == "np"
                  and not (k > 0 and chunks[k - 1].kind == "place")), None)
    if j is None:
        j = next((k for k in range(verb_at + 1, len(chunks)) if chunks[k].kind == "np"
                  and chunks[k - 1].kind == "sep" and chunks[k - 1].words[:1] in ([","], ["-"])), None)
    if j is None:
        return None, None, len(chunks)
    target, position = _phrase(chunks[j].words)
    # "the mouse, the black one": attributes said again after a pause belong to the target
    if target is not None and j + 3 <= len(chunks) and chunks[j + 1].kind == "sep" and chunks[j + 2].kind == "np" \
            and (j + 3 == len(chunks) or chunks[j + 3].kind == "pronoun"):
        extra, _ = _phrase(chunks[j + 2].words + ["one"])
        words = chunks[j + 2].words
        if all(w in V.COLOURS or w in V.SIZES for w in words):
            colour = next((V.COLOURS[w] for w in words if w in V.COLOURS), target.colour)
            size = next((V.SIZES[w] for w in words if w in V.SIZES), target.size)
            target = ObjectPhrase(target.noun, colour, size)
            return target, position, j + 3
    return target, position, j + 1


def _relation(chunks: list[_Chunk], start: int, position: str | None) -> Relation | None:
    for j in range(start, len(chunks)):
        c = chunks[j]
        if c.kind == "verb":
            break
        if c.kind == "position":
            return Relation(c.value)
        if c.kind != "relation":
            continue
        kind = V.RELATIONS[c.value]
        refs = []
        for k in range(j + 1, len(chunks)):
            if chunks[k].kind == "np":
                obj, _ = _phrase(chunks[k].words)
                if obj is not None:
                    refs.append(obj)
                if kind != "between" or len(refs) == 2:
                    break
            elif chunks[k].kind not in ("sep", "place") or (chunks[k].kind == "sep" and kind != "between"
                                                             and refs):
                break
        anchor = V.ANCHORS.get(refs[0].noun) if len(refs) == 1 and not refs[0].colour else None
        if anchor and kind in ("near", "farthest"):
            return Relation("nearest" if kind == "near" else "farthest", (), anchor)
        if refs:
            return Relation(kind, tuple(refs))
    return Relation(position) if position else None
