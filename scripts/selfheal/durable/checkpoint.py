"""Checkpoints of multi-step tasks: `checkpoints/<task>.json`, and the outputs later steps read.

A checkpoint is written durably (one fdatasync) before a step starts and after it ends, so after any
crash it says exactly which steps are done, which one was in flight, and how many attempts each has
used. A save that names the steps it changed appends just those (and the task's own fields that
changed) to the checkpoint's journal (state.root.JournaledFile: `<task>.journal` beside the two-slot
`<task>.json`), so a save costs the same at step 10,000 as at step 20; the whole checkpoint is written
now and then, when the journal has grown to its size. An unreadable checkpoint is moved aside and
reported; the caller must then be told how to go on (start over, or reset), because silently starting
over could repeat side effects. The file moved aside (`<task>.json.corrupt-<ts>`) is itself the mark
that keeps saying so: while it is there and no checkpoint is, every load refuses the same way, until
--restart or reset (remove()) clears it by renaming it `<task>.json.corrupt-<ts>.cleared` (kept, for a
person to read). The journal left beside it cannot stand in for the checkpoint: it holds only the
changes since the last whole save, which is what was lost, so it cannot say which earlier steps
finished. The records themselves (`Checkpoint`, `StepRecord`) and their states are
state/checkpoints.py's; a record with a field of the wrong kind is unreadable like a torn one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import CorruptStateError, StateError
from ..state import layout
from ..state.checkpoints import (
    COMPENSATED,
    COMPENSATION_FAILED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    TASK_COMPENSATING,
    TASK_COMPLETED,
    TASK_DEAD_LETTER,
    TASK_FAILED,
    TASK_INTERRUPTED,
    TASK_RUNNING,
    Checkpoint,
    StepRecord,
)
from ..state.records import RecordError
from ..state.root import JournaledFile, StateRoot, open_dir, quarantine, unlink, write_json

# The states, for the modules above that know them from here.
__all__ = [
    "COMPENSATED",
    "COMPENSATION_FAILED",
    "DONE",
    "FAILED",
    "PENDING",
    "RUNNING",
    "TASK_COMPENSATING",
    "TASK_COMPLETED",
    "TASK_DEAD_LETTER",
    "TASK_FAILED",
    "TASK_INTERRUPTED",
    "TASK_RUNNING",
    "Checkpoint",
    "CheckpointUnreadable",
    "Checkpoints",
    "StepRecord",
]


class CheckpointUnreadable(StateError):
    """The task's checkpoint could not be parsed; it was moved aside and nothing was run."""

    def __init__(self, task: str, cause: CorruptStateError, *, python: bool = False) -> None:
        """`python`: said to a caller of Workflow.run or WorkflowRunner.run, whose way to start over is
        restart=True (workflow.py's --restart and reset are the command line's)."""
        self.task = task
        self.cause = cause
        aside = f" (moved to {cause.quarantined_to})" if cause.quarantined_to else ""
        how = (
            "run it again with restart=True"
            if python
            else "run again with --restart (or `workflow.py reset TASK` first)"
        )
        super().__init__(
            f"the checkpoint of task {task!r} ({cause.path}) is unreadable: {cause.detail}{aside}. Nothing was run: "
            f"starting over could repeat steps that already had effects. To start over anyway, {how}."
        )


# What state.root.quarantine names a checkpoint it moves aside, after `<task>`; `.cleared` is added once
# --restart or reset has been told to start over (then the file no longer stops the task).
_SET_ASIDE = r"\.json\.corrupt-(\d{8}T\d{6}Z)(?:-(\d+))?\Z"
CLEARED_SUFFIX = ".cleared"


