"""One version: pyproject.toml, ``nnunet_pdddpm.__version__`` and CHANGELOG's newest entry agree."""
import re
from pathlib import Path

import nnunet_pdddpm

ROOT = Path(__file__).resolve().parents[1]


def test_one_version():
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    changelog = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert nnunet_pdddpm.__version__ == pyproject == changelog
