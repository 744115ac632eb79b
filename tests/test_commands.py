"""``sqsam`` subcommands from the ``sqsam.commands`` entry points (:mod:`sqsam_core.commands`).

The installed entry points load and add their commands; a command whose optional package is
missing still shows and says which extra to install; an import error inside sqsam's own code
is reported, never a silently missing command.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from sqsam_core import cli, commands

EXPECTED = {"annotate", "bench", "bench-annotate", "demo", "finetune", "loadtest", "serve"}


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_installed_entry_points_name_real_modules():
    eps = commands.command_entry_points()
    names = [ep.name for ep in eps]
    assert set(names) == EXPECTED and names == sorted(names)
    for ep in eps:
        assert not ep.module.startswith("sqsam_cvat"), ep  # CVAT runs as nuclio / cvat-sdk functions, no command
        register = ep.load()  # the dev environment has every extra: each loads
        import argparse

        sub = argparse.ArgumentParser().add_subparsers()
        register(sub)
        assert ep.name in sub.choices, ep
    by_name = {ep.name: ep for ep in eps}
    assert commands.declared_extras(by_name["serve"]) == ["label-studio"]
    assert commands.declared_extras(by_name["finetune"]) == ["train"]
    assert commands.declared_extras(by_name["bench"]) == []


def test_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in EXPECTED | {"predict", "automask", "eval"}:
        assert f"    {name}" in out, name


def _module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def test_missing_extra_keeps_the_command_and_names_the_extra(tmp_path, monkeypatch, capsys):
    _module(tmp_path, monkeypatch, "sqsam_needs_extra_fixture",
            "import flask_not_installed_xyz\n\ndef register(subparsers):\n    raise AssertionError\n")
    eps = [EntryPoint("serve", "sqsam_needs_extra_fixture:register [label-studio]", commands.GROUP)]
    monkeypatch.setattr(commands, "command_entry_points", lambda: eps)
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "    serve" in out and "(not installed)" in out
    code, _, err = run(["serve", "label-studio", "--port", "9090"], capsys)
    assert code == 2
    assert err.startswith("sqsam: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert 'pip install "sqsam[label-studio]"' in err and "flask_not_installed_xyz" in err


@pytest.mark.parametrize("source", [
    "from sqsam_core.geometry import no_such_name_xyz\n",  # a wrong name in our own module
    "import sqsam_core.no_such_module_xyz\n",  # a wrong module path inside sqsam
])
def test_a_bug_in_a_command_module_is_reported_not_hidden(source, tmp_path, monkeypatch, capsys):
    _module(tmp_path, monkeypatch, "sqsam_broken_fixture", source + "\ndef register(subparsers):\n    pass\n")
    eps = [EntryPoint("broken", "sqsam_broken_fixture:register", commands.GROUP)]
    monkeypatch.setattr(commands, "command_entry_points", lambda: eps)
    with pytest.raises(commands.CommandLoadError, match="'broken' command"):
        commands.register_commands(__import__("argparse").ArgumentParser().add_subparsers())
    code, _, err = run(["predict", "--help"], capsys)
    assert code == 1
    assert err.startswith("sqsam: error: the 'broken' command") and "Traceback" not in err


def test_a_package_missing_at_run_time_names_the_extra():
    """``sqsam serve label-studio`` imports werkzeug when it runs: without it, the hint, exit 2."""
    code = ("import sys; sys.modules['werkzeug'] = None; sys.modules['flask'] = None; "
            "from sqsam_core.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "serve", "label-studio", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ('sqsam: error: sqsam serve needs the label-studio extra (werkzeug is not '
                                   'installed): pip install "sqsam[label-studio]"')
