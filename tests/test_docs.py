"""Every Python block in docs/ runs, in order, page by page, in a directory that
holds the small example dataset the docs use. A block preceded by an HTML
comment ``<!-- not run: reason -->`` is skipped on purpose (it needs a cluster,
GPUs or credentials); the reason is in the page for readers to see."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"(<!--\s*not run:[^>]*-->\s*)?```python\n(.*?)```", re.S)
PAGES = sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))


def _example_data(root: Path) -> None:
    n = 10_000
    label = (np.arange(n) * 10 // n).astype(np.int64)
    x = np.random.default_rng(0).standard_normal((n, 16), dtype=np.float32)
    block = {"x": x, "label": label}
    specs = {"x": (x.dtype, (16,)), "label": (label.dtype, ())}
    write_blocks(NpyWriter(str(root / "data"), specs, n), [block])
    write_blocks(ParquetWriter(str(root / "data.parquet"), specs, 1000), [block])
    write_blocks(ZarrWriter(str(root / "data.zarr"), specs, n, 1000), [block])


def test_docs_have_python_examples():
    assert PAGES, f"no Python blocks found in {DOCS}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_in_the_page_runs(page, tmp_path, monkeypatch):
    _example_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    ran = 0
    for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
        if match.group(1):
            continue
        code = compile(match.group(2), f"{page.name} block {number}", "exec")
        exec(code, namespace)
        ran += 1
    assert ran, f"every block of {page.name} is marked not run"
    for value in list(namespace.values()):  # close loaders the page left open
        close = getattr(value, "close", None)
        if callable(close) and type(value).__module__.startswith("streambatch"):
            close()
