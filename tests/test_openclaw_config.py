"""openclaw.json is read in one place (core.openclaw_config) by the model chain and the log discovery alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfheal.core import openclaw_config
from selfheal.errors import ConfigError
from selfheal.models import openclaw_chain
from selfheal.observe import openclaw_logs as oc

# JSON5 as OpenClaw's docs write it: comments (one after a value), bare keys, single quotes, trailing commas,
# and a URL whose `//` is not a comment.
JSON5 = """// OpenClaw's configuration
{
  logging: {file: 'LOG_FILE',},  // where the gateway logs
  agents: {defaults: {model: {primary: "local/qwen3", fallbacks: [],},},},
  models: {
    providers: {
      /* the local server */
      local: {baseUrl: "http://127.0.0.1:8000/v1", api: "openai-completions"},
    },
  },
}
"""


def test_the_chain_and_the_log_discovery_read_the_same_json5_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "gw.log").write_text("")
    path = tmp_path / "openclaw.json"
    path.write_text(JSON5.replace("LOG_FILE", str(logs / "gw.log")))
    env = {"OPENCLAW_CONFIG_PATH": str(path), "HOME": str(tmp_path / "nobody")}
    assert oc.discover(env, log_dir=tmp_path / "none") == [logs / "gw.log"]
    chain = openclaw_chain.chain_from_openclaw(env)
    assert chain is not None
    assert [(e.name, e.base_url, e.model) for e in chain.entries] == [
        ("local-qwen3", "http://127.0.0.1:8000/v1", "qwen3")
    ]
    assert openclaw_config.read_config(env) == openclaw_config.read_openclaw_json(path)


def test_one_reader_serves_both_layers() -> None:
    assert oc.read_config is openclaw_config.read_config
    assert openclaw_chain.read_openclaw_files is openclaw_config.read_openclaw_files
    assert openclaw_chain.config_path is openclaw_config.config_path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it"),
        ("[1, 2]", "must be one JSON object"),
        ("{unclosed: [", "is neither JSON nor JSON5"),
        (b"\xff\xfe{}", "cannot read it"),
    ],
    ids=["missing", "not-an-object", "garbage", "not-utf8"],
)
def test_a_bad_file_is_an_error_for_the_chain_and_nothing_for_the_logs(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    """The chain stops with an error naming the file; discovery and the gateway port carry on without it."""
    path = tmp_path / "openclaw.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        openclaw_config.read_openclaw_json(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)
    assert openclaw_config.read_config({"OPENCLAW_CONFIG_PATH": str(path)}) == {}


def test_a_folder_where_the_file_should_be_is_nothing_for_the_logs(tmp_path: Path) -> None:
    (tmp_path / "openclaw.json").mkdir()
    assert openclaw_config.read_config({"OPENCLAW_STATE_DIR": str(tmp_path)}) == {}


def test_where_the_file_is() -> None:
    assert openclaw_config.config_path({"OPENCLAW_CONFIG_PATH": "/x/oc.json", "OPENCLAW_STATE_DIR": "/y"}) == Path(
        "/x/oc.json"
    )
    assert openclaw_config.config_path({"OPENCLAW_STATE_DIR": "/y", "HOME": "/h"}) == Path("/y/openclaw.json")
    assert openclaw_config.config_path({"HOME": "/h"}) == Path("/h/.openclaw/openclaw.json")


def test_a_file_included_from_many_places_is_read_once_not_once_per_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Includes that share files (each level naming the next one eight times, ten levels deep) are read once
    per file: resolving every path anew read the last file 8**9 times, and every model call, the health
    check's port and the log discovery hung on it."""
    for level in range(10):
        body = {"$include": [f"./l{level + 1}.json5"] * 8} if level < 9 else {"x": 1}
        (tmp_path / f"l{level}.json5").write_text(json.dumps(body))
    path = tmp_path / "openclaw.json"
    path.write_text('{agents: {defaults: {model: "lan/q"}}, extra: {$include: "./l0.json5"}}')
    parsed: list[Path] = []
    real = openclaw_config._parse

    def counted(file: Path, limit: int) -> object:
        parsed.append(file)
        assert len(parsed) <= 100, "the same files read again and again"
        return real(file, limit)

    monkeypatch.setattr(openclaw_config, "_parse", counted)
    data, files = openclaw_config.read_openclaw_files(path, {})
    assert data["extra"] == {"x": 1} and data["agents"] == {"defaults": {"model": "lan/q"}}
    assert len(parsed) == 11 and len(set(files)) == 11


def test_a_shared_include_still_counts_its_depth_and_its_cycles(tmp_path: Path) -> None:
    """A file read once at a shallow level and named again deeper still fails the 10-level bound there, and
    a cycle through a file read before is still found."""
    (tmp_path / "openclaw.json").write_text('{a: {$include: "./shared.json5"}, b: {$include: "./d1.json5"}}')
    (tmp_path / "shared.json5").write_text('{$include: "./leaf.json5"}')
    (tmp_path / "leaf.json5").write_text("{x: 1}")
    for level in range(1, 11):
        (tmp_path / f"d{level}.json5").write_text(f'{{$include: "./d{level + 1}.json5"}}')
    (tmp_path / "d11.json5").write_text('{$include: "./shared.json5"}')
    with pytest.raises(ConfigError, match="nest over 10 levels"):
        openclaw_config.read_openclaw_files(tmp_path / "openclaw.json", {})
    (tmp_path / "d2.json5").write_text('{$include: "./shared.json5"}')
    (tmp_path / "leaf.json5").write_text('{$include: "./d1.json5"}')
    with pytest.raises(ConfigError, match="a cycle"):
        openclaw_config.read_openclaw_files(tmp_path / "openclaw.json", {})
