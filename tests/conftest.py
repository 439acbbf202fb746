"""Shared test set-up, kept minimal: each area has its own conftest in its subfolder."""

import os

# Nothing in the suite may phone home.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
