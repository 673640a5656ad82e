"""The bulk writer layer on its own (resnext.bulk.writers, resnext.bulk.output): rows in, bytes out, no model.

tests/bulk/test_bulk.py drives the same writers end to end through ``resnext classify/embed --output``; here each
rule is checked directly and small: round trips of awkward rows, the suffix choice, resume after a torn record
(only in a file whose manifest proves it ours), a changed or foreign file left byte-for-byte alone, the lock.
"""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from conftest import read_output

from resnext.bulk.output import MANIFEST_SUFFIX, classify_row, embed_row
from resnext.bulk.writers import CsvWriter, JsonlWriter, OutputWriter, open_writer
from resnext.errors import ResnextError

Prediction = namedtuple("Prediction", "label index probability")

#: paths a file system allows and a line format must survive: separators, quotes, newlines, non-ASCII
AWKWARD = ["plain.png", "with, comma.png", 'say "cheese".png', "two\nlines.png", "caf\u00e9 \U0001f600.png"]


def classify_rows(paths: list[str], topk: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i, path in enumerate(paths):
        if i % 4 == 3:
            rows.append(classify_row(path, None, "cannot decode:\n  truncated"))
            continue
        probabilities = sorted(rng.random(topk).tolist(), reverse=True)
        indices = rng.integers(0, 1000, topk).tolist()
        rows.append(classify_row(path, [Prediction(f"label {j}", j, p) for j, p in zip(indices, probabilities)], None))
    return rows


def opened(path: Path, task: str = "classify", *, resume: bool = False, topk: int = 3, **settings) -> OutputWriter:
    writer = open_writer(path, task, topk=topk)
    writer.open(resume=resume, overwrite=False, settings={"topk": topk, **settings})
    return writer


def write_all(path: Path, rows: list[dict], task: str = "classify", batch: int = 2) -> None:
    writer = opened(path, task)
    for start in range(0, len(rows), batch):
        writer.write(rows[start : start + batch])
    writer.close()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------------------------------
# Rows and round trips


def test_rows_carry_one_line_errors_and_nothing_else_when_they_failed() -> None:
    row = classify_row("x.png", [Prediction("cat", 281, 0.5)], "line one\n\tline two  ")
    assert row["error"] == "line one line two"
    vector = embed_row("y.png", [1, 2, 3], None)["embedding"]
    assert vector.dtype == np.float32 and vector.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_classify_rows_round_trip(tmp_path: Path, suffix: str) -> None:
    rows = classify_rows(AWKWARD * 2)[: len(AWKWARD)]  # each awkward path once, one of them an error row
    path = tmp_path / f"out{suffix}"
    write_all(path, rows)
    read = read_output(path)
    assert read == rows  # exact: probabilities survive as the same floats (repr), paths byte-for-byte
    manifest = json.loads(path.with_name(path.name + MANIFEST_SUFFIX).read_text())
    assert manifest["committed"] == path.stat().st_size and manifest["settings"]["topk"] == 3
    assert not path.with_name(path.name + ".lock").exists()  # released at close


def test_embed_rows_round_trip_as_float32(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    rows = [embed_row(f"{i}.png", v, None) for i, v in enumerate(vectors)] + [embed_row("bad.png", None, "no")]
    path = tmp_path / "vectors.jsonl"
    write_all(path, rows, task="embed")
    read = read_output(path)
    assert [r["path"] for r in read] == ["0.png", "1.png", "2.png", "bad.png"]
    np.testing.assert_array_equal(np.asarray([r["embedding"] for r in read[:3]], np.float32), vectors)
    assert read[3]["embedding"] is None and read[3]["error"] == "no"


def test_a_retried_batch_is_written_once(tmp_path: Path) -> None:
    rows = classify_rows(["a.png", "b.png", "c.png"])
    writer = opened(tmp_path / "out.jsonl")
    assert writer.write(rows[:2]) == 2
    assert writer.write(rows) == 1  # a.png and b.png are done
    assert writer.write([rows[2], rows[2]]) == 0
    writer.close()
    assert [r["path"] for r in read_output(tmp_path / "out.jsonl")] == ["a.png", "b.png", "c.png"]


def test_an_empty_run_leaves_an_empty_output_of_ours(tmp_path: Path) -> None:
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"empty{suffix}"
        opened(path).close()
        if suffix == ".csv":
            assert path.read_text().startswith("path,error,") and read_output(path) == []  # the header only
        else:
            assert path.read_bytes() == b""
        assert opened(path, resume=True).done == set()  # and it resumes as ours


# ---------------------------------------------------------------------------------------------------------------
# Choosing a writer


def test_open_writer_picks_by_suffix_and_refuses_the_rest(tmp_path: Path) -> None:
    assert type(open_writer(tmp_path / "a.jsonl", "classify")) is JsonlWriter
    assert type(open_writer(tmp_path / "a.JSONL", "embed")) is JsonlWriter
    assert type(open_writer(tmp_path / "a.Csv", "classify")) is CsvWriter
    for name, task, allowed in [
        ("a.csv", "embed", ".jsonl, .parquet, .npy"),  # embeddings do not fit CSV cells
        ("a.npy", "classify", ".jsonl, .csv, .parquet"),
        ("a.txt", "classify", ".jsonl, .csv, .parquet"),
        ("a", "classify", ".jsonl, .csv, .parquet"),
    ]:
        with pytest.raises(ResnextError) as info:
            open_writer(tmp_path / name, task)
        assert str(info.value) == f"{task} --output must end in {allowed}, got {name}"
    assert list(tmp_path.iterdir()) == []  # choosing wrote nothing


# ---------------------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_continues_after_the_last_complete_record_and_cuts_a_torn_one(tmp_path: Path, suffix: str) -> None:
    paths = ["p0.png", "p1.png", "p2.png", "two\nlines.png", "p4.png"]
    rows = classify_rows(paths)
    path = tmp_path / f"out{suffix}"
    write_all(path, rows[:3])
    complete = path.read_bytes()
    # a crash mid-record; in CSV just past the newline inside the quoted path, which looks like a line end
    torn = path.with_name("torn" + suffix)
    write_all(torn, rows[:4])
    tail = torn.read_bytes()[len(complete) :]
    cut = tail.index(b"\n") + 1 if suffix == ".csv" else len(tail) // 2
    assert 0 < cut < len(tail)
    with open(path, "ab") as f:
        f.write(tail[:cut])

    writer = opened(path, resume=True)
    assert writer.done == set(paths[:3])
    assert path.read_bytes() == complete + tail[:cut]  # reading changed nothing; the first append cuts
    writer.write(rows)  # the whole input list again: only the last two are new
    writer.close()
    assert path.read_bytes().startswith(complete)
    read = read_output(path)
    assert read == rows


def test_resume_keeps_records_a_crash_wrote_after_the_manifest_was_last_updated(tmp_path: Path) -> None:
    rows = classify_rows([f"p{i}.png" for i in range(4)])
    path = tmp_path / "out.jsonl"
    write_all(path, rows[:2])
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    recorded = manifest.read_bytes()
    with open(path, "ab") as f:  # rows fsync'ed, then the process died before the manifest said so
        f.write((json.dumps(rows[2]) + "\n").encode())
    manifest.write_bytes(recorded)
    writer = opened(path, resume=True)
    assert writer.done == {"p0.png", "p1.png", "p2.png"}
    writer.write(rows)
    writer.close()
    assert read_output(path) == rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_without_our_manifest_is_left_byte_for_byte(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"theirs{suffix}"
    foreign = b'{"path": "a.png"}\n{"path": "b.pn' if suffix == ".jsonl" else b"path,error\nmine.png,keep\nhalf"
    path.write_bytes(foreign)
    with pytest.raises(ResnextError, match="was not written by resnext") as info:
        opened(path, resume=True)
    assert "\n" not in str(info.value)
    assert folder_bytes(tmp_path) == {path.name: foreign}  # no cut, no manifest, no lock left
    with pytest.raises(ResnextError, match="pass --resume .* or --overwrite"):
        opened(path)
    assert folder_bytes(tmp_path) == {path.name: foreign}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda data: b"X" + data[1:], "does not begin with the rows resnext wrote"),
        (lambda data: data[: len(data) // 3], "is shorter than the"),
        (lambda data: data + b'{"path": 7}\n', "line 4 is not a classify row"),
        (lambda data: data + b"not json\n", "line 4 is not JSON"),
    ],
)
def test_a_changed_output_of_ours_is_refused_and_left_alone(tmp_path: Path, change, reason: str) -> None:
    path = tmp_path / "out.jsonl"
    write_all(path, classify_rows(["a.png", "b.png", "c.png"]))
    path.write_bytes(change(path.read_bytes()))
    before = folder_bytes(tmp_path)
    with pytest.raises(ResnextError, match=reason) as info:
        opened(path, resume=True)
    assert "\n" not in str(info.value) and "--resume leaves it unchanged" in str(info.value)
    assert folder_bytes(tmp_path) == before


def test_resume_refuses_rows_made_with_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = opened(path, weights_sha256="aaa")
    writer.write(classify_rows(["a.png"]))
    writer.close()
    before = folder_bytes(tmp_path)
    with pytest.raises(ResnextError, match="made with weights_sha256='aaa', this run's is 'bbb'"):
        opened(path, resume=True, weights_sha256="bbb")
    with pytest.raises(ResnextError, match="holds rows made with topk=3"):
        opened(path, resume=True, topk=2)
    with pytest.raises(ResnextError, match="holds classify rows, not embed rows"):
        opened(path, "embed", resume=True)
    late = opened(path, resume=True, weights_sha256=None)  # not known yet: checked once the model is built
    with pytest.raises(ResnextError, match="weights_sha256"):
        late.confirm({"task": "classify", "topk": 3, "weights_sha256": "bbb"})
    late.abort()
    assert folder_bytes(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------
# The lock


def test_a_second_writer_is_refused_while_the_first_holds_the_output(tmp_path: Path) -> None:
    import os

    path = tmp_path / "out.jsonl"
    first = opened(path)
    lock = path.with_name(path.name + ".lock")
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(ResnextError, match=rf"being written by another run \(pid {os.getpid()}\)"):
        opened(path)
    with pytest.raises(ResnextError, match="being written by another run"):
        opened(path, resume=True)
    first.write(classify_rows(["a.png"]))
    first.abort()  # stopped early: rows kept, lock released
    assert not lock.exists()
    second = opened(path, resume=True)
    assert second.done == {"a.png"}
    second.close()
