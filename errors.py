"""The exceptions library modules raise, and the one place a CLI turns them into its one-line error.

Library code never exits: it raises one of these with a message that names the file, row or flag and
what was expected. Each CLI's main() runs inside `one_line_errors()`, which prints `error: <message>`
(exit status 1) without a traceback.
"""
from collections.abc import Iterator
from contextlib import contextmanager


class KemdyError(Exception):
    """Base class: the message is the whole one-line error, without the `error: ` prefix."""


class CorpusError(KemdyError, ValueError):
    """Bad input in a corpus, its caches, or a folder given for one (the message names the file/row)."""


class FlagError(KemdyError, ValueError):
    """A flag's value, or a combination of flags, that cannot work (the message names the flag)."""


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
