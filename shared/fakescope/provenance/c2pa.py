"""The C2PA manifest store, read by c2pa-rs in a helper process (fakescope.c2pa_process) that is
killed past its timeout, as a typed :class:`C2paReading`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fakescope.c2pa_process import C2paReaderFailed, C2paReadError, read_manifest_store
from fakescope.imageio import MEDIA_TYPES
from fakescope.provenance.common import (
    C2PA_NOT_INSTALLED,
    MAX_REPORTED_ACTIONS,
    TRUST_LIST_UNUSABLE,
    UNKNOWN_FORMAT,
    Errors,
    source_term,
)

__all__ = ["C2paReading", "c2pa_installed", "read_c2pa"]


@dataclass
class C2paReading:
    """What the C2PA read found in one file (``Provenance.c2pa``).

    Attributes:
        checked: The file was looked at for a manifest (False: not read, ``reason`` says why).
        present: A manifest store is in the file.
        valid: Whether the active manifest validates; None when there is none or it was not read.
        trusted: Whether its signer chains to the operator's trust list; None without a usable list.
        signer: The signing certificate's issuer (or common name).
        claim_generator: The tool that made the claim, as the manifest names it.
        actions: Its ``c2pa.actions``: ``action`` and ``digital_source_type`` (the IPTC term) each.
        validation_errors: Failure codes of the active manifest and its ingredients.
        reason: Why it was not read, or what limited the read.
    """

    checked: bool = False
    present: bool = False
    valid: bool | None = None
    trusted: bool | None = None
    signer: str | None = None
    claim_generator: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    validation_errors: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (``asdict`` copies the lists too)."""
        return asdict(self)


# The label of a C2PA manifest store's JUMBF box, in every format that embeds one.
_C2PA_LABEL = b"c2pa"
# The containers a C2PA manifest can be embedded in (every one fakescope recognises but BMP).
_C2PA_FORMATS = frozenset(MEDIA_TYPES) - {"bmp"}


def c2pa_installed() -> bool:
    """Whether c2pa-python is there to read with: the helper process imports it, this one never does
    (its native library is large and the extra optional)."""
    return importlib.util.find_spec("c2pa") is not None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    """The claim generator: v1's string, or v2's claim_generator_info as "name/version" entries."""
    if isinstance(manifest.get("claim_generator"), str):
        return manifest["claim_generator"]
    parts = []
    for info in manifest.get("claim_generator_info") or []:
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            version = info.get("version")
            parts.append(f"{info['name']}/{version}" if isinstance(version, str) else info["name"])
    return " ".join(parts) or None


def _manifest_actions(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(actions, software agent names) of a manifest's c2pa.actions assertions (v1 and v2)."""
    actions: list[dict[str, Any]] = []
    agents: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            if not isinstance(action, dict) or len(actions) >= MAX_REPORTED_ACTIONS:
                continue
            dst = action.get("digitalSourceType")
            actions.append({"action": str(action.get("action")), "digital_source_type": source_term(dst)})
            agent = action.get("softwareAgent")
            if isinstance(agent, dict):
                agent = agent.get("name")
            if isinstance(agent, str):
                agents.append(agent)
    return actions, agents


def _validation_codes(store: dict[str, Any]) -> list[str]:
    """Failure codes for the active manifest (and its ingredients), else the flat validation_status."""
    codes: list[str] = []
    results = store.get("validation_results")
    if isinstance(results, dict):
        active = results.get("activeManifest") or {}
        codes += [str(item.get("code")) for item in active.get("failure") or [] if isinstance(item, dict)]
        for delta in results.get("ingredientDeltas") or []:
            failures = ((delta or {}).get("validationDeltas") or {}).get("failure") or []
            codes += [str(item.get("code")) for item in failures if isinstance(item, dict)]
    else:
        codes += [str(item.get("code")) for item in store.get("validation_status") or [] if isinstance(item, dict)]
    return list(dict.fromkeys(codes))


def read_c2pa(
    data: bytes,
    fmt: str | None,
    container_seen: bool,
    trust_anchors_pem: str | None,
    timeout_s: float,
    errors: Errors,
) -> tuple[C2paReading, list[str]]:
    """The C2PA reading and the tool names a valid manifest gives.

    ``container_seen``: our own walk found a C2PA box (PNG caBX, JPEG APP11 JUMBF). When c2pa-rs
    then fails to parse it, the manifest is present and broken, which counts as failing validation.
    """
    if fmt in ("png", "jpeg") and not container_seen:
        # Our own walk covers every place these two formats embed a manifest (caBX, APP11): none,
        # so no call into native code, which costs most of a read of an ordinary upload.
        return C2paReading(checked=True), []
    if not c2pa_installed():
        return C2paReading(present=container_seen, reason=C2PA_NOT_INSTALLED), []
    if fmt is None or fmt not in _C2PA_FORMATS:
        reason = UNKNOWN_FORMAT if fmt is None else f"no C2PA manifest is read from {fmt}"
        return C2paReading(present=container_seen, reason=reason), []
    if fmt not in ("png", "jpeg") and _C2PA_LABEL not in data:
        # Every manifest store is a JUMBF box labelled "c2pa": without those bytes anywhere there is
        # none to read, and the native reader need not walk the file (a GIF comment of 1-byte
        # sub-blocks cost it about 5 s a MiB).
        return C2paReading(checked=True), []
    try:
        # In a helper process, killed past the timeout: native code cannot be stopped in this one.
        raw, trust_error = read_manifest_store(data, MEDIA_TYPES[fmt], trust_anchors_pem, timeout_s)
    except (TimeoutError, C2paReaderFailed) as exc:
        # Not read: that says nothing about the manifest, so it is neither valid nor broken.
        errors.add(f"c2pa: {exc}")
        return C2paReading(present=container_seen, reason=str(exc), checked=True), []
    except C2paReadError as exc:
        message = str(exc)
        errors.add(f"c2pa: {message}")
        result = C2paReading(present=container_seen, reason=message, checked=True)
        if container_seen:
            result.valid = False
            result.validation_errors = ["manifest.unreadable"]
        return result, []
    trust_reason = None
    if trust_error is not None:
        trust_reason = f"{TRUST_LIST_UNUSABLE}: {trust_error}"
        errors.add(f"c2pa: {trust_reason}")
    if raw is None:
        return C2paReading(checked=True, reason=trust_reason), []
    try:
        store = json.loads(raw)
    except ValueError as exc:
        errors.add(f"c2pa: manifest store is not JSON: {exc}")
        return C2paReading(present=True, reason="manifest store is not JSON", checked=True), []
    result = C2paReading(present=True, checked=True, reason=trust_reason)
    state = store.get("validation_state")
    codes = _validation_codes(store)
    result.validation_errors = codes
    if state in ("Valid", "Trusted"):
        result.valid = True
    elif state == "Invalid":
        result.valid = False
    else:  # an older library without validation_state: any failure but an untrusted signer is fatal
        result.valid = not [c for c in codes if c != "signingCredential.untrusted"]
    if trust_anchors_pem is not None and trust_error is None:
        result.trusted = state == "Trusted"
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    signature = manifest.get("signature_info") or {}
    result.signer = signature.get("issuer") or signature.get("common_name")
    result.claim_generator = _claim_generator(manifest)
    actions, agents = _manifest_actions(manifest)
    result.actions = actions
    names = [result.claim_generator, *agents] if result.valid else []
    return result, [n for n in names if n]
