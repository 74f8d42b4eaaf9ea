"""The deployment module stays formatted and documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TF = Path(__file__).resolve().parent.parent / "terraform"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_fmt_is_clean() -> None:
    r = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(TF)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_variable_and_output_is_documented() -> None:
    for name in ("variables.tf", "outputs.tf"):
        text = (TF / name).read_text()
        blocks = re.findall(r'^(?:variable|output) "(\w+)" \{(.*?)^\}', text, re.M | re.S)
        assert blocks
        for block_name, body in blocks:
            assert "description" in body, f"{name}: {block_name} has no description"
