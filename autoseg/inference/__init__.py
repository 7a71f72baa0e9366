"""Inference: sliding-window prediction (``sliding``); import the submodules directly."""
