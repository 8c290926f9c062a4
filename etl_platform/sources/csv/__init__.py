"""CSV files as a dlt source, in four modules, each importing only those above it here:

- `layout.py`: what the head of a file says (`Layout`), the pass's counters (`CsvStats`),
  physical lines and the source's errors;
- `arrow_pass.py`: the fast path, raw rows as Arrow tables (`TableBuilder`, `ArrowPass`);
- `rows.py`: the slow path, records one by one (`RowReader`);
- `source.py`: the dlt source (`build_csv_source`) and how a run loads it (`apply_load_hints`).
"""
