"""The inputs and outputs of ``predict`` beyond a folder of image files: DICOM series, output types,
per-structure statistics and sharding (``--num-parts``/``--part-id``).

The folder pipeline (:func:`autoseg.inference.pipeline.predict_folder`) reads image files and writes
label maps in their format. This module wraps it without changing it:

1. **discover** the cases of ``-i``: image files (``{case}_{XXXX}{ending}``/``{case}{ending}``) and DICOM
   sources: a sub-folder or ``.zip`` holding DICOM files (recursively), and DICOM files lying directly
   in ``-i`` (a source named after ``-i`` itself). Case names of DICOM sources:

   - one image series in the source: ``{source}`` (folder name, or zip name without ``.zip``);
   - several, for a one-channel model: ``{source}_series{SeriesNumber}`` each (``{source}_{uid8}``, the
     first 8 hex digits of the SHA-1 of the SeriesInstanceUID, when series numbers are missing or repeat);
   - several, for a multi-channel model: ``--series-channels`` gives one pattern per model channel
     (a glob on SeriesDescription, case-insensitive, or a SeriesNumber); the source is one case
     ``{source}`` whose channel ``k`` is the one series that pattern ``k`` matches. A folder named
     ``{case}_{XXXX}`` holding one series is channel ``XXXX`` of case ``{case}`` (the file rule).

2. **select**: sort the case names, keep part ``K`` of ``N`` (case ``i`` goes to part ``i mod N``), leave
   out cases whose outputs exist (unless ``--overwrite``);
3. **stage** them in a temporary folder: image files linked, each DICOM series converted to NRRD (double
   precision geometry) by :mod:`autoseg.io.dicom`; a series that cannot be read fails its case only;
4. **predict** the staged folder with the folder pipeline;
5. **write** each label map as the output type (:mod:`autoseg.inference.outputs`), atomically, and
   the statistics when asked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

from autoseg.core.fileops import atomic_path, writing_into
from autoseg.evaluation.statistics import StatisticsReport, label_statistics, summary_lines, write_statistics
from autoseg.io import file_ending, read_image, read_volume, strip_ending
from autoseg.io.dicom import Series, extract_zip, holds_dicom, is_dicom_file, scan_series, write_series_as
from autoseg.inference.choice import PredictOptions
from autoseg.inference.outputs import OutputContext, output_ending, output_problem, write_output
from autoseg.inference.pipeline import PredictError, PredictReport

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # the file rule of autoseg.inference.pipeline
STAGED_DICOM_ENDING = ".nrrd"  # NRRD stores the geometry in double precision (NIfTI: float32)


class SourceError(ValueError):
    """The predict request itself is invalid (sharding or channel options); the message says the fix."""


def needs_staging(options: PredictOptions, in_dir: Path) -> bool:
    """Whether ``predict`` must go through this module (else the folder pipeline runs as is)."""
    return (options.output_type is not None or options.num_parts > 1 or options.statistics
            or any(not file_ending(p) and _is_dicom_entry(p) for p in _entries(in_dir)))


@dataclass(frozen=True)
class StagedFile:
    """One input file of a case as the folder pipeline will see it: ``name`` in the staging folder, made
    from the user's image file ``path`` or the DICOM ``series``."""

    name: str
    path: Path | None = None
    series: Series | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else self.series.describe()


@dataclass(frozen=True)
class SourceCase:
    case_id: str
    files: tuple[StagedFile, ...] = ()
    problem: str = ""

    @property
    def series(self) -> Series | None:
        """The first channel's DICOM series (what DICOM outputs reference), None for image files."""
        first = sorted(self.files, key=lambda f: f.name)
        return first[0].series if first else None


def check_shard(num_parts: int, part_id: int) -> None:
    if num_parts < 1:
        raise SourceError(f"--num-parts {num_parts}: give at least 1")
    if not 0 <= part_id < num_parts:
        raise SourceError(f"--part-id {part_id}: must be 0 to {num_parts - 1} for --num-parts {num_parts}")


