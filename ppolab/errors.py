"""The error a user can fix: the CLI prints its message as one line, without a traceback.

Anything else that escapes a command is a bug and keeps its traceback. Subclasses elsewhere
(`ConfigError`, `CorpusError`, `FeedbackError`) are registered as user errors in `ppolab.cli`.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a setting, a flag); the message names where and what is wrong."""
