"""The CSV source's two readers agree: the columnar fast pass (`arrow_pass.ArrowPass`) yields
exactly the rows, positions, keys, records and rejects of the row-by-row reader, on every
fixture file and on large files that turn bad part-way (where the fast pass hands over)."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from etl_platform.config.models import CsvSource
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.sources.csv import arrow_pass
from etl_platform.sources.csv import source as csv_source
from etl_platform.sources.csv.arrow_pass import json_objects
from etl_platform.sources.csv.layout import CsvStats
from etl_platform.sources.csv.source import _read
from etl_platform.sources.lineage import EXTRACTED_AT, RunContext, Window

DATA = Path(__file__).resolve().parents[1] / "data" / "csv"
DAYS = (dt.date(2024, 3, 10), dt.date(2024, 3, 11))
CTX = RunContext(tenant_id="t1", source="orders", run_id="run-1", window=Window(DAYS))
BLOCK = 16 * 1024  # small Arrow blocks, so that small files span many


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrow_pass, "BLOCK_BYTES", BLOCK)


def read_both(path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[dict, dict]:
    """(fast, row-by-row) results of reading `path`: rows, rejects and stats."""
    config = CsvSource(**{"kind": "csv", "name": "orders", "location": str(path), **settings})
    out = []
    for fast in (True, False):
        monkeypatch.setattr(csv_source, "FAST_PASS", fast)
        stats = CsvStats()
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        for item in _read(config, str(path), CTX, stats):
            if item.table == REJECTS_TABLE:
                rejects.extend(item.data)
            else:
                rows.extend(item.data.to_pylist())
        counts = {k: v for k, v in stats.as_metadata().items() if k != "reader"}
        out.append({"rows": rows, "rejects": rejects, "stats": counts, "reader": stats.reader})
    assert out[1]["reader"] == "rows"
    return out[0], out[1]


def assert_same(fast: dict, slow: dict) -> None:
    """Same counts, rows and rejects (the readers batch differently: compared in file order)."""
    assert fast["stats"] == slow["stats"]
    assert len(fast["rows"]) == len(slow["rows"])
    for mine, theirs in zip(in_order(fast["rows"]), in_order(slow["rows"])):
        assert mine == theirs
    assert in_order(fast["rejects"]) == in_order(slow["rejects"])


def in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["_etl_partition_date"], int(r["_etl_position"].rsplit(":", 1)[1])))


def fixture_files() -> list[Path]:
    files = sorted(DATA.glob("*.csv"))
    root = os.environ.get("ETL_FIXTURES")
    if root:
        files += sorted(Path(root).glob("csv/**/*.csv"))
    return files


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_both_readers_agree_on_every_fixture(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = read_both(path, monkeypatch)
    assert_same(fast, slow)


def test_the_fixtures_include_third_party_files() -> None:
    if not os.environ.get("ETL_FIXTURES"):
        pytest.skip("ETL_FIXTURES is not set (a user's clone); .ci/run always sets it")
    assert len([p for p in fixture_files() if not p.is_relative_to(DATA)]) >= 20


def big_file(
    tmp_path: Path, rows: int = 20_000, seed: int = 7, *, gz: bool = False, lines: list[bytes] | None = None
) -> Path:
    """A CSV of more than one Arrow block, some quoted values with commas, quotes and line breaks."""
    rng = random.Random(seed)
    out = [b"id,name,note,created_at\r\n"]
    for i in range(1, rows + 1):
        note = rng.choice(
            [b"plain", b'"with, comma"', b'"say ""hi"""', b'"two\nlines"', b'"crlf\r\ninside"', b"", b"caf\xc3\xa9"]
        )
        out.append(
            b"%d,name %d,%s,2024-03-%02dT%02d:00:00Z\r\n"
            % (i, rng.randrange(1000), note, rng.choice([9, 10, 11]), rng.randrange(24))
        )
    for at, line in lines or []:
        out.insert(at, line)
    data = b"".join(out)
    assert len(data) > 8 * BLOCK
    path = tmp_path / ("big.csv.gz" if gz else "big.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_a_clean_big_file_is_read_by_the_fast_pass_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = read_both(big_file(tmp_path), monkeypatch, primary_key=["id"])
    assert fast["reader"] == "arrow"
    assert_same(fast, slow)
    assert len(fast["rows"]) == 20_000 * len(DAYS)  # a snapshot: every window day
    positions = {r["_etl_position"] for r in fast["rows"] if r["_etl_partition_date"] == DAYS[0]}
    assert len(positions) == 20_000


def test_event_time_windows_and_gzip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = big_file(tmp_path, gz=True)
    fast, slow = read_both(path, monkeypatch, primary_key=["id"], event_time="created_at")
    assert fast["reader"] == "arrow"
    assert 0 < fast["stats"]["outside_window"] < fast["stats"]["rows_read"]
    assert_same(fast, slow)


def test_no_primary_key_numbers_identical_rows_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = big_file(tmp_path, lines=[(5000, b"1,same,x,2024-03-10T00:00:00Z\r\n")] * 3)
    fast, slow = read_both(path, monkeypatch)
    assert fast["reader"] == "arrow"
    assert_same(fast, slow)


# a line inserted late in a big file -> (the fast pass hands over, the line is a reject)
TROUBLE = {
    "ragged row": (b"99999,too,many,fields,here\r\n", True, True),
    "duplicate key": (b"17,again,dup,2024-03-10T01:00:00Z\r\n", True, True),
    "missing key": (b",nobody,x,2024-03-10T01:00:00Z\r\n", True, True),
    "blank line": (b"\r\n", True, False),
    "NUL byte": (b"99998,nul\x00here,x,2024-03-10T01:00:00Z\r\n", True, False),  # stripped
    "invalid UTF-8": (b"99997,bad \xff byte,x,2024-03-10T01:00:00Z\r\n", True, True),
    # both readers take the rest of the file as one quoted value: nothing to hand over
    "unterminated quote": (b'99996,"open,x,2024-03-10T01:00:00Z\r\n', False, False),
}


@pytest.mark.parametrize("trouble", sorted(TROUBLE))
def test_trouble_late_in_a_file_hands_over_without_loss_or_duplicates(
    trouble: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line, hands_over, rejected = TROUBLE[trouble]
    path = big_file(tmp_path, lines=[(15_000, line)])
    fast, slow = read_both(path, monkeypatch, primary_key=["id"])
    assert_same(fast, slow)
    assert bool(fast["rejects"]) == rejected
    if hands_over:
        assert fast["reader"].startswith("arrow, then rows from record ")
        assert int(fast["reader"].split("record ")[1].split(":")[0]) > 1  # some blocks went fast
    else:
        assert fast["reader"] == "arrow"


def test_bad_event_time_hands_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = big_file(tmp_path, lines=[(15_000, b"99995,late,x,not a time\r\n")])
    fast, slow = read_both(path, monkeypatch, primary_key=["id"], event_time="created_at")
    assert "unparseable event_time" in fast["reader"]
    assert_same(fast, slow)
    assert [r["reason"] for r in fast["rejects"]] == ["unparseable event_time 'not a time'"] * len(DAYS)


def test_latin1_takes_the_fast_path_and_a_non_ascii_delimiter_the_slow_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a;b\n1;caf\xe9\n".encode("latin-1"))
    fast, slow = read_both(path, monkeypatch, encoding="latin-1")
    assert fast["reader"] == "arrow" and [r["b"] for r in fast["rows"]] == ["café"] * len(DAYS)
    assert_same(fast, slow)
    path.write_text("a§b\n1§2\n", encoding="utf-8")
    fast, slow = read_both(path, monkeypatch, delimiter="§")
    assert fast["reader"] == "rows"
    assert_same(fast, slow)


def test_rows_keep_their_lineage_and_the_run_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = read_both(big_file(tmp_path), monkeypatch, primary_key=["id"])
    row = fast["rows"][0]
    assert row[EXTRACTED_AT] == CTX.extracted_at
    assert row["_etl_position"] == f"{tmp_path / 'big.csv'}:2"
    assert orjson.loads(row["_etl_record"])["id"] == "1"


def test_json_objects_write_what_orjson_writes() -> None:
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0x20)] + list('"\\/ab é€\u2028😀\x7f')
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(2000)]
    names = ["plain", 'quo"te', "back\\slash", "new\nline"]
    columns = [pa.array(values[i::4][:500], pa.string()) for i in range(4)]
    # nulls in some columns (each brings its own quotes) next to columns without (quotes folded
    # into the literal parts around them): first, last and adjacent columns
    with_nulls = [pa.array([None if rng.random() < 0.3 else v for v in c.to_pylist()], pa.string()) for c in columns]
    for chosen in ([], [0], [3], [1, 2], [0, 1, 2, 3], [0, 2]):
        mixed = [with_nulls[i] if i in chosen else columns[i] for i in range(4)]
        got = json_objects(names, mixed).to_pylist()
        rows = zip(*(c.to_pylist() for c in mixed))
        assert got == [orjson.dumps(dict(zip(names, row))).decode() for row in rows], chosen
    one = json_objects(["only"], [pa.array(["a", None], pa.string())]).to_pylist()
    assert one == ['{"only":"a"}', '{"only":null}']


def test_has_special_sees_exactly_the_characters_json_escapes() -> None:
    """The byte scan answers as the pattern does, on every slice (offsets into one buffer),
    on large strings, and on arrays with nulls."""
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(0x20)] + list('"\\/ab é€\u2028😀\x7f')
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(3))) for _ in range(400)]
    values += [None, "plain", "é€😀"]
    for kind in (pa.string(), pa.large_string()):
        column = pa.array(values, kind)
        for start in range(0, len(values), 7):
            part = column.slice(start, 5)
            expected = any(v is not None and re.search(r'[\x00-\x1f"\\]', v) for v in part.to_pylist())
            assert arrow_pass.has_special(part) == expected, part.to_pylist()
    assert not arrow_pass.has_special(pa.array(["é€😀", "a/b", ""], pa.string()))
