"""The bottom layer: what every stage may use and that uses no stage.

:mod:`.runtime` (device, precision and seeds), :mod:`.checkpoint` (the checkpoint file and the typed
record of what a model is), :mod:`.fileops` (atomic writes, staged folders, output-folder locking)
and :mod:`.runlock` (one process per run folder). Import the submodules directly; this package
imports nothing on its own. The layers above are listed in ``docs/architecture.md``.
"""
