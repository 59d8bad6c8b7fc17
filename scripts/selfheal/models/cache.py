"""The opt-in cache of model answers (`models.cache: {ttl_s, max_entries}`; the second source document's
section 6.3, "cache LLM responses"). Off by default: an answer is usually wanted fresh, since what the model
reads (logs, a task's state) changes between calls.

One file per request under the state root's `model-cache/`: `<sha256>.json`, written whole (atomic, 0600,
through the state root's helpers, so every string in it is masked as in any state file). The key is a hash
of the chain entry (name, address, model, headers as written), the messages and every parameter that changes
the answer (JSON mode, schema, max_tokens, temperature): the file never holds the prompt. Only answers that
passed the answer check are stored, and only when masking left them unchanged (a cached answer is returned
as it was given, never a masked copy). An entry older than `ttl_s` is a miss (and is deleted); past
`max_entries`, the oldest written go first. Streams are never cached. An entry stored more than CLOCK_STEP_S
"in the future" (the wall clock was stepped back since) is a miss too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..core.config import ModelCache, ModelEndpoint
from ..errors import CorruptStateError, StateError
from ..state import layout
from ..state.breakers import CLOCK_STEP_S
from ..state.redact import active as redactor
from ..state.root import StateRoot, ensure_dir, file_lock, open_dir, read_json, unlink, write_json

VERSION = 1


def cache_key(
    entry: ModelEndpoint,
    messages: Sequence[Mapping[str, str]],
    *,
    json_output: bool,
    schema: Mapping[str, Any] | None,
    max_tokens: int | None,
    temperature: float | None,
) -> str:
    """The request's hash: the same entry, messages and parameters give the same key, any change another."""
    request = {
        "v": VERSION,
        # Its headers as written (a tenant, an organisation, a project behind one address; a header naming a
        # variable is kept as the ${VAR} it is: the key never holds a value read from the environment).
        "endpoint": [entry.name, entry.base_url, entry.model, dict(entry.headers)],
        "messages": [dict(m) for m in messages],
        "json_output": json_output,
        "schema": schema,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    data: dict[str, Any] | None
    model: str
    finish_reason: str | None
    usage: dict[str, int] | None
    created: float  # wall-clock seconds (the cache's clock) when it was stored

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "content": self.content,
            "data": self.data,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "created": self.created,
        }


class AnswerCache:
    """The cache files under one state root, with one models.cache setting and clock."""

    def __init__(self, state: StateRoot, settings: ModelCache, clock: Clock) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self.folder = state.root / layout.MODEL_CACHE

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer, or None: absent, expired (then deleted), or unreadable (moved aside)."""
        path = self.state.model_cache_file(key)
        try:
            raw = read_json(path)
        except CorruptStateError as exc:  # moved aside by read_json; a cache entry is not worth keeping
            if exc.quarantined_to is not None:
                with contextlib.suppress(OSError, StateError):
                    unlink(exc.quarantined_to)
            return None
        except (StateError, OSError):
            return None  # a cache miss is always safe
        if raw is None:
            return None
        answer = _answer_of(raw)
        # Stored "in the future": the wall clock has since been stepped back (NTP after a bad RTC), and the
        # entry's age is unknown; taken as fresh, it would be served for as long as the step and a ttl more.
        age = None if answer is None else self.clock.time() - answer.created
        if age is None or age > self.settings.ttl_s or age < -CLOCK_STEP_S:
            with contextlib.suppress(OSError, StateError):
                unlink(path)
            return None
        return answer

    def put(self, key: str, answer: CachedAnswer) -> bool:
        """Store a checked answer; False (nothing stored) when masking would change it. Then trim to
        max_entries, oldest first."""
        record = answer.to_json()
        if redactor().obj(record) != record:
            return False  # it holds something that looks like a secret: never on disk, never a masked copy
        ensure_dir(self.folder)
        write_json(self.state.model_cache_file(key), record, durable=False)  # a lost entry is just a miss
        with file_lock(self.state.lock_file("model-cache", "trim"), timeout=5):
            self._trim()
        return True

    def _trim(self) -> None:
        fd = open_dir(self.folder, create=False)
        try:
            entries: list[tuple[int, str]] = []
            for item in os.scandir(fd):
                if not item.name.endswith(".json"):
                    continue
                try:
                    info = os.stat(item.name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the listing: another process's get() deleted it as expired
                if stat.S_ISREG(info.st_mode):
                    entries.append((info.st_mtime_ns, item.name))
        finally:
            os.close(fd)
        extra = len(entries) - self.settings.max_entries
        for _, name in sorted(entries)[: max(extra, 0)]:
            with contextlib.suppress(FileNotFoundError):
                unlink(self.folder / name)


def _answer_of(raw: Mapping[str, Any]) -> CachedAnswer | None:
    """A stored record as an answer; None when it is not one this version wrote (a miss, not an error)."""
    content, data, model = raw.get("content"), raw.get("data"), raw.get("model")
    created, usage, finish = raw.get("created"), raw.get("usage"), raw.get("finish_reason")
    if (
        raw.get("version") != VERSION
        or not isinstance(content, str)
        or not isinstance(model, str)
        or not (data is None or isinstance(data, dict))
        or isinstance(created, bool)
        or not isinstance(created, (int, float))
        or not (usage is None or isinstance(usage, dict))
        or not (finish is None or isinstance(finish, str))
    ):
        return None
    return CachedAnswer(content, data, model, finish, usage, float(created))
