"""Benign and malicious pickles for the migration tests (built at test time, never committed).

Benign: real models from the four libraries dumped with pickle protocols 2–5 and joblib (plain and
compressed). Malicious: each payload would create ``marker`` if anything ran it; the tests check
that the marker never appears and that the offending import is named.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class Benign:
    name: str
    build: Callable[[], tuple[Any, Any]]  # -> (fitted model, sample input)
    dump: str  # "pickle:N" or "joblib[:compress]"


def _clf_data(n=300, k=6, seed=0):
    from sklearn.datasets import make_classification

    return make_classification(n_samples=n, n_features=k, n_informative=4, random_state=seed)


def _reg_data(n=300, k=6, seed=0):
    from sklearn.datasets import make_regression

    return make_regression(n_samples=n, n_features=k, noise=0.5, random_state=seed)


def _rf():
    from sklearn.ensemble import RandomForestClassifier

    X, y = _clf_data()
    return RandomForestClassifier(n_estimators=15, random_state=np.random.RandomState(0)).fit(X, y), X[:60]


def _hgb():
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = _clf_data()
    return HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X, y), X[:60]


def _gbr():
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = _reg_data()
    return GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X, y), X[:60]


def _column_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = _clf_data()
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    df["city"] = np.where(X[:, 0] > 0, "paris", "lyon")
    pre = ColumnTransformer([("num", StandardScaler(), [f"f{i}" for i in range(X.shape[1])]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])])
    model = Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=500))]).fit(df, np.where(y == 1, "yes", "no"))
    return model, df.head(60)


def _knn_kd():
    from sklearn.neighbors import KNeighborsClassifier

    X, y = _clf_data()
    return KNeighborsClassifier(algorithm="kd_tree").fit(X, y), X[:60]


def _knn_ball():
    from sklearn.neighbors import KNeighborsRegressor

    X, y = _reg_data()
    return KNeighborsRegressor(algorithm="ball_tree").fit(X, y), X[:60]


def _svc():
    from sklearn.svm import SVC

    X, y = _clf_data()
    return SVC().fit(X, y), X[:60]


def _xgb_clf():
    import xgboost

    X, y = _clf_data()
    return xgboost.XGBClassifier(n_estimators=12, max_depth=3).fit(X, y), X[:60]


def _xgb_reg():
    import xgboost

    X, y = _reg_data()
    return xgboost.XGBRegressor(n_estimators=12, max_depth=3).fit(X, y), X[:60]


def _xgb_booster():
    import xgboost

    X, y = _clf_data()
    return xgboost.train({"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(X, label=y), 10), X[:60]


def _lgbm_clf():
    import lightgbm

    X, y = _clf_data()
    return lightgbm.LGBMClassifier(n_estimators=12, verbose=-1).fit(X, y), X[:60]


def _lgbm_reg():
    import lightgbm

    X, y = _reg_data()
    return lightgbm.LGBMRegressor(n_estimators=12, verbose=-1).fit(X, y), X[:60]


def _lgbm_booster():
    import lightgbm

    X, y = _clf_data()
    return lightgbm.train({"objective": "binary", "verbose": -1}, lightgbm.Dataset(X, label=y), 10), X[:60]


def _cb_clf():
    import catboost

    X, y = _clf_data()
    return catboost.CatBoostClassifier(iterations=15, depth=3, verbose=0, allow_writing_files=False).fit(X, y), X[:60]


def _cb_reg():
    import catboost

    X, y = _reg_data()
    return catboost.CatBoostRegressor(iterations=15, depth=3, verbose=0, allow_writing_files=False).fit(X, y), X[:60]


def _xgb_pipeline():
    import xgboost
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _clf_data()
    return make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=8, max_depth=3)).fit(X, y), X[:60]


BENIGN: list[Benign] = [
    Benign("random_forest", _rf, "pickle:2"),
    Benign("hist_gradient_boosting", _hgb, "pickle:3"),
    Benign("gradient_boosting_regressor", _gbr, "pickle:4"),
    Benign("column_pipeline_strings", _column_pipeline, "pickle:5"),
    Benign("knn_kd_tree", _knn_kd, "joblib"),
    Benign("knn_ball_tree", _knn_ball, "joblib:xz"),
    Benign("svc", _svc, "joblib:zlib"),
    Benign("xgb_classifier", _xgb_clf, "pickle:5"),
    Benign("xgb_regressor", _xgb_reg, "pickle:2"),
    Benign("xgb_booster", _xgb_booster, "joblib:gzip"),
    Benign("lgbm_classifier", _lgbm_clf, "pickle:4"),
    Benign("lgbm_regressor", _lgbm_reg, "joblib:bz2"),
    Benign("lgbm_booster", _lgbm_booster, "pickle:3"),
    Benign("catboost_classifier", _cb_clf, "pickle:4"),
    Benign("catboost_regressor", _cb_reg, "joblib:lzma"),
    Benign("xgb_in_pipeline", _xgb_pipeline, "pickle:5"),
]


def dump_benign(case: Benign, directory: Path) -> tuple[Path, Any, Any]:
    """Fit and dump one benign case; returns (file, model, sample)."""
    model, sample = case.build()
    kind, _, arg = case.dump.partition(":")
    if kind == "pickle":
        path = directory / f"{case.name}.pkl"
        path.write_bytes(pickle.dumps(model, protocol=int(arg)))
    else:
        import joblib

        path = directory / f"{case.name}.joblib"
        joblib.dump(model, path, compress=(arg, 3) if arg else 0)
    return path, model, sample


# ------------------------------------------------------------------------------------ malicious

def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


class _Reduce:
    """Pickles as ``func(*args)``; nothing runs at dump time."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _global(module: str, name: str, proto: int = 4) -> bytes:
    """Opcodes that push ``module.name`` (GLOBAL for old protocols, STACK_GLOBAL for 4+)."""
    if proto >= 4:
        return _unicode(module) + _unicode(name) + pickle.STACK_GLOBAL
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _unicode(s: str) -> bytes:
    b = s.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b


