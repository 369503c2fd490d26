"""The exception hierarchy of streambatch.

Every class also inherits the built-in exception it refines, so existing
``except ValueError:`` / ``except OSError:`` code keeps working, and every
error names what it is about (a path, a column, a chunk) in its message.
"""

from __future__ import annotations

__all__ = [
    "PoorShuffleWarning",
    "BudgetError",
    "CastError",
    "CorruptInputError",
    "EmptyDatasetError",
    "IncompleteConversionError",
    "ReaderError",
    "ReaderTimeoutError",
    "RemoteReadError",
    "RowCountError",
    "SchemaError",
    "SourceNotFoundError",
    "StateMismatchError",
    "StreambatchError",
    "UnknownColumnError",
]


class StreambatchError(Exception):
    """Base class of every error raised by streambatch."""


class SourceNotFoundError(StreambatchError, FileNotFoundError):
    """A path, URL or glob matched nothing, or holds no data files."""


class CorruptInputError(StreambatchError, ValueError):
    """The bytes of a file are unreadable or inconsistent with its header."""

    @classmethod
    def truncated(cls, url: str, at: int, missing: int) -> CorruptInputError:
        """A file that ended at byte ``at``, ``missing`` bytes before a read's end."""
        return cls(
            f"{url}: file ended at byte {at}, {missing} bytes short (was it truncated after the dataset was opened?)"
        )


class IncompleteConversionError(StreambatchError, ValueError):
    """A ``streambatch convert`` output without its manifest (killed, failed or
    still running): it holds convert's journal or temporary files, so the shards
    in it are not a dataset yet. ``.path`` is the directory; the message names
    the remedy (``streambatch convert ... --resume``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class SchemaError(StreambatchError, TypeError):
    """A dtype, row shape, column name or row count does not fit what was expected."""


class RowCountError(SchemaError, ValueError):
    """Columns or shards that must have the same number of rows do not: a wrong
    value, not a wrong type, so it is also a ``ValueError``."""


class CastError(SchemaError, ValueError):
    """A value cannot be cast to the dtype ``cast=`` asks for without changing it
    (an integer overflow, a fractional part cast to an integer, a float out of
    range, a unit that would drop a nonzero part): a wrong value, not a wrong
    type, so it is also a ``ValueError``. The message names the file, the row
    group (record batch) or row, the column and the value."""


class EmptyDatasetError(SchemaError, ValueError):
    """The dataset holds zero rows in total (also a ``ValueError``)."""


class UnknownColumnError(SchemaError, KeyError):
    """A requested column does not exist; also a ``KeyError``, whose ``str()``
    would quote the message, so ``__str__`` gives the message as written."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ReaderError(StreambatchError, OSError):
    """A read failed inside the prefetching pool; ``__cause__`` holds the original error."""


class RemoteReadError(ReaderError):
    """A remote read failed for good: retries were exhausted (``__cause__`` is the
    last attempt's error) or the storage kept returning fewer bytes than asked.
    The message names the URL and the row range, row group or chunk, never
    credentials."""


class ReaderTimeoutError(RemoteReadError, TimeoutError):
    """A remote read kept timing out until the retries were exhausted."""


class BudgetError(StreambatchError, ValueError):
    """``memory_limit`` cannot hold what one step of the pipeline needs."""


class StateMismatchError(StreambatchError, ValueError):
    """A saved loader state does not fit the loader it is loaded into."""


class PoorShuffleWarning(UserWarning):
    """The shuffle window holds so few read units that batches will be poorly mixed."""
