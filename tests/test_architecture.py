"""The package layout's dependency directions (pyproject.toml's import-linter contracts) hold."""

import shutil
import subprocess

import pytest
from conftest import REPO_ROOT


@pytest.mark.subprocess
def test_import_contracts_hold() -> None:
    """lint-imports keeps every package to the packages below it (docs/design.md §1)."""
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run(["lint-imports"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
