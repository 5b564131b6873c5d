"""The docs name every make target and every params.yaml key, and their links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def make_targets() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return re.findall(r"^([a-z][a-z-]*):.*## ", text, flags=re.M)


def params_keys() -> list[str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    return [f"{section}.{key}" for section, keys in params.items() for key in keys]


def test_every_make_target_is_in_the_readme_and_in_operations() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    targets = make_targets()
    assert len(targets) > 30
    for target in targets:
        assert f"make {target}" in operations, target
        assert re.search(rf"`make {target}\b|/ `?{target}`?\b|`{target}`", readme), target


def test_every_params_key_is_in_the_configuration_page() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = params_keys()
    assert "monitoring.retrain_policy" in keys
    for key in keys:
        assert f"`{key}`" in configuration, key


def test_relative_links_of_the_docs_resolve() -> None:
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name}: {target}"
