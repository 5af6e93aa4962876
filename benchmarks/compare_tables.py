"""Compare the published tables of one partition under two storage roots, file by file.

For refactors that must not change behaviour: run the same partition with the old and the new
code (two roots), then

    python benchmarks/compare_tables.py ROOT_A ROOT_B 2026-11-20

Schemas must be equal (field metadata included). Per file, the ``transcripts`` row and the
``transcript_segments`` rows must be equal, ignoring the columns that differ by construction
(``VOLATILE``). Files whose segments were decoded with temperature fallback are listed apart:
fallback samples at temperature > 0, so two runs of the same code differ there too.
Exit status 1 when a schema or a file decoded at temperature 0 only differs.
"""

import argparse
import sys

from whisper_pipeline.core.schema import TABLE_SCHEMAS
from whisper_pipeline.core.storage import Storage

VOLATILE = {"source_uri", "processed_at", "transcribed_at"}
"""Columns that name the root or the time of the run."""


def rows_by_file(table) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        kept = {key: value for key, value in row.items() if key not in VOLATILE}
        grouped.setdefault(row["file_id"], []).append(kept)
    return grouped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root_a")
    parser.add_argument("root_b")
    parser.add_argument("partition")
    args = parser.parse_args()
    tables = {}
    for root in (args.root_a, args.root_b):
        store = Storage(root)
        tables[root] = {name: store.read_partition(name, args.partition) for name in TABLE_SCHEMAS}
    failed = False
    for name in TABLE_SCHEMAS:
        a, b = tables[args.root_a][name], tables[args.root_b][name]
        if not a.schema.equals(b.schema, check_metadata=True):
            print(f"{name}: schemas differ")
            failed = True
    grouped = {
        root: {name: rows_by_file(t) for name, t in by_name.items()}
        for root, by_name in tables.items()
    }
    a, b = grouped[args.root_a], grouped[args.root_b]
    same, sampled, different = 0, [], []
    for file_id, files in sorted(a["audio_files"].items()):
        path = files[0]["relative_path"]
        if all(a[name].get(file_id) == b[name].get(file_id) for name in TABLE_SCHEMAS):
            same += 1
            continue
        segments = a["transcript_segments"].get(file_id, []) + b["transcript_segments"].get(
            file_id, []
        )
        if any(segment["temperature"] > 0 for segment in segments):
            sampled.append(path)
        else:
            different.append(path)
    print(f"identical files: {same} of {len(a['audio_files'])}")
    print(f"differ, decoded with temperature fallback (sampled): {len(sampled)} {sampled}")
    print(f"differ at temperature 0: {len(different)} {different}")
    files_a, files_b = set(a["audio_files"]), set(b["audio_files"])
    if files_a != files_b:
        print(f"file ids differ: {sorted(files_a ^ files_b)}")
        failed = True
    return 1 if failed or different else 0


if __name__ == "__main__":
    sys.exit(main())
