"""Caps on what a LightGBM text model may hold. LightGBM itself refuses num_leaves > 131072 when
training."""

from __future__ import annotations

MAX_LEAVES = 131_072
MAX_TREES = 2_000_000
MAX_CLASSES = 100_000
MAX_FEATURES = 50_000_000
# dump_model()/pred_contrib recurse once per level in C++ (and json.loads once more in Python).
MAX_DEPTH = 2_000
