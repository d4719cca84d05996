"""The registry at a glance: one row per model version, from what the registry records.

Each row reads the version (tags, aliases), its MLmodel only (``read_version_mlmodel``, never the
payload) and the names at the top of its artifact directory. Flavor and format come from
``classify_flavors``; the verification status from the gate's tags (``safeflavor.verified``,
``safeflavor.rejected``). These are records, not a check: tags are ordinary registry data. The
version page runs the real check (``verify_model`` and the load-time tag comparison).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow_safeflavor.registry.core import (
    TAG_POLICY,
    TAG_REJECTED,
    TAG_REJECTED_AT,
    TAG_VERIFIED,
    TAG_VERIFIED_AT,
    is_protected,
    protected_aliases,
)

# Formats whose loaders unpickle (or that cannot be told apart from those): flagged "unsafe".
UNSAFE_FORMATS = frozenset({"pickle", "cloudpickle", "unknown"})
FILTERS = {
    "unsafe": "unsafe formats (pickle, cloudpickle, unknown)",
    "protected-unverified": "protected alias on an unverified version",
}
_FETCHERS = 4


@dataclass
class VersionRow:
    """One registered model version as the table shows it."""

    name: str
    version: str
    status: str | None = None
    created: int | None = None
    source: str | None = None
    run_id: str | None = None
    flavor: str = "unknown"
    format: str = "unknown"
    verification: str = "unverified"  # verified | rejected | unverified
    verified_digest: str | None = None
    verified_at: str | None = None
    rejected_reason: str | None = None
    rejected_at: str | None = None
    aliases: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    schema: str = "unknown"  # present | absent | invalid | unknown
    model_sig: bool | None = None
    signed_by: str | None = None  # the gate key's fingerprint recorded in safeflavor.policy at promotion
    input_example: bool | None = None
    converted_from: str | None = None
    error: str | None = None

    @property
    def unsafe(self) -> bool:
        """True when the version is stored in a format whose loader unpickles (or an unknown one)."""
        return self.format in UNSAFE_FORMATS

    @property
    def protected_unverified(self) -> bool:
        """True when a protected alias points at a version without a standing verification."""
        return bool(self.protected) and self.verification != "verified"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the two filter flags."""
        return {**asdict(self), "unsafe": self.unsafe, "protected_unverified": self.protected_unverified}


def recorded_policy(tags: dict[str, str]) -> dict[str, Any] | None:
    """The ``safeflavor.policy`` tag as data (None when absent, a marker when unreadable)."""
    raw = tags.get(TAG_POLICY)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200]}
    return doc if isinstance(doc, dict) else {"unreadable": raw[:200]}


def _verification(tags: dict[str, str]) -> tuple[str, dict[str, Any]]:
    if tags.get(TAG_REJECTED):
        return "rejected", {"rejected_reason": tags[TAG_REJECTED], "rejected_at": tags.get(TAG_REJECTED_AT)}
    if tags.get(TAG_VERIFIED):
        return "verified", {"verified_digest": tags[TAG_VERIFIED], "verified_at": tags.get(TAG_VERIFIED_AT)}
    return "unverified", {}


def _schema_state(doc: dict[str, Any]) -> str:
    sig = doc.get("signature")
    if not sig:
        return "absent"
    try:
        from mlflow.models.signature import ModelSignature

        ModelSignature.from_dict(sig)
        return "present"
    except Exception:  # MLflow raises several types for a malformed schema
        return "invalid"


def _top_level_names(client: Any, name: str, version: str) -> set[str]:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from mlflow_safeflavor.registry.store import storage_uri

    repo = get_artifact_repository(storage_uri(client, name, version), tracking_uri=client.tracking_uri)
    return {os.path.basename(f.path.rstrip("/")) for f in repo.list_artifacts()}


