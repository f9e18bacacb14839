"""scripts/check_function_size.py (``make lint``): functions over 60 lines fail unless ``# size: <reason>``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_function_size.py"
_spec = importlib.util.spec_from_file_location("check_function_size", _SCRIPT)
check_function_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_function_size)


def _write_function(folder: Path, length: int, above: str = "", on_def: str = "") -> Path:
    """A module whose function ``f`` spans ``length`` lines (def line, docstring, body), after one import line."""
    lines = ["import os", above, f"def f():{on_def}", '    """Docstring."""']
    lines += ["    x = 0"] * (length - 3) + ["    return x"]
    path = folder / "mod.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = check_function_size.main([str(path.parent)])
    return rc, capsys.readouterr().out


def test_flags_61_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_function(tmp_path, 61)
    assert _run(path, capsys) == (1, f"{path}:3 f 61 lines (limit 60)\n")


def test_accepts_60_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_write_function(tmp_path, 60), capsys) == (0, "")


def test_decorators_are_not_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_write_function(tmp_path, 60, above="@staticmethod"), capsys) == (0, "")


@pytest.mark.parametrize("where", ["above", "on_def"])
def test_size_comment_with_reason_exempts(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    path = _write_function(tmp_path, 90, **{where: ("" if where == "above" else "  ") + "# size: one table of cases"})
    assert _run(path, capsys) == (0, "")


@pytest.mark.parametrize("comment", ["# size:", "# size:   "])
def test_size_comment_without_reason_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str], comment: str) -> None:
    path = _write_function(tmp_path, 61, above=comment)
    assert _run(path, capsys) == (1, f"{path}:3 f 61 lines (limit 60)\n")


def test_methods_and_nested_functions_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["class C:", "    def m(self):", "        def inner():"] + ["            x = 0"] * 60
    lines += ["            return x", "        return inner"]
    path = tmp_path / "cls.py"
    path.write_text("\n".join(lines) + "\n")
    rc, out = _run(path, capsys)
    assert rc == 1
    assert out.splitlines() == [f"{path}:2 C.m 64 lines (limit 60)", f"{path}:3 C.m.inner 62 lines (limit 60)"]
