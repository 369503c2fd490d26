"""streambatch: stream datasets far larger than memory into fixed-size, well-shuffled
NumPy minibatches, with a hard bound on memory and exact resumption.

>>> import streambatch as sb
>>> loader = sb.Loader("data/", batch_size=256, memory_limit="512MiB")  # doctest: +SKIP
>>> for batch in loader: ...                                             # doctest: +SKIP
"""

from importlib import metadata as _metadata

from ._units import parse_bytes
from .epoch import EpochIterator
from .errors import (
    BudgetError,
    CastError,
    CorruptInputError,
    EmptyDatasetError,
    IncompleteConversionError,
    PoorShuffleWarning,
    ReaderError,
    ReaderTimeoutError,
    RemoteReadError,
    RowCountError,
    SchemaError,
    SourceNotFoundError,
    StateMismatchError,
    StreambatchError,
    UnknownColumnError,
)
from .loader import Loader
from .ragged import Ragged
from .sources import ColumnSpec, Dataset, open_dataset
from .sources._retry import RetryPolicy

__all__ = [
    "BudgetError",
    "CastError",
    "ColumnSpec",
    "CorruptInputError",
    "Dataset",
    "EmptyDatasetError",
    "IncompleteConversionError",
    "PoorShuffleWarning",
    "EpochIterator",
    "Loader",
    "Ragged",
    "ReaderError",
    "ReaderTimeoutError",
    "RemoteReadError",
    "RetryPolicy",
    "RowCountError",
    "SchemaError",
    "SourceNotFoundError",
    "StateMismatchError",
    "StreambatchError",
    "UnknownColumnError",
    "open_dataset",
    "parse_bytes",
]

try:  # pyproject.toml is the one place the version is written
    __version__ = _metadata.version("streambatch")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
