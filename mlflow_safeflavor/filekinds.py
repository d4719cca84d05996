"""File names that mean "this is a pickle", in one place for every layer.

The loader refuses a model directory holding any of them (a safe-flavor model never contains a
pickle); migration accepts them as conversion sources and scans them. One tuple, so the two can
never disagree about what a pickle is called.
"""

from __future__ import annotations

PICKLE_SUFFIXES: tuple[str, ...] = (
    ".pkl", ".pickle", ".joblib", ".pck", ".pcl", ".pt", ".pth", ".dill", ".cloudpickle", ".sav",
)
