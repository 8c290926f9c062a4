"""The house (issue 25): every module of `etl_platform/` lives in a room, rooms stand on levels,
and imports only point down.

Read from the source with `ast` (nothing is imported). Each rule fails naming the offending
file, line and import:
- a room imports its own modules and rooms on a LOWER level only: no uphill import, no import
  between two rooms of the same level;
- no import cycle between modules, inside a room or across rooms;
- the package root holds the entry points only (`__init__.py`, `definitions.py`, `cli.py`);
- `os.environ` / `os.getenv` are read in `config/` and the entry points only;
- an import inside a function carries a comment saying why (the line before or the line itself).

The level table is HOUSE.md's; a new room must be added to it (an unknown room fails).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "etl_platform"

# HOUSE.md, lowest first: a room may import its own modules and rooms of a lower level
LEVELS = {
    "security": 0,  # secret redaction
    "config": 1,  # settings (every ETL_* read), secrets by variable name, the tenants file
    "isolation": 1.5,  # a process per tenant in a shared run: fork server, limits, watchdog, environment, progress
    "sources": 2,  # pure dlt, no Dagster
    "warehouse": 3,  # Warehouse, Connection, locks, indexes
    "normalize": 4,  # SQL mapping and upsert, checks on what it staged, drift
    "metrics": 5,  # engineering metrics
    "loading": 5.5,  # one tenant's work in its process (Dagster-free): loads, normalization, metrics, versions
    "runs": 6,  # run bookkeeping: tags, partitions, coverage, failures, worker, facts, history, labels
    "observability": 7,  # logs, warnings, channels, exporter, platform state, API metrics
    "assets": 8,  # the asset graph and the ingest step
    "automation": 9,  # jobs, schedules, sensors, retries, alerts, dead runs, onboarding
    "instance": 9,  # what dagster.yaml plugs in: run coordinator, run launchers
    "api": 10,  # the read API
}
ROOT = "(root)"
ROOT_LEVEL = 11
ENTRY_POINTS = {"__init__", "definitions", "cli"}  # the root's only modules
ENV_READERS = {"config"}  # rooms that read the environment (besides the entry points)
ENV_NAMES = {"environ", "getenv", "environb", "getenvb"}
# (module, what it imports in a function) left as they are, with the reason
LOCAL_IMPORTS_LEFT_ALONE: set[tuple[str, str]] = set()
# Dagster's internals the platform uses, each because no public API does the same (a new one fails
# the test until it is added here with its reason; one no longer used fails too).
DAGSTER_INTERNALS = {
    ("etl_platform.assets.events", "dagster._core.events"):
        "a failed tenant's partitions marked planned one by one: no public API writes a planned event",
    ("etl_platform.automation.partition_status", "dagster._core.storage.partition_status_cache"):
        "the UI's partition status cache rebuilt in a run: no public API refreshes it",
    ("etl_platform.instance.celery_launcher", "dagster._core.launcher.base"):
        "run monitoring's health-check result types",
    ("etl_platform.instance.celery_launcher", "dagster._core.storage.dagster_run"):
        "the run type of the launcher's signature",
    ("etl_platform.instance.run_launcher", "dagster._core.launcher.base"):
        "run monitoring's health-check result types",
    ("etl_platform.instance.run_launcher", "dagster._core.storage.tags"):
        "the code server's address tag of a run (GRPC_INFO_TAG)",
    ("etl_platform.instance.run_launcher", "dagster._grpc.client"):
        "asking the code server whether it still runs a run: its gRPC client",
    ("etl_platform.instance.run_launcher", "dagster._grpc.types"):
        "the request and answer of that question",
    ("etl_platform.instance.run_launcher", "dagster._serdes"):
        "the answer's decoding",
    ("etl_platform.observability.logs", "dagster._core.execution.context.compute"):
        "the run id, tenant and partition of the step a log line is written in",
    ("etl_platform.runs.purge", "dagster._core.storage.event_log.schema"):
        "single events and check rows deleted: Dagster's public API deletes whole runs only",
}


@dataclass(frozen=True)
class Import:
    """One import of a platform module: who imports what, where."""

    module: str  # the importing module, dotted
    where: str  # file:line, relative to the package's parent folder
    target: str  # the imported module, dotted (the most specific module the statement names)


class House:
    """The modules of a package and their imports of each other, read with `ast`."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self.name = package.name
        self.paths = {self._dotted(p): p for p in sorted(package.rglob("*.py"))}
        self.packages = {m for m, p in self.paths.items() if p.name == "__init__.py"}
        self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.paths.items()}
        self.imports = [imp for module in self.paths for imp in self._imports_of(module)]

    def _dotted(self, path: Path) -> str:
        parts = list(path.relative_to(self.package.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def relative(self, module: str) -> str:
        return str(self.paths[module].relative_to(self.package.parent))

    def room(self, module: str) -> str:
        """The room of a dotted module: its first folder under the package, else the root."""
        parts = module.split(".")
        if len(parts) > 2 or (len(parts) == 2 and module in self.packages):
            return parts[1]
        return ROOT

    def _imports_of(self, module: str) -> list[Import]:
        out = []
        for node in ast.walk(self.trees[module]):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if module in self.packages else module.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from mod import name`, the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in self.paths else base for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target == self.name or target.startswith(self.name + "."):
                    out.append(Import(module, f"{self.relative(module)}:{node.lineno}", target))
        return out


def level(room: str) -> int:
    return ROOT_LEVEL if room == ROOT else LEVELS[room]


def direction_violations(package: Path) -> list[str]:
    """Uphill imports, imports between rooms of one level, modules in a room not in the table."""
    house = House(package)
    out = []
    for module in house.paths:
        room = house.room(module)
        if room != ROOT and room not in LEVELS:
            out.append(f"{house.relative(module)}: room {room!r} is not in the level table")
    for imp in house.imports:
        source, target = house.room(imp.module), house.room(imp.target)
        if source == target or imp.target == house.name:
            continue  # within a room; the package's __init__ holds the version only: anyone may read it
        if source not in LEVELS | {ROOT: 0} or target not in LEVELS | {ROOT: 0}:
            continue  # reported above
        if level(target) > level(source):
            out.append(
                f"{imp.where}: {imp.module} imports {imp.target}: uphill from {source} "
                f"(level {level(source)}) to {target} (level {level(target)})"
            )
        elif level(target) == level(source):
            out.append(
                f"{imp.where}: {imp.module} imports {imp.target}: {source} and {target} are both on level "
                f"{level(source)} (rooms of one level do not import each other)"
            )
    return out


def cycles(package: Path) -> list[str]:
    """Every import cycle between modules (strongly connected components), with its imports."""
    house = House(package)
    graph: dict[str, set[str]] = {m: set() for m in house.paths}
    for imp in house.imports:
        if imp.target in graph and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    out = []
    for component in components:
        members = set(component)
        edges = sorted({f"{i.where} imports {i.target}" for i in house.imports
                        if i.module in members and i.target in members and i.target != i.module})
        out.append(f"import cycle between {', '.join(component)}: " + "; ".join(edges))
    return out


def root_modules(package: Path) -> list[str]:
    """Modules at the package root other than the entry points."""
    return [
        f"{path.relative_to(package.parent)}: a module at the package root (only {', '.join(sorted(ENTRY_POINTS))}"
        f" belong there; put it in the room of its concern)"
        for path in sorted(package.glob("*.py"))
        if path.stem not in ENTRY_POINTS
    ]


def environment_reads(package: Path) -> list[str]:
    """`os.environ`/`os.getenv` (and `from os import environ`) outside config/ and the entry points."""
    house = House(package)
    out = []
    for module, tree in house.trees.items():
        room = house.room(module)
        if room in ENV_READERS or (room == ROOT and module.split(".")[-1] in ENTRY_POINTS - {"__init__"}):
            continue
        for node in ast.walk(tree):
            attribute = (
                isinstance(node, ast.Attribute)
                and node.attr in ENV_NAMES
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            )
            imported = isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ENV_NAMES for a in node.names
            )
            if attribute or imported:
                out.append(
                    f"{house.relative(module)}:{node.lineno}: reads the environment outside config/ "
                    "(add the setting to config/settings.py, or read a secret through config/secrets.py)"
                )
    return out


def silent_local_imports(package: Path) -> list[str]:
    """Imports inside a function without a comment saying why: on the import's line, or above
    the run of imports it belongs to."""
    house = House(package)
    out = []
    for module, tree in house.trees.items():
        lines = house.paths[module].read_text().splitlines()
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        local = {n for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in sorted(local, key=lambda n: n.lineno):
            imported = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if (module, imported) in LOCAL_IMPORTS_LEFT_ALONE:
                continue
            above = (lines[n].strip() for n in range(node.lineno - 2, -1, -1))
            first_other = next((t for t in above if t and not t.startswith(("import ", "from "))), "")
            if "#" in lines[node.lineno - 1] or first_other.startswith("#"):
                continue
            out.append(
                f"{house.relative(module)}:{node.lineno}: an import inside a function without a comment "
                f"saying why ({lines[node.lineno - 1].strip()})"
            )
    return out


def dagster_internals(package: Path) -> set[tuple[str, str]]:
    """(module, `dagster._...` module it imports) of every import of Dagster's internals."""
    house = House(package)
    out = set()
    for module, tree in house.trees.items():
        for node in ast.walk(tree):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            )
            out |= {(module, n) for n in names if n.split(".")[0].startswith("dagster") and "._" in n}
    return out


# --- the platform ------------------------------------------------------------------------------


def test_imports_point_down_and_stay_within_the_level_table() -> None:
    assert direction_violations(PACKAGE) == []


def test_no_import_cycles() -> None:
    assert cycles(PACKAGE) == []


def test_the_root_holds_the_entry_points_only() -> None:
    assert root_modules(PACKAGE) == []
    assert {p.stem for p in PACKAGE.glob("*.py")} == ENTRY_POINTS


def test_the_environment_is_read_in_config_and_the_entry_points_only() -> None:
    assert environment_reads(PACKAGE) == []


def test_imports_inside_functions_say_why() -> None:
    assert silent_local_imports(PACKAGE) == []


def test_dagster_internals_are_the_listed_ones_each_with_its_reason() -> None:
    """11 imports in 6 modules (22 in 8 before issue 25): those no public Dagster API covers."""
    assert dagster_internals(PACKAGE) == set(DAGSTER_INTERNALS)


def test_the_package_init_defines_the_version_and_imports_nothing() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n.module != "__future__"]
    assigned = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    assert assigned == ["__version__"]


IMPORT_EVERYTHING = """
import importlib, logging, os, pkgutil, sys, warnings
# the platform's third-party dependencies first: what they do at import is theirs
for name in ("dagster", "dagster_dlt", "dagster_docker", "dlt", "dlt.sources.rest_api", "duckdb", "fastapi",
             "fastapi_offline", "feedparser", "ijson", "orjson", "pandas", "prometheus_client", "psycopg",
             "pyarrow", "pyarrow.csv", "uvicorn", "yaml"):
    importlib.import_module(name)
before = (dict(os.environ), list(warnings.filters), logging.getLogRecordFactory(),
          {n: (list(l.handlers), list(l.filters)) for n, l in logging.root.manager.loggerDict.items()
           if isinstance(l, logging.Logger)}, list(logging.root.handlers))
import etl_platform
for module in pkgutil.walk_packages(etl_platform.__path__, "etl_platform."):
    if module.name not in ("etl_platform.definitions", "etl_platform.cli"):  # the entry points configure
        importlib.import_module(module.name)
after = (dict(os.environ), list(warnings.filters), logging.getLogRecordFactory(),
         {n: (list(l.handlers), list(l.filters)) for n, l in logging.root.manager.loggerDict.items()
          if isinstance(l, logging.Logger) and n in before[3]}, list(logging.root.handlers))
for what, old, new in zip(("os.environ", "warning filters", "log record factory", "loggers", "root handlers"),
                          before, after):
    if old != new:
        print(f"importing the platform changed {what}")
        sys.exit(1)
print(f"imported {len(sys.modules)} modules, nothing changed")
"""


def test_importing_the_platform_changes_nothing_in_the_process() -> None:
    """No module sets the environment, warning filters or logging at import (the entry points do)."""
    env = {k: v for k, v in os.environ.items() if k != "ETL_LOG_FORMAT"}
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300,
                          env={**env, "ETL_LOG_FORMAT": "json"})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def test_every_room_of_the_table_exists() -> None:
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(LEVELS)


# --- the checks themselves fail on a house that breaks the rules ----------------------------------


def _house(root: Path, files: dict[str, str]) -> Path:
    package = root / "etl_platform"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(package).parents:
            (package / parent / "__init__.py").touch()
        path.write_text(text)
    return package


def test_an_uphill_import_is_named(tmp_path: Path) -> None:
    package = _house(tmp_path, {
        "runs/tags.py": "X = 1\n",
        "assets/ingest.py": "from etl_platform.automation.tags import X\n",
        "automation/tags.py": "X = 1\n",
    })
    (found,) = direction_violations(package)
    assert "etl_platform/assets/ingest.py:1" in found and "uphill from assets (level 8) to automation" in found


def test_a_same_level_import_and_an_unknown_room_are_named(tmp_path: Path) -> None:
    package = _house(tmp_path, {
        "automation/jobs.py": "import etl_platform.instance.coordinator\n",
        "instance/coordinator.py": "",
        "attic/old.py": "from etl_platform.config import settings\n",
        "config/settings.py": "",
    })
    found = direction_violations(package)
    assert any("automation/jobs.py:1" in f and "both on level 9" in f for f in found)
    assert "etl_platform/attic/old.py: room 'attic' is not in the level table" in found


def test_a_cycle_is_named_with_its_imports(tmp_path: Path) -> None:
    package = _house(tmp_path, {
        "sources/csv/source.py": "from etl_platform.sources.csv.rows import Out\nclass Stats: ...\n",
        "sources/csv/rows.py": "def f():\n    # why: a test\n    from .source import Stats\nclass Out: ...\n",
    })
    (found,) = cycles(package)
    assert "etl_platform.sources.csv.rows, etl_platform.sources.csv.source" in found
    assert "etl_platform/sources/csv/rows.py:3 imports etl_platform.sources.csv.source" in found


def test_a_loose_module_an_environment_read_and_a_silent_local_import_are_named(tmp_path: Path) -> None:
    package = _house(tmp_path, {
        "quiet.py": "",
        "cli.py": "import os\nHOME = os.environ.get('HOME')\n",
        "config/settings.py": "import os\nX = os.getenv('ETL_X')\n",
        "automation/dead_runs.py": "import os\nGRACE = os.environ.get('ETL_DEAD_RUN_GRACE_SECONDS')\n",
        "assets/raw.py": "def load():\n    from etl_platform.config import settings\n",
    })
    assert root_modules(package) == [
        "etl_platform/quiet.py: a module at the package root (only __init__, cli, definitions belong there; "
        "put it in the room of its concern)"
    ]
    (read,) = environment_reads(package)
    assert read.startswith("etl_platform/automation/dead_runs.py:2: reads the environment outside config/")
    (silent,) = silent_local_imports(package)
    assert silent.startswith("etl_platform/assets/raw.py:2: an import inside a function without a comment")


@pytest.mark.parametrize("rule", [direction_violations, cycles, root_modules, environment_reads,
                                  silent_local_imports])
def test_a_house_that_keeps_the_rules_passes_them(tmp_path: Path, rule) -> None:
    package = _house(tmp_path, {
        "cli.py": "def main():\n    # start-up time\n    from etl_platform.api import app\n",
        "api/app.py": "from etl_platform.runs.history import recent\n",
        "runs/history.py": "from etl_platform.config.settings import get\nrecent = 1\n",
        "config/settings.py": "import os\n\ndef get():\n    return os.environ.get('ETL_X')\n",
    })
    assert rule(package) == []
