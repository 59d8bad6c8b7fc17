"""Checkpoints of multi-step tasks: `checkpoints/<task>.json`, and the outputs later steps read.

A checkpoint is written durably (store.SlotFile: one fdatasync) before a step starts and after it ends, so
after any crash it says exactly which steps are done, which one was in flight, and how many attempts
each has used. An unreadable checkpoint is moved aside and reported; the caller must then be told
how to go on (start over, or reset), because silently starting over could repeat side effects.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..errors import CorruptStateError, StateError
from ..state.root import SlotFile, StateRoot, quarantine, unlink, validate_id, write_json

# Step states, in the order a step normally goes through them.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
COMPENSATED, COMPENSATION_FAILED = "compensated", "compensation_failed"

# Task states.
TASK_RUNNING, TASK_COMPLETED, TASK_FAILED = "running", "completed", "failed"
TASK_COMPENSATING, TASK_INTERRUPTED, TASK_DEAD_LETTER = "compensating", "interrupted", "dead_letter"


class CheckpointUnreadable(StateError):
    """The task's checkpoint could not be parsed; it was moved aside and nothing was run."""

    def __init__(self, task: str, cause: CorruptStateError) -> None:
        self.task = task
        self.cause = cause
        aside = f" (moved to {cause.quarantined_to})" if cause.quarantined_to else ""
        super().__init__(
            f"the checkpoint of task {task!r} is unreadable: {cause.detail}{aside}. Nothing was run: "
            "starting over could repeat steps that already had effects. To start over anyway, run again "
            "with --restart (or `workflow.py reset TASK` first)."
        )


class Checkpoints:
    """The checkpoint files under one state root."""

    def __init__(self, state: StateRoot) -> None:
        self.state = state
        self._files: dict[str, SlotFile] = {}

    def _file(self, task: str) -> SlotFile:
        found = self._files.get(task)
        if found is None:
            found = self._files[task] = SlotFile(self.path(task))
        return found

    def path(self, task: str) -> Path:
        return self.state.sub("checkpoints") / f"{validate_id(task, 'task')}.json"

    def outputs_path(self, task: str) -> Path:
        return self.state.sub("checkpoints") / f"{validate_id(task, 'task')}.outputs.json"

    def load(self, task: str) -> dict[str, Any] | None:
        """The checkpoint, or None if the task never ran. Raises CheckpointUnreadable (after moving the
        file aside) when it cannot be parsed or is not a checkpoint of this task."""
        path = self.path(task)
        try:
            data = self._file(task).read()
        except CorruptStateError as exc:
            raise CheckpointUnreadable(task, exc) from exc
        if data is None:
            return None
        if data.get("task") != task or not isinstance(data.get("steps"), dict):
            moved = quarantine(path)
            raise CheckpointUnreadable(task, CorruptStateError(path, moved, "not a checkpoint of this task"))
        return data

    def save(self, task: str, data: dict[str, Any]) -> None:
        """Durably (one fdatasync, see SlotFile): the next step must not start before this is on disk."""
        self._file(task).write(data)

    def save_outputs(self, task: str, outputs: dict[str, Any]) -> Path:
        """The outputs file steps read (SELFHEAL_OUTPUTS_FILE); derived from the checkpoint, so not fsync'd."""
        path = self.outputs_path(task)
        write_json(path, outputs, durable=False)
        return path

    def remove(self, task: str) -> bool:
        """Forget the task (reset). True if there was something to forget."""
        found = False
        self._files.pop(task, None)
        for path in (self.path(task), self.outputs_path(task)):
            with contextlib.suppress(FileNotFoundError):
                unlink(path)  # a linked checkpoints/ folder is refused: nothing outside the root is deleted
                found = True
        return found

    def tasks(self) -> list[str]:
        folder = self.state.sub("checkpoints")
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.endswith(".outputs.json"))
