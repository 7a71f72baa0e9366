"""Command line: ``autoseg COMMAND ...`` (also ``python -m autoseg`` and ``torchrun -m autoseg``).

Thin by design: each command parses its options, resolves paths once (``--workdir``, else the
``AUTOSEG_HOME`` environment variable, else ``./autoseg_work``; this is the only place that reads
the environment), calls one function of :mod:`autoseg.api` (``evaluate`` and ``show`` call
:func:`autoseg.evaluation.evaluate_folders` and :func:`autoseg.preview.render_preview`) and prints
where the artifacts went. Heavy libraries (torch, MONAI, SciPy) are imported inside the commands, so
``autoseg --help`` is instant.

Exit codes: 0 success; 2 invalid input (bad dataset, missing or stale artifact, bad option; the
message says what to fix); 1 the command failed (disk full, a worker died, unexpected error).
``--debug`` shows the full traceback instead of the one-line message.

One module per command group, each registering its commands when imported: :mod:`.plan` (plan,
convert-msd, demo-data), :mod:`.train`, :mod:`.evaluate` (evaluate, show) and :mod:`.predict`
(predict, quantize, ensemble, export, import, postprocess, find-best). Adding commands: write a
function ``run(args) -> int | None`` and register it with ``@command(name, help, add_arguments)`` in
a module listed in ``EXTENSION_MODULES``; import torch, MONAI and SciPy inside ``run``, never at
module level or while building the parser (``tests/test_cli_package.py`` checks that ``--help``
imports none of them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autoseg.paths import os_error_message  # standard library only: keeps `autoseg --help` instant

EXIT_OK, EXIT_FAILURE, EXIT_INPUT = 0, 1, 2
DEFAULT_WORKDIR = "autoseg_work"
WORKDIR_ENV = "AUTOSEG_HOME"
# Modules that register the commands when imported, in the order `autoseg --help` lists them.
EXTENSION_MODULES: tuple[str, ...] = ("autoseg.cli.plan", "autoseg.cli.train", "autoseg.cli.evaluate",
                                      "autoseg.cli.predict")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str = ""


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
            description: str = ""):
    """Decorator registering ``run(args)`` as ``autoseg <name>``."""
    def register(run: Callable[[argparse.Namespace], int | None]):
        COMMANDS[name] = Command(name, help, add_arguments, run, description or help)
        return run
    return register


def workspace_from(args: argparse.Namespace):
    """The workspace from ``--workdir``, else ``$AUTOSEG_HOME``, else ``./autoseg_work``."""
    from autoseg.workspace import Workspace

    root = getattr(args, "workdir", None) or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Workspace(Path(root).expanduser().resolve())


def out(text: str = "") -> None:
    print(text, flush=True)


# --- shared by the command groups ---------------------------------------------------------------

def dataset_spec(dataset: str | None, args: argparse.Namespace, near: Path | None = None):
    """The :class:`DatasetSpec` named by ``-d``: a dataset.json file, a raw dataset folder, a name or
    number under ``<workdir>/raw`` or, failing that, the copy under ``<workdir>/preprocessed``.
    Without ``-d``: the dataset.json next to ``near`` (e.g. ``labelsTr/..``), when there is one."""
    from autoseg.dataset import DatasetSpec, read_json

    if dataset is None:
        if near is not None and (Path(near).parent / "dataset.json").is_file():
            return DatasetSpec.load(Path(near).resolve().parent)
        raise ValueError("name the dataset with -d DATASET (its dataset.json gives the labels and file ending)")
    p = Path(dataset)
    if p.is_file():
        return DatasetSpec.from_json(read_json(p), p, p.resolve().parent.name)
    ws = workspace_from(args)
    try:
        return DatasetSpec.load(ws.resolve_raw(dataset))
    except ValueError:
        name = ws.resolve_planned(dataset)  # raises with the list of planned datasets
        path = ws.dataset_json(name)
        return DatasetSpec.from_json(read_json(path), path, name)


# --- parser and entry point --------------------------------------------------------------------------

def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    default = None if defaults else argparse.SUPPRESS
    p.add_argument("--workdir", default=default, metavar="DIR",
                   help=f"workspace folder (default: ${WORKDIR_ENV} or ./{DEFAULT_WORKDIR})")
    p.add_argument("--debug", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="show full tracebacks on errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # a module not in this checkout: its commands are absent
            if e.name != module:
                raise
    from autoseg.core.version import __version__

    parser = argparse.ArgumentParser(prog="autoseg", parents=[_common(True)],
                                     description="Self-configuring segmentation of 3D medical volumes.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, parents=[_common(False)])
        cmd.add_arguments(p)
    return parser


def _os_message(error: OSError) -> str | None:
    """A message naming the path and the fix for file-system errors (permissions, disk full, a folder
    where a file belongs, a broken link, ...); see :func:`autoseg.paths.os_error_message`."""
    return os_error_message(error)


class _PipeSafeStream:
    """Standard output (or error) that goes quiet when its reader has gone (``autoseg plan ... | head``):
    the command finishes its work and exits with its own status, without an error message."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        try:  # the interpreter flushes the real stdout at exit: point it at /dev/null as well
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        self._stream = open(os.devnull, "w")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _exit_code(error: BaseException) -> int | None:
    """EXIT_INPUT for errors whose message tells the user what to fix, EXIT_FAILURE otherwise."""
    if isinstance(error, (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError)):
        return EXIT_INPUT  # DatasetError, ArtifactError, WorkspaceError, ImageReadError, PresetError, ...
    return EXIT_FAILURE


@contextmanager
def _input_warnings_printed():
    """Print every :class:`~autoseg.jsonfiles.InputWarning` (duplicate JSON keys, dataset warnings) as
    one ``warning: ...`` line on stderr when it is first emitted (a file read twice warns once); other
    warnings go their usual way."""
    from autoseg.jsonfiles import InputWarning

    with warnings.catch_warnings():
        shown, printed = warnings.showwarning, set()
        warnings.simplefilter("always", InputWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, InputWarning):
                if str(message) not in printed:
                    printed.add(str(message))
                    print(f"warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr  # `autoseg ... 2>&1 | head` closes both
    sys.stdout, sys.stderr = _PipeSafeStream(stdout), _PipeSafeStream(stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        with _input_warnings_printed():
            return int(COMMANDS[args.command].run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"autoseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear message, no traceback (unless --debug)
        if args.debug:
            raise
        code = _exit_code(e)
        message = str(e) or type(e).__name__
        if isinstance(e, OSError) and type(e).__str__ is OSError.__str__ and _os_message(e):
            code, message = EXIT_INPUT, _os_message(e)
        print(f"autoseg {args.command}: error: {message}", file=sys.stderr)
        if code == EXIT_FAILURE:
            print(f"({type(e).__name__}; rerun with --debug for the traceback)", file=sys.stderr)
        return code
