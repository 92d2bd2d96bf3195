"""The README's two setup commands are exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_setup_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Setup", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1).strip().splitlines()
    assert len(block) == 2, block
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd ", "export "))]
    # the one extra line: a local SLURM cluster for the `slurm` tests, started just before the tests
    slurm = [ln for ln in ci if ln.startswith("scripts/slurm-up.sh")]
    assert slurm == ["scripts/slurm-up.sh"] and ci.index(slurm[0]) == len(ci) - 2, ci
    assert "scripts/slurm-up.sh" in setup.split("##", 1)[0]  # and the README's setup says so
    assert [ln for ln in ci if ln not in slurm] == block
