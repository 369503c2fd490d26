"""Retries of remote reads, and the redaction of credentials from what we say.

A remote read fails in two ways that must be told apart:

* **transient**: the request may succeed if sent again (connection reset or
  refused, timeouts, HTTP 5xx, 429 and S3 throttling, a body that ended early,
  fewer bytes than asked). ``call_with_retry`` sends the *same* request again
  after an exponential, jittered delay, at most ``max_attempts`` times in all,
  then raises ``RemoteReadError`` (``ReaderTimeoutError`` when the last attempt
  timed out) from the last error;
* **permanent**: missing (``FileNotFoundError``, 404), forbidden
  (``PermissionError``, 403), corrupt or mistyped data (``CorruptInputError``,
  ``SchemaError``) and everything not recognised as transient: raised at once,
  unchanged.

Because a retry repeats the same byte range into the same caller-owned buffer,
nothing is read twice into the output and nothing is skipped.

botocore and aiohttp errors are recognised by class name and attributes, so
neither is imported here; s3fs and gcsfs wrap them in ``OSError``, so the
whole ``__cause__``/``__context__`` chain is inspected.

Stopping: a pool thread runs its jobs inside :func:`stopped_by` (the pool's stop
event, a context variable, so it reaches the coroutines the thread starts on an
event loop too). A retry loop then sends no new attempt once the event is set,
its wait between attempts ends at once, and a request made through
:func:`run_on_loop` is cancelled: each raises :class:`Stopped`, so ``close()`` does
not wait for ``max_attempts x timeout`` of a server that went silent.

Credentials: ``redact`` removes ``user:password@`` from URLs and every secret
value of ``storage_options`` (keys named like key, secret, token, password,
credential ...) from a text; every message and log line of this module goes
through it, and an original error whose text holds a secret is replaced, in
``__cause__``, by a redacted stand-in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import errno
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import CorruptInputError, ReaderTimeoutError, RemoteReadError, SchemaError, StreambatchError

__all__ = [
    "DEFAULT_POLICY",
    "RetryPolicy",
    "ShortReadError",
    "Stopped",
    "acall_with_retry",
    "call_with_retry",
    "check_stopped",
    "independent_retries",
    "is_transient",
    "read_exactly",
    "redact",
    "run_on_loop",
    "secrets_of",
    "stopped_by",
]

T = TypeVar("T")

logger = logging.getLogger("streambatch")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed remote read is sent again.

    ``max_attempts`` counts every attempt (1 disables retries). The delay before
    attempt ``k + 1`` is ``min(max_delay, base_delay * 2**(k - 1))``, scaled by a
    uniform factor in ``[0.5, 1)`` when ``jitter`` is on (so that many threads
    hit by the same outage do not retry in lockstep).

    ``timeout`` (seconds, ``None``: unbounded) bounds one request on an
    asynchronous filesystem (s3fs, gcsfs, HTTP), and every request of Zarr's
    store on a remote filesystem: when it expires the request is cancelled and
    counts as a failed, transient attempt (``ReaderTimeoutError`` if the last
    one). A batched ``.npy`` request (up to 64 ranges sent together) is bounded
    as a whole; when it expires, each range is sent again alone, bounded. Not
    bounded: synchronous filesystems (local, ``memory://``, sftp), which cannot
    cancel a call in flight, and reads through fsspec file objects (Parquet
    footers); bound those with the filesystem's own options (s3fs
    ``config_kwargs={"read_timeout": ...}``).

    >>> RetryPolicy(max_attempts=3).delay(1, random.Random(0)) <= 0.1
    True
    """

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    jitter: bool = True
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer, got {self.max_attempts!r}")
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {t!r}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        if self.jitter:
            delay *= 0.5 + 0.5 * (rng or random).random()
        return delay


DEFAULT_POLICY = RetryPolicy()


class ShortReadError(RemoteReadError):
    """The storage returned fewer bytes than asked (transient: retried)."""

    transient = True


