"""streambatch: stream datasets far larger than memory into fixed-size, well-shuffled
NumPy minibatches, with a hard bound on memory and exact resumption.

>>> import streambatch as sb
>>> loader = sb.Loader("data/", batch_size=256, memory_limit="512MiB")  # doctest: +SKIP
>>> for batch in loader: ...                                             # doctest: +SKIP
"""

from ._units import parse_bytes
from .errors import (
    BudgetError,
    CorruptInputError,
    EmptyDatasetError,
    IncompleteConversionError,
    PoorShuffleWarning,
    ReaderError,
    ReaderTimeoutError,
    RemoteReadError,
    SchemaError,
    SourceNotFoundError,
    StateMismatchError,
    StreambatchError,
)
from .loader import EpochIterator, Loader
from .sources import ColumnSpec, Dataset, open_dataset
from .sources._retry import RetryPolicy

__all__ = [
    "BudgetError",
    "ColumnSpec",
    "CorruptInputError",
    "Dataset",
    "EmptyDatasetError",
    "IncompleteConversionError",
    "PoorShuffleWarning",
    "EpochIterator",
    "Loader",
    "ReaderError",
    "ReaderTimeoutError",
    "RemoteReadError",
    "RetryPolicy",
    "SchemaError",
    "SourceNotFoundError",
    "StateMismatchError",
    "StreambatchError",
    "open_dataset",
    "parse_bytes",
]
__version__ = "0.1.0"
