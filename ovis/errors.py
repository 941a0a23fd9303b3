"""The root of every error a user can cause: ``OvisError``.

The command line prints an ``OvisError`` as one line (``error: ...``) and exits with code 2; any
other exception is a bug in ovis and is shown with its traceback. So an error that bad input,
a bad config, a missing file the user named or a refused request can raise derives from
``OvisError``; a subclass may also derive from the built-in it used to be (``ValueError``,
``KeyError``, ``FileNotFoundError``) so that ``except ValueError`` in callers keeps working.

This module imports nothing from ovis: every layer may raise these.
"""

from __future__ import annotations


class OvisError(Exception):
    """Something the user gave ovis (a file, a config, a name, a request) is wrong; the message
    says what and what was expected."""


class ConfigError(OvisError, ValueError):
    """A configuration (YAML, JSON, command-line override or spec) is invalid."""


class InputFileError(OvisError, FileNotFoundError):
    """A file or directory the user named is missing or not what was expected."""


class UsageError(OvisError, ValueError):
    """Arguments that do not go together, or a needed one missing (command line or API call)."""


class OutputExistsError(OvisError, FileExistsError):
    """The output directory the user named already holds something that would be overwritten."""


def validation_message(error) -> str:
    """A pydantic ``ValidationError``'s problems as ``field.sub: what is wrong (got value)``, joined by
    ``; `` (read through its ``errors()``: this module imports nothing)."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        # (a check over the whole mapping names its field in its message)
        problems.append(f"{field}: {message}{got}" if field else message)
    return "; ".join(problems)
