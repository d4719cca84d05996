"""Convert every version of one or more registered models, one isolated conversion at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mlflow_safeflavor.errors import ConversionError, PickleRefusedError, SafeFlavorError, UnsupportedModelError, UntrustedTypesError
from mlflow_safeflavor.migrate.convert import TAG_CONVERTED_FROM, convert
from mlflow_safeflavor.migrate.source import classify_flavors, read_version_mlmodel, search_versions


@dataclass
class BulkRow:
    """The outcome for one registry version: converted, refused, failed or skipped, and why."""

    name: str
    version: str
    status: str
    detail: str
    new_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return dict(self.__dict__)


def registered_versions(client: Any, names: Iterable[str] | None) -> list[tuple[str, str]]:
    """``(name, version)`` for every version of ``names`` (all registered models when None)."""
    if names is None:
        names, token = [], None
        while True:
            page = client.search_registered_models(max_results=200, page_token=token)
            names += [m.name for m in page]
            token = page.token
            if not token:
                break
    out = []
    for name in names:
        versions = search_versions(client, name)
        out += sorted(((mv.name, str(mv.version)) for mv in versions), key=lambda t: int(t[1]))
    return out


def convert_registered(
    names: Iterable[str] | None = None,
    *,
    registered_model_name: str | None = None,
    sample_input: Any = None,
    trusted_types: str | Iterable[str] | None = None,
    progress: Callable[[BulkRow], None] | None = None,
    client: Any = None,
) -> list[BulkRow]:
    """Convert every version of the registered models ``names`` (every model when None).

    Each version is converted with :func:`convert` and registered as a new version of
    ``registered_model_name`` (default: the same model), carrying its signature, input example
    and tags. Versions already in the safe flavor, and versions an earlier run converted, are
    skipped. Returns one :class:`BulkRow` per version; ``progress`` is called after each.
    """
    from mlflow_safeflavor.registry.store import get_client

    client = get_client(client)
    pairs = registered_versions(client, names)
    converted_from = {
        (mv.tags or {}).get(TAG_CONVERTED_FROM)
        for name in {n for n, _ in pairs} | ({registered_model_name} if registered_model_name else set())
        for mv in search_versions(client, name)
    }
    rows = []
    for name, version in pairs:
        row = _one(client, name, version, converted_from, registered_model_name, sample_input, trusted_types)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _one(client: Any, name: str, version: str, done: set, target: str | None, sample: Any, trusted: Any) -> BulkRow:
    ref = f"models:/{name}/{version}"
    try:
        flavor, fmt = classify_flavors(read_version_mlmodel(client, name, version).get("flavors"))
    except Exception as exc:  # an unreadable version is reported, the rest still run
        return BulkRow(name, version, "failed", f"MLmodel cannot be read: {type(exc).__name__}: {str(exc)[:200]}")
    if flavor == "safeflavor":
        return BulkRow(name, version, "skipped", f"already {fmt}")
    if ref in done:
        return BulkRow(name, version, "skipped", "converted earlier (a version carries safeflavor.converted_from=" + ref + ")")
    try:
        result = convert(ref, registered_model_name=target or name, sample_input=sample, trusted_types=trusted)
    except (PickleRefusedError, UntrustedTypesError, UnsupportedModelError) as exc:
        return BulkRow(name, version, "refused", exc.message.splitlines()[0] + _more(exc))
    except (ConversionError, SafeFlavorError) as exc:
        return BulkRow(name, version, "failed", exc.message)
    return BulkRow(name, version, "converted", f"{flavor} {fmt} → safe flavor, identical {', '.join(result.methods)} on {result.rows_compared} rows", result.registered_version)


def _more(exc: Exception) -> str:
    findings = [f for f in getattr(exc, "findings", []) or getattr(exc, "types", []) or []]
    return f" [{', '.join(findings[:6])}{', ...' if len(findings) > 6 else ''}]" if findings else ""
