"""The main job as a new user runs it: what it prints and releases holds up.

README quotes its output ("k=5 with every linkable column counted"); this test fails if
the job's release stops meeting that honest k, or releases an exact or shifted date or
a phone number beside it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("opacus")
pytest.importorskip("tenseal")


def test_retention_job_releases_what_its_k_claim_covers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "retention.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "1. anonymized 2000 users -> 2000 records, k=5 with every linkable column counted"
    )
    assert "linkable" not in done.stderr  # no linkable column left beside the claim
    import pandas as pd

    released = pd.read_parquet(out / "released.parquet")
    assert not {"birth_date", "signup_date", "phone", "ip"} & set(released.columns)
    assert "4. " in done.stdout and ": OK," in done.stdout  # the audit log verifies