def shard(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """Part ``part_id`` of the sorted ``case_ids``: every ``num_parts``-th case from index ``part_id``,
    so the parts are disjoint, their union is every case and their sizes differ by at most one."""
    check_shard(num_parts, part_id)
    return sorted(case_ids)[part_id::num_parts]


def _entries(in_dir: Path) -> list[Path]:
    return [p for p in sorted(Path(in_dir).iterdir()) if not p.name.startswith(".")] if Path(in_dir).is_dir() else []


def _is_dicom_entry(p: Path) -> bool:
    return (p.is_file() and is_dicom_file(p)) or ((p.is_dir() or p.suffix.lower() == ".zip") and holds_dicom(p))


def _case_of(name: str) -> str:
    stem = strip_ending(name, file_ending(name) or STAGED_DICOM_ENDING)
    m = _CHANNEL_RE.match(stem)
    return m["case"] if m else stem


def _series_suffix(series: Series, all_series: list[Series]) -> str:
    numbers = [s.number for s in all_series]
    if series.number is not None and numbers.count(series.number) == 1:
        return f"series{series.number}"
    return hashlib.sha1(series.uid.encode()).hexdigest()[:8]


def _matches(series: Series, pattern: str) -> bool:
    if pattern.isdigit():
        return series.number == int(pattern)
    return fnmatch(series.description.lower(), pattern.lower())


def _dicom_files(source: str, images: list[Series], channels: tuple[str, ...],
                 patterns: tuple[str, ...]) -> tuple[list[StagedFile], str]:
    """The staged files of one DICOM source's image series, or the problem that stops it."""
    if patterns:
        picked = []
        for k, pattern in enumerate(patterns):
            hits = [s for s in images if _matches(s, pattern)]
            if len(hits) != 1:
                found = "; ".join(f"#{s.number} '{s.description}'" for s in images)
                return [], (f"--series-channels pattern '{pattern}' (channel {channels[k]}) matches {len(hits)} "
                            f"series of {source}, not one (series there: {found})")
            picked.append(StagedFile(f"{source}_{k:04d}{STAGED_DICOM_ENDING}", series=hits[0]))
        return picked, ""
    if len(images) == 1:
        return [StagedFile(f"{source}{STAGED_DICOM_ENDING}", series=images[0])], ""
    if len(channels) > 1:
        return [], (f"{source} holds {len(images)} image series but the model takes {len(channels)} channels "
                    f"({', '.join(channels)}); say which series is which with --series-channels")
    return [StagedFile(f"{source}_{_series_suffix(s, images)}{STAGED_DICOM_ENDING}", series=s) for s in images], ""


def _scan_source(entry: Path, name: str, scratch: Path, loose: list[Path] | None = None) -> list[Series]:
    if loose is not None:  # DICOM files directly in -i: scan a folder of links to them
        folder = scratch / f"loose-{name}"
        folder.mkdir(parents=True)
        for k, p in enumerate(loose):
            os.symlink(p.resolve(), folder / f"{k:06d}.dcm")
        return scan_series(folder, f"{entry} (DICOM files)")
    if entry.is_dir():
        return scan_series(entry, str(entry))
    return scan_series(extract_zip(entry, scratch / f"zip-{name}"), str(entry))


def discover(in_dir: Path, channels: tuple[str, ...], patterns: tuple[str, ...], scratch: Path
             ) -> tuple[list[SourceCase], list[str]]:
    """Every case of ``in_dir`` (sorted by name) and the notes on DICOM objects set aside. ``scratch``
    takes unpacked zips."""
    in_dir = Path(in_dir)
    if patterns and len(patterns) != len(channels):
        raise SourceError(f"--series-channels: give one pattern per model channel ({len(channels)}: "
                          f"{', '.join(channels)}), got {len(patterns)}")
    files: list[StagedFile] = []
    problems: dict[str, str] = {}
    notes: list[str] = []
    sources = [(p, p.stem if p.is_file() else p.name, None) for p in _entries(in_dir)
               if not (p.is_file() and (file_ending(p) or is_dicom_file(p))) and _is_dicom_entry(p)]
    loose = [p for p in _entries(in_dir) if p.is_file() and not file_ending(p) and is_dicom_file(p)]
    if loose:
        sources.append((in_dir, in_dir.resolve().name, loose))
    files += [StagedFile(p.name, path=p) for p in _entries(in_dir) if p.is_file() and file_ending(p)]
    for entry, name, members in sources:
        try:
            series = _scan_source(entry, name, scratch, members)
        except ValueError as e:  # a damaged file or zip fails this source only
            problems[name] = str(e)
            continue
        notes += [f"{s.describe()}: {s.skip}; left out" for s in series if s.skip]
        images = [s for s in series if not s.skip]
        if not images:
            problems[name] = f"{entry}: no image series to segment (found: {', '.join(s.describe() for s in series)})"
            continue
        staged, problem = _dicom_files(name, images, channels, patterns)
        if problem:
            problems[name] = problem
        files += staged
    cases: dict[str, list[StagedFile]] = {}
    for f in files:
        cases.setdefault(_case_of(f.name), []).append(f)
    ids = sorted(set(cases) | set(problems))
    return [SourceCase(c, tuple(cases.get(c, ())), problems.get(c, "")) for c in ids], notes


@dataclass(frozen=True)
class Selection:
    todo: tuple[SourceCase, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def output_name(case: SourceCase, options: PredictOptions) -> str:
    """The label-map file name of ``case``."""
    dicom = case.series is not None
    ending = file_ending(case.files[0].name) if case.files and not dicom else ""
    return case.case_id + output_ending(options.output_type, ending, dicom)


def select(cases: list[SourceCase], options: PredictOptions, out_dir: Path, overwrite: bool,
           save_probabilities: bool) -> Selection:
    """This part's cases, split into to do, skipped (outputs exist) and failed before predicting."""
    mine = set(shard([c.case_id for c in cases], options.num_parts, options.part_id))
    todo, skipped, failed = [], [], []
    for c in (c for c in cases if c.case_id in mine):
        problem = c.problem or output_problem(options.output_type, c.series is not None)
        if problem:
            failed.append((c.case_id, problem))
            continue
        done = (out_dir / output_name(c, options)).is_file() and (
            not save_probabilities or (out_dir / f"{c.case_id}.npz").is_file())
        (skipped.append(c.case_id) if done and not overwrite else todo.append(c))
    return Selection(tuple(todo), tuple(skipped), tuple(failed))


def stage(cases: tuple[SourceCase, ...], folder: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Link or convert the files of ``cases`` into ``folder``. Returns the message names (staged path ->
    what the user gave) and the cases whose DICOM series could not be read."""
    folder.mkdir(parents=True, exist_ok=True)
    names, failed = {}, []
    for case in cases:
        try:
            for f in case.files:
                target = folder / f.name
                if f.path is not None:
                    os.symlink(Path(f.path).resolve(), target)
                else:
                    write_series_as(f.series, target)
                names[str(target)] = f.describe()
        except ValueError as e:
            failed.append((case.case_id, str(e)))
            for f in case.files:
                (folder / f.name).unlink(missing_ok=True)
    return names, failed


def _readable(message: str, names: dict[str, str]) -> str:
    for staged, given in names.items():
        message = message.replace(staged, given)
    return message


RunFolder = Callable[[Path, Path], PredictReport]  # (staged input folder, staged output folder) -> report


@dataclass(frozen=True)
class SourceRequest:
    """What :func:`predict_sources` needs to know of the model and the run besides the folders."""

    channels: tuple[str, ...]  # the model's channel names
    label_values: tuple[tuple[str, int], ...]  # (name, value in the label map) of each foreground label
    context: OutputContext
    options: PredictOptions = PredictOptions()
    overwrite: bool = False
    save_probabilities: bool = False


def predict_sources(in_dir: Path, out_dir: Path, request: SourceRequest, run_folder: RunFolder) -> PredictReport:
    """Predict the cases of ``in_dir`` (see the module docstring) with ``run_folder`` (the folder pipeline
    bound to a model) into ``out_dir``. Returns the folder pipeline's report for the whole request
    (``notes``: DICOM objects left out; ``summary``: the statistics)."""
    in_dir, out_dir, options = Path(in_dir), Path(out_dir), request.options
    if not in_dir.is_dir():
        raise PredictError(f"{in_dir}: input folder not found")
    check_shard(options.num_parts, options.part_id)
    if out_dir.resolve() == in_dir.resolve():
        raise PredictError(f"{out_dir}: write predictions to another folder than the input images")
    with tempfile.TemporaryDirectory(prefix="autoseg-predict-") as tmp:
        tmp = Path(tmp)
        cases, notes = discover(in_dir, request.channels, options.series_channels, tmp / "scratch")
        if not cases:
            raise PredictError(f"{in_dir}: no images to predict (image files {{case}}_0000.nii.gz ..., or folders/zips "
                               "of DICOM files)")
        chosen = select(cases, options, out_dir, request.overwrite, request.save_probabilities)
        names, failed = stage(chosen.todo, tmp / "in")
        failed = list(chosen.failed) + failed
        staged = [c for c in chosen.todo if c.case_id not in dict(failed)]
        report = run_folder(tmp / "in", tmp / "out") if staged else PredictReport(out_dir=out_dir)
        failed += [(c, _readable(m, names)) for c, m in report.failed]
        written, summary = _write_outputs(staged, set(report.written), tmp, out_dir, request, failed)
    return replace(report, out_dir=out_dir, written=tuple(sorted(written)), skipped=chosen.skipped,
                   failed=tuple(sorted(failed)), notes=tuple(notes), summary=tuple(summary))


def _write_outputs(staged: list[SourceCase], predicted: set[str], tmp: Path, out_dir: Path, request: SourceRequest,
                   failed: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Write each predicted case's outputs from ``tmp/out`` into ``out_dir`` (failures appended to
    ``failed``) and the statistics; returns the cases written and the console summary."""
    options = request.options
    written, stats = [], {}
    by_id = {c.case_id: c for c in staged}
    outputs = [output_name(c, options) for c in staged] + [f"{c.case_id}.npz" for c in staged]
    with writing_into(out_dir, outputs):
        for case_id in sorted(predicted):
            case = by_id[case_id]
            inputs = sorted(tmp / "in" / f.name for f in case.files)
            label_file = tmp / "out" / (case_id + file_ending(inputs[0].name))
            try:
                write_output(label_file, inputs[0], out_dir / output_name(case, options), options.output_type,
                             case.series, request.context)
                if request.save_probabilities:
                    with atomic_path(out_dir / f"{case_id}.npz", suffix=".npz") as t:
                        shutil.copyfile(tmp / "out" / f"{case_id}.npz", t)
                if options.statistics:
                    labels, geometry = read_volume(label_file)
                    image, _ = read_image(inputs)
                    stats[case_id] = label_statistics(labels, geometry.spacing, geometry.affine_array,
                                                      list(request.label_values), image, request.channels)
                written.append(case_id)
            except (ValueError, OSError) as e:
                failed.append((case_id, str(e)))
    if not (options.statistics and stats):
        return written, []
    stem = "statistics" if options.num_parts == 1 else f"statistics_part{options.part_id}of{options.num_parts}"
    report = StatisticsReport(cases=stats)
    json_path, csv_path = write_statistics(report, out_dir, stem)
    return written, summary_lines(report) + [f"statistics: {json_path}, {csv_path}"]
