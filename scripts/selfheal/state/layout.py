"""Where each kind of state lives under the state root: one function per path, and no path spelled elsewhere.

`StateRoot` (root.py) exposes these as methods; everything else asks it. Ids become file names only
after validation (`validate_id`), so a name can never climb out of its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

# Folders made (0700) when the state root is first used; `fleet/` only appears in fleet mode.
LEDGER = "ledger"
LOGS = "logs"
BREAKERS = "breakers"
CHECKPOINTS = "checkpoints"
TASKS = "tasks"
FIXES = "fixes"
INCIDENTS = "incidents"
SESSIONS = "sessions"
STATUS = "status"
RUNS = "runs"
LOCKS = "locks"
FLEET = "fleet"
OPENCLAW_CONFIGS = "openclaw-config"  # the gateway watchdog's last-known-good copies of openclaw.json
MODEL_CACHE = "model-cache"  # models.cache: checked model answers, one file per request's hash (made when used)
SUBDIRS = (LEDGER, LOGS, BREAKERS, CHECKPOINTS, TASKS, FIXES, INCIDENTS, SESSIONS, STATUS, RUNS, LOCKS)

TASK_DB = "tasks.db"
LOG_FILE = "selfheal.log"
RESTART_OUTPUT = "gateway-restart.out"  # logs/: the watchdog's restart command's output, and what it left running
CONFIG_FILE = "config.yaml"
FLEET_SPOOL = "ledger-spool.jsonl"

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def folder(root: Path, name: str) -> Path:
    """One of the folders above (SUBDIRS, FLEET or OPENCLAW_CONFIGS)."""
    if name not in (*SUBDIRS, FLEET, OPENCLAW_CONFIGS, MODEL_CACHE):
        raise ValueError(f"not a state folder: {name!r}")
    return root / name


def config_file(root: Path) -> Path:
    return root / CONFIG_FILE


def ledger_file(root: Path, day: str) -> Path:
    """The ledger of one UTC day (`YYYY-MM-DD`)."""
    if not _DAY.match(day):
        raise ValueError(f"ledger day must be YYYY-MM-DD, got {day!r}")
    return root / LEDGER / f"{day}.jsonl"


def log_file(root: Path) -> Path:
    return root / LOGS / LOG_FILE


def breaker_file(root: Path, target: str) -> Path:
    return root / BREAKERS / f"{target}.json"


def checkpoint_file(root: Path, task: str, kind: str = "") -> Path:
    """A task's checkpoint (`kind` ""), its journal ("journal") or its step outputs ("outputs")."""
    suffix = {"": ".json", "journal": ".journal", "outputs": ".outputs.json"}[kind]
    return root / CHECKPOINTS / f"{task}{suffix}"


def task_db(root: Path) -> Path:
    return root / TASK_DB


def task_log(root: Path, task: str) -> Path:
    return root / TASKS / f"{task}.log"


def task_archive(root: Path) -> Path:
    return root / TASKS / "archive"


def run_file(root: Path, run_id: str) -> Path:
    return root / RUNS / f"{run_id}.json"


def lock_file(root: Path, kind: str, ident: str) -> Path:
    return root / LOCKS / f"{kind}-{ident}.lock"


def fix_file(root: Path, fix_id: str, suffix: str = ".json") -> Path:
    """A fix record (`.json`) or its readable twin (`.md`)."""
    return root / FIXES / f"{fix_id}{suffix}"


def fix_index(root: Path) -> Path:
    return root / FIXES / "index.json"


def fix_history(root: Path) -> Path:
    return root / FIXES / "HISTORY.md"


def incident_file(root: Path, incident_id: str) -> Path:
    return root / INCIDENTS / f"{incident_id}.json"


def session_file(root: Path, session_id: str) -> Path:
    return root / SESSIONS / f"{session_id}.json"


def status_file(root: Path, name: str) -> Path:
    return root / STATUS / f"{name}.json"


def model_cache_file(root: Path, key: str) -> Path:
    return root / MODEL_CACHE / f"{key}.json"


def fleet_spool(root: Path) -> Path:
    return root / FLEET / FLEET_SPOOL
