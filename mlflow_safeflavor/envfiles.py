"""Environment files (requirements.txt, python_env.yaml, conda.yaml) written once, for every codec.

A codec knows exactly what its model needs, so MLflow's requirement inference (a subprocess that
loads the model, 4–10 s) never runs on this path.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import yaml

from mlflow_safeflavor._version import __version__
from mlflow_safeflavor.errors import InvalidArgumentError

PACKAGE_REQUIREMENT = f"mlflow-safeflavor=={__version__}"


def default_requirements(codec_requirements: Iterable[str]) -> list[str]:
    """Pinned requirements for a model: mlflow, this package, numpy and the codec's libraries."""
    import mlflow
    import numpy

    reqs = [f"mlflow=={mlflow.__version__}", PACKAGE_REQUIREMENT, f"numpy=={numpy.__version__}"]
    for req in codec_requirements:
        if req not in reqs:
            reqs.append(req)
    return reqs


def write(
    path: str,
    codec_requirements: Iterable[str],
    *,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    conda_env: Any = None,
) -> None:
    """Write MLflow's environment files into ``path``; user-given requirements win as in MLflow."""
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_conda_env,
        _process_pip_requirements,
        _PythonEnv,
        _validate_env_arguments,
    )

    try:
        _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    except Exception as exc:
        raise InvalidArgumentError(str(getattr(exc, "message", exc))) from None
    if conda_env is None:
        conda, pip_reqs, constraints = _process_pip_requirements(
            default_requirements(codec_requirements), pip_requirements, extra_pip_requirements
        )
    else:
        conda, pip_reqs, constraints = _process_conda_env(conda_env)
    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as fh:
        yaml.safe_dump(conda, stream=fh, default_flow_style=False)
    if constraints:
        with open(os.path.join(path, _CONSTRAINTS_FILE_NAME), "w") as fh:
            fh.write("\n".join(constraints))
    with open(os.path.join(path, _REQUIREMENTS_FILE_NAME), "w") as fh:
        fh.write("\n".join(pip_reqs))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))
