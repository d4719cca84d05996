"""``promote``: verify a registered model version, smoke-test it, optionally sign it, record, alias.

The alias is the last write: a version gets it only after its artifacts passed every check and the
outcome is recorded on it as tags, so ``models:/name@champion`` always names a version that carries
a ``safeflavor.verified`` digest (which our loaders compare against the artifacts they download).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mlflow.exceptions import MlflowException

from mlflow_safeflavor.errors import InvalidArgumentError
from mlflow_safeflavor.registry.core import (
    TAG_REJECTED,
    TAG_REJECTED_AT,
    TAG_VERIFIED,
    PromotionRejectedError,
    evaluate,
    policy_record,
    rejected_tags,
    verified_tags,
)
from mlflow_safeflavor.registry.store import download_version, get_client, get_version, upload_file

# What to do about each failed check, in the order a person should look at them.
_FIXES = (
    ({"safeflavor.verified", "files", "digests"},
     "the artifacts were changed after they were logged or verified; restore them, or log the model again and promote "
     "the new version (if you made the change yourself and checked the new files, promote with reapprove=True)"),
    ({"signature"},
     "sign the model with a key the gate trusts (`mlflow-safeflavor sign`) or promote without requiring a signature"),
    ({"record", "loader_module", "other_flavors", "pickle", "code", "mlmodel"},
     "log the model with mlflow_safeflavor.log_model (no pickle, no code) and promote that version"),
    ({"trust"},
     "if you trust the listed types, allow them with --trusted-types / trusted_types="),
    ({"validation", "smoke_test"},
     "the payload is malformed or breaks its library at predict time; re-save it from the original model object"),
)


@dataclass(frozen=True)
class PromotionResult:
    """A successful promotion: the version, the alias it now holds, and what was recorded."""

    name: str
    version: str
    alias: str
    digest: str
    policy: dict[str, Any]
    signed: bool


def promote(
    name: str,
    version: str | int,
    alias: str,
    *,
    client: Any = None,
    public_key: Any = None,
    signing_key: str | os.PathLike | None = None,
    signing_password: str | None = None,
    trusted_types: Iterable[str] | str | None = None,
    reapprove: bool = False,
) -> PromotionResult:
    """Verify model version ``name``/``version`` under the gate's policy and only then give it ``alias``.

    Downloads the version's stored artifacts and runs the full verification (digests, a signature
    when ``public_key`` or ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY`` is set, the trust decision with
    ``trusted_types``, structural validation, no pickle, no ``code/``, our ``loader_module``), then
    loads the model and predicts on its saved input example in a resource-limited child process.
    With ``signing_key`` the verified files are signed and ``model.sig`` is uploaded next to the
    artifacts (replacing any earlier signature). The outcome is recorded as tags —
    ``safeflavor.verified`` (digest of every artifact file except ``model.sig``),
    ``safeflavor.policy``, ``safeflavor.verified_at`` — and then the alias is set. A version that
    fails gets a ``safeflavor.rejected`` tag and no alias, and PromotionRejectedError is raised.

    A version that already carries a ``safeflavor.verified`` digest must still match it: artifacts
    that changed since they were verified are evidence of tampering, and are refused (and tagged
    rejected) even when every other check passes — a signature is not required to notice. Only
    ``reapprove=True``, an operator's explicit decision, verifies the new artifacts from scratch; the
    digest they replace is recorded in ``safeflavor.policy`` as ``reapproved_from``.
    """
    client = get_client(client)
    version = str(version)
    _check_alias(name, version, alias)
    mv = get_version(client, name, version)
    status = getattr(mv, "status", None)
    if status not in (None, "READY"):
        raise InvalidArgumentError(
            f"model {name!r} version {version} is {status}, not READY; wait for its registration "
            "to finish and promote it again."
        )
    # Building the policy record first also checks the keys, before any work is done.
    policy = policy_record(by="promote", trusted_types=trusted_types, public_key=public_key,
                           signing_key=signing_key, signing_password=signing_password, smoke=True)
    label = f"models:/{name}/{version}"
    previous = (mv.tags or {}).get(TAG_VERIFIED) or None
    with tempfile.TemporaryDirectory(prefix="safeflavor-promote-") as tmp:
        local = download_version(client, name, version, tmp)
        verdict = evaluate(local, label=label, public_key=public_key, trusted_types=trusted_types, smoke=True,
                           expected_digest=None if reapprove else previous)
        if not verdict.ok:
            _reject(client, name, version, alias, verdict.reason, verdict.failed)
        if signing_key is not None:
            _sign(client, name, version, local, signing_key, signing_password, trusted_types)

    if reapprove and previous and previous != verdict.digest:
        policy["reapproved_from"] = previous
    for key, value in verified_tags(verdict.digest, policy).items():
        client.set_model_version_tag(name, version, key, value)
    for key in (TAG_REJECTED, TAG_REJECTED_AT):
        if key in (mv.tags or {}):
            client.delete_model_version_tag(name, version, key)
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        if exc.error_code == "PERMISSION_DENIED":
            # The tracking server's own gate (the safeflavor-gate app) had the last word.
            _reject(client, name, version, alias, f"the tracking server's gate refused the alias: {exc.message}",
                    ["server_gate"])
        raise InvalidArgumentError(
            f"model {name!r} version {version} passed verification and is tagged, but setting the "
            f"alias {alias!r} failed ({exc.error_code}: {str(exc.message)[:200]}); run promote again."
        ) from None
    return PromotionResult(name, version, alias, verdict.digest, policy, signing_key is not None)


def _check_alias(name: str, version: str, alias: str) -> None:
    from mlflow_safeflavor._mlflow_compat import validate_alias

    try:
        validate_alias(alias)
    except MlflowException as exc:
        raise InvalidArgumentError(
            f"cannot promote model {name!r} version {version}: {exc.message} Choose another alias."
        ) from None


def _sign(client: Any, name: str, version: str, local: str, key: Any, password: str | None,
          trusted_types: Any) -> None:
    """Sign the very files that were verified and upload ``model.sig`` next to the stored artifacts."""
    from mlflow_safeflavor.sign import sign_model
    from mlflow_safeflavor.signing import SIGNATURE_FILE

    # Signing the local copy (not re-downloading the URI) means the signature covers exactly the
    # bytes this promotion verified, even if someone writes to the store meanwhile.
    sign_model(local, key, password=password, trusted_types=trusted_types)
    upload_file(client, name, version, Path(local) / SIGNATURE_FILE)


def _reject(client: Any, name: str, version: str, alias: str, reason: str, failed: list[str]) -> None:
    """Tag the version rejected (best effort) and raise PromotionRejectedError."""
    try:
        for key, value in rejected_tags(reason).items():
            client.set_model_version_tag(name, version, key, value)
        tagged = f"it is tagged {TAG_REJECTED}"
    except MlflowException as exc:
        tagged = f"tagging it {TAG_REJECTED} failed too ({str(exc.message)[:120]})"
    fixes = [fix for checks, fix in _FIXES if checks & set(failed)]
    raise PromotionRejectedError(
        f"model {name!r} version {version} was not promoted to @{alias}: {reason}. No alias was "
        f"set; {tagged}. Fix: {'; '.join(fixes) or 'address the reason above and promote again'}.",
        failed=failed,
    )