def _call(module: str, name: str, *str_args: str, proto: int = 4) -> bytes:
    """A complete pickle calling ``module.name(*str_args)``."""
    args = b"".join(_unicode(a) for a in str_args)
    return pickle.PROTO + bytes([proto]) + _global(module, name, proto) + pickle.MARK + args + pickle.TUPLE + pickle.REDUCE + pickle.STOP


def _memo_stack_global(marker: Path) -> bytes:
    # The names reach STACK_GLOBAL through the memo (BINGET), not as the two preceding pushes.
    cmd = f"touch {marker}"
    return (pickle.PROTO + b"\x04" + _unicode("os") + pickle.MEMOIZE + _unicode("system") + pickle.MEMOIZE
            + pickle.POP + pickle.POP + pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.STACK_GLOBAL
            + _unicode(cmd) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def _inst_opcode(marker: Path) -> bytes:
    return b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."


def _obj_opcode(marker: Path) -> bytes:
    return (pickle.PROTO + b"\x02" + pickle.MARK + _global("os", "system", 2) + _unicode(f"touch {marker}")
            + pickle.OBJ + pickle.STOP)


def _ext_code(marker: Path) -> bytes:
    return pickle.PROTO + b"\x02" + pickle.EXT1 + b"\x7f" + pickle.MARK + _unicode(f"touch {marker}") + pickle.TUPLE + pickle.REDUCE + pickle.STOP


def _persistent_id(marker: Path) -> bytes:
    return pickle.PROTO + b"\x02" + _unicode(f"touch {marker}") + pickle.BINPERSID + pickle.STOP


def _fickling_exec(marker: Path) -> bytes:
    from fickling.fickle import Pickled
    from sklearn.linear_model import LogisticRegression

    X, y = _clf_data(60)
    p = Pickled.load(pickle.dumps(LogisticRegression().fit(X, y), protocol=4))
    p.insert_python_exec(_touch(marker), run_first=True, use_output_as_unpickle_result=False)
    return p.dumps()


def _getattr_chain(marker: Path) -> bytes:
    # getattr(__import__("os"), "system")("touch ...")
    return (pickle.PROTO + b"\x04" + _global("builtins", "getattr") + pickle.MARK
            + _global("builtins", "__import__") + _unicode("os") + pickle.TUPLE1 + pickle.REDUCE
            + _unicode("system") + pickle.TUPLE + pickle.REDUCE
            + _unicode(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def _methodcaller(marker: Path) -> bytes:
    # operator.methodcaller("system", cmd)(os) — reached through attrgetter on a module object.
    return (pickle.PROTO + b"\x04" + _global("operator", "methodcaller") + _unicode("system")
            + _unicode(f"touch {marker}") + pickle.TUPLE2 + pickle.REDUCE
            + _global("importlib", "import_module") + _unicode("os") + pickle.TUPLE1 + pickle.REDUCE
            + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def _attrgetter(marker: Path) -> bytes:
    return (pickle.PROTO + b"\x04" + _global("operator", "attrgetter") + _unicode("system") + pickle.TUPLE1
            + pickle.REDUCE + _global("posix", "getcwd") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def _nested_loads(marker: Path) -> bytes:
    inner = _call("os", "system", f"touch {marker}")
    return (pickle.PROTO + b"\x04" + _global("pickle", "loads") + pickle.SHORT_BINBYTES + bytes([len(inner)]) + inner
            + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def _nested_in_model_bytes(marker: Path) -> bytes:
    # An allowed model carrying a pickle in an attribute, waiting for some later loads() call.
    from sklearn.linear_model import LogisticRegression

    X, y = _clf_data(60)
    model = LogisticRegression().fit(X, y)
    model.cache_ = _call("subprocess", "call", "sh", "-c", f"touch {marker}")
    return pickle.dumps(model, protocol=5)


def _tampered_setstate(marker: Path) -> bytes:
    # An allowed class whose BUILD state holds eval(...) — runs as the state is rebuilt.
    from sklearn.tree import DecisionTreeClassifier

    X, y = _clf_data(60)
    model = DecisionTreeClassifier(max_depth=2).fit(X, y)
    model.__dict__["n_outputs_"] = _Reduce(eval, (f"__import__('os').system('touch {marker}') or 1",))
    return pickle.dumps(model, protocol=4)


def _joblib_wrapper_payload(marker: Path) -> bytes:
    # An object array inside a model: joblib stores it as a nested pickle behind NumpyArrayWrapper.
    import joblib
    from sklearn.linear_model import LogisticRegression

    X, y = _clf_data(60)
    model = LogisticRegression().fit(X, y)
    model.classes_ = np.array([_Reduce(os.system, (f"touch {marker}",)), 1], dtype=object)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()


def _cloudpickle_function(marker: Path) -> bytes:
    import cloudpickle

    exec_line = _touch(marker)
    return cloudpickle.dumps(lambda x: exec(exec_line))


MALICIOUS: dict[str, tuple[Callable[[Path], bytes], str]] = {
    # name: (builder, an import the refusal must name)
    "exec_injection_fickling": (_fickling_exec, "builtins.exec"),
    "os_system_reduce": (lambda m: pickle.dumps(_Reduce(os.system, (f"touch {m}",)), protocol=2), "posix.system"),
    "subprocess_popen": (lambda m: _call("subprocess", "Popen", f"touch {m}"), "subprocess.Popen"),
    "subprocess_check_call": (lambda m: pickle.dumps(_Reduce(__import__("subprocess").check_call, (["touch", str(m)],)), protocol=5), "subprocess.check_call"),
    "importlib_import_module": (lambda m: _call("importlib", "import_module", "os"), "importlib.import_module"),
    "operator_methodcaller": (_methodcaller, "operator.methodcaller"),
    "operator_attrgetter": (_attrgetter, "operator.attrgetter"),
    "builtins_getattr_chain": (_getattr_chain, "builtins.getattr"),
    "pydoc_locate": (lambda m: _call("pydoc", "locate", "os.system"), "pydoc.locate"),
    "pip_main": (lambda m: _call("pip", "main", "install", "evil"), "pip.main"),
    "timeit": (lambda m: _call("timeit", "timeit", _touch(m)), "timeit.timeit"),
    "nested_pickle_loads": (_nested_loads, "pickle.loads"),
    "nested_pickle_in_model_bytes": (_nested_in_model_bytes, "subprocess.call"),
    "joblib_wrapper_payload": (_joblib_wrapper_payload, "posix.system"),
    "tampered_setstate_eval": (_tampered_setstate, "builtins.eval"),
    "stack_global_via_memo": (_memo_stack_global, "os.system"),
    "inst_opcode_protocol0": (_inst_opcode, "os.system"),
    "obj_opcode": (_obj_opcode, "os.system"),
    "ext_code": (_ext_code, "EXT code 127"),
    "persistent_id": (_persistent_id, "persistent id"),
    "cloudpickle_lambda": (_cloudpickle_function, "cloudpickle"),
    "python2_builtin_eval": (lambda m: b"c__builtin__\neval\n(S'" + _touch(m).encode().replace(b"'", b'"') + b"'\ntR.", "builtins.eval"),
}


def disassemble(data: bytes) -> str:
    """pickletools' listing, for failure messages."""
    out = io.StringIO()
    try:
        pickletools.dis(data, out)
    except Exception as exc:  # hostile streams may not disassemble fully
        out.write(f"\n<{type(exc).__name__}: {exc}>")
    return out.getvalue()[:4000]


__all__ = ["BENIGN", "MALICIOUS", "dump_benign", "disassemble", "struct"]