def build_row(client: Any, mv: Any, aliases: list[str], protected: frozenset[str]) -> VersionRow:
    """A row for ModelVersion ``mv``; problems reading its files go into ``row.error``, never raise."""
    from mlflow_safeflavor.migrate.convert import TAG_CONVERTED_FROM
    from mlflow_safeflavor.migrate.source import classify_flavors, read_version_mlmodel
    from mlflow_safeflavor.signing import SIGNATURE_FILE

    tags = dict(mv.tags or {})
    state, extra = _verification(tags)
    row = VersionRow(
        name=mv.name, version=str(mv.version), status=getattr(mv, "status", None),
        created=getattr(mv, "creation_timestamp", None), source=mv.source, run_id=mv.run_id,
        verification=state, aliases=sorted(aliases), protected=sorted(a for a in aliases if is_protected(a, protected)),
        converted_from=tags.get(TAG_CONVERTED_FROM), **extra,
    )
    signed_by = (recorded_policy(tags) or {}).get("signed_by")
    row.signed_by = signed_by if isinstance(signed_by, str) else None
    try:
        doc = read_version_mlmodel(client, row.name, row.version)
        row.flavor, row.format = classify_flavors(doc.get("flavors"))
        row.schema = _schema_state(doc)
        row.input_example = bool(doc.get("saved_input_example_info"))
        row.model_sig = SIGNATURE_FILE in _top_level_names(client, row.name, row.version)
    except Exception as exc:  # a version whose files cannot be read is shown, flagged, not hidden
        row.error = f"{type(exc).__name__}: {str(getattr(exc, 'message', exc))[:200]}"
    return row


def _unlisted_row(model: Any, failure: str | None, protected: frozenset[str]) -> VersionRow:
    """A row standing for versions the registry has but a search did not return: unknown, so unsafe.

    An empty answer must not read as "nothing unsafe here": the model's aliases or latest versions
    say it has versions, so the row is shown, counted under the unsafe filter, and says why.
    """
    aliases = sorted(model.aliases or {})
    why = f"its versions could not be listed ({failure})" if failure else (
        "the registry says it has versions (aliases or latest versions) but a search for them returned none")
    return VersionRow(name=model.name, version="?", aliases=aliases,
                      protected=[a for a in aliases if is_protected(a, protected)],
                      error=f"{why}; shown as unknown until they can be read")


def list_versions(client: Any, *, filter_name: str | None = None, page_token: str | None = None,
                  max_models: int = 50) -> dict[str, Any]:
    """Rows for every version of one page of registered models, newest version first.

    ``filter_name`` is a key of :data:`FILTERS` (or None for everything). Returns ``rows``,
    ``next_page_token``, ``counts`` per filter over the page, and the protected aliases in force.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.migrate.source import search_versions

    protected = protected_aliases()
    page = client.search_registered_models(max_results=max_models, page_token=page_token or None)
    versions: list[tuple[Any, list[str]]] = []
    unlisted: list[VersionRow] = []
    for model in page:
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        try:
            found, failure = search_versions(client, model.name), None
        except MlflowException as exc:
            found, failure = [], f"{exc.error_code}: {str(exc.message)[:200]}"
        if not found and (failure or model.aliases or getattr(model, "latest_versions", None)):
            unlisted.append(_unlisted_row(model, failure, protected))
        for mv in sorted(found, key=lambda v: -int(v.version)):
            versions.append((mv, by_version.get(str(mv.version), [])))
    with ThreadPoolExecutor(max_workers=_FETCHERS) as pool:
        rows = unlisted + list(pool.map(lambda item: build_row(client, item[0], item[1], protected), versions))
    counts = {"all": len(rows), "unsafe": sum(r.unsafe for r in rows),
              "protected-unverified": sum(r.protected_unverified for r in rows)}
    if filter_name == "unsafe":
        rows = [r for r in rows if r.unsafe]
    elif filter_name == "protected-unverified":
        rows = [r for r in rows if r.protected_unverified]
    return {"rows": rows, "next_page_token": getattr(page, "token", None), "counts": counts,
            "protected_aliases": sorted(protected)}


def version_detail(client: Any, name: str, version: str) -> dict[str, Any]:
    """One version's row plus its tags, description and the recorded gate policy."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise LookupError(f"model {name!r} version {version}: not in the registry ({str(exc.message)[:200]}).") from None
        raise
    row = build_row(client, mv, list(getattr(mv, "aliases", None) or []), protected_aliases())
    tags = dict(mv.tags or {})
    policy = recorded_policy(tags)
    return {"row": row, "tags": dict(sorted(tags.items())), "description": mv.description or "",
            "policy": policy, "protected_aliases": sorted(protected_aliases())}
