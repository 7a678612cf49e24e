"""The README's python examples run as written: each ```python block is executed in a fresh interpreter."""
import os
import re
import subprocess
import sys

import pytest

from lmcl_testing import ROOT

README = os.path.join(ROOT, "README.md")


def python_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return blocks


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 4


@pytest.mark.parametrize("code", python_blocks())
def test_readme_example_runs(code, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"README example failed:\n{code}\n--- stderr ---\n{result.stderr[-3000:]}"
