"""The tenants file, read once per process and validated once per change.

`load_registry()` returns the `Registry` of the tenants file. A process keeps it until the
file changes (size, mtime or inode). The file is validated as a whole once per content: the
result is compiled into a small SQLite file beside the warehouse data (`ETL_CACHE_DIR`), keyed
by the file's SHA-256, so that the next process (a run worker, a sensor tick, the CLI) reads
the tenant list from it and validates only the tenants it touches. With thousands of tenants a
run then costs the same as with ten.

Errors name the tenant, the source and the field, and every error of the file is reported at
once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from etl_platform.config import locations
from etl_platform.config.credentials import env_conflicts
from etl_platform.config.models import (
    SOURCE_KINDS,
    RestApiSource,
    SourceConfig,
    TenantConfig,
    TenantsFileError,
)
from etl_platform.config.settings import get_settings

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster
_SOURCE = TypeAdapter(SourceConfig)
_LOCK = threading.Lock()
_BY_PATH: dict[str, tuple[tuple[int, int, int], Registry]] = {}
CACHE_VERSION = "2"  # 2: credential refusals (config/credentials.py)
RACY_SECONDS = 2.0


class ParseCounter:
    """How many times this process parsed and validated a whole tenants file (tests read it)."""

    count = 0


@dataclass(frozen=True)
class TenantEntry:
    """What the registry knows of a tenant without validating its configuration."""

    id: str
    paused: bool
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Shape:
    """What the asset graph is built from: source name -> kind, resources, template config."""

    kinds: dict[str, str]
    resources: dict[str, list[str]]
    templates: dict[str, dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps({"kinds": self.kinds, "resources": self.resources, "templates": self.templates})

    @classmethod
    def from_json(cls, text: str) -> Shape:
        data = json.loads(text)
        return cls(data["kinds"], data["resources"], data["templates"])


class Registry:
    """The tenants of one tenants file, in file order. Configurations are validated on first use."""

    def __init__(
        self,
        path: Path,
        entries: list[TenantEntry],
        shape: Shape,
        load: Callable[[str], TenantConfig],
        content_hash: str = "",
    ) -> None:
        self.path = path
        self.content_hash = content_hash  # of the file's bytes (onboarding compares it)
        self.entries = entries
        self.shape = shape
        self._by_id = {e.id: e for e in entries}
        self._load = load
        self._configs: dict[str, TenantConfig] = {}
        self._lock = threading.Lock()

    # --- tenants -------------------------------------------------------------------------------

    @property
    def tenant_ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def has(self, tenant_id: str) -> bool:
        return tenant_id in self._by_id

    def entry(self, tenant_id: str) -> TenantEntry:
        try:
            return self._by_id[tenant_id]
        except KeyError:
            raise KeyError(f"unknown tenant {tenant_id!r} (not in {self.path})") from None

    def tenant(self, tenant_id: str) -> TenantConfig:
        """One tenant's validated configuration (KeyError naming the file when unknown)."""
        self.entry(tenant_id)
        with self._lock:
            config = self._configs.get(tenant_id)
            if config is None:
                config = self._configs[tenant_id] = self._load(tenant_id)
        return config

    @property
    def tenants(self) -> list[TenantConfig]:
        """Every tenant's configuration (validates them all: for listings, not for runs)."""
        return [self.tenant(e.id) for e in self.entries]

    def active_ids(self) -> list[str]:
        return [e.id for e in self.entries if not e.paused]

    def active_tenants(self) -> list[TenantConfig]:
        return [self.tenant(i) for i in self.active_ids()]

    # --- sources -------------------------------------------------------------------------------

    def source_kinds(self) -> dict[str, str]:
        """source name -> kind across all tenants (a name means one kind everywhere)."""
        return dict(self.shape.kinds)

    def template_config(self, source_name: str) -> SourceConfig:
        """The configuration an asset is defined from: the first tenant's, with every tenant's
        REST resources merged so that the assets cover them all."""
        return _SOURCE.validate_python(self.shape.templates[source_name])

    def resolve(self, location: str) -> str:
        """A source location: URLs as-is, relative paths against the tenants file's folder. Never
        expanded (`$VAR`, `~`): a location is data (`locations`); the source confines the path to
        the data root when it opens it."""
        return resolve_location(location, self.path.parent)


