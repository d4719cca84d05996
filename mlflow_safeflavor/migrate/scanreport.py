"""The result of a pickle scan: one :class:`Finding` per import or construct, plus problems.

Findings are kept in a dict keyed by ``(name, where)`` beside the list, so recording one is
constant time: a pickle with tens of thousands of distinct imports costs linear, not quadratic,
bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_safeflavor.errors import PickleRefusedError


@dataclass
class Finding:
    """One import (or construct) the pickle would make, with the allowlist's verdict."""

    name: str
    allowed: bool
    reason: str
    where: str = "pickle"
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports."""
        return {"name": self.name, "allowed": self.allowed, "reason": self.reason, "where": self.where, "count": self.count}


@dataclass
class ScanReport:
    """Everything the static scan learned about one pickle file, before anything was unpickled."""

    source: str
    container: str = "pickle"
    protocol: int | None = None
    size: int = 0
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fickling: dict[str, Any] | None = None
    budget_exceeded: bool = False  # a limit stopped the scan (or fickling's): refused, and fickling is not asked
    _index: dict[tuple[str, str], Finding] = field(default_factory=dict, repr=False, compare=False)

    def note(self, name: str, allowed: bool, reason: str, where: str, count: int = 1) -> None:
        """Record one import or construct at ``where`` (counted when it was seen there before)."""
        key = (name, where)
        found = self._index.get(key)
        if found is not None:
            found.count += count
            return
        finding = Finding(name, allowed, reason, where, count)
        self._index[key] = finding
        self.findings.append(finding)

    def problem(self, text: str) -> None:
        """Record a problem once (the same text twice is one refusal reason, not two)."""
        if text not in self.problems:
            self.problems.append(text)

    @property
    def refused(self) -> list[Finding]:
        """The findings the allowlist refuses."""
        return [f for f in self.findings if not f.allowed]

    @property
    def ok(self) -> bool:
        """True when every import is allowed and nothing else was found wrong."""
        return not self.refused and not self.problems

    def reasons(self) -> list[str]:
        """One line per refusal: the refused imports first, then the other problems."""
        return [f"{f.name} ({f.where}): {f.reason}" for f in self.refused] + list(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports and the web page."""
        return {
            "source": self.source,
            "container": self.container,
            "protocol": self.protocol,
            "size": self.size,
            "ok": self.ok,
            "imports": [f.to_dict() for f in self.findings],
            "problems": list(self.problems),
            "fickling": self.fickling,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "ScanReport":
        """Rebuild a report from :meth:`to_dict` output (how an isolated scan hands its result back)."""
        report = cls(source=str(doc["source"]), container=str(doc.get("container", "pickle")),
                     protocol=doc.get("protocol"), size=int(doc.get("size") or 0), fickling=doc.get("fickling"))
        for f in doc.get("imports", []):
            report.note(str(f["name"]), bool(f["allowed"]), str(f["reason"]), str(f.get("where", "pickle")), int(f.get("count", 1)))
        for p in doc.get("problems", []):
            report.problem(str(p))
        return report

    def raise_if_refused(self) -> None:
        """Raise PickleRefusedError listing every refused import and problem, if there are any."""
        if self.ok:
            return
        names = [f.name for f in self.refused]
        listed = "\n  - ".join(self.reasons())
        raise PickleRefusedError(
            f"{self.source}: refused before unpickling; the pickle would import or do:\n  - {listed}\n"
            "Nothing was loaded. Re-export the model from its training code with "
            "mlflow_safeflavor.save_model, or, if you trust a named type, pass it in trusted_types=.",
            findings=names + list(self.problems),
            path=self.source,
        )

    def format(self) -> str:
        """A human-readable table of the scan."""
        proto = f", protocol {self.protocol}, {self.size} bytes" if self.protocol is not None else ""
        lines = [f"{self.source}: {self.container}{proto}"]
        for f in self.findings:
            mark = "allowed" if f.allowed else "REFUSED"
            lines.append(f"  {mark:8} {f.name}  [{f.where}, x{f.count}]  {f.reason}")
        lines += [f"  PROBLEM  {p}" for p in self.problems]
        if self.fickling:
            lines.append(f"  fickling (second opinion): {self.fickling.get('severity')}")
        if self.ok and not self.findings:
            lines.append("verdict: nothing to unpickle" if self.protocol is None else "verdict: the pickle imports nothing")
        else:
            what = "type" if "skops" in self.container else "import"
            lines.append("verdict: " + (f"every {what} is allowed" if self.ok else "refused"))
        return "\n".join(lines)
