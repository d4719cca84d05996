"""Checks of a CatBoost ``.cbm`` file before CatBoost parses it (entry point for the codec).

The container (``CBM1``, the declared core size, the model parts after the core), the model core's
FlatBuffer and every index, offset, count and size CatBoost follows in it — trees, leaves,
features, borders, one-hot and CTR references, the CTR value tables, the option strings — are
checked in pure Python and NumPy by :mod:`mlflow_safeflavor.validate.catboost`.
"""

from __future__ import annotations

from mlflow_safeflavor.validate.catboost import validate

__all__ = ["validate"]
