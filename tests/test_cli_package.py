"""The command line as a package (``autoseg/cli/``): ``--help`` stays light, the entry points work, and
constants the CLI mirrors (to avoid importing heavy modules) agree with their sources."""

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import autoseg.cli
from autoseg.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "scipy")


def test_help_of_every_command_imports_no_heavy_package():
    build_parser()
    names = sorted(COMMANDS)
    code = ("import sys\nfrom autoseg import cli\n"
            f"for argv in [['--help']] + [[name, '--help'] for name in {names!r}]:\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "assert not heavy, heavy[:10]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(names) >= 13 and all(name in proc.stdout for name in names)


def test_python_dash_m_autoseg_help_imports_no_heavy_package():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "autoseg", "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and "find-best" in proc.stdout, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "autoseg.cli" in imported  # the -X importtime listing is what we think it is
    assert not [m for m in imported if m.split(".")[0] in HEAVY]


def test_console_script_entry_point_is_cli_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["autoseg"].partition(":")
    assert (module, attr) == ("autoseg.cli", "main")
    assert getattr(autoseg.cli, attr) is autoseg.cli.main


def test_mirrored_defaults_agree_with_their_sources():
    from autoseg.cli import evaluate, predict
    from autoseg.evaluation.metrics import DEFAULT_TOLERANCE_MM
    from autoseg.inference.backends import BACKENDS, PRECISIONS

    assert evaluate.DEFAULT_TOLERANCE_MM == DEFAULT_TOLERANCE_MM
    assert predict.BACKEND_CHOICES == BACKENDS and predict.PRECISION_CHOICES == PRECISIONS
