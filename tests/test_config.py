"""The data root is defined once (sqsam_core.config.data_root): $SQSAM_DATA, else ../shared/data."""

from __future__ import annotations

from pathlib import Path

from sqsam_core.config import DEFAULT_DATA, data_root
from tests.conftest import DATA, REPO


def test_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SQSAM_DATA", str(tmp_path))
    assert data_root() == tmp_path and data_root(REPO) == tmp_path


def test_default_is_the_repository_sibling(monkeypatch):
    monkeypatch.delenv("SQSAM_DATA", raising=False)
    assert data_root() == Path("../shared/data") == DEFAULT_DATA
    assert data_root(REPO).resolve() == (REPO.parent / "shared" / "data").resolve()


def path_literals(source: str) -> list[int]:
    """Lines of string literals that are the data path itself (prose in docstrings and help texts may name it)."""
    import ast

    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "shared/data" in node.value
            and not any(c.isspace() for c in node.value)]


def test_tests_and_command_defaults_use_it():
    """No argparse default or constant outside sqsam_core.config spells the data path again."""
    assert DATA == data_root(REPO)
    assert path_literals('p.add_argument("--data", default=Path("../shared/data"))\n"""Reads ../shared/data."""') == [1]
    offenders = [f"{path.relative_to(REPO)}:{line}"
                 for folder in (REPO / "sqsam_core", REPO / "models" / "sqsam_train", REPO / "integrations", REPO / "tests")
                 for path in folder.rglob("*.py") if path not in (REPO / "sqsam_core" / "config.py", Path(__file__))
                 for line in path_literals(path.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_bench_annotate_reads_the_data_root(monkeypatch, tmp_path, capsys):
    from sqsam_core import cli

    monkeypatch.setenv("SQSAM_DATA", str(tmp_path))
    assert cli.main(["bench-annotate"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert cli.main(["bench-annotate", "--data", str(tmp_path / "given")]) == 2
    assert str(tmp_path / "given") in capsys.readouterr().err
