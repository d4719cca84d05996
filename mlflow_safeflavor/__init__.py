"""mlflow-safeflavor: log, register, serve and share MLflow models without pickle.

The public surface is the MLflow flavor convention — :func:`save_model`, :func:`log_model`,
:func:`load_model` — plus :func:`load_pyfunc`, a pyfunc loader that never follows the
``loader_module`` written in an artifact, and the :class:`SafeFlavorError` family.
"""

from mlflow_safeflavor._version import __version__
from mlflow_safeflavor.errors import (
    IntegrityError,
    InvalidArgumentError,
    MalformedArtifactError,
    SafeFlavorError,
    SignatureError,
    UnsupportedModelError,
    UntrustedTypesError,
)
from mlflow_safeflavor.flavor import (
    SafeFlavorPyfunc,
    _load_pyfunc,
    load_model,
    load_pyfunc,
    log_model,
    save_model,
)
from mlflow_safeflavor.record import FLAVOR_NAME
from mlflow_safeflavor.registry import PromotionRejectedError, promote
from mlflow_safeflavor.signing import sign_model
from mlflow_safeflavor.spark import spark_udf  # imports pyspark only when called

__all__ = [
    "FLAVOR_NAME",
    "IntegrityError",
    "InvalidArgumentError",
    "MalformedArtifactError",
    "PromotionRejectedError",
    "SafeFlavorError",
    "SafeFlavorPyfunc",
    "SignatureError",
    "UnsupportedModelError",
    "UntrustedTypesError",
    "__version__",
    "_load_pyfunc",
    "load_model",
    "load_pyfunc",
    "log_model",
    "promote",
    "save_model",
    "sign_model",
    "spark_udf",
]
