"""Errors a user caused and can fix: the CLI prints their message as one line, no traceback."""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """Bad input or an unmet precondition; `str(err)` is the whole message shown to the user."""


def first_validation_error(err: ValidationError, root: str = "") -> str:
    """`field.path: what is wrong` for the first problem pydantic found: one line a user can act on.

    `root` names the whole object where the error is not about one field (a model validator's own check).
    The gateway's request errors go through serve/protocol.py instead: a client's union fields need the
    branch it most likely meant, not the first one tried.
    """
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or root
    return f"{where}: {first['msg']}" if where else first["msg"]
