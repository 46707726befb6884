"""From an instruction to the detector's prompt: the phrases dino_vla.language finds (target first, then the
relation's references, attributes kept), and the prompt format. The parser's own behaviour is
test_language.py's."""
import pytest

from dino_vla.instruction import (
    GroundingQuery,
    InstructionError,
    InstructionRefused,
    parse_instruction,
    prompt_from_phrases,
)

# (instruction, target phrase, reference phrases, prompt)
CASES = [
    ("pick up the cup", "cup", (), "cup."),
    ("grab the red mug next to the laptop", "red mug", ("laptop",), "red mug. laptop."),
    ("Pick up THE CUP!", "cup", (), "cup."),
    ("that mug over there - lift it", "mug", (), "mug."),
    ("could you collect the big blue box for me", "big blue box", (), "big blue box."),
    ("pick up the cup between the bowl and the green can", "cup", ("bowl", "green can"),
     "cup. bowl. green can."),
    ("take the cup that is nearest to the camera", "cup", (), "cup."),
    ("pick up the stapler", "stapler", (), "stapler."),
]


@pytest.mark.parametrize("text, target, references, prompt", CASES)
def test_query_carries_target_and_reference_phrases(text, target, references, prompt):
    q = parse_instruction(text)
    assert (q.instruction, q.target, q.references) == (text, target, references)
    assert q.prompt == prompt
    assert q.parsed is not None and q.parsed.target.phrase == target


def test_phrases_deduplicate_and_keep_order():
    q = GroundingQuery("x", "cup", ("bin", "cup", "plate", "bin"))
    assert q.phrases == ("cup", "bin", "plate")
    assert q.prompt == "cup. bin. plate."


def test_every_object_is_not_parsed():
    q = GroundingQuery.every_object("dance with the cup")
    assert (q.target, q.parsed, q.prompt) == ("object", None, "object.")


@pytest.mark.parametrize("phrases, prompt", [
    (["Cup", "red mug "], "cup. red mug."),
    (("laptop",), "laptop."),
    (["  Red   Mug.", "mug", "red mug"], "red mug. mug."),
])
def test_prompt_from_phrases(phrases, prompt):
    assert prompt_from_phrases(phrases) == prompt


@pytest.mark.parametrize("phrases", [[], (), "cup", ["cup", ""], ["  "], ["123"], [None],
                                     ["cup. mug"]])
def test_prompt_from_phrases_rejects(phrases):
    with pytest.raises(InstructionError):
        prompt_from_phrases(phrases)


@pytest.mark.parametrize("text, reason", [
    ("", "not_an_instruction"),
    ("the weather is nice", "not_an_instruction"),
    ("pick it up", "no_object"),
    ("throw the cup", "unsupported_action"),
    (None, "not_an_instruction"),
])
def test_refusals_are_instruction_errors_with_a_reason_quoting_the_text(text, reason):
    with pytest.raises(InstructionError) as err:
        parse_instruction(text)
    assert isinstance(err.value, InstructionRefused) and err.value.reason == reason
    assert repr(text) in str(err.value)


def test_query_is_frozen():
    q = parse_instruction("pick up the cup")
    with pytest.raises(AttributeError):
        q.target = "mug"
