"""The load engine: download (registry tag check on by default) and the decision steps.

Every path that decides about a model — ``load_model``, ``load_pyfunc``, MLflow's ``_load_pyfunc``,
``verify``, ``inspect``, ``sign``, ``serve``, the registry gate and both Spark UDFs — goes through
:func:`download` and :func:`run` here, so they all decide by the same steps in the same order.
"""

from mlflow_safeflavor.loader.fetch import download
from mlflow_safeflavor.loader.pipeline import STEP_NAMES, check_local, load_local, run
from mlflow_safeflavor.loader.versions import check_registered_copy
from mlflow_safeflavor.loader.steps import LOADER_MODULE, PICKLE_SUFFIXES, Options, Progress, model_root

__all__ = [
    "LOADER_MODULE",
    "PICKLE_SUFFIXES",
    "STEP_NAMES",
    "Options",
    "Progress",
    "check_local",
    "check_registered_copy",
    "download",
    "load_local",
    "model_root",
    "run",
]
