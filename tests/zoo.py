"""Small fitted models of every supported class, each with data to predict on.

Shared by the round-trip tests, the red-team tests and the benchmarks. Models are tiny so the
whole zoo trains in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class Case:
    name: str
    model: Any
    X: Any  # what to predict on (pandas or numpy)
    methods: tuple[str, ...] = ("predict",)


def _data(n: int = 240, k: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] > 0).astype(int)
    y3 = np.digitize(X[:, 0] + X[:, 3], [-0.5, 0.5])
    reg = X @ rng.normal(size=k) + rng.normal(scale=0.1, size=n)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(k)])
    df["color"] = np.where(X[:, 4] > 0, "red", np.where(X[:, 5] > 0, "green", "blue"))
    labels = np.array(["churn", "stay"])[y]
    labels3 = np.array(["low", "mid", "high"])[y3]
    groups = np.repeat(np.arange(n // 20), 20)
    return X, y, y3, reg, df, labels, labels3, groups


def sklearn_cases() -> list[Case]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC, SVR

    X, y, y3, reg, df, labels, labels3, _ = _data()
    num = [f"f{i}" for i in range(6)]
    ct = lambda: ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])  # noqa: E731
    clf_methods = ("predict", "predict_proba")
    return [
        Case("sk_rf_clf", RandomForestClassifier(n_estimators=8, random_state=0).fit(df[num], labels), df[num], clf_methods),
        Case("sk_rf_reg", RandomForestRegressor(n_estimators=8, random_state=0).fit(X, reg), X),
        Case("sk_hgb_clf", HistGradientBoostingClassifier(max_iter=10).fit(df[num], labels3), df[num], clf_methods + ("decision_function",)),
        Case("sk_hgb_reg", HistGradientBoostingRegressor(max_iter=10).fit(X, reg), X),
        Case("sk_gb_clf", GradientBoostingClassifier(n_estimators=10).fit(X, y), X, clf_methods + ("decision_function",)),
        Case("sk_knn_clf", KNeighborsClassifier(5).fit(df[num], labels), df[num], clf_methods),
        Case("sk_knn_reg", KNeighborsRegressor(5, algorithm="ball_tree").fit(X, reg), X),
        Case("sk_svc", SVC().fit(df[num], labels3), df[num], ("predict", "decision_function")),
        Case("sk_svr", SVR().fit(X, reg), X),
        Case("sk_ridge", Ridge().fit(X, reg), X),
        Case("sk_pipeline_ct_lr", Pipeline([("ct", ct()), ("lr", LogisticRegression())]).fit(df, labels), df, clf_methods + ("predict_log_proba", "decision_function")),
        Case("sk_pipeline_ct_rf", Pipeline([("ct", ct()), ("rf", RandomForestClassifier(n_estimators=5, random_state=0))]).fit(df, labels3), df, clf_methods),
    ]


def xgboost_cases() -> list[Case]:
    import xgboost as xgb

    X, y, y3, reg, df, labels, labels3, groups = _data()
    num = df[[f"f{i}" for i in range(6)]]
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(num, label=y), num_boost_round=8)
    clf_methods = ("predict", "predict_proba")
    return [
        Case("xgb_booster", booster, num),
        Case("xgb_clf", xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(num, y3), num, clf_methods),
        Case("xgb_reg", xgb.XGBRegressor(n_estimators=8, max_depth=3).fit(X, reg), X),
        Case("xgb_ranker", xgb.XGBRanker(n_estimators=8, max_depth=3).fit(X, y3, qid=groups), X),
        Case("xgb_rf_clf", xgb.XGBRFClassifier(n_estimators=8, max_depth=3).fit(num, y), num, clf_methods),
        Case("xgb_rf_reg", xgb.XGBRFRegressor(n_estimators=8, max_depth=3).fit(X, reg), X),
    ]


def lightgbm_cases() -> list[Case]:
    import lightgbm as lgb

    X, y, y3, reg, df, labels, labels3, groups = _data()
    num = df[[f"f{i}" for i in range(6)]]
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 7}, lgb.Dataset(X, reg), num_boost_round=8)
    kw = {"n_estimators": 8, "num_leaves": 7, "verbose": -1}
    return [
        Case("lgb_booster", booster, X),
        Case("lgb_clf", lgb.LGBMClassifier(**kw).fit(num, labels3), num, ("predict", "predict_proba")),
        Case("lgb_clf_binary", lgb.LGBMClassifier(**kw).fit(X, y), X, ("predict", "predict_proba")),
        Case("lgb_reg", lgb.LGBMRegressor(**kw).fit(X, reg), X),
        Case("lgb_ranker", lgb.LGBMRanker(**kw, min_child_samples=2).fit(X, y3, group=[20] * (len(X) // 20)), X),
    ]


def catboost_cases() -> list[Case]:
    import catboost as cb

    X, y, y3, reg, df, labels, labels3, groups = _data()
    kw = {"iterations": 8, "depth": 3, "verbose": 0, "allow_writing_files": False, "thread_count": 1}
    base = cb.CatBoost({"loss_function": "RMSE", **kw})
    base.fit(X, reg)
    return [
        Case("cb_base", base, X),
        Case("cb_clf_cat", cb.CatBoostClassifier(**kw).fit(df, labels, cat_features=["color"]), df, ("predict", "predict_proba", "predict_log_proba")),
        Case("cb_reg", cb.CatBoostRegressor(**kw).fit(X, reg), X),
        Case("cb_ranker", cb.CatBoostRanker(**kw).fit(X, y3, group_id=groups), X),
    ]


def pipeline_gbdt_cases() -> list[Case]:
    import catboost as cb
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y, y3, reg, df, labels, labels3, _ = _data()
    num = [f"f{i}" for i in range(6)]
    ct = lambda: ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"])])  # noqa: E731
    inner = Pipeline([("scale", StandardScaler()), ("lgbm", lgb.LGBMRegressor(n_estimators=5, verbose=-1))])
    return [
        Case("pipe_ct_xgb", Pipeline([("ct", ct()), ("xgb", xgb.XGBClassifier(n_estimators=8, max_depth=3))]).fit(df, y), df, ("predict", "predict_proba")),
        Case("pipe_ct_lgbm", Pipeline([("ct", ct()), ("lgbm", lgb.LGBMClassifier(n_estimators=8, verbose=-1))]).fit(df, labels), df, ("predict", "predict_proba")),
        Case("pipe_ct_cb", Pipeline([("ct", ct()), ("cb", cb.CatBoostClassifier(iterations=8, verbose=0, allow_writing_files=False, thread_count=1))]).fit(df, labels3), df, ("predict", "predict_proba")),
        Case("pipe_nested_lgbm", Pipeline([("ct", ct()), ("inner", inner)]).fit(df, reg), df),
    ]


FACTORIES: dict[str, Callable[[], list[Case]]] = {
    "sklearn": sklearn_cases,
    "xgboost": xgboost_cases,
    "lightgbm": lightgbm_cases,
    "catboost": catboost_cases,
    "pipelines": pipeline_gbdt_cases,
}


def all_cases() -> list[Case]:
    return [c for f in FACTORIES.values() for c in f()]
