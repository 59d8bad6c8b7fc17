"""What the benchmarks share: the machine they ran on and the markdown table they print."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path


def machine() -> dict[str, str | int | None]:
    """CPU model (from /proc/cpuinfo where there is one), core count and Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
    }


def machine_line() -> str:
    m = machine()
    return f"Machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['os']}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 1) -> str:
    """A markdown table: the first `text_columns` columns left-aligned, the rest (numbers) right-aligned."""
    align = [":--"] * text_columns + ["--:"] * (len(headers) - text_columns)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
