"""The ``sqsam`` subcommands other modules contribute, found through the ``sqsam.commands`` entry points.

pyproject.toml registers each as ``NAME = "module:function [extra]"``: ``function(subparsers)``
adds the command ``NAME`` with ``subparsers.add_parser(NAME, ...)`` and
``set_defaults(func=handler)``, where ``handler(args) -> int | None`` returns the exit code
(None = 0) and raises :class:`~sqsam_core.errors.SqsamError` for bad input. ``[extra]`` names
the optional dependencies the module needs.

Loading a command's module can fail in two ways, told apart by what is missing:

* a third-party package is not installed (``ModuleNotFoundError`` for a module outside sqsam's
  own packages, e.g. flask without the ``label-studio`` extra): the command still shows in
  ``--help``, and running it is an error that says what to install
  (``pip install "sqsam[label-studio]"``);
* anything else (an ``ImportError`` inside sqsam's own modules is a bug): :class:`CommandLoadError`,
  which the command line reports instead of hiding the command.

A command that imports its optional packages only when it runs (``sqsam serve label-studio``
imports werkzeug then) gets the same hint from :func:`missing_extra_hint` when one is missing.
"""

from __future__ import annotations

import argparse
import re
from importlib.metadata import EntryPoint, entry_points
from typing import Iterable

from sqsam_core.errors import CliError, SqsamError

GROUP = "sqsam.commands"
#: sqsam's own top-level packages: a missing module among them is a bug, not a missing extra.
OWN_PACKAGES = ("sqsam_core", "sqsam_train", "sqsam_label_studio", "sqsam_cvat")


class CommandLoadError(SqsamError):
    """A command's module failed to import for a reason other than a missing optional package."""

    status = 500


def command_entry_points() -> list[EntryPoint]:
    """The installed ``sqsam.commands`` entry points, one per name, sorted by name."""
    by_name: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        by_name.setdefault(ep.name, ep)
    return [by_name[name] for name in sorted(by_name)]


def declared_extras(ep: EntryPoint) -> list[str]:
    """The extras in ``module:function [extra, ...]`` (``EntryPoint.extras`` splits ``label-studio``
    at the hyphen on Python 3.11, so the value is read here)."""
    match = re.search(r"\[([^\]]*)\]\s*$", ep.value)
    return [e.strip() for e in match.group(1).split(",") if e.strip()] if match else []


def missing_package(exc: ImportError) -> str | None:
    """The third-party module whose absence ``exc`` reports, or None when ``exc`` is anything else."""
    if type(exc) is not ModuleNotFoundError or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return None if top in OWN_PACKAGES else top


def missing_extra_hint(command: str, package: str) -> str:
    """What to install for ``sqsam COMMAND``, which needs ``package`` (found by the command's entry point)."""
    for ep in command_entry_points():
        if ep.name == command:
            return install_hint(ep, package)
    return f"sqsam {command} needs the Python package {package}, which is not installed"


def install_hint(ep: EntryPoint, package: str) -> str:
    extras = declared_extras(ep)
    if extras:
        spec = ",".join(extras)
        return f'sqsam {ep.name} needs the {spec} extra ({package} is not installed): pip install "sqsam[{spec}]"'
    return f"sqsam {ep.name} needs the Python package {package}, which is not installed"


def register_commands(subparsers, eps: Iterable[EntryPoint] | None = None) -> list[str]:
    """Add every command of ``eps`` (default: the installed entry points) to ``subparsers``.

    Returns the modules whose commands were added; a command whose optional dependencies are
    missing gets a stand-in (see the module docstring). Raises :class:`CommandLoadError`
    when a module fails to import for any other reason.
    """
    registered = []
    for ep in command_entry_points() if eps is None else eps:
        try:
            register = ep.load()
        except ImportError as exc:
            package = missing_package(exc)
            if package is None:
                raise CommandLoadError(f"the {ep.name!r} command ({ep.value}) cannot be loaded: "
                                       f"{type(exc).__name__}: {exc}") from exc
            _add_stand_in(subparsers, ep.name, install_hint(ep, package))
            continue
        register(subparsers)
        registered.append(ep.module)
    return registered


def _add_stand_in(subparsers, name: str, hint: str) -> None:
    """A command that only says what to install (it accepts any arguments, so the hint always shows)."""
    if name in getattr(subparsers, "choices", {}):
        return
    p = subparsers.add_parser(name, help=f"(not installed) {hint.split(': ')[-1]}", description=hint, add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    def not_installed(_args) -> int:
        raise CliError(hint)

    p.set_defaults(func=not_installed)
