"""``mlflow-safeflavor ui``: a local web page to check and convert pickles and see the registry's safety.

The page is a thin layer over the library: uploads are scanned by ``migrate.scan_pickle``,
converted by ``migrate.convert``, checked by ``verify``, promoted by ``registry.promote``. It adds
upload handling (size cap, private temp dir, our own file names), background jobs for long
operations, and request guards (host check, CSRF token) — see docs/ui.md.
"""

from __future__ import annotations

import sys
from typing import Any

from mlflow_safeflavor.ui.config import UIConfig


def create_app(config: UIConfig | None = None) -> Any:
    """The ASGI app (FastAPI); see :mod:`mlflow_safeflavor.ui.app`."""
    from mlflow_safeflavor.ui.app import create_app as _create

    return _create(config)


def serve(config: UIConfig) -> None:
    """Run the page with uvicorn until interrupted; warns on stderr when it listens beyond loopback."""
    import signal

    import uvicorn

    warning = config.exposure_warning()
    if warning:
        print(warning, file=sys.stderr)
    # Until uvicorn installs its own handlers, SIGTERM exits normally, so that atexit still removes
    # the private workspace the app creates.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app = create_app(config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"mlflow-safeflavor ui on http://{shown}:{config.port}/ (tracking URI: {_tracking_uri()})", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", server_header=False)


def _tracking_uri() -> str:
    import mlflow

    from mlflow_safeflavor.ui.app import shown_uri

    return shown_uri(mlflow.get_tracking_uri())


__all__ = ["UIConfig", "create_app", "serve"]
