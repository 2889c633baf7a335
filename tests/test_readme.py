"""The README's EfficientZero V2 → code map names code that exists."""

import importlib
import importlib.util
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


def _results_table_module():
    spec = importlib.util.spec_from_file_location(
        "results_table", os.path.join(ROOT, "docs", "results_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_table_is_the_one_generated_from_the_run_data():
    results_table = _results_table_module()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert results_table.readme_table(readme) == results_table.table(), \
        "README.md's results table is stale: python docs/results_table.py --write"


def test_a_run_counts_only_under_todays_preset():
    import dataclasses
    import json

    import config

    results_table = _results_table_module()
    today = json.loads(dataclasses.replace(config.minatar(), seed=3).to_json())
    assert results_table.todays_preset(today)
    assert not results_table.todays_preset({**today, "td_steps": 5})            # an override
    assert not results_table.todays_preset({k: v for k, v in today.items()      # an older version
                                            if k != "replay_open_games"})
    assert results_table.seed_list([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_the_readme_is_an_entry_page():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    assert len(lines) <= 120
    assert "pip install -r requirements.txt" in "\n".join(lines[:30])


def test_wall_time_adds_the_segments_of_a_resumed_run(tmp_path):
    rows = ["updates,env_steps,wall_seconds,key,value"] + [
        f"{i},{i},{wall},losses/total,1" for i, wall in enumerate([0.5, 10, 20, 3, 15])]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert _results_table_module().wall_seconds(str(tmp_path)) == 20 + 15


def test_no_document_or_module_points_to_an_issue_tracker_a_reader_cannot_see():
    pattern = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    for folder, _, files in os.walk(ROOT):
        if any(part in folder for part in (".git", ".venv", os.path.join("docs", "runs"))):
            continue
        for name in files:
            if name.endswith((".py", ".md")):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                assert not pattern.search(text), os.path.join(folder, name)
