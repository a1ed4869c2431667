"""Every Python block of docs/pytest.md and of the README runs, as it stands in the docs, as a test file of a
suite of its own: a fresh pytest in an empty directory, the plugin found through its entry point, the
clickwatch it starts itself (no conftest, no override, no CLICKWATCH_* of the shell), a real Chromium."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text())


BLOCKS = [
    pytest.param(block, id=f"{page.name}-{n}")
    for page in (ROOT / "docs" / "pytest.md", ROOT / "README.md")
    for n, block in enumerate(python_blocks(page), 1)
    if "def test_" in block  # the README's other blocks are not pytest files
]


def test_the_docs_have_the_blocks_the_issue_names() -> None:
    assert len(python_blocks(ROOT / "docs" / "pytest.md")) == 2
    assert len([b for b in BLOCKS if "README" in b.id]) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("block", BLOCKS)
def test_a_docs_block_passes_as_written(block: str, tmp_path: Path) -> None:
    tests = [n.name for n in ast.parse(block).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    (tmp_path / "test_example.py").write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(tests)} passed" in result.stdout, result.stdout[-2000:]
