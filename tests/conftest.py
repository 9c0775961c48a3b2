"""Settings shared by every test module."""

import os
import sys

import pytest

# ITK fixes its thread count at its first use in a process, and only one thread makes ANTs
# registration reproducible; set it before any test module imports ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


TRACKING_URI_AT_START = os.environ.get("MLFLOW_TRACKING_URI")


def _reset_mlflow_store(environment: str | None) -> None:
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # also unsets the variable
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if environment is not None:
        os.environ["MLFLOW_TRACKING_URI"] = environment


@pytest.fixture(autouse=True, scope="module")
def mlflow_store_as_at_the_start_after_each_module():
    """A module-scoped fixture (training in-process, say) sets the store before the per-test
    reset below takes its snapshot; reset to the session's start once the module is done."""
    yield
    _reset_mlflow_store(TRACKING_URI_AT_START)


@pytest.fixture(autouse=True)
def mlflow_store_as_in_a_fresh_process():
    """MLflow keeps the tracking URI a test (or `tracking.stage_run`) set for the whole process,
    and it wins over MLFLOW_TRACKING_URI; reset it after each test, so no test reads the store an
    earlier one left behind, as no job or `cesynth` command ever does."""
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    _reset_mlflow_store(environment)
