"""What "verified" means, shared by the three enforcement points of the registry gate.

``promote``, the ``mlflow.app`` plugin and the webhook receiver all decide with :func:`evaluate`
over a local copy of a model version's artifacts, so they agree on the digest, the checks and the
tag names. The digest covers every artifact file except ``model.sig``: the signature is checked
on its own (against the loading side's keys), and leaving it out lets the gate sign after verifying
without changing what it verified.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor.errors import InvalidArgumentError, SafeFlavorError
from mlflow_safeflavor.errors import PromotionRejectedError  # noqa: F401 - re-exported where it used to live

from mlflow_safeflavor.loader.versions import (  # re-exported: the tag names live with the download that checks them
    TAG_POLICY,
    TAG_REJECTED,
    TAG_REJECTED_AT,
    TAG_VERIFIED,
    TAG_VERIFIED_AT,
    artifact_digest,
)

ENV_PROTECTED_ALIASES = "MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES"
DEFAULT_PROTECTED_ALIASES = frozenset({"champion", "production"})
ENV_GATE_SMOKE_TEST = "MLFLOW_SAFEFLAVOR_GATE_SMOKE_TEST"
# MLflow allows 100k characters per tag value; reasons are cut well below that to stay readable.
MAX_REASON_CHARS = 4000


def protected_aliases(value: str | Iterable[str] | None = None) -> frozenset[str]:
    """The aliases only verified versions may hold, lower-cased.

    ``value`` (a comma-separated string or a list) wins over ``MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES``;
    without either the default is ``champion,production``. An explicitly empty value protects
    nothing. Comparison is case-insensitive so ``Champion`` cannot slip past ``champion``.
    """
    raw: Any = value if value is not None else os.environ.get(ENV_PROTECTED_ALIASES)
    if raw is None:
        return DEFAULT_PROTECTED_ALIASES
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    return frozenset(str(p).strip().lower() for p in parts if str(p).strip())


def is_protected(alias: str, protected: Iterable[str]) -> bool:
    """True if ``alias`` is one of ``protected`` (case-insensitive)."""
    return str(alias).strip().lower() in set(protected)


def smoke_enabled(value: bool | None = None) -> bool:
    """Whether the plugin and webhook also run the subprocess smoke test (``MLFLOW_SAFEFLAVOR_GATE_SMOKE_TEST``, default on)."""
    if value is not None:
        return value
    return os.environ.get(ENV_GATE_SMOKE_TEST, "true").strip().lower() not in ("0", "false", "no", "off")


def is_prompt_placeholder(uri: Any) -> bool:
    """True if ``uri`` is the placeholder source MLflow gives prompt versions (no artifacts behind it)."""
    from mlflow_safeflavor._mlflow_compat import prompt_source_placeholders

    return isinstance(uri, str) and uri in prompt_source_placeholders()


def key_fingerprint(pem_path: str | os.PathLike, *, private: bool = False, password: str | None = None) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo of a PEM key (a private key's public half)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(pem_path).read_bytes()
        if private:
            key = serialization.load_pem_private_key(data, password.encode() if password else None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise InvalidArgumentError(
            f"{pem_path}: not a readable PEM {kind} key ({type(exc).__name__}: {str(exc)[:120]}); "
            "pass the path of an EC key in PEM format."
        ) from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def policy_record(
    *,
    by: str,
    trusted_types: Iterable[str] | str | None = None,
    public_key: Any = None,
    signing_key: str | os.PathLike | None = None,
    signing_password: str | None = None,
    smoke: bool = True,
) -> dict[str, Any]:
    """The policy a verdict was reached under, as plain data for the ``safeflavor.policy`` tag.

    Names the extra types the gate allowed (built-ins are implied by ``safeflavor_version``),
    whether a signature was required and by which key fingerprints, the gate's own signing key,
    whether the smoke test ran, and which enforcement point decided.
    """
    from mlflow_safeflavor import policy, signing
    from mlflow_safeflavor._version import __version__

    keys = signing.configured_keys(public_key)
    pol = policy.loading_policy(trusted_types)
    return {
        "by": by,
        "safeflavor_version": __version__,
        "extra_trusted_types": sorted(pol.added),
        "signature_required": bool(keys),
        "public_keys": [key_fingerprint(k) for k in keys],
        "signed_by": key_fingerprint(signing_key, private=True, password=signing_password) if signing_key else None,
        "smoke_test": smoke,
    }


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, for ``*_at`` tags."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def verified_tags(digest: str, policy: dict[str, Any]) -> dict[str, str]:
    """The tags that record a successful verification, in the order to write them.

    MLflow sets version tags one request at a time; the decisive ``safeflavor.verified`` comes
    last, so whoever sees it also sees the policy and time it was reached under.
    """
    return {
        TAG_POLICY: json.dumps(policy, sort_keys=True, separators=(",", ":")),
        TAG_VERIFIED_AT: now_iso(),
        TAG_VERIFIED: digest,
    }


def rejected_tags(reason: str) -> dict[str, str]:
    """The tags that record a rejection (the reason cut to a readable length), reason last."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return {TAG_REJECTED_AT: now_iso(), TAG_REJECTED: reason}


