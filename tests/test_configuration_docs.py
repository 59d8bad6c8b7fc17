"""docs/configuration.md says it lists every setting: each key of skill.yaml's settings is named in its
section's row, nested keys (health.watchdog.enabled) and the keys of the model chain's entries included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import ROOT
from selfheal.core.config import MANIFEST_KEYS

SKILL_YAML = yaml.safe_load((ROOT / "skill.yaml").read_text())
CONFIGURATION_MD = (ROOT / "docs" / "configuration.md").read_text()


def _keys(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    """(dotted path, key) of every key below `prefix`; lists of rules are data, the chain's entries settings."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield f"{prefix}.{key}", str(key)
            yield from _keys(f"{prefix}.{key}", sub)
    elif isinstance(value, list) and prefix == "models.chain":
        for entry in value:
            yield from _keys(prefix, entry)


SETTINGS = sorted(
    {
        (section, path, key)
        for section in SKILL_YAML
        if section not in MANIFEST_KEYS
        for path, key in _keys(section, SKILL_YAML[section])
    }
)


def _row(section: str) -> str:
    rows = [line for line in CONFIGURATION_MD.splitlines() if line.startswith(f"| `{section}")]
    assert len(rows) == 1, f"docs/configuration.md has {len(rows)} rows for {section}"
    return rows[0]


@pytest.mark.parametrize(("section", "path", "key"), SETTINGS, ids=[path for _, path, _ in SETTINGS])
def test_every_skill_yaml_setting_is_named_in_its_section_row(section: str, path: str, key: str) -> None:
    assert f"`{key}`" in _row(section), f"{path} (skill.yaml) is missing from docs/configuration.md"
