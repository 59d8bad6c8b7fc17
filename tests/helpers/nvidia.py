"""A stand-in `nvidia-smi` for the GPU tests (the `smi_dir` fixture in conftest.py puts its folder first on PATH),
and a look at whether a process it left behind still runs."""

from __future__ import annotations

from pathlib import Path


def fake_smi(folder: Path, body: str) -> Path:
    """An `nvidia-smi` shell script in `folder` that does `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    tool.chmod(0o700)
    return tool


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