@dataclass
class Verdict:
    """The outcome of :func:`evaluate`: ``ok``, the artifact digest, and why not when refused."""

    ok: bool
    digest: str | None = None
    failed: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """All reasons as one sentence-separated string."""
        return "; ".join(self.reasons)

    def refuse(self, check: str, reason: str) -> "Verdict":
        """Record a failed ``check`` with its ``reason``; returns self so callers can ``return`` it."""
        self.ok = False
        self.failed.append(check)
        self.reasons.append(f"{check}: {reason}")
        return self


def evaluate(
    root: str | os.PathLike,
    *,
    label: str,
    public_key: Any = None,
    trusted_types: Iterable[str] | str | None = None,
    expected_digest: str | None = None,
    smoke: bool = True,
) -> Verdict:
    """Decide on a local copy of a version's artifacts; never raises for problems in the artifact.

    Checks, in order: when ``expected_digest`` is given, that the artifacts still hash to it (the
    ``safeflavor.verified`` tag); the full :func:`~mlflow_safeflavor.verify.verify_local` (files,
    signature when keys are configured, MLmodel, loader_module, other flavors, code, pickle,
    record, digests, trust, validation); then, with ``smoke``, a load and predict on the saved
    input example in a resource-limited child process. ``label`` (e.g. ``models:/churn/3``)
    replaces the temporary directory in every reason so tags and errors name the model version.
    """
    from mlflow_safeflavor.registry.smoke import smoke_test
    from mlflow_safeflavor.verify import verify_local

    root_str = os.path.abspath(os.fspath(root))
    verdict = Verdict(ok=True)

    def named(text: str) -> str:
        return text.replace(root_str, label)

    if expected_digest is not None:
        try:
            actual = artifact_digest(root_str)
        except SafeFlavorError as exc:
            return verdict.refuse("files", named(exc.message))
        verdict.digest = actual
        if not hmac.compare_digest(actual, expected_digest):
            return verdict.refuse(
                TAG_VERIFIED,
                f"the artifacts of {label} hash to {actual}, but its {TAG_VERIFIED} tag records "
                f"{expected_digest}: they were changed after verification. Restore the original "
                "artifacts or register the new ones as a new version and promote that.",
            )

    result = verify_local(root_str, public_key=public_key, trusted_types=trusted_types)
    if not result.ok:
        for check in result.failures:
            verdict.refuse(check.name, named(check.detail))
        if "record" in verdict.failed and "no 'safeflavor' flavor" in verdict.reason:
            verdict.reasons.insert(0, f"{label} is not a safe-flavor model (no pickle-free safeflavor flavor)")
        return verdict
    if result.tree_digest is None:
        return verdict.refuse("files", f"no digest could be computed over the artifacts of {label}")
    verdict.digest = result.tree_digest

    if smoke:
        outcome = smoke_test(root_str, trusted_types=trusted_types)
        if not outcome.ok:
            return verdict.refuse("smoke_test", named(outcome.detail))
    return verdict
