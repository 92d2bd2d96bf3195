"""Every command documents itself, and the CLI stays light to import."""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from spatialprobe.cli import app

runner = CliRunner()


def _command_paths():
    click_app = typer.main.get_command(app)
    paths = []
    for name, cmd in click_app.commands.items():
        sub = getattr(cmd, "commands", None)
        if sub:
            paths += [[name, s] for s in sub]
        else:
            paths.append([name])
    return paths


def test_expected_commands_exist():
    names = {p[0] for p in _command_paths()}
    assert {"correlate", "ls"} <= names


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p))
def test_every_command_has_help(path):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output
    # a one-line docstring at least: the help text says more than the usage line
    assert len(res.output.strip().splitlines()) > 3


def test_importing_cli_does_not_load_heavy_libraries():
    code = ("import sys, spatialprobe.cli; heavy = ('transformers', 'open_clip', 'diffusers', 'torch_fidelity', "
            "'kornia', 'cv2', 'skimage', 'sklearn'); print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
