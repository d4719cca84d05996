"""codecs._state.checked_params: the accepted parameter names are cached per class, with the same
refusals on every call."""

from __future__ import annotations

import pytest

from mlflow_safeflavor.codecs import _state
from mlflow_safeflavor.codecs.lightgbm import LightGBMCodec
from mlflow_safeflavor.codecs.xgboost import XGBoostCodec
from mlflow_safeflavor.errors import MalformedArtifactError


def _classes():
    import importlib

    for codec in (XGBoostCodec, LightGBMCodec):
        for key, (module, name) in codec.classes.items():
            if key != "Booster":
                yield getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("cls", list(_classes()), ids=lambda c: c.__name__)
def test_cached_names_are_the_constructor_params(cls):
    fresh = set(cls().get_params(deep=False))
    assert fresh and _state._param_names(cls) == fresh
    assert _state._param_names(cls) is _state._param_names(cls)  # computed once


@pytest.mark.parametrize("cls", list(_classes()), ids=lambda c: c.__name__)
def test_unknown_param_refused_on_every_call(cls):
    name = next(iter(cls().get_params(deep=False)))
    good = {"params": {name: None}}
    bad = {"params": {name: None, "__class__": "os.system"}}
    for _ in range(3):  # first call fills the cache, the later ones use it
        assert _state.checked_params(good, cls, path="m") == {name: None}
        with pytest.raises(MalformedArtifactError, match=r"\['__class__'\].*does not have"):
            _state.checked_params(bad, cls, path="m")
    assert _state.checked_params(bad, cls, path="m", allow_extra=True) == {name: None, "__class__": "os.system"}
