"""The one exception type users see: it names the file and what is wrong, in one line."""

from __future__ import annotations

from pathlib import Path


class DefectgenError(Exception):
    """A problem with the user's input or environment, reported as `path: message` with exit code 2."""

    exit_code = 2

    def __init__(self, path: str | Path | None, message: str):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DefectgenWarning(UserWarning):
    """Something the user should know before trusting a result (random backbone features, an hours-long run on a
    CPU). The command line prints it as one `warning:` line on stderr, with parameters shown as its flags."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, DefectgenWarning, stacklevel=2)
