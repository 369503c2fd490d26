"""Every Python block in README.md and docs/ runs, in order, page by page, in one
namespace. The README and getting-started make their own data and must run as
pasted, so they run in an empty directory; the other pages run in a directory that
holds the small example dataset they use. A block preceded by an HTML comment
``<!-- not run: reason -->`` is skipped on purpose (it needs a cluster, GPUs or
credentials); the reason is in the page for readers to see."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!--\s*not run:[^>]*-->\s*)?```python\n(.*?)```", re.S)
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))]
#: pages a new reader pastes first: they create their own data, in an empty directory
AS_PASTED = {ROOT / "README.md", DOCS / "getting-started.md"}


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
    assert all(BLOCK.search(p.read_text()) for p in AS_PASTED)
    assert len(PAGES) > len(AS_PASTED), f"no Python blocks found in {DOCS}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_in_the_page_runs(page, tmp_path, monkeypatch):
    if page not in AS_PASTED:
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
