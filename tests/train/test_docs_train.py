"""The examples in docs/train.md marked ``# runs as is`` run as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "train.md"


def runnable_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [b for b in blocks if b.startswith("# runs as is")]


def test_the_page_has_the_loop_first_then_the_trainer():
    blocks = runnable_blocks()
    assert len(blocks) == 2
    assert "privdl.make_private" in blocks[0] and "PrivateTrainer" in blocks[1]


@pytest.mark.parametrize("index", [0, 1])
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(runnable_blocks()[index], f"docs/train.md block {index}", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert 0 < float(printed[0]) <= 2.0 + 1e-6  # the epsilon spent, within the target
