"""Shared test helpers live next to this file (e.g. ``dicom_series``); pytest puts this folder on
``sys.path`` because of this conftest, so any test can ``import dicom_series``."""
