"""Config precedence: defaults < file (or a ready instance) < explicit options."""

from dataclasses import dataclass

import pytest

from spatialprobe.config import resolve
from spatialprobe.errors import ConfigError


@dataclass
class Cfg:
    a: int = 1
    b: str = "x"
    c: float = 0.5


def test_defaults_then_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a: 2\nb: y\n")
    assert resolve(Cfg) == Cfg(1, "x", 0.5)
    assert resolve(Cfg, f) == Cfg(2, "y", 0.5)
    assert resolve(Cfg, f, b="z", c=None) == Cfg(2, "z", 0.5)  # None means "flag not given"


def test_instance_instead_of_file():
    assert resolve(Cfg, Cfg(a=7, b="q"), c=0.25) == Cfg(7, "q", 0.25)


def test_unknown_keys_named(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"a": 2, "nope": 1}')
    with pytest.raises(ConfigError, match="nope"):
        resolve(Cfg, f)
    with pytest.raises(ConfigError, match="zzz"):
        resolve(Cfg, zzz=3)