def resolve_location(location: str, base: Path) -> str:
    """`location` as a source reads it: URLs as-is, a relative path joined to `base`."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location
    path = Path(location)
    return str(path if path.is_absolute() else base / path)


# --- validation -----------------------------------------------------------------------------------


def _describe(loc: tuple[Any, ...], raw_tenant: dict[str, Any]) -> str:
    """Turn a pydantic error location into 'source X, field a.b' using the raw YAML for names."""
    parts: list[str] = []
    rest = list(loc)
    if rest[:1] == ["sources"] and len(rest) > 1 and isinstance(rest[1], int):
        index = rest[1]
        sources = raw_tenant.get("sources") or []
        item = sources[index] if index < len(sources) and isinstance(sources[index], dict) else {}
        name = item.get("name")
        parts.append(f"source {name!r}" if name else f"source #{index + 1}")
        rest = rest[2:]
        if rest and rest[0] == item.get("kind"):  # the discriminator tag pydantic inserts
            rest = rest[1:]
    field = ".".join(str(p) for p in rest if not str(p).startswith("function-"))
    if field:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


def _validate_tenant(raw: dict[str, Any], label: str) -> tuple[TenantConfig | None, list[str]]:
    """A tenant's configuration and every error in it (unknown source kinds included)."""
    errors: list[str] = []
    sources = raw.get("sources")
    if isinstance(sources, list):
        known = []
        for source in sources:
            kind = source.get("kind") if isinstance(source, dict) else None
            if kind is not None and kind not in SOURCE_KINDS:
                errors.append(
                    f"{label}, source {source.get('name')!r}, field 'kind': unknown source kind {kind!r} "
                    f"(expected one of {', '.join(SOURCE_KINDS)})"
                )
            else:
                known.append(source)
        raw = {**raw, "sources": known}
    try:
        tenant = TenantConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = _describe(tuple(err["loc"]), raw)
            msg = err["msg"].removeprefix("Value error, ")
            errors.append(f"{label}{', ' + where if where else ''}: {msg}")
        return None, errors
    return (None if errors else tenant), errors


def _location_errors(raw: dict[str, Any], label: str, base: Path) -> list[str]:
    """Local CSV and feed locations that leave the data root (resolved, symlinks followed); read
    from the raw tenant, so that they are named even when another field of it is invalid."""
    errors = []
    for source in raw.get("sources") or []:
        if not isinstance(source, dict):
            continue
        field = {"csv": "location", "rss": "url"}.get(str(source.get("kind")))
        location = source.get(field) if field else None
        if not isinstance(location, str) or not locations.is_local(location) or locations.text_problem(location):
            continue  # URLs are not files; a text problem is the model's error already
        try:
            locations.confine(resolve_location(locations.local_path(location), base))
        except locations.LocationError as exc:
            errors.append(f"{label}, source {source.get('name')!r}, field {field!r}: {exc}")
    return errors


def _validate(data: Any, where: str, base: Path | None = None) -> list[TenantConfig]:
    """Every tenant of parsed YAML, or TenantsFileError listing every problem of the file."""
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), list):
        raise TenantsFileError(f"{where}: expected a mapping with a 'tenants' list")
    errors: list[str] = []
    unknown = set(data) - {"tenants"}
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)}")
    tenants: list[TenantConfig] = []
    seen: set[str] = set()
    kinds: dict[str, tuple[str, str]] = {}
    for index, raw in enumerate(data["tenants"]):
        tenant_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"tenant {tenant_id!r}" if tenant_id else f"tenant #{index + 1}"
        if not isinstance(raw, dict):
            errors.append(f"{label}: expected a mapping")
            continue
        tenant, tenant_errors = _validate_tenant(raw, label)
        errors.extend(tenant_errors)
        if base is not None:
            errors.extend(_location_errors(raw, label, base))
        if tenant is None:
            continue
        if tenant.id in seen:
            errors.append(f"{label}: duplicate tenant id")
            continue
        seen.add(tenant.id)
        for source in tenant.sources:
            first = kinds.setdefault(source.name, (source.kind, tenant.id))
            if first[0] != source.kind:
                errors.append(
                    f"{label}, source {source.name!r}, field 'kind': source name is used with kind {first[0]!r} "
                    f"by tenant {first[1]!r}; a source name must mean one kind everywhere"
                )
        tenants.append(tenant)
    errors.extend(env_conflicts(tenants))  # a tenant's read-API key used by another tenant or a source
    if errors:
        raise TenantsFileError(f"invalid tenants file {where} ({len(errors)} problems):\n  " + "\n  ".join(errors))
    return tenants