# ----------------------------------------------------------------- classification

_TRANSIENT_ERRNOS = frozenset(
    e
    for e in (
        errno.ECONNRESET,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EAGAIN,
        getattr(errno, "ENETRESET", None),
        getattr(errno, "ENETUNREACH", None),
        getattr(errno, "EHOSTUNREACH", None),
    )
    if e is not None
)

_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    CorruptInputError,
    SchemaError,
)

#: botocore / aiohttp / gcsfs classes (matched by name) that mean "try again".
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        # botocore
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
        # aiohttp
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "ContentLengthError",
        # s3fs / gcsfs
        "RetryableError",
        # asyncio (a builtin TimeoutError only from Python 3.11) and fsspec's sync() timeout
        "TimeoutError",
        "FSTimeoutError",
    }
)

_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)


#: Where an HTTP status on an error means what it says.
_HTTP_MODULES = frozenset({"botocore", "aiobotocore", "aiohttp", "gcsfs", "s3fs", "requests", "fsspec"})
_HTTP_ERROR_NAMES = frozenset({"ClientError", "ClientResponseError", "HttpError", "HTTPError"})


def _status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp ``status``, requests/gcsfs
    ``status_code``/``code``, botocore ``response``), if any."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        meta = response.get("ResponseMetadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("HTTPStatusCode"), int):
            return int(meta["HTTPStatusCode"])
    for name in ("status", "status_code", "code"):
        value = getattr(error, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _error_code_of(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        err = response.get("Error")
        if isinstance(err, Mapping) and isinstance(err.get("Code"), str):
            return err["Code"]
    return None


def _is_transient_one(error: BaseException) -> bool | None:
    """True / False when this one exception decides, None to look at its causes."""
    marked = getattr(error, "transient", None)
    if isinstance(marked, bool):
        return marked
    if isinstance(error, _PERMANENT_TYPES):
        return False
    if isinstance(error, StreambatchError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & _TRANSIENT_CLASS_NAMES:
        return True
    code = _error_code_of(error)
    if code is not None and code in _THROTTLING_CODES:
        return True
    module = (type(error).__module__ or "").split(".")[0]
    if module in _HTTP_MODULES or names & _HTTP_ERROR_NAMES:
        status = _status_of(error)
        if status is not None:
            return status >= 500 or status in (408, 429)
    return None


def is_transient(error: BaseException) -> bool:
    """Whether sending the same request again may succeed (see the module doc)."""
    for current in _chain(error):
        verdict = _is_transient_one(current)
        if verdict is not None:
            return verdict
    return False


def _is_timeout(error: BaseException) -> bool:
    for current in _chain(error, suppressed_context=True):
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return True
        if isinstance(current, OSError) and current.errno == errno.ETIMEDOUT:
            return True
    return False


def _chain(error: BaseException, suppressed_context: bool = False) -> Iterator[BaseException]:
    """``error``, then its cause (or context) and theirs, each once; a context
    hidden by ``raise ... from None`` is followed only with ``suppressed_context``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        hide = current.__suppress_context__ and not suppressed_context
        current = current.__cause__ or (None if hide else current.__context__)


# ----------------------------------------------------------------- redaction

_SECRET_KEY = re.compile(r"key|secret|token|passw|credential|auth|signature|sas|session", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_REDACTED = "***"


def secrets_of(options: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Every credential-like string value in ``storage_options`` (nested dicts too),
    longest first, so that ``redact`` removes a secret before any part of it."""
    found: set[str] = set()

    def walk(mapping: Mapping[str, Any]) -> None:
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                walk(value)
            elif isinstance(value, str) and _SECRET_KEY.search(str(name)) and len(value) >= 3:
                if str(name).lower() in ("key_prefix", "default_block_size"):
                    continue
                found.add(value)

    if options:
        walk(options)
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without ``user:password@`` in URLs and without any of ``secrets``.

    >>> redact("https://bob:hunter2@host/x.npy failed, key=AKIA123", ["AKIA123"])
    'https://***@host/x.npy failed, key=***'
    """
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{_REDACTED}@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


class _RedactedError(Exception):
    """Stands in, as ``__cause__``, for an error whose own text held a credential."""


def _safe_cause(error: BaseException, secrets: tuple[str, ...]) -> BaseException:
    text = f"{type(error).__name__}: {error}"
    clean = redact(text, secrets)
    if clean == text:
        return error
    return _RedactedError(clean)


# ----------------------------------------------------------------- stopping


class Stopped(Exception):
    """Raised inside a producer (a read job, a retry loop, a request in flight)
    when its consumer has gone away."""


#: The stop event of the pool (or producer) whose thread is running: set, it ends
#: retry loops and cancels requests made through ``run_on_loop``. A context variable,
#: not a thread-local, so the coroutines a thread runs on an event loop see it too.
_stop_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("streambatch_stop", default=None)

#: How often a thread waiting for a request on an event loop looks at its stop event.
_STOP_POLL_S = 0.05


@contextlib.contextmanager
def stopped_by(event: threading.Event) -> Iterator[None]:
    """Within this block, retries and requests give up (``Stopped``) once ``event`` is set."""
    token = _stop_event.set(event)
    try:
        yield
    finally:
        _stop_event.reset(token)


def check_stopped() -> None:
    """Raise ``Stopped`` if the running pool has been told to stop."""
    event = _stop_event.get()
    if event is not None and event.is_set():
        raise Stopped


def _wait_or_stop(delay: float) -> None:
    event = _stop_event.get()
    if event is None:
        time.sleep(delay)
    elif event.wait(delay):
        raise Stopped


async def _async_wait_or_stop(delay: float) -> None:
    event = _stop_event.get()
    if event is None:
        await asyncio.sleep(delay)
        return
    deadline = time.monotonic() + delay
    while not event.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _STOP_POLL_S))
    raise Stopped


def run_on_loop(coro: Awaitable[T], loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> T:
    """``await coro`` on ``loop`` (an event loop running in another thread, as fsspec's
    and zarr's do), waited for from this thread. It is cancelled on the loop when
    ``timeout`` seconds pass (``TimeoutError``: a transient failure) or when this
    thread's pool stops (``Stopped``), so a silent server holds no thread."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("run_on_loop called from its own event loop's thread (it would deadlock)")
    if timeout is not None:
        coro = asyncio.wait_for(coro, timeout)
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
    event = _stop_event.get()
    try:
        while True:
            try:
                return future.result(None if event is None else _STOP_POLL_S)
            except concurrent.futures.TimeoutError:
                if future.done():
                    raise  # the request itself timed out
                if event is not None and event.is_set():
                    raise Stopped from None
    finally:
        if not future.done():
            future.cancel()  # cancels the task on the loop: no request left running


# ----------------------------------------------------------------- the wrapper


#: Set while this thread runs an attempt of ``call_with_retry``: a retried call
#: made inside another (``FileSystemPath.size`` inside a retried footer fetch)
#: is attempted once, and the outer call retries the whole, so attempts never
#: multiply (5 x 5) and the outer description names what failed.
_inside = threading.local()


@contextlib.contextmanager
def independent_retries() -> Iterator[None]:
    """Within this block, ``call_with_retry`` retries on its own even when the
    thread is inside another retried call: for a long operation made of many
    requests (a cache download), where sending the whole again after one failed
    request would rarely get through."""
    active = getattr(_inside, "active", False)
    _inside.active = False
    try:
        yield
    finally:
        _inside.active = active


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy | None,
    describe: str | Callable[[], str],
    *,
    secrets: tuple[str, ...] = (),
    first_error: BaseException | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``fn()``, sent again on transient errors as ``policy`` says.

    ``describe`` names what is read (URL and rows, row group or chunk), as a
    string or a function called only on failure. Permanent errors propagate
    unchanged after the first attempt; when the attempts run out,
    ``RemoteReadError`` (``ReaderTimeoutError`` for timeouts) is raised from the
    last error. ``fn`` must be idempotent: each attempt rewrites the same output.
    ``first_error``: the first attempt was already made elsewhere (a batched
    request) and failed with it; it counts as attempt 1.
    Inside another ``call_with_retry`` of the same thread, ``fn`` is attempted
    once: the outer call decides whether to send the whole again.
    Once the running pool stops (:func:`stopped_by`), no attempt is sent and the
    wait between attempts ends: ``Stopped`` is raised.
    """
    if getattr(_inside, "active", False):
        if first_error is not None:
            raise first_error
        return fn()
    policy = policy or DEFAULT_POLICY
    attempt = 0
    pending = first_error
    while True:
        attempt += 1
        if pending is not None:
            if not isinstance(pending, Exception):
                raise pending  # CancelledError, KeyboardInterrupt: never retried
            error, pending = pending, None
        else:
            check_stopped()
            _inside.active = True
            try:
                return fn()
            except Exception as caught:
                error = caught
            finally:
                _inside.active = False
        delay = _after_failure(error, attempt, policy, describe, secrets, rng)
        del error  # no traceback (and the frames' buffers) kept across the sleep
        if sleep is time.sleep:
            _wait_or_stop(delay)
        else:
            sleep(delay)


def _after_failure(
    error: Exception,
    attempt: int,
    policy: RetryPolicy,
    describe: str | Callable[[], str],
    secrets: tuple[str, ...],
    rng: random.Random | None,
) -> float:
    """The delay before sending again after failed attempt ``attempt``, logged;
    raises ``error`` when it is permanent, ``RemoteReadError`` when the attempts
    are used up."""
    if not is_transient(error):
        if secrets and isinstance(error, StreambatchError):
            clean = redact(str(error), secrets)
            if clean != str(error):
                raise type(error)(clean) from _safe_cause(error, secrets)
        raise error
    what = describe() if callable(describe) else describe
    if attempt >= policy.max_attempts:
        if isinstance(error, CorruptInputError):  # a decode failure that persisted: corrupt after all
            raise error
        kind = ReaderTimeoutError if _is_timeout(error) else RemoteReadError
        message = redact(
            f"{what}: failed after {attempt} attempt{'s' if attempt > 1 else ''}: {type(error).__name__}: {error}",
            secrets,
        )
        raise kind(message) from _safe_cause(error, secrets)
    delay = policy.delay(attempt, rng)
    logger.info(
        "%s",
        redact(
            f"{what}: attempt {attempt}/{policy.max_attempts} failed "
            f"({type(error).__name__}: {error}); retrying in {delay:.2f} s",
            secrets,
        ),
    )
    return delay


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None,
    describe: str | Callable[[], str],
    *,
    secrets: tuple[str, ...] = (),
) -> T:
    """``await fn()`` with :func:`call_with_retry`'s rules, sleeping with
    ``asyncio.sleep`` (for requests made on an event loop, e.g. zarr's store);
    it stops as :func:`call_with_retry` does."""
    policy = policy or DEFAULT_POLICY
    attempt = 0
    while True:
        attempt += 1
        check_stopped()
        try:
            return await fn()
        except Exception as error:
            delay = _after_failure(error, attempt, policy, describe, secrets, None)
        await _async_wait_or_stop(delay)


def read_exactly(data: bytes | bytearray | memoryview, expected: int, describe: str) -> bytes | bytearray | memoryview:
    """``data`` if it holds ``expected`` bytes; else a (retryable) ``ShortReadError``."""
    if len(data) != expected:
        raise ShortReadError(f"{describe}: short read: got {len(data)} of {expected} bytes")
    return data
