"""Data problems and the one error type of the data sets.

A ``Problem`` names the file, where in it (line, image id, annotation id) and what is wrong; the
loaders and ``datasets.check`` collect every problem of a data set before raising one
``DatasetError`` that lists them all. ``DatasetError`` subclasses ``ValueError`` so that callers
catching ``ValueError`` (the official code's habit) keep working. Not in the official code, which
fails on the first bad value, often deep inside pycocotools or the loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# How many problems an error message lists before summarising the rest (``datasets.check``
# prints them all).
MAX_LISTED = 50

FATAL = "fatal"  # stops the run before training
BAD_IMAGE = "bad_image"  # an image that cannot be read: skipped, up to --max_bad_images


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set: ``file`` (path), optional ``line`` in it, optional ``where``
    (the subject: ``"image id 7 (a.jpg)"``, ``"annotation id 12"``, ``"object 'cat'"``), ``what`` is
    wrong (a predicate: ``"lacks ['bbox']"``), and ``kind`` (``FATAL`` or ``BAD_IMAGE``). Printed as
    ``file[:line]: [where ]what``."""

    file: str
    what: str
    where: str = ""
    kind: str = FATAL
    line: int | None = None

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{location}: {self.where} {self.what}" if self.where else f"{location}: {self.what}"


class DatasetError(ValueError):
    """A data set is missing or malformed. The message names each file and culprit; ``problems``
    holds them as ``Problem`` objects (empty when raised with a plain message)."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def original_message(error: BaseException) -> str:
    """The message ``error`` was raised with: an exception raised in a DataLoader worker arrives
    with the worker's traceback prepended to its message; only the original message is kept."""
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def format_problems(problems: list[Problem], limit: int | None = MAX_LISTED) -> str:
    """One problem per line (``limit`` of them, then how many more)."""
    shown = problems if limit is None else problems[:limit]
    lines = [f"  - {p}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more (python -m datasets.check lists them all)")
    return "\n".join(lines)


def raise_if_problems(problems: list[Problem], header: str) -> None:
    """Raise one ``DatasetError`` listing ``problems`` under ``header`` (nothing when empty). A single
    problem is the whole message, so short failures read as one line."""
    if not problems:
        return
    if len(problems) == 1:
        raise DatasetError(str(problems[0]), problems)
    raise DatasetError(f"{header}: {len(problems)} problems\n{format_problems(problems)}", problems)


__all__ = [
    "BAD_IMAGE",
    "FATAL",
    "MAX_LISTED",
    "DatasetError",
    "Problem",
    "format_problems",
    "original_message",
    "raise_if_problems",
]
