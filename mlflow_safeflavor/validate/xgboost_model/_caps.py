"""Caps on what an XGBoost model file may hold: they bound memory and recursion for hostile files and
are far above real models."""

from __future__ import annotations

from mlflow_safeflavor.validate._common import INT32_MAX

MAX_TREES = 1_000_000
MAX_TOTAL_NODES = 100_000_000
MAX_TREE_NODES = INT32_MAX
MAX_TREE_DEPTH = 10_000  # XGBoost 3.2 overflows the stack in MaxDepth() somewhere below 1e6.
MAX_FEATURES = 100_000_000  # the predictor allocates num_feature slots per thread
MAX_OUTPUTS = 1_000_000
MAX_NESTING = 64  # XGBoost models nest about 8 deep
MAX_UBJ_VALUES = 20_000_000  # generic (non-typed) UBJ values decoded into Python objects
MAX_CATEGORY = 1 << 24  # XGBoost's OutOfRangeCat(): categories are exact in float32
MAX_CAT_BITSET_BYTES = 512 << 20  # bitsets XGBoost builds for categorical splits while loading
