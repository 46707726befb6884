import pytest

from dino_vla.instruction import (
    KNOWN_VERBS,
    GroundingQuery,
    InstructionError,
    parse_instruction,
    prompt_from_phrases,
)

# (instruction, verb, target, references, relation, prompt)
CASES = [
    ("pick up the cup", "pick up", "cup", (), None, "cup."),
    ("grab the red mug next to the laptop", "grab", "red mug", ("laptop",), "next to",
     "red mug. laptop."),
    ("Pick up THE CUP!", "pick up", "cup", (), None, "cup."),
    ("put the bottle in the bin", "put", "bottle", ("bin",), "in", "bottle. bin."),
    ("pick the bottle up", "pick up", "bottle", (), None, "bottle."),
    ("please grab the mug", "grab", "mug", (), None, "mug."),
    ("can you pick up a banana?", "pick up", "banana", (), None, "banana."),
    ("Robot, lift the red cup.", "lift", "red cup", (), None, "red cup."),
    ("Alice, could you please fetch my keys", "fetch", "keys", (), None, "keys."),
    ("grab the mug, please", "grab", "mug", (), None, "mug."),
    ("place the apple on top of the box", "place", "apple", ("box",), "on top of", "apple. box."),
    ("move the can to the left of the plate", "move", "can", ("plate",), "to the left of",
     "can. plate."),
    ("put the cup in front of the vase", "put", "cup", ("vase",), "in front of", "cup. vase."),
    ("pick up the cup and the spoon", "pick up", "cup", ("spoon",), None, "cup. spoon."),
    ("pick up the cup and put it in the bin", "pick up", "cup", ("bin",), "in", "cup. bin."),
    ("take the small blue box", "take", "small blue box", (), None, "small blue box."),
    ("get that an some this box", "get", "box", (), None, "box."),
    ("grasp your sponge", "grasp", "sponge", (), None, "sponge."),
    ("hand me the screwdriver", "hand me", "screwdriver", (), None, "screwdriver."),
    ("give me the apple", "give me", "apple", (), None, "apple."),
    ("bring me the cup", "bring", "cup", (), None, "cup."),
    ("point at the green ball", "point at", "green ball", (), None, "green ball."),
    ("point to the door", "point to", "door", (), None, "door."),
    ("locate the remote", "locate", "remote", (), None, "remote."),
    ("find the mug near the sink", "find", "mug", ("sink",), "near", "mug. sink."),
    ("push the box against the wall", "push", "box", ("wall",), "against", "box. wall."),
    ("pull the drawer", "pull", "drawer", (), None, "drawer."),
    ("hold the cup", "hold", "cup", (), None, "cup."),
    ("pick the apple", "pick", "apple", (), None, "apple."),
    ("pick up the cup on the left", "pick up", "cup", (), None, "cup."),
    ("put the cup next to the cup", "put", "cup", ("cup",), "next to", "cup."),
    ("take the lid off the jar", "take", "lid", ("jar",), "off", "lid. jar."),
    ("put the book back on shelf 3", "put", "book", ("shelf 3",), "on", "book. shelf 3."),
    ("pick up the cup for me now", "pick up", "cup", (), None, "cup."),
]


@pytest.mark.parametrize("text, verb, target, references, relation, prompt", CASES)
def test_parse_instruction(text, verb, target, references, relation, prompt):
    q = parse_instruction(text)
    assert q == GroundingQuery(text, verb, target, references, relation)
    assert q.prompt == prompt


def test_phrases_deduplicate_and_keep_order():
    q = GroundingQuery("x", "put", "cup", ("bin", "cup", "plate", "bin"), "in")
    assert q.phrases == ("cup", "bin", "plate")
    assert q.prompt == "cup. bin. plate."


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


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("   \t\n", "empty"),
    ("!!!", "no words"),
    ("please", "no words"),
    ("dance with the cup", "known verb"),
    ("asdf qwer", "known verb"),
    ("pick up", "not followed by an object"),
    ("pick up the", "not followed by an object"),
    ("put it in the bin", "not followed by an object"),
    ("pick up 123", "no letters"),
    ("put the cup on 3", "no letters"),
])
def test_errors_name_problem_and_quote_instruction(text, fragment):
    with pytest.raises(InstructionError) as err:
        parse_instruction(text)
    message = str(err.value)
    assert fragment in message
    assert repr(text) in message
    assert "Expected a command" in message


def test_unknown_verb_lists_known_verbs():
    with pytest.raises(InstructionError) as err:
        parse_instruction("dance with the cup")
    assert all(verb in str(err.value) for verb in KNOWN_VERBS)


@pytest.mark.parametrize("value", [None, 42, b"pick up the cup", ["pick up the cup"]])
def test_non_string_input(value):
    with pytest.raises(InstructionError, match="expected a string"):
        parse_instruction(value)


def test_too_long_input():
    text = "pick up the " + "very " * 100 + "cup"
    with pytest.raises(InstructionError, match="more than the 500"):
        parse_instruction(text)
    assert parse_instruction("pick up the " + "big " * 20 + "cup").target.endswith("cup")


def test_instruction_error_is_value_error():
    assert issubclass(InstructionError, ValueError)


def test_known_verbs_contract():
    required = {"pick up", "pick", "grab", "grasp", "take", "lift", "get", "fetch", "hold", "put",
                "place", "move", "bring", "hand me", "give me", "find", "locate", "point at",
                "point to", "push", "pull"}
    assert required <= set(KNOWN_VERBS)
    assert KNOWN_VERBS.index("pick up") < KNOWN_VERBS.index("pick")


def test_query_is_frozen():
    q = parse_instruction("pick up the cup")
    with pytest.raises(AttributeError):
        q.target = "mug"
