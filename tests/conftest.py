import logging
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# content hashes of test images go to a throw-away cache, not the user's ~/.cache
if "SPATIALPROBE_CACHE" not in os.environ:
    import tempfile

    os.environ["SPATIALPROBE_CACHE"] = tempfile.mkdtemp(prefix="spatialprobe-test-cache-")


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The packaged mini study at smoke size, run once with the local launcher (shared by test_study.py
    and test_study_slurm.py, which compare other launchers' results with it byte for byte)."""
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    out = tmp_path_factory.mktemp("smoke") / "run"
    res = CliRunner().invoke(app, ["study", "run", "mini", "--smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def fresh_log_handler():
    """The CLI binds its log handler to the stderr of the first invocation; give each test its own
    (files that read the CLI's log lines use it for every test: ``pytestmark = usefixtures(...)``)."""
    logger = logging.getLogger("spatialprobe")
    saved = list(logger.handlers)
    logger.handlers.clear()
    yield
    logger.handlers[:] = saved
