"""The retention events example trains at user level on its play-events table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("opacus")


@pytest.mark.slow
def test_events_job_trains_at_user_level(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "retention_events.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1. 16192 play events of 2000 users")
    assert "ledger (user-level)" in lines[1]
    assert lines[2].startswith("3. This training run satisfies user-level (")
    report = json.loads((out / "privacy.json").read_text())
    assert report["privacy_unit"]["unit"] == "user"
    assert report["privacy_unit"]["method"] == "user-level DP-SGD"
    assert report["privacy_unit"]["max_records_per_user"] == 60
    assert report["epsilon"] <= 2.0 + 1e-6
