"""The errors a user can fix: the CLI prints their message as one line, without a traceback.

Anything else that escapes a command is a bug and keeps its traceback. Every user error subclasses
`UserError`: `ConfigError` (ppolab.config), `CorpusError` (ppolab.data), `PreferenceFileError`
(ppolab.synthetic) and `FeedbackError` (here, so that `feedback.pairs` and `feedback.store` can
both raise it without importing each other). `UserError` is a `ValueError`, so callers that catch
`ValueError` keep working. This module imports nothing: anyone may import it.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input (a file, a setting, a flag); the message names where and what is wrong."""


class FeedbackError(UserError):
    """Invalid feedback or item; the message says what is wrong.

    ``kind`` lets callers (the HTTP server) pick a status code without
    parsing messages: "invalid" (bad input), "not_found" (unknown item),
    "conflict" (already annotated / submission id reused differently).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind
