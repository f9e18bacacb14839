"""Every extension point has the combiners' shape — one module + one config, a registry, and this common test that
picks up every new entry: modes (``configs/mode/``) and diagnostics (``configs/diagnostics/``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import yaml

import mtl_bench.diagnostics
from mtl_bench.diagnostics.base import Diagnostic
from mtl_bench.modes import MODES, Mode
from mtl_bench.modes.base import mode_class
from tests.conftest import REPO, compose_cfg

MODE_CONFIGS = sorted(p.stem for p in (REPO / "configs" / "mode").glob("*.yaml"))


def test_every_registered_mode_has_its_config_and_back():
    assert sorted(MODES) == MODE_CONFIGS


@pytest.mark.parametrize("name", MODE_CONFIGS)
def test_a_mode_config_composes_to_its_registered_class(name):
    cfg = compose_cfg([f"mode={name}"])
    cls = mode_class(cfg.mode)
    assert cls is MODES[name] and issubclass(cls, Mode) and cls.name == name == cfg.mode.name


def diagnostic_classes() -> list[type[Diagnostic]]:
    found = []
    for info in pkgutil.iter_modules(mtl_bench.diagnostics.__path__):
        module = importlib.import_module(f"mtl_bench.diagnostics.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Diagnostic) and c is not Diagnostic and c.__module__ == module.__name__]
    return found


def test_every_diagnostic_has_an_entry_in_the_config_group():
    entries = yaml.safe_load((REPO / "configs" / "diagnostics" / "default.yaml").read_text())
    targets = {e["_target_"] for e in entries.values()}
    classes = {f"{c.__module__}.{c.__qualname__}" for c in diagnostic_classes()}
    assert classes and classes == targets
    assert all(e.get("enabled") is False for e in entries.values())  # opt-in: a plain run pays for none


@pytest.mark.parametrize("cls", diagnostic_classes(), ids=lambda c: c.__name__)
def test_a_diagnostic_declares_a_unique_key_and_directions_under_it(cls):
    diag = cls()
    assert diag.key and all(isinstance(k, str) and (v is None or isinstance(v, bool)) for k, v in diag.metric_directions().items())
    prefixes = {k.split("/", 1)[0] for k in diag.metric_directions()}
    assert len(prefixes) == 1  # one namespace per diagnostic (W&B sections, the report's panels)
    assert cls.state_dict is not Diagnostic.state_dict and cls.load_state_dict is not Diagnostic.load_state_dict  # resumable
