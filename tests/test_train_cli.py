"""`spatialprobe train`, `sample` and `ls presets` through the CLI."""

import json

import numpy as np
from typer.testing import CliRunner

from spatialprobe.cli import app

runner = CliRunner()


def test_train_help_documents_the_presets():
    res = runner.invoke(app, ["train", "--help"], terminal_width=120)
    assert res.exit_code == 0
    for word in ("irepa-official-ldm", "conv-only", "norm-only", "pixelrepa", "--resume", "sit-xl/2", "jit-tiny"):
        assert word in res.output
    out = runner.invoke(app, ["ls", "presets"]).output
    assert "1x1 conv" in out and len(out.strip().splitlines()) == 14  # header + 13 rows (pixelrepa: JiT only)


def test_cli_train_yaml_then_flags_then_sample(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: jit-tiny\nmethod: repa\nteacher: pixels\nimages: builtin:digits\nsteps: 3\n"
                   "proj_coeff: 0.9\nmax_images: 64\nbatch_size: 8\nworkers: 0\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--proj-coeff", "0.25", "--random-teacher",
                              "--log-every", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["proj_coeff"] == 0.25 and saved["steps"] == 3 and saved["projector"] == "mlp"
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    # rerunning into the same folder without --resume is refused with one clear line
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "--random-teacher"])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["sample", str(out), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s"),
                              "--weights", "model"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    res = runner.invoke(app, ["sample", str(out), "--sampler", "sde"])
    assert res.exit_code == 2 and "heun" in res.output
