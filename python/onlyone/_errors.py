"""The exceptions of onlyone, each with the exit code the command uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from . import Holder


class Error(Exception):
    """Base class of onlyone's errors. ``exit_code`` is the command's."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: Optional[int] = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Held(Error, TimeoutError):
    """The lock is held by someone else (or a wait timed out while it was).

    ``holder`` is who holds it, when that could be told.
    """

    exit_code = 75

    def __init__(self, message: str, holder: Optional[Holder] = None) -> None:
        super().__init__(message)
        self.holder = holder


class Lost(Error):
    """A held lock was lost (a database session ended, say)."""

    exit_code = 74


class Unusable(Error):
    """The lock cannot be used: the lock directory or file cannot be made,
    opened or locked, or the database cannot be reached (the command's
    exit code 69)."""

    exit_code = 69


class Refused(Error):
    """Refused for safety: a symlink, a foreign owner, unsafe permissions,
    a standby server, a connection pooler (the command's exit code 77)."""

    exit_code = 77


class UsageError(Error, ValueError):
    """Bad input: a lock name, directory, URL or option (exit code 64)."""

    exit_code = 64
