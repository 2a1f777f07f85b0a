"""Bad user input: the one base class, and how ``evf`` turns such errors into one line.

Every error type of the project that means "the input is wrong" (a file, a value, a folder) derives from
``UserError``; ``evf``'s entry point prints those as ``evf: error: <message>`` with exit code 2. Anything
else (a plain ``RuntimeError``, ``ValueError``, ``KeyError`` ... from a bug in training code) keeps its
traceback. docs/errors.md lists the cases.
"""
from __future__ import annotations

import argparse

# File-system errors about a path the user gave (missing input, output under a file, no permission):
# their message names the path, so one line says it all.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


def is_user_error(exc: BaseException) -> bool:
    """``UserError``s, the path errors above, and any other ``OSError`` raised on a named file (a full disk,
    a read-only file system): what ``evf`` reports in one line instead of a traceback."""
    return isinstance(exc, (UserError, *PATH_ERRORS)) or (isinstance(exc, OSError) and exc.filename is not None)


def message_lines(exc: BaseException) -> list[str]:
    """The non-blank lines of an exception's message, stripped."""
    return [line.strip() for line in str(exc).splitlines() if line.strip()]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (at most ``limit`` characters), else its type name."""
    lines = message_lines(exc)
    return lines[0][:limit] if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """The message as one line: the first line, joined with the second where the first only introduces it
    (``"Error(s) in loading state_dict for X:"`` + the detail)."""
    lines = message_lines(exc)
    if len(lines) > 2 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        # re-raised from a DataLoader worker: the worker's own message is the traceback's last line
        return lines[-1].split(": ", 1)[-1]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"[:400]
    return lines[0] if lines else type(exc).__name__


def user_error_within(exc: BaseException) -> UserError | None:
    """The ``UserError`` that ``exc`` was raised while handling, if any (libraries such as jsonargparse wrap a
    constructor's error in their own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes become one ``evf: error:`` line like every other bad input (no usage dump)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")
