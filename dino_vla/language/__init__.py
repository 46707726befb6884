"""Instruction understanding (ROS-free, torch-free): `parse(text)` -> Instruction (action, target object
phrase with its attributes, optional spatial relation to reference objects, typo corrections) or
InstructionRefused with a reason code."""
from dino_vla.language.parser import (REFUSALS, RELATION_TYPES, Instruction, InstructionError, InstructionRefused,
                                      ObjectPhrase, Relation, parse)

__all__ = ["REFUSALS", "RELATION_TYPES", "Instruction", "InstructionError", "InstructionRefused", "ObjectPhrase",
           "Relation", "parse"]
