"""Shared fixtures: a small demo data set made once per test session, and a CLI runner."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> Path:
    """12 train people (every gender x age stratum) and 3 eval people in the competition's layout."""
    from typer.testing import CliRunner

    import demo

    out = tmp_path_factory.mktemp("demo") / "data"
    result = CliRunner().invoke(demo.app, [str(out), "--people", "12", "--eval-people", "3", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


def invoke(app, *args):
    """Run a script's Typer app in-process as its command line would."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])
