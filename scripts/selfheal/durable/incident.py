"""Incidents: what a person needs when nothing automatic can save a task (`incidents/<id>.json`).

An incident names the task, the error and its class, the last step that completed, the context saved
so far, what was compensated (and what could not be), and the exact command that resumes the task.
An optional notification command (an argv template, e.g. `openclaw message send --text {summary}`) is
run with the summary as one argument: never through a shell, so error text cannot become a command.
The record itself is state/incidents.py's.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import CorruptStateError
from ..state.fixes import write_inert_json
from ..state.incidents import Incident
from ..state.records import RecordError
from ..state.redact import active as active_redactor
from ..state.root import StateRoot, quarantine, read_json, validate_id

__all__ = ["Incident", "new_incident_id", "notify", "read_incident", "run_notifier", "write_incident"]

logger = logging.getLogger(__name__)


def new_incident_id(task: str, now: float) -> str:
    return validate_id(f"{task[:96]}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}", "incident")


def write_incident(state: StateRoot, incident: Incident) -> Path:
    """Durably, as `incidents/<id>.json`; a second incident in the same second gets a suffix."""
    base = incident.id
    path = state.incident_file(base)
    n = 1
    while path.exists():
        n += 1
        incident.id = validate_id(f"{base[:120]}-{n}", "incident")
        path = state.incident_file(incident.id)
    write_inert_json(path, incident.to_json(), durable=True)  # its error text is a log's: no raw DEL or C1
    return path


def read_incident(state: StateRoot, incident_id: str) -> Incident | None:
    """The incident, None if there is none; CorruptStateError (the file moved aside) if it cannot be one,
    naming the key and the value that are wrong."""
    path = state.incident_file(incident_id)
    data = read_json(path)
    if data is None:
        return None
    try:
        return Incident.from_json(data, path)
    except RecordError as exc:
        raise CorruptStateError(path, quarantine(path), f"not an incident: {exc.detail}") from None


def notify(
    template: Sequence[str],
    incident: Incident,
    path: Path,
    *,
    timeout_s: float,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any]:
    """Run the notification command, each argv element filled from {summary}, {incident}, {task}.

    Returns what happened (recorded in the incident); a failing notifier is logged, never raised: the
    incident file is the record, the message only a pointer to it.
    """
    values = {"summary": incident.summary, "incident": str(path), "task": incident.task, "id": incident.id}
    return run_notifier(template, values, timeout_s=timeout_s, clock=clock)


def run_notifier(
    template: Sequence[str], values: dict[str, str], *, timeout_s: float, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """Run a notification argv, each element filled from `values` ({summary}, ...), never through a shell.
    Returns what happened; a failing notifier is logged, never raised.

    The values are masked before they are filled in: the command sends them on (a chat, a mail), and a summary
    or command line may hold a secret (`--token ...`, a key in the error's last line). The template is the
    user's own setting and is left as written."""
    redactor = active_redactor()
    clean = {name: redactor.text(value) for name, value in values.items()}
    try:
        argv = [part.format_map(clean) for part in template]
    except (KeyError, ValueError) as exc:
        logger.warning("notification template %r cannot be filled: %s", list(template), exc)
        return {"ok": False, "error": f"bad template: {exc}", "at": utc_iso(clock.time())}
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("notification command %s failed: %s", argv[0], exc)
        return {"ok": False, "error": str(exc), "at": utc_iso(clock.time())}
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        logger.warning("notification command %s exited %s: %s", argv[0], done.returncode, tail[0])
    return {"ok": done.returncode == 0, "exit_code": done.returncode, "at": utc_iso(clock.time())}
