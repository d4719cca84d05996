"""mlflow-safeflavor: log, register, serve and share MLflow models without pickle.

The public surface is the MLflow flavor convention — :func:`save_model`, :func:`log_model`,
:func:`load_model` — plus :func:`load_pyfunc`, a pyfunc loader that never follows the
``loader_module`` written in an artifact, and the :class:`SafeFlavorError` family.
"""

from mlflow_safeflavor._version import __version__
from mlflow_safeflavor.errors import (
    ConversionError,
    IntegrityError,
    InvalidArgumentError,
    MalformedArtifactError,
    PickleRefusedError,
    SafeFlavorError,
    SignatureError,
    UnsupportedModelError,
    UntrustedTypesError,
)
from mlflow_safeflavor.export import OnnxExportWarning  # imports nothing heavy
from mlflow_safeflavor.flavor import (
    SafeFlavorPyfunc,
    _load_pyfunc,
    load_model,
    load_pyfunc,
    log_model,
    save_model,
)
from mlflow_safeflavor.migrate import convert, scan_pickle
from mlflow_safeflavor.record import FLAVOR_NAME
from mlflow_safeflavor.registry import PromotionRejectedError, promote
from mlflow_safeflavor.sign import sign_model
from mlflow_safeflavor.spark import spark_udf  # imports pyspark only when called

__all__ = [
    "ConversionError",
    "FLAVOR_NAME",
    "IntegrityError",
    "InvalidArgumentError",
    "MalformedArtifactError",
    "OnnxExportWarning",
    "PickleRefusedError",
    "PromotionRejectedError",
    "SafeFlavorError",
    "SafeFlavorPyfunc",
    "SignatureError",
    "UnsupportedModelError",
    "UntrustedTypesError",
    "__version__",
    "_load_pyfunc",
    "convert",
    "load_model",
    "load_pyfunc",
    "log_model",
    "promote",
    "save_model",
    "scan_pickle",
    "sign_model",
    "spark_udf",
]