class Checkpoints:
    """The checkpoint files under one state root."""

    def __init__(self, state: StateRoot) -> None:
        self.state = state
        self._files: dict[str, JournaledFile] = {}
        # Per task, what the last save wrote: the task's own fields (not its steps) and the step order.
        self._saved: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def _file(self, task: str) -> JournaledFile:
        found = self._files.get(task)
        if found is None:
            found = self._files[task] = JournaledFile(self.path(task), self.journal_path(task))
        return found

    def path(self, task: str) -> Path:
        return self.state.checkpoint_file(task)

    def journal_path(self, task: str) -> Path:
        return self.state.checkpoint_file(task, "journal")

    def outputs_path(self, task: str) -> Path:
        return self.state.checkpoint_file(task, "outputs")

    def load(self, task: str) -> Checkpoint | None:
        """The checkpoint, or None if the task never ran (or was reset). Raises CheckpointUnreadable (after
        moving the file aside) when it cannot be parsed, has a field of the wrong kind (named, with its
        value) or is not a checkpoint of this task; and again on every later load while the file moved
        aside is the task's only checkpoint (until remove() clears it)."""
        path = self.path(task)
        try:
            data = self._file(task).read()
        except CorruptStateError as exc:
            raise CheckpointUnreadable(task, exc) from exc
        if data is None:
            aside = self.set_aside(task)
            if aside:
                detail = "it was found unreadable earlier and moved aside, and nothing has started the task over since"
                raise CheckpointUnreadable(task, CorruptStateError(path, aside[-1], detail))
            return None
        try:
            checkpoint = Checkpoint.from_json(data, path, task=task)
        except RecordError as exc:
            moved = quarantine(path)
            raise CheckpointUnreadable(task, CorruptStateError(path, moved, exc.detail)) from None
        self._remember(task, checkpoint.top_json(), list(checkpoint.order))
        return checkpoint

    def save(self, task: str, checkpoint: Checkpoint, steps: Iterable[str] | None = None) -> None:
        """Durably (one fdatasync): the next step must not start before this is on disk.

        `steps`: the only steps changed since the last save or load (then just they, and the task's own
        fields that changed, are appended to the journal); None: anything may have changed (all is written).
        """
        file = self._file(task)
        saved = self._saved.get(task)
        top = checkpoint.top_json()
        if steps is None or saved is None or checkpoint.order != saved[1]:
            file.write(checkpoint.to_json())
            self._remember(task, top, list(checkpoint.order))
            return
        before, order = saved
        changes: list[tuple[list[str], Any]] = [
            ([key], value) for key, value in top.items() if before.get(key) != value
        ]
        changes += [(["steps", name], checkpoint.steps[name].to_json()) for name in dict.fromkeys(steps)]
        file.update(checkpoint.to_json, changes)  # the whole document is built only to fold the journal in
        self._remember(task, top, order)

    def _remember(self, task: str, top: dict[str, Any], order: list[str]) -> None:
        """What the last save wrote: the task's own fields (a copy: the record changes on) and the order."""
        self._saved[task] = (copy.deepcopy(top), order)

    def save_outputs(self, task: str, outputs: dict[str, Any]) -> Path:
        """The outputs file steps read (SELFHEAL_OUTPUTS_FILE); derived from the checkpoint, so not fsync'd."""
        path = self.outputs_path(task)
        write_json(path, outputs, durable=False)
        return path

    def remove(self, task: str) -> bool:
        """Forget the task (reset, --restart), and clear the mark of a checkpoint moved aside as unreadable
        (the file is kept, renamed `....cleared`). True if there was something to forget."""
        found = False
        self._files.pop(task, None)
        self._saved.pop(task, None)
        for path in (self.path(task), self.journal_path(task), self.outputs_path(task)):
            with contextlib.suppress(FileNotFoundError):
                unlink(path)  # a linked checkpoints/ folder is refused: nothing outside the root is deleted
                found = True
        # Last: a reset killed before this still leaves the task refusing, never running from scratch unasked.
        return self._clear_set_aside(task) or found

    def set_aside(self, task: str) -> list[Path]:
        """The task's checkpoints moved aside as unreadable (`<task>.json.corrupt-<ts>`) and not cleared by
        --restart or reset since, oldest first."""
        folder = self.state.sub(layout.CHECKPOINTS)
        pattern = re.compile(re.escape(task) + _SET_ASIDE)
        found: list[tuple[str, int, str]] = []
        for name in self._names(folder):
            match = pattern.match(name)
            if match:
                found.append((match[1], int(match[2] or 1), name))
        return [folder / name for _, _, name in sorted(found)]

    def _clear_set_aside(self, task: str) -> bool:
        aside = self.set_aside(task)
        if not aside:
            return False
        dir_fd = open_dir(aside[0].parent, create=False)  # never through a link: the folder is the state root's
        try:
            for path in aside:
                with contextlib.suppress(FileNotFoundError):  # another reset got there first
                    os.rename(path.name, path.name + CLEARED_SUFFIX, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return True

    @staticmethod
    def _names(folder: Path) -> list[str]:
        try:
            dir_fd = open_dir(folder, create=False)
        except FileNotFoundError:
            return []
        try:
            return os.listdir(dir_fd)
        finally:
            os.close(dir_fd)

    def tasks(self) -> list[str]:
        folder = self.state.sub(layout.CHECKPOINTS)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.endswith(".outputs.json"))
