"""The web page's settings: where it listens, what it accepts, and the policy it acts under.

Every value has an environment variable and a ``mlflow-safeflavor ui`` option; the option wins.
The policy settings (``trusted_types``, ``public_key``, ``signing_key``) are the same ones the CLI
passes to ``convert``, ``verify`` and ``promote``, so the page decides exactly as the CLI would.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from mlflow_safeflavor.settings import env_number

ENV_MAX_UPLOAD_MB = "MLFLOW_SAFEFLAVOR_UI_MAX_UPLOAD_MB"
ENV_TTL = "MLFLOW_SAFEFLAVOR_UI_TTL"
ENV_WORKERS = "MLFLOW_SAFEFLAVOR_UI_WORKERS"
ENV_MAX_HELD_MB = "MLFLOW_SAFEFLAVOR_UI_MAX_HELD_MB"
ENV_MAX_SCANS = "MLFLOW_SAFEFLAVOR_UI_MAX_SCANS"
ENV_MAX_JOBS = "MLFLOW_SAFEFLAVOR_UI_MAX_JOBS"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050
DEFAULT_MAX_UPLOAD_MB = 256.0
DEFAULT_TTL_SECONDS = 900.0
DEFAULT_WORKERS = 2
DEFAULT_MAX_HELD_MB = 1024.0
DEFAULT_MAX_SCANS = 2
DEFAULT_MAX_JOBS = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for the any-address binds (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


@dataclass
class UIConfig:
    """What ``create_app`` needs; build it with :meth:`from_env` so environment defaults apply.

    ``max_upload_bytes`` caps a whole upload request (pickle and sample together); ``ttl_seconds``
    is how long an accepted upload or a finished job's files (the converted zip) are kept before
    they are deleted; ``workers`` is how many long operations (conversions, verifications,
    promotions) run at once — each conversion also starts its own isolated child process.
    ``max_held_bytes`` caps what all accepted uploads waiting for a conversion hold on disk together;
    ``max_scans`` is how many upload scans run at once (each in its own resource-limited process;
    more are answered 503 at once, before their body is read); ``max_jobs`` caps the jobs queued or
    running. Each scan also runs under the scan budget (``MLFLOW_SAFEFLAVOR_SCAN_*``, see
    docs/migration.md) with its stream capped at ``max_upload_bytes``, decompressed.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tracking_uri: str | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    workers: int = DEFAULT_WORKERS
    max_held_bytes: int = int(DEFAULT_MAX_HELD_MB * 1024 * 1024)
    max_scans: int = DEFAULT_MAX_SCANS
    max_jobs: int = DEFAULT_MAX_JOBS
    trusted_types: str | None = None
    public_key: list[str] = field(default_factory=list)
    signing_key: str | None = None
    signing_password: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    tmp_dir: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> "UIConfig":
        """Defaults from the environment, then ``overrides`` (None values are ignored)."""
        config = cls(
            max_upload_bytes=int(env_number(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB, minimum=0.001) * 1024 * 1024),
            ttl_seconds=env_number(ENV_TTL, DEFAULT_TTL_SECONDS, minimum=1),
            workers=int(env_number(ENV_WORKERS, DEFAULT_WORKERS, minimum=1)),
            max_held_bytes=int(env_number(ENV_MAX_HELD_MB, DEFAULT_MAX_HELD_MB, minimum=0.001) * 1024 * 1024),
            max_scans=int(env_number(ENV_MAX_SCANS, DEFAULT_MAX_SCANS, minimum=1)),
            max_jobs=int(env_number(ENV_MAX_JOBS, DEFAULT_MAX_JOBS, minimum=1)),
        )
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"UIConfig has no setting {key!r}")
            if value is not None:
                setattr(config, key, value)
        return config

    @property
    def exposed(self) -> bool:
        """True when the page listens on more than the loopback interface."""
        return not is_loopback(self.host)

    def host_names(self) -> list[str]:
        """Host header values the app answers (anything else is refused: DNS-rebinding guard)."""
        names = list(LOOPBACK_NAMES) + ["[::1]"]
        if is_wildcard(self.host):
            names += [socket.gethostname(), socket.getfqdn()]
        elif self.host not in names:
            names.append(self.host)
        names += [h.strip() for h in self.allowed_hosts if h.strip()]
        return sorted(set(n for n in names if n))

    def exposure_warning(self) -> str | None:
        """The warning printed when the page is asked to listen beyond loopback, else None."""
        if not self.exposed:
            return None
        return (
            f"warning: listening on {self.host}, not only on 127.0.0.1. This page has no login: "
            "anyone who can reach this address can upload pickles for scanning and conversion, run "
            "conversions on this machine and promote registry versions with this process's MLflow "
            f"credentials. Host headers accepted: {', '.join(self.host_names())} (add names with "
            "--allowed-host). Prefer the default --host 127.0.0.1 with an SSH tunnel."
        )
