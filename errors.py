"""The exceptions library modules raise, and the one place a CLI turns them into its one-line error.

Library code never exits: it raises one of these with a message that names the file, row or flag and
what was expected. Each CLI's main() runs inside `one_line_errors()`, which prints `error: <message>`
(exit status 1) without a traceback.
"""
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class KemdyError(Exception):
    """Base class: the message is the whole one-line error, without the `error: ` prefix."""


class CorpusError(KemdyError, ValueError):
    """Bad input in a corpus, its caches, or a folder given for one (the message names the file/row)."""


class FlagError(KemdyError, ValueError):
    """A flag's value, or a combination of flags, that cannot work (the message names the flag; `flags`, where
    given, are the flags at fault by their names, e.g. ("epochs",))."""

    def __init__(self, message: str, flags: tuple[str, ...] = ()):
        super().__init__(message)
        self.flags = flags


class RunFolderError(KemdyError):
    """A run or experiment folder that is missing, damaged, unfinished, untrusted, or whose corpus changed."""


class PretrainedError(KemdyError):
    """A Hugging Face id or local folder of a pretrained model that cannot be loaded."""


class StorageError(KemdyError):
    """A write that failed: a full disk, or a folder that cannot be created or written."""


class TrainingError(KemdyError):
    """Training that cannot go on (a NaN or infinite loss); the message says how to resume."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """For a CLI's main(): a KemdyError ends the program with `error: <message>` and exit status 1."""
    try:
        yield
    except KemdyError as error:
        raise SystemExit(f"error: {error}") from None


def load_json(path: Path, error: type[KemdyError] = RunFolderError):
    """A JSON record this repo wrote (a run folder's args.json, results.json, corpus.json...; a cache's index), or
    `error` (one line) naming the file where it is cut short or damaged; FileNotFoundError where it is missing."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as damage:
        reason = (str(damage).strip().splitlines() or [type(damage).__name__])[0]
        raise error(f"{path} is damaged (not JSON: {reason}); it was cut short or edited: restore it from a copy, "
                    "or make it again") from None
