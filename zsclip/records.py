"""One record type for every run, job and generated file, and the table that collects records.

A ``Record`` keeps what recreates a run apart from what the run found:

* what recreates it: ``kind`` (classify, audit, claims, generation, search), ``dataset`` (name, root,
  split, split fingerprint), ``model`` (name, pretrained, fingerprint), ``method`` (name, the exact
  parameters, seeds) and ``run`` (store dtype, few-shot settings, the split of each role);
* what it found: ``fit_info`` (what fitting learned: a chosen weight, a pool size), ``metrics``, ``counts``
  (images and texts encoded, skipped, truncated), ``timings`` and ``results`` (a kind's own payload: the
  audit's tables, the claims table's rows, a generation's provenance).

``zsclip classify --from-record R.json`` re-runs a record; ``zsclip records table DIR`` collects records
into one table (Markdown, CSV or parquet), as CLIP_benchmark's build step does.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_path, read_json, write_json_atomic
from ._version import __version__
from .errors import ZsclipError

RECORD_FORMAT = 2
KINDS = ("classify", "audit", "claims", "generation", "search")
#: the metrics a table shows, in order
TABLE_METRICS = ("top1", "top5", "mean_per_class_recall")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Record:
    """A self-describing JSON record (see the module docstring)."""

    kind: str
    dataset: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    zsclip_version: str = __version__
    created: str = field(default_factory=_now)
    format: int = RECORD_FORMAT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ZsclipError(f"record kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "record") -> Record:
        """Read a record dictionary, checking its format (records written by older zsclip are refused)."""
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ZsclipError(f"{source} is not a zsclip record (no 'kind' field)")
        if data.get("format") != RECORD_FORMAT:
            raise ZsclipError(f"{source} has record format {data.get('format')!r}; this zsclip reads format "
                              f"{RECORD_FORMAT}. Re-run the command that made it.")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ZsclipError(f"{source} has fields this zsclip does not know: {', '.join(unknown)}")
        return cls(**dict(data))

    def write(self, path: str | Path) -> Path:
        """Write the record as JSON (atomic); returns the path."""
        write_json_atomic(path, self.to_dict())
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> Record:
        return cls.from_dict(read_json(path, what="zsclip record"), str(path))

    def spec(self) -> dict[str, Any]:
        """What recreates the run (compared by ``--skip-existing``)."""
        return {"kind": self.kind,
                "dataset": {k: self.dataset.get(k) for k in ("name", "root", "split", "options")},
                "model": {k: self.model.get(k) for k in ("name", "pretrained", "fingerprint")},
                "method": self.method, "run": self.run}

    def row(self) -> dict[str, Any]:
        """One flat row for ``records table``."""
        params = self.method.get("params") or {}
        row: dict[str, Any] = {
            "kind": self.kind, "dataset": self.dataset.get("name"), "split": self.dataset.get("split"),
            "model": self.model.get("name"), "pretrained": self.model.get("pretrained"),
            "method": self.method.get("name"),
            "params": json.dumps(params, sort_keys=True, separators=(",", ":")) if params else "",
            "seeds": len(self.method["seeds"]) if self.method.get("seeds") else None,
        }
        for key in TABLE_METRICS:
            row[key] = self.metrics.get(key)
            row[f"{key}_std"] = self.metrics.get(f"{key}_std")
        row["created"] = self.created
        return row


def find_records(folder: str | Path) -> list[tuple[Path, Record]]:
    """Every zsclip record (``*.json`` with a ``kind`` and this format) under ``folder``, sorted by path.

    JSON files that are not records (provenance sidecars of old versions, other tools' files) are skipped.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ZsclipError(f"{folder} is not a folder of records")
    found = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "kind" in data and data.get("format") == RECORD_FORMAT:
            found.append((path, Record.from_dict(data, str(path))))
    return found


def records_table(records: Iterable[tuple[Path, Record]], root: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``Record.row()`` with the file each came from (relative to ``root``)."""
    rows = []
    for path, rec in records:
        row = rec.row()
        row["file"] = str(path.relative_to(root)) if root is not None else str(path)
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def write_table(rows: list[dict[str, Any]], path: str | Path | None, fmt: str) -> str | None:
    """Write ``rows`` as ``markdown``, ``csv`` or ``parquet`` to ``path`` (atomic); with no path, return the text
    (Markdown / CSV)."""
    if fmt not in ("markdown", "csv", "parquet"):
        raise ZsclipError(f"table format must be markdown, csv or parquet, not {fmt!r}")
    columns = list(rows[0]) if rows else ["kind", "dataset", "split", "model", "method", *TABLE_METRICS]
    if fmt == "parquet":
        if path is None:
            raise ZsclipError("a parquet table needs an output path (-o FILE)")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        with atomic_path(Path(path), suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        return None
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
        text = "\n".join(lines) + "\n"
    if path is None:
        return text
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return None
