"""The CSV source reads files by their content: compression from the magic bytes, the encoding
from a BOM, the configuration, UTF-8 validity or detection; very wide files within DuckDB's
memory cap. Files are written by the tests (exact bytes); loads go through real dlt pipelines."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import zipfile
from pathlib import Path

import dlt
import pytest

from etl_platform.loading.failures import classify
from etl_platform.sources.content import ArchiveError, UnknownEncodingError, UnsupportedCompressionError
from etl_platform.sources.csv import source as csv_source
from etl_platform.sources.csv.arrow_pass import MAX_COLUMNS
from etl_platform.sources.csv.layout import CsvFileNotFoundError
from etl_platform.sources.csv.source import build_csv_source
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.csv_loads import csv_config, load, new_pipeline, record, root_cause, run_context, table
from etl_platform_tests.support.http_servers import LocalServer, Response

PLAIN = "id,name\n1,Zoë\n2,Łukasz\n".encode()
EXPECTED = [("1", "Zoë"), ("2", "Łukasz")]


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def rows(pipeline: dlt.Pipeline) -> list[tuple[str, str]]:
    return [(r["id"], r["name"]) for r in table(pipeline, "rows")]


COMPRESSED = {
    "gzip": gzip.compress(PLAIN),
    "bz2": bz2.compress(PLAIN),
    "xz": lzma.compress(PLAIN),
    "zip": zipped({"export/orders.csv": PLAIN, "__MACOSX/export/._orders.csv": b"junk"}),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSED))
@pytest.mark.parametrize("name", ["orders.csv", "orders.data"])  # the name says nothing
def test_compression_is_found_by_magic_bytes(kind: str, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(COMPRESSED[kind])
    pipeline, stats = load(tmp_path, path)
    assert rows(pipeline) == EXPECTED
    assert stats.compression == kind and stats.bytes_read == len(COMPRESSED[kind])
    assert stats.member == ("export/orders.csv" if kind == "zip" else None)
    assert stats.as_metadata()["compression"] == kind


def test_compressed_files_over_http(tmp_path: Path) -> None:
    with LocalServer() as server:
        for kind, body in COMPRESSED.items():
            server.route(f"/{kind}", lambda req, body=body: Response(200, body, {"Content-Type": "text/csv"}))
        for kind in COMPRESSED:
            pipeline, stats = load(tmp_path, f"{server.url}/{kind}")
            assert rows(pipeline) == EXPECTED and stats.compression == kind


@pytest.mark.parametrize(
    ("magic", "named"),
    [
        (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "zstd"),
        (b"7z\xbc\xaf\x27\x1c" + b"\0" * 20, "7z"),
        (b"Rar!\x1a\x07\x00" + b"\0" * 20, "rar"),
        (b"a.csv".ljust(257, b"\0") + b"ustar\x0000" + b"\0" * 300, "tar"),
    ],
)
def test_an_unsupported_compression_is_a_permanent_error_naming_it(magic: bytes, named: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(magic)
    with pytest.raises(Exception) as info:
        load(tmp_path, path)
    error = root_cause(info.value, UnsupportedCompressionError)
    assert named in str(error) and str(path) in str(error) and "source 'orders'" in str(error)
    assert classify(info.value) == "permanent"


@pytest.mark.parametrize("members", [{"a.csv": PLAIN, "b.csv": PLAIN}, {}], ids=["two files", "empty"])
def test_a_zip_without_exactly_one_file_is_refused_clearly(members: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / "orders.zip"
    path.write_bytes(zipped(members))
    with pytest.raises(Exception) as info:
        load(tmp_path, path)
    error = root_cause(info.value, ArchiveError)
    assert f"holds {len(members)} files" in str(error) and all(name in str(error) for name in members)
    assert classify(info.value) == "permanent"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_bom_decides_the_unicode_encoding(encoding: str, tmp_path: Path) -> None:
    text = "id,name\r\n1,Zoë\r\n2,Łukasz\r\n"
    data = text.encode(encoding)
    if not data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\0\0\xfe\xff")):
        bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff", "utf-32-be": "\ufeff"}[encoding]
        data = (bom + text).encode(encoding)
    path = tmp_path / "u.csv"
    path.write_bytes(data)
    pipeline, stats = load(tmp_path, path, encoding="latin-1")  # a BOM wins over the configuration
    assert rows(pipeline) == EXPECTED
    assert stats.encoding_source == "bom" and stats.encoding.startswith("utf-")
    assert [r["_etl_position"].rsplit(":", 1)[1] for r in table(pipeline, "rows")] == ["2", "3"]
    assert list(record(table(pipeline, "rows")[0])) == ["id", "name"]  # no BOM in the first name


SAMPLES = {  # what the issue found stored as mojibake, here in CSV; names and cities
    "koi8-r": "id,name,city\n1,Иван Петров,Москва\n2,Пётр Сидоров,Санкт-Петербург\n3,Анна Смирнова,Новосибирск\n",
    "shift_jis": "id,name,city\n1,山田太郎,東京\n2,鈴木花子,大阪\n3,佐藤健,名古屋\n",
    "cp1252": "id,name,city\n1,“Zoë” – café,Zürich\n2,Renée,Besançon\n",
}


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_undeclared_encoding_is_detected_and_recorded(encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_bytes(SAMPLES[encoding].encode(encoding))
    pipeline, stats = load(tmp_path, path)
    expected = [tuple(line.split(",")) for line in SAMPLES[encoding].splitlines()[1:]]
    assert [(r["id"], r["name"], r["city"]) for r in table(pipeline, "rows")] == expected
    assert table(pipeline, "rejects") == []
    assert stats.encoding_source == "detected" and stats.as_metadata()["encoding"] == stats.encoding
    assert stats.encoding in {"koi8-r": ("koi8-r",), "shift_jis": ("cp932", "shift_jis"), "cp1252": ("cp1252",)}[
        encoding
    ]
    assert stats.reader == "arrow"  # transcoded to UTF-8: the fast path reads every encoding


def test_valid_utf8_is_utf8_and_a_late_bad_byte_is_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"  # the first 256 KB decide: valid UTF-8
    path.write_bytes(b"id,name\n" + b"".join(b"%d,Zo\xc3\xab\n" % i for i in range(40_000)) + b"x,caf\xe9\n")
    pipeline, stats = load(tmp_path, path)
    assert len(rows(pipeline)) == 40_000 and rows(pipeline)[0] == ("0", "Zoë")
    assert stats.encoding_source == "utf-8 (valid)"
    [reject] = table(pipeline, "rejects")
    assert "not valid utf-8 (byte 0xe9)" in reject["reason"] and reject["raw_text"] == "x,caf\\xe9"


def test_an_unknown_configured_encoding_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(PLAIN)
    with pytest.raises(Exception) as info:
        load(tmp_path, path, encoding="utf-9")
    assert "unknown encoding 'utf-9'" in str(root_cause(info.value, UnknownEncodingError))
    assert classify(info.value) == "permanent"


def test_missing_file_and_missing_columns_are_permanent(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        load(tmp_path, tmp_path / "nope.csv")
    assert isinstance(root_cause(info.value, CsvFileNotFoundError), FileNotFoundError)
    assert classify(info.value) == "permanent"
    path = tmp_path / "orders.csv"
    path.write_bytes(PLAIN)
    with pytest.raises(Exception) as info:
        load(tmp_path, path, primary_key=["order_id"])
    assert "primary_key column 'order_id'" in str(info.value) and classify(info.value) == "permanent"


def test_http_statuses_are_classified(tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route("/forbidden", lambda req: Response(403, "no"))
        server.route("/down", lambda req: Response(503, "later"))
        for path, kind in (("/forbidden", "permanent"), ("/down", "transient")):
            with pytest.raises(Exception) as info:
                load(tmp_path, server.url + path)
            assert classify(info.value) == kind, path
            assert server.url + path in str(info.value)


def wide_csv(path: Path, columns: int, rows: int) -> Path:
    rng = random.Random(5)
    lines = [",".join(f"c{i}" for i in range(columns))]
    lines += [",".join(str(rng.randrange(100)) for _ in range(columns)) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "slow path"])
def test_ten_thousand_columns_load_within_duckdbs_memory_cap(
    fast: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_source, "FAST_PASS", fast)
    path = wide_csv(tmp_path / "wide.csv", 10_000, 100)
    assert 2_500_000 < path.stat().st_size < 3_500_000  # the file: 2.9 MB
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")  # the platform's memory cap
    pipeline = new_pipeline(tmp_path, warehouse.dlt_destination())
    source = build_csv_source(csv_config(), str(path), run_context())
    tables: list[int] = []
    source.resources["rows"].add_map(lambda t: tables.append(t.num_rows) or t)
    pipeline.run(source)
    stats = source.etl_stats
    loaded = table(pipeline, "rows")
    assert len(loaded) == 100 and stats.rows_emitted == 100 and stats.columns == 10_000
    assert len(record(loaded[0])) == 10_000 and "c9999" not in loaded[0]  # the fields are in the record
    assert f"more than {MAX_COLUMNS}" in stats.warning
    assert len(tables) > 1 and sum(tables) == 100  # batches of a few MB, not of a row count


def test_up_to_the_column_limit_fields_are_also_columns(tmp_path: Path) -> None:
    path = wide_csv(tmp_path / "wide.csv", MAX_COLUMNS, 20)
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    pipeline, stats = load(tmp_path, path, pipeline=new_pipeline(tmp_path, warehouse.dlt_destination()))
    loaded = table(pipeline, "rows")
    assert len(loaded) == 20 and loaded[0][f"c{MAX_COLUMNS - 1}"] == record(loaded[0])[f"c{MAX_COLUMNS - 1}"]
    assert stats.warning is None
