"""Which recorded objects a relation's reference phrases name, from the objects' names: a simulator frame names
its instances by catalogue category ("cup", "cup_2"), and a relation's reference is the only one of its kind.
Used by training to teach the policy's reference pointer; names that are not the catalogue's ("object") name
nothing."""
from __future__ import annotations

from dino_vla.sim.scene import CATALOGUE_BY_NAME


def category(name: str) -> str | None:
    """The catalogue category of an instance name ("cup_2" -> "cup"), or None."""
    if name in CATALOGUE_BY_NAME:
        return name
    base, _, number = name.rpartition("_")
    return base if number.isdigit() and base in CATALOGUE_BY_NAME else None


def reference_objects(objects: tuple[str, ...] | list[str], nouns: list[str]) -> list[int | None]:
    """For each reference noun, the index of the one object whose category it names, or None when no object
    or more than one does."""
    out = []
    for noun in nouns:
        named = [i for i, name in enumerate(objects)
                 if (kind := category(name)) is not None and CATALOGUE_BY_NAME[kind].answers_to(noun)]
        out.append(named[0] if len(named) == 1 else None)
    return out
