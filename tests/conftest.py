"""Settings shared by every test module."""

import os
import sys

import pytest

# ITK fixes its thread count at its first use in a process, and only one thread makes ANTs
# registration reproducible; set it before any test module imports ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(autouse=True)
def mlflow_store_as_in_a_fresh_process():
    """MLflow keeps the tracking URI a test (or `tracking.stage_run`) set for the whole process,
    and it wins over MLFLOW_TRACKING_URI; reset it after each test, so no test reads the store an
    earlier one left behind, as no job or `cesynth` command ever does."""
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # also unsets the variable
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment
