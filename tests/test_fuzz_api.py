"""Schemathesis over the service's own /openapi.json (a bounded run, as CI does): whatever it
generates, valid or not, no operation answers a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Service


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(make_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install '.[test]')")
    svc: Service = make_service(open_wait_seconds=1)
    svc.workspace("fuzz", svc.admin)  # path parameters name a real workspace, so the
    config = tmp_path / "schemathesis.toml"  # calls reach the service's logic, not a 404
    config.write_text('[parameters]\nws = "fuzz"\n')
    run = subprocess.run(
        [st, "--config-file", str(config), "run", f"{svc.base}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "10", "--seed", "1",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
         "--header", f"Authorization: Bearer {svc.admin_token}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert " passed" in out and "generated" in out, out[-2000:]
