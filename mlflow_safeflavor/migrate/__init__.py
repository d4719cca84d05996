"""Migration from pickle: scan, restricted loading and conversion into the safe flavor.

:func:`scan_pickle` judges every import a pickle would make without unpickling it;
:func:`convert` turns a pickled (or MLflow built-in flavor) model into a safe-flavor model after
proving identical predictions; :func:`convert_registered` does that for registry versions.
"""

from mlflow_safeflavor.migrate.bulk import BulkRow, convert_registered
from mlflow_safeflavor.migrate.convert import ConversionResult, convert
from mlflow_safeflavor.migrate.pickles import ScanReport, restricted_load, scan_pickle
from mlflow_safeflavor.migrate.source import scan_source

__all__ = ["BulkRow", "ConversionResult", "ScanReport", "convert", "convert_registered", "restricted_load", "scan_pickle", "scan_source"]
