"""Training: patch sampling (``sampling``), augmentation (``augmentation``), batch loading (``loader``),
and the trainer loop. Import the submodules directly; this package imports nothing on its own."""
