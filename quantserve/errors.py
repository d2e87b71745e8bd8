"""Errors a user caused and can fix: the CLI prints their message as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition; `str(err)` is the whole message shown to the user."""
