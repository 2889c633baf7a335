"""The README's EfficientZero V2 → code map names code that exists."""

import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def concept_map_references() -> list[tuple[str, str]]:
    """(module, dotted name) for every code name in the "where" column of the concept map: a cell
    reads `file.py: Name`, `Name.attr`, ... and may switch files with another `file.py: Name`."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = text.split("## EfficientZero V2 → code", 1)[1].split("\n## ", 1)[0]
    references = []
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) < 4 or "`" not in cells[2]:
            continue
        module = None
        for token in re.findall(r"`([^`]+)`", cells[2]):
            if ".py: " in token:
                module, token = token.split(".py: ")
            references.append((module, token))
    return references


def test_every_concept_map_entry_exists():
    references = concept_map_references()
    assert len(references) >= 30
    for module_name, dotted in references:
        target = importlib.import_module(module_name)
        for part in dotted.split("."):
            assert hasattr(target, part), f"{module_name}.py has no {dotted}"
            target = getattr(target, part)
