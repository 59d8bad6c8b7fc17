"""Bad input files given to the scripts on the command line: refused with exit 2 naming the file and what
is wrong with it, before any work is done (no model endpoint is called), never a traceback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import call_script
from selfheal.testing import FakeModelServer


@pytest.fixture
def server(write_config: Callable[[str], Path]) -> Iterator[FakeModelServer]:
    """A chain of two endpoints on the fake server: a call that should not happen is counted."""
    with FakeModelServer() as srv:
        write_config(
            "models:\n  chain:\n"
            f'    - {{name: primary, base_url: "{srv.url("primary")}", model: qwen}}\n'
            f'    - {{name: backup, base_url: "{srv.url("backup")}", model: phi}}\n'
        )
        yield srv


def llm_call(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("llm_call.py", *args, home=home)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"type": 5}', "$: type: must be a type name or a list of them"),
        ('{"type": "object", "properties": {"n": {"minimum": "0"}}}', "$.properties.n: minimum: must be a number"),
        ('{"type": "object", "required": "n"}', '$: required: must be a list of key names (value "n")'),
    ],
)
def test_a_schema_that_is_json_but_no_schema_exits_2_before_any_endpoint_is_called(
    home: Path, tmp_path: Path, server: FakeModelServer, text: str, named: str
) -> None:
    schema = tmp_path / "badschema.json"
    schema.write_text(text)
    proc = llm_call(home, "--json", "--json-output", "--schema", str(schema), "--prompt", "count")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = json.loads(proc.stdout)["message"]
    assert message.startswith(f"schema file {schema}: ") and named in message
    assert server.requests("primary") == server.requests("backup") == 0


def test_an_endless_schema_file_is_refused_at_the_cap_not_read(home: Path, server: FakeModelServer) -> None:
    """--schema /dev/zero grew to 3.5 GB before it was refused as not JSON."""
    from selfheal.models.output import SCHEMA_MAX_BYTES

    proc = llm_call(home, "--json-output", "--schema", "/dev/zero", "--prompt", "count")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"schema file /dev/zero: larger than {SCHEMA_MAX_BYTES} bytes; not read" in proc.stderr
    assert server.requests("primary") == server.requests("backup") == 0
