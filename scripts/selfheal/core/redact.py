"""The redactor, where core's users find it. The shapes live in state/redact.py, below the state root's
write helpers; `redactor_for` (core/config.py) builds the process's redactor from the settings:
redact.env_names, redact.patterns and the model chain's key variables, masked whatever their names."""

from __future__ import annotations

from ..state.redact import MASK, LineRedactor, Redactor, active, install
from .config import redactor_for

__all__ = ["MASK", "LineRedactor", "Redactor", "active", "install", "redactor_for"]
