"""The registry promotion gate: nothing unverified gets a protected alias.

Three enforcement points share one definition of "verified" (:mod:`.core`):

- :func:`promote` — verify, smoke-test, optionally sign, tag, and only then set the alias;
- :mod:`.plugin` — the ``safeflavor-gate`` ``mlflow.app`` plugin, which answers 403 to any request
  that would give a protected alias to a version whose artifacts do not match its
  ``safeflavor.verified`` tag or fail verification on the server;
- :mod:`.webhook` — a receiver for MLflow webhooks that verifies new versions and removes protected
  aliases set on unverified ones (after the fact: it can undo, not veto).

Modules import MLflow's server and FastAPI pieces lazily, so importing this package stays cheap.
"""

from mlflow_safeflavor.errors import PromotionRejectedError
from mlflow_safeflavor.registry.core import protected_aliases
from mlflow_safeflavor.loader.versions import (
    TAG_POLICY,
    TAG_REJECTED,
    TAG_REJECTED_AT,
    TAG_VERIFIED,
    TAG_VERIFIED_AT,
    artifact_digest,
)
from mlflow_safeflavor.registry.promote import PromotionResult, promote

__all__ = [
    "TAG_POLICY",
    "TAG_REJECTED",
    "TAG_REJECTED_AT",
    "TAG_VERIFIED",
    "TAG_VERIFIED_AT",
    "PromotionRejectedError",
    "PromotionResult",
    "artifact_digest",
    "promote",
    "protected_aliases",
]
