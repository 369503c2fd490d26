"""The environments of the peer benchmark (``bench_peers.py``): MosaicML Streaming's own
virtual environment, made on demand from ``scripts/requirements-mosaic.txt``, and the
one-off preparation of each peer's input format, cached under the data dir."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    SCRIPTS,
    run_config,
)

REQ_PEERS = "scripts/requirements-peers.txt"
REQ_MOSAIC = os.path.join(SCRIPTS, "requirements-mosaic.txt")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("WARNING: Location")]
        return " | ".join(lines[-n:])[:300]
    except OSError:
        return "?"


def ensure_mosaic_venv(data_dir: str, log) -> dict:
    """``<data-dir>/venvs/mosaic``, made once: ``python -m venv`` + ``pip install -r scripts/requirements-mosaic.txt``.
    Re-installs (pip is a no-op when satisfied) when the requirements file changed."""
    venv = os.path.join(data_dir, "venvs", "mosaic")
    py = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".bench-installed.json")
    with open(REQ_MOSAIC) as f:
        req = f.read()
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        if info.get("requirements") == req and os.path.exists(py):
            return {"python": py, **info}
    log(f"  peers: installing MosaicML Streaming into {venv} (once; torch+torchvision make it several GB)")
    t0 = time.perf_counter()
    install_log = os.path.join(data_dir, "venvs", "mosaic-install.log")
    os.makedirs(os.path.dirname(install_log), exist_ok=True)
    with open(install_log, "w") as out:
        steps = [[sys.executable, "-m", "venv", venv]] if not os.path.exists(py) else []
        steps.append([py, "-m", "pip", "install", "-r", REQ_MOSAIC])
        for cmd in steps:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=3600).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                return {"error": f"installing the Mosaic venv failed ({rc}): {_tail(install_log)} (log: {install_log})"}
    info = {"requirements": req, "seconds": time.perf_counter() - t0, "made": _now()}
    with open(marker, "w") as f:
        json.dump(info, f)
    return {"python": py, **info}


def ensure_prepared(kind: str, npy_dir: str, dest: str, timeout: float, log, python: str | None = None) -> dict:
    """One-off conversion, cached under the data dir: ``{path, seconds, made}`` or ``{error}``."""
    marker = dest + ".done.json"
    if os.path.exists(marker) and os.path.exists(dest):
        with open(marker) as f:
            return {"path": dest, **json.load(f)}
    shutil.rmtree(dest, ignore_errors=True)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    log(f"  peers: preparing {kind} -> {dest} (once)")
    t0 = time.perf_counter()
    r = run_config({"module": "bench_peers", "kind": f"prep_{kind}", "npy_dir": npy_dir, "dest": tmp}, timeout, python)
    if "error" in r:
        shutil.rmtree(tmp, ignore_errors=True)
        return {
            "error": f"preparation ({kind}) failed: {r['error']}",
            **({"not_installed": True} if r.get("not_installed") else {}),
        }
    os.rename(tmp, dest)
    info = {"seconds": time.perf_counter() - t0, "made": _now(), "peak_rss_bytes": r.get("peak_rss_bytes")}
    with open(marker, "w") as f:
        json.dump(info, f)
    log(f"  peers: prepared {kind} in {info['seconds']:.0f} s")
    return {"path": dest, **info}
