"""Kill ``streambatch convert`` (SIGKILL) at a chosen point, from the test.

The library holds no test hooks: :func:`run_killed` writes a ``sitecustomize.py``
into a directory of its own and puts it first on the subprocess's
``PYTHONPATH``; Python imports it at start-up, and it wraps one library
function so that the process kills itself there. Kill points:

* ``before_first_shard``: at the first shard task (the journal exists, no shard);
* ``mid_shard``: after the ``n``-th block written into a shard's temporary file;
* ``between_shards``: after the ``n``-th shard is journaled;
* ``mid_upload``: after the ``n``-th object uploaded to object storage;
* ``manifest``: the manifest is written to its temporary name but not yet
  renamed (local), or about to be uploaded (object storage);
* ``pass1_block``: after ``n`` blocks of shuffle pass 1 went to the buckets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTS = ("before_first_shard", "mid_shard", "between_shards", "manifest")

_SITECUSTOMIZE = """
import os, signal

_point, _n = {point!r}, {n!r}
_count = [0]


def _hit():
    _count[0] += 1
    if _count[0] >= _n:
        os.kill(os.getpid(), signal.SIGKILL)


def _after(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            _hit()
        return result

    setattr(owner, name, wrapper)


def _before(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            _hit()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


from streambatch import writers
from streambatch.convert import _dest, _inputs, _journal, _run

if _point == "before_first_shard":
    _before(_run, "write_shard")
elif _point == "mid_shard":
    for _cls in (writers.ParquetWriter, writers.NpyWriter, writers.ZarrWriter):
        _after(_cls, "write")
elif _point == "between_shards":
    _is_shard = lambda self, event: event.get("event") == "shard"
    _after(_journal.Journal, "append", _is_shard)
    _after(_dest.RemoteJournal, "append", _is_shard)
elif _point == "mid_upload":
    import s3fs
    _put_file = s3fs.S3FileSystem._put_file

    async def _put_then_hit(*args, **kwargs):  # a coroutine function, so fsspec mirrors put_file on it
        result = await _put_file(*args, **kwargs)
        _hit()
        return result

    s3fs.S3FileSystem._put_file = _put_then_hit
elif _point == "manifest":
    _real_replace = os.replace
    def _replace(src, dst, *a, **k):
        if str(dst).endswith("manifest.json"):
            _hit()
        return _real_replace(src, dst, *a, **k)
    os.replace = _replace
    _before(_dest.RemoteDest, "write_manifest")
elif _point == "pass1_block":
    _before(_inputs.InputReader, "read")
else:
    raise ValueError(_point)
"""


def run_killed(args: list[str], hook_dir: str, point: str, n: int = 1, env: dict[str, str] | None = None):
    """Run ``streambatch <args>`` in a subprocess that SIGKILLs itself at ``point``
    (the ``n``-th time it is reached); returns the ``CompletedProcess``."""
    os.makedirs(hook_dir, exist_ok=True)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(_SITECUSTOMIZE.format(point=point, n=n + 1 if point == "pass1_block" else n))
    return run_cli(args, {"PYTHONPATH": os.pathsep.join([hook_dir, ROOT]), **(env or {})})


def run_cli(args: list[str], env_extra: dict[str, str] | None = None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "streambatch.cli", *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )


def was_killed(result) -> bool:
    return result.returncode == -signal.SIGKILL