def _shape(tenants: Iterable[TenantConfig]) -> Shape:
    kinds: dict[str, str] = {}
    resources: dict[str, list[str]] = {}
    templates: dict[str, SourceConfig] = {}
    for tenant in tenants:
        for source in tenant.sources:
            kinds.setdefault(source.name, source.kind)
            names = resources.setdefault(source.name, [])
            names.extend(r for r in source.resource_names if r not in names)
            first = templates.setdefault(source.name, source)
            if isinstance(first, RestApiSource) and isinstance(source, RestApiSource) and first is not source:
                have = {r.name for r in first.resources}
                extra = [r for r in source.resources if r.name not in have]
                if extra:
                    templates[source.name] = first.model_copy(update={"resources": [*first.resources, *extra]})
    dumped = {name: config.model_dump(mode="json", exclude_unset=True) for name, config in templates.items()}
    for name, config in templates.items():  # the discriminator is a default on some models
        dumped[name]["kind"] = config.kind
    return Shape(kinds, resources, dumped)


def _entry(tenant: TenantConfig) -> TenantEntry:
    return TenantEntry(tenant.id, tenant.paused, tuple(s.name for s in tenant.sources))


def parse_registry(data: Any, path: Path) -> Registry:
    """Validate parsed YAML into an in-memory Registry (errors name tenant, source and field)."""
    tenants = _validate(data, str(path), Path(path).absolute().parent)
    by_id = {t.id: t for t in tenants}
    return Registry(Path(path), [_entry(t) for t in tenants], _shape(tenants), by_id.__getitem__)


# --- the compiled file ------------------------------------------------------------------------


def _cache_dir() -> Path:
    return get_settings().cache_dir


def _compile(text: str, path: Path, target: Path | None, digest: str = "") -> Registry:
    """Parse and validate the whole file; write the compiled form to `target` when given."""
    ParseCounter.count += 1
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        raise TenantsFileError(f"tenants file {path} is not valid YAML: {exc}") from exc
    registry = parse_registry(data, path)
    registry.content_hash = digest
    if target is not None:
        try:
            _write_compiled(target, registry)
        except OSError:
            pass  # an unwritable cache folder costs speed, not correctness
    return registry


def _write_compiled(target: Path, registry: Registry) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        with sqlite3.connect(tmp) as db:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute(
                "CREATE TABLE tenants "
                "(pos INTEGER PRIMARY KEY, id TEXT UNIQUE, paused INTEGER, sources TEXT, config TEXT)"
            )
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("version", CACHE_VERSION), ("shape", registry.shape.to_json()), ("path", str(registry.path))],
            )
            db.executemany(
                "INSERT INTO tenants VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        pos,
                        t.id,
                        int(t.paused),
                        ",".join(s.name for s in t.sources),
                        t.model_dump_json(exclude_unset=True),
                    )
                    for pos, t in enumerate(registry.tenants)
                ],
            )
        db.close()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in target.parent.glob(target.name.split("-")[0] + "-*.sqlite"):  # earlier versions of the file
        if old != target:
            try:
                old.unlink()
            except OSError:
                pass


def _open_compiled(target: Path, path: Path, digest: str) -> Registry | None:
    """The registry from a compiled file, or None when it is missing or unreadable."""
    if not target.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{target}?mode=ro", uri=True, check_same_thread=False)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("version") != CACHE_VERSION:
            db.close()
            return None
        rows = db.execute("SELECT id, paused, sources FROM tenants ORDER BY pos").fetchall()
    except sqlite3.Error:
        return None
    entries = [TenantEntry(i, bool(p), tuple(filter(None, s.split(",")))) for i, p, s in rows]
    lock = threading.Lock()

    def load(tenant_id: str) -> TenantConfig:
        with lock:
            (config,) = db.execute("SELECT config FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        return TenantConfig.model_validate_json(config)

    return Registry(path, entries, Shape.from_json(meta["shape"]), load, digest)


def load_registry(path: str | Path | None = None) -> Registry:
    """The tenants file (ETL_TENANTS_FILE, else ./tenants.yaml), validated; kept per process
    until the file changes."""
    if path is None:
        path = get_settings().tenants_file
    path = Path(path).absolute()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TenantsFileError(
            f"tenants file not found: {path} (set ETL_TENANTS_FILE or create tenants.yaml)"
        ) from None
    signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    key = str(path)
    # a file changed within the clock's granularity could keep its signature: check its content
    racy = time.time() - stat.st_mtime < RACY_SECONDS
    with _LOCK:
        cached = _BY_PATH.get(key)
    if cached is not None and cached[0] == signature and not racy:
        return cached[1]
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:24]
    if cached is not None and cached[1].content_hash == digest:
        return cached[1]
    name = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = _cache_dir() / f"tenants{name}-{digest}.sqlite"
    registry = _open_compiled(target, path, digest)
    if registry is None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TenantsFileError(f"tenants file {path} is not UTF-8 text: {exc}") from exc
        registry = _compile(text, path, target, digest)
    with _LOCK:
        _BY_PATH[key] = (signature, registry)
    return registry
