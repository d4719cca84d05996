"""Signatures over a whole model directory with OpenSSF model-signing, offline, with EC keys.

``sign_model`` writes ``model.sig`` (a Sigstore bundle made by ``model_signing``'s elliptic-curve
key signer) covering every file of the directory — MLmodel, payloads, environment files, and any
``.git*`` file — so the upstream ``model_signing`` verifier accepts it. Verification on load takes
keys only from the loading side (``public_key=`` or ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``) and compares
the signed manifest against the very bytes the loader reads, not a second read of the files.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mlflow_safeflavor import integrity
from mlflow_safeflavor.errors import InvalidArgumentError, SignatureError

SIGNATURE_FILE = "model.sig"
ENV_PUBLIC_KEY = "MLFLOW_SAFEFLAVOR_PUBLIC_KEY"
SIGNATURE_MAX_BYTES = 4 * 1024**2


def _require_library():
    try:
        import model_signing  # noqa: F401
    except ImportError:
        raise SignatureError(
            "Signature checks need the model-signing library: pip install 'mlflow-safeflavor[signing]'."
        ) from None


def hashing_config():
    """The one hashing configuration used on both sides: SHA-256 per file, only model.sig ignored."""
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )


def configured_keys(public_key: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Public keys from the call and from ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY`` (paths separated by ``,`` or ``os.pathsep``).

    An empty result means no signature is required.
    """
    keys: list[str] = []
    if public_key is not None:
        if isinstance(public_key, (str, os.PathLike)):
            keys.append(os.fspath(public_key))
        else:
            keys += [os.fspath(k) for k in public_key]
    env = os.environ.get(ENV_PUBLIC_KEY, "")
    keys += [k for part in env.split(",") for k in part.split(os.pathsep)]
    out = []
    for key in (k.strip() for k in keys):
        if not key:
            continue
        path = Path(key)
        if not path.is_file():
            raise InvalidArgumentError(
                f"public key {key!r} (from public_key= or {ENV_PUBLIC_KEY}) is not a readable PEM file."
            )
        out.append(path)
    return out


@dataclass(frozen=True)
class SignatureResult:
    """A verified signature: which key matched and how many files it covers."""

    key: str
    files: int


def verify_directory(files: integrity.ModelFiles, keys: list[Path]) -> SignatureResult:
    """Require a valid ``model.sig`` by one of ``keys`` over exactly the files in the directory.

    Raises SignatureError when the signature is missing, made with another key, does not cover a
    file that is present (an extra file anywhere, ``.git*`` included), covers a missing one, or a
    file's bytes differ from what was signed.
    """
    _require_library()
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    root = files.root
    sig_path = root / SIGNATURE_FILE
    try:
        files.read(SIGNATURE_FILE, max_bytes=SIGNATURE_MAX_BYTES)
    except integrity.IntegrityError as exc:
        raise SignatureError(
            f"{root}: a signature is required ({ENV_PUBLIC_KEY} or public_key= is set) but "
            f"{SIGNATURE_FILE} is missing or unreadable ({exc.message}). Sign the model with "
            "`mlflow-safeflavor sign` or load it without requiring a signature.",
            path=str(root),
        ) from None
    try:
        signature = sign_sigstore_pb.Signature.read(sig_path)
    except Exception as exc:  # the bundle parser raises many types
        raise SignatureError(f"{sig_path}: not a model-signing bundle ({type(exc).__name__}).", path=str(root)) from None

    failures = []
    manifest = None
    for key in keys:
        try:
            manifest = sign_ec_key.Verifier(key).verify(signature)
            matched = key
            break
        except Exception as exc:  # wrong key, bad signature, malformed envelope
            failures.append(f"{key}: {str(exc).strip()[:200]}")
    if manifest is None:
        raise SignatureError(
            f"{sig_path}: the signature does not verify with any trusted public key "
            f"({'; '.join(failures)}). The model was signed by someone else or the signature was "
            "altered; do not load it.",
            path=str(root),
        )

    signed = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise SignatureError(f"{sig_path}: signed with {rd.digest.algorithm}, expected sha256.", path=str(root))
        signed[str(rd.identifier)] = rd.digest.digest_hex
    present = [n for n in files.listing() if n != SIGNATURE_FILE]
    extra = sorted(set(present) - set(signed))
    missing = sorted(set(signed) - set(present))
    if extra or missing:
        parts = ([f"files not covered by the signature: {extra[:10]}"] if extra else []) + (
            [f"signed files that are missing: {missing[:10]}"] if missing else []
        )
        raise SignatureError(
            f"{root}: {'; '.join(parts)}. The directory was changed after signing; do not load it.",
            path=str(root),
        )
    for name in present:
        actual = files.sha256(name, listed=True).split(":", 1)[1]
        if not hmac.compare_digest(actual, signed[name]):
            raise SignatureError(
                f"{root / name}: differs from the signed content. The model was edited after "
                "signing; do not load it.",
                path=str(root),
            )
    return SignatureResult(key=str(matched), files=len(present))
