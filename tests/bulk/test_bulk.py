"""Bulk classification and embeddings on one machine: inputs, output files, resume, embeddings, exported features."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, read_output
from PIL import Image, ImageOps

from resnext import cli
from resnext.bulk.engine import list_inputs
from resnext.inference.predict import Predictor

IMAGE_SIZE = 64


def make_images(folder: Path, count: int, *, corrupt: int = 2, seed: int = 0) -> list[str]:
    """``count`` random PNGs of 32-64 px and ``corrupt`` unreadable files; returns all paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = rng.integers(32, 65, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:04d}.png")
    good = (folder / "img0000.png").read_bytes()
    for i in range(corrupt):
        (folder / f"bad{i}.png").write_bytes(good[: 40 + i] if i % 2 else b"not an image at all")
    return sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return make_images(tmp_path_factory.mktemp("bulk") / "imgs", 22)


@pytest.fixture(scope="module")
def predictor(small_checkpoint) -> Predictor:
    return Predictor.from_pretrained(
        "resnext_test", weights=str(small_checkpoint), backend="torch", device="cpu", image_size=IMAGE_SIZE
    )


def model_args(checkpoint) -> list[str]:  # noqa: ANN001
    """The small model on eager torch, decoded in-process: the flags every bulk command here shares."""
    return [
        "--arch",
        "resnext_test",
        "--weights",
        str(checkpoint),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--image-size",
        str(IMAGE_SIZE),
        "--workers",
        "0",
    ]


@pytest.fixture
def run(small_checkpoint, capsys):
    def run(command: str, *args: str) -> tuple[int, str]:
        code = cli.main([command, *model_args(small_checkpoint), *args])
        return code, capsys.readouterr().err

    return run


def assert_rows_match(rows: list[dict], expected: dict, topk: int = 5) -> None:
    assert sorted(r["path"] for r in rows) == sorted(expected)  # every input exactly once
    for row in rows:
        ref = expected[row["path"]]
        if ref.error is not None:
            assert row["error"] == ref.error and row["indices"] == []
            continue
        assert row["error"] is None
        assert row["indices"] == [p.index for p in ref.predictions][:topk]
        assert row["labels"] == [p.label for p in ref.predictions][:topk]
        np.testing.assert_allclose(row["probabilities"], [p.probability for p in ref.predictions][:topk], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def test_list_inputs_expands_folders_globs_and_list_files(tmp_path) -> None:
    paths = make_images(tmp_path / "a", 3, corrupt=0)
    (tmp_path / "a" / "sub").mkdir()
    nested = tmp_path / "a" / "sub" / "n.png"
    Image.new("RGB", (40, 40)).save(nested)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n\n{paths[0]}\nhttps://example.invalid/x.jpg\ns3://bucket/key.jpg\n")
    assert list_inputs([str(tmp_path / "a")]) == sorted(paths + [str(nested)])
    assert list_inputs([str(tmp_path / "a" / "*.png")]) == paths
    assert list_inputs([str(tmp_path / "**" / "n.png")]) == [str(nested)]
    # duplicates (folder + list file naming the same file) appear once; remote URIs are kept as given
    assert list_inputs([str(tmp_path / "a" / "*.png")], from_list=listing) == paths + [
        "https://example.invalid/x.jpg",
        "s3://bucket/key.jpg",
    ]
    with pytest.raises(Exception, match="no files match"):
        list_inputs([str(tmp_path / "nothing-*.png")])
    with pytest.raises(Exception, match="cannot read --from-list"):
        list_inputs([], from_list=tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------
# classify --output


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_classify_output_has_one_row_per_input_equal_to_in_process_classify(
    run, images, predictor, tmp_path, suffix
) -> None:
    out = tmp_path / f"preds{suffix}"
    code, err = run("classify", os.path.dirname(images[0]), "--output", str(out), "--topk", "3", "--batch-size", "4")
    assert code == 1  # the corrupt files
    assert "img/s" in err and "2 of 24 inputs could not be read" in err
    expected = {r.source: r for r in predictor.classify(images, topk=3)}
    rows = read_output(out)
    assert [r["path"] for r in rows] == images  # the local engine keeps input order
    assert_rows_match(rows, expected, topk=3)
    assert sum(r["error"] is not None for r in rows) == 2
    assert not out.with_name(out.name + ".parts").exists()


def test_existing_output_needs_resume_or_overwrite_and_formats_are_checked(run, images, tmp_path) -> None:
    out = tmp_path / "p.jsonl"
    out.write_text("")
    code, err = run("classify", images[0], "--output", str(out))
    assert code == 2 and "pass --resume" in err and out.read_text() == ""
    assert run("classify", images[2], "--output", str(out), "--overwrite")[0] == 0
    assert len(read_output(out)) == 1
    code, err = run("embed", images[2], "--output", str(tmp_path / "e.csv"))
    assert code == 2 and "embed --output must end in .jsonl, .parquet, .npy" in err
    code, err = run("classify", images[2], "--output", str(tmp_path / "c.npy"))
    assert code == 2 and "classify --output must end in" in err
    code, err = run("classify", images[2], "--output", str(out), "--resume", "--topk", "2", "--json")
    assert code == 2 and "--json apply to printed results" in err


def test_engine_ray_without_ray_names_the_extra(run, images, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code, err = run("classify", images[0], "--engine", "ray", "--output", str(tmp_path / "o.jsonl"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == ["resnext: error: this needs the ray.data package: pip install 'resnext[ray]'"]


def test_resume_skips_done_inputs_and_cuts_a_torn_last_line(run, images, predictor, tmp_path) -> None:
    out = tmp_path / "p.jsonl"
    assert run("classify", *images[:5], "--output", str(out))[0] == 1  # images[:2] are the corrupt ones
    with open(out, "a") as f:
        f.write('{"path": "' + images[5] + '", "err')  # a crash in the middle of a write
    code, err = run("classify", *images, "--output", str(out), "--resume")
    assert code == 0 and "5 already there" in err  # the corrupt inputs were rows of the first run
    rows = read_output(out)
    assert [r["path"] for r in rows] == images
    assert_rows_match(rows, {r.source: r for r in predictor.classify(images)})


def test_resume_keeps_rows_written_after_the_manifest_last_recorded_them(run, images, predictor, tmp_path) -> None:
    """A kill between a batch's fsync and the manifest update leaves complete rows the manifest does not count."""
    out, other = tmp_path / "p.csv", tmp_path / "other.csv"
    assert run("classify", *images[2:4], "--output", str(out))[0] == 0
    assert run("classify", images[4], "--output", str(other))[0] == 0
    with open(out, "a", newline="") as f:
        f.write(other.read_text().split("\n", 1)[1])  # the row of images[4], complete, after "committed"
    code, err = run("classify", *images[2:7], "--output", str(out), "--resume")
    assert code == 0 and "3 already there" in err, err
    rows = read_output(out)
    assert [r["path"] for r in rows] == images[2:7]
    assert_rows_match(rows, {r.source: r for r in predictor.classify(images[2:7])})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "suffix"), [("classify", ".jsonl"), ("classify", ".csv"), ("classify", ".parquet"), ("embed", ".npy")]
)
def test_resume_after_sigkill_equals_an_uninterrupted_run(run, small_checkpoint, tmp_path, task, suffix) -> None:
    images = make_images(tmp_path / "imgs", 30, corrupt=2, seed=1)
    out = tmp_path / f"killed{suffix}"
    command = [
        sys.executable,
        "-m",
        "resnext",
        task,
        str(tmp_path / "imgs"),
        *model_args(small_checkpoint),
        "--batch-size",
        "2",
        "--output",
        str(out),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out.with_name(out.name + ".parts")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            written = len(out.read_text().splitlines()) if out.exists() else len(list(parts.glob("part-*")))
            if written >= 3:  # at least three batches are in the output
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    import pyarrow.parquet as pq

    partial = (
        out.read_text().splitlines()[suffix == ".csv" :]  # rows (maybe a torn last one), without the CSV header
        if suffix in (".jsonl", ".csv")
        else [p for f in parts.glob("part-*.parquet") for p in pq.read_table(f)["path"].to_pylist()]
    )
    assert 0 < len(partial) < len(images)  # killed for real, in the middle
    # exit status 0: the corrupt inputs (sorted first) already had their rows before the kill
    assert run(task, str(tmp_path / "imgs"), "--batch-size", "2", "--output", str(out), "--resume")[0] == 0
    reference = tmp_path / f"uninterrupted{suffix}"
    assert run(task, str(tmp_path / "imgs"), "--batch-size", "2", "--output", str(reference))[0] == 1
    if suffix == ".npy":
        index = out.with_suffix(".index.csv").read_text()
        assert (
            index == reference.with_suffix(".index.csv").read_text()
            and sum(line.startswith(",") for line in index.splitlines()) == 2
        )
        np.testing.assert_allclose(np.load(out), np.load(reference), rtol=1e-5, atol=1e-6)
        return
    resumed, full = read_output(out), read_output(reference)
    assert [r["path"] for r in resumed] == images  # exactly once each, in input order
    for a, b in zip(resumed, full):
        assert a["path"] == b["path"] and a["error"] == b["error"] and a["indices"] == b["indices"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# embed


def reference_features(predictor: Predictor, paths: list[str], *, normalize: bool = False) -> np.ndarray:
    model = predictor.model
    x = torch.stack([predictor.preprocess(p) for p in paths])
    with torch.no_grad():
        f = model.forward_head(model.forward_features(x), pre_logits=True)
    return (torch.nn.functional.normalize(f, dim=-1) if normalize else f).numpy()


def test_embed_npy_and_parquet_hold_forward_head_pre_logits(run, images, predictor, tmp_path) -> None:
    good = [p for p in images if "bad" not in p]
    expected = dict(zip(good, reference_features(predictor, good)))
    npy = tmp_path / "vectors.npy"
    assert run("embed", *images, "--output", str(npy), "--batch-size", "5")[0] == 1
    vectors = np.load(npy)
    with open(tmp_path / "vectors.index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [r["path"] for r in index] == images and vectors.shape == (len(good), 512 * 4)
    for r in index:
        if r["path"] in expected:
            assert r["error"] == ""
            np.testing.assert_allclose(vectors[int(r["row"])], expected[r["path"]], rtol=1e-4, atol=1e-5)
        else:
            assert r["row"] == "" and r["error"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "vectors.parquet"
    assert run("embed", *images, "--output", str(out), "--normalize")[0] == 1
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 2048)
    normalized = dict(zip(good, reference_features(predictor, good, normalize=True)))
    for row in table.to_pylist():
        if row["path"] in normalized:
            np.testing.assert_allclose(row["embedding"], normalized[row["path"]], rtol=1e-4, atol=1e-5)
            assert abs(np.linalg.norm(row["embedding"]) - 1) < 1e-5
        else:
            assert np.isnan(row["embedding"]).all() and row["error"]  # parquet: NaN, not null (see bulk.py)


def test_nearest_neighbour_of_each_sample_is_its_flipped_copy(run, tmp_path) -> None:
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    for sample in SAMPLES:
        ImageOps.mirror(Image.open(sample).convert("RGB")).save(flipped / f"{sample.stem}.png")
    make_images(flipped, 6, corrupt=0, seed=3)  # distractors
    assert run("embed", *map(str, SAMPLES), "--output", str(tmp_path / "q.jsonl"), "--normalize")[0] == 0
    assert run("embed", str(flipped), "--output", str(tmp_path / "db.jsonl"), "--normalize")[0] == 0
    queries = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    database = [json.loads(line) for line in (tmp_path / "db.jsonl").read_text().splitlines()]
    matrix = np.array([r["embedding"] for r in database])
    for query in queries:
        nearest = database[int(np.argmax(matrix @ np.array(query["embedding"])))]["path"]
        assert Path(nearest).stem == Path(query["path"]).stem


@pytest.mark.slow
def test_exported_features_output_agrees_with_torch(predictor, images, tmp_path) -> None:
    from resnext.export.driver import ExportConfig, export_model
    from resnext.model.sources import source_from_model

    source = source_from_model(predictor.model, arch="resnext_test", image_size=IMAGE_SIZE)
    good = [p for p in images if "bad" not in p][:6]
    x = torch.stack([predictor.preprocess(p) for p in good])
    result = export_model(
        ExportConfig(
            "onnx",
            str(tmp_path / "m.onnx"),
            arch="resnext_test",
            image_size=IMAGE_SIZE,
            features=True,
            batch_range=(1, 8),
        ),
        source,
    )
    assert any(p.inputs == "features of real images" for p in result.parity)
    exported = Predictor.from_pretrained(model_file=str(tmp_path / "m.onnx"), device="cpu")
    assert exported.model is None and exported.backend.has_features
    np.testing.assert_allclose(exported.embed(x).numpy(), reference_features(predictor, good), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(exported.backend(x), predictor.backend(x), rtol=1e-3, atol=1e-4)  # logits unchanged
    plain = tmp_path / "plain.onnx"
    export_model(
        ExportConfig("onnx", str(plain), arch="resnext_test", image_size=IMAGE_SIZE, batch_range=(1, 8)), source
    )
    with pytest.raises(Exception, match="no 'features' output"):
        Predictor.from_pretrained(model_file=str(plain), device="cpu").embed(x)


def test_bulk_benchmark_prints_model_only_reference_and_local_rows(images, capsys) -> None:
    code = cli.main(
        [
            "benchmark",
            "bulk",
            os.path.dirname(images[0]),
            "--arch",
            "resnext_test",
            "--image-size",
            str(IMAGE_SIZE),
            "--backend",
            "torch",
            "--engine",
            "local",
            "--limit",
            "8",
            "--batch-size",
            "4",
            "--workers",
            "0",
        ]
    )
    table = capsys.readouterr().out.splitlines()
    assert code == 0
    rows = {line.split()[0]: line.split() for line in table if line.startswith(("model", "local"))}
    assert rows["model"][2] == "8" and rows["local"][1] == "8"  # "model only" / "local": 8 images each
    assert float(rows["model"][5]) == 1.0 and float(rows["local"][4]) > 0  # the reference row and a ratio to it


def test_ray_decode_step_reads_uris_through_the_one_decoder_and_turns_failures_into_errors(images, predictor) -> None:
    """The CPU step of the Ray pipeline (no Ray needed): file:// URIs are read by pyarrow's filesystems."""
    from resnext.bulk.ray_engine import decode_batch

    good = next(p for p in images if "bad" not in p)
    paths = [good, "file://" + good, "nosuchscheme://bucket/x.jpg", images[0]]
    out = decode_batch({"path": np.array(paths, dtype=object)}, predictor.transforms)
    expected = predictor.preprocess(good).numpy()
    np.testing.assert_array_equal(out["pixels"][0], expected)
    np.testing.assert_array_equal(out["pixels"][1], expected)
    assert list(out["error"][:2]) == ["", ""]
    assert out["error"][2].startswith("nosuchscheme://bucket/x.jpg: cannot read")
    assert out["error"][3].startswith(images[0]) and not out["pixels"][3].any()


def test_ray_model_step_reports_non_finite_scores_as_the_local_engine_does(images, small_checkpoint) -> None:
    """The model step of the Ray pipeline (no Ray needed) shares the local engine's top-k and its NaN check."""
    from resnext.bulk.engine import ModelSpec
    from resnext.bulk.ray_engine import ModelActor, decode_batch
    from resnext.inference.predict import NON_FINITE, classify_sources

    spec = ModelSpec("resnext_test", str(small_checkpoint), "torch", device="cpu", image_size=IMAGE_SIZE)
    actor = ModelActor(spec, "classify", topk=3, normalize=False, threads=None)
    from resnext.runtime.backend import TorchBackend

    class Damaged(torch.nn.Module):  # the second image's scores overflow
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model, self.num_classes = model, model.num_classes

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            logits = self.model(batch).clone()
            logits[1] = float("nan")
            return logits

    actor.predictor.backend = TorchBackend(Damaged(actor.predictor.backend.model), device="cpu")
    good = [p for p in images if "bad" not in p][:3]
    table = actor(decode_batch({"path": np.array(good, dtype=object)}, actor.predictor.transforms)).to_pylist()
    local = list(classify_sources(actor.predictor, good, topk=3, batch_size=3, workers=0, progress=False))
    assert [row["error"] for row in table] == [None, f"{good[1]}: {NON_FINITE}", None] == [r.error for r in local]
    assert [row["labels"] for row in table] == [[p.label for p in r.predictions] if r.ok else [] for r in local]


def test_a_random_spec_builds_the_same_model_wherever_it_is_built() -> None:
    """Ray replicas, the Ray driver and benchmark reruns all build ``--weights random`` from one ModelSpec."""
    from resnext.bulk.engine import ModelSpec

    spec = ModelSpec("resnext_test", "random", "torch", device="cpu", image_size=IMAGE_SIZE)
    first = spec.predictor()
    torch.rand(1000)  # whatever ran in between
    second = spec.predictor()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(first.backend(x), second.backend(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Output safety: only our own files are resumed, one run per output, a resume keeps the settings of its rows


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what "changed nothing" is checked against."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("x.jsonl", b'a config {"k": 1}'),
        ("x.jsonl", b'{"path": "a.png", "indices": [1]}\n{"path": "b.png", "indices": [2]}'),
        ("x.jsonl", b""),
        ("x.csv", b"path,error\nmine.png,keep this line"),
    ],
)
def test_resume_refuses_a_file_it_did_not_write_byte_for_byte(run, images, tmp_path, name, content) -> None:
    """Before: --resume emptied the first file and cut the last line of the next ones, then went on."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / name).write_bytes(content)
    code, err = run("classify", images[3], "--output", str(folder / name), "--resume")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not written by resnext" in lines[0], err
    assert snapshot(folder) == {name: content}  # unchanged, and no lock or manifest left beside it


def test_a_torn_csv_record_is_cut_by_records_not_lines(run, images, predictor, tmp_path) -> None:
    """Before: the repair cut at the newline inside the quoted path, and resumed rows went into the open quote."""
    odd = tmp_path / "odd"
    odd.mkdir()
    newline = odd / 'two\nlines, "quoted".png'
    newline.write_bytes(Path(images[5]).read_bytes())
    sources = [images[3], images[4], str(newline), images[6]]
    out = tmp_path / "p.csv"
    assert run("classify", *sources[:2], "--output", str(out))[0] == 0
    with open(out, "a", newline="") as f:
        f.write(f'"{sources[2][: sources[2].index(chr(10)) + 1]}')  # a crash inside the quoted path
    code, err = run("classify", *sources, "--output", str(out), "--resume")
    assert code == 0 and "2 already there" in err, err
    rows = read_output(out)
    assert [r["path"] for r in rows] == sources
    assert_rows_match(rows, {r.source: r for r in predictor.classify(sources)})


def test_resume_refuses_other_row_settings(run, images, tmp_path) -> None:
    """Before: --topk 5 then --topk 2 went into one file, and embed resumed with other weights mixed two models."""
    out = tmp_path / "p.jsonl"
    assert run("classify", images[3], "--output", str(out), "--topk", "5")[0] == 0
    before = out.read_bytes()
    for flags, named in [(["--topk", "2"], "topk"), (["--image-size", "96"], "image_size")]:
        code, err = run("classify", images[3], images[4], "--output", str(out), "--resume", *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
        assert out.read_bytes() == before
    vectors = tmp_path / "v.parquet"
    assert run("embed", images[3], "--output", str(vectors))[0] == 0
    before = vectors.read_bytes()
    for flags, named in [(["--normalize"], "normalize"), (["--weights", "random"], "weights_sha256")]:
        code, err = run("embed", images[3], images[4], "--output", str(vectors), "--resume", *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
        assert vectors.read_bytes() == before
        assert not vectors.with_name(vectors.name + ".parts").exists()
    assert run("embed", images[3], images[4], "--output", str(vectors), "--resume")[0] == 0  # the same settings


_HOLD_OUTPUT = """
import sys
from resnext.bulk.writers import open_writer
writer = open_writer(sys.argv[1], "classify")
writer.open(resume=False, overwrite=False, settings={"task": "classify"})
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_second_run_on_a_locked_output_refuses_naming_the_holder(run, images, tmp_path, suffix) -> None:
    """Before: two runs on one output both exited 0 (parquet lost rows, jsonl got duplicates)."""
    out = tmp_path / f"p{suffix}"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OUTPUT, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for command in ("classify", "embed"):
            code, err = run(command, images[3], "--output", str(out))
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and f"pid {holder.pid}" in lines[0], err
        assert not out.exists()
        holder.kill()  # its lock file stays behind: a stale lock of a dead process
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert run("classify", images[3], "--output", str(out))[0] == 0
    assert [r["path"] for r in read_output(out)] == [images[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".resnext.json"])


def test_output_checks_come_before_the_model_loads(run, images, tmp_path, monkeypatch) -> None:
    """Before: an existing output or a bad suffix was refused only after the model was built (61 s for ResNeXt101)."""
    from resnext.bulk.engine import ModelSpec

    loaded: list[str] = []
    real = ModelSpec.predictor
    monkeypatch.setattr(ModelSpec, "predictor", lambda self, **kw: loaded.append("model") or real(self, **kw))
    done = tmp_path / "done.jsonl"
    assert run("classify", images[3], "--output", str(done))[0] == 0
    loaded.clear()
    (tmp_path / "a-file").write_text("")
    cases = [
        (["--output", str(done)], "pass --resume"),
        (["--output", str(done), "--resume", "--topk", "3"], "topk"),
        (["--output", str(tmp_path / "p.txt")], "must end in"),
        (["--output", str(tmp_path / "a-file" / "p.jsonl")], "not a writable folder"),
    ]
    for flags, message in cases:
        code, err = run("classify", images[4], *flags)
        assert code == 2 and message in err and loaded == [], (flags, err)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_in_a_missing_folder_is_created(run, images, tmp_path, suffix) -> None:
    """Before: exit 3 (FileNotFoundError) for .jsonl and .csv; parquet already made its folder."""
    out = tmp_path / "new" / "deeper" / f"p{suffix}"
    assert run("classify", images[3], images[4], "--output", str(out))[0] == 0
    assert [r["path"] for r in read_output(out)] == [images[3], images[4]]


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_a_crash_between_the_final_rename_and_the_manifest_merges_no_part_twice(
    run, images, predictor, tmp_path, monkeypatch, suffix
) -> None:
    """Before: a crash after the merged file replaced the old one but before the parts were removed merged those
    parts again on --resume (duplicate rows). The manifest names the parts already in the final file."""
    from resnext.bulk.parts import PartsWriter

    out = tmp_path / f"v{suffix}"
    assert run("embed", *images[2:4], "--output", str(out), "--batch-size", "1")[0] == 0
    real = PartsWriter.write_manifest

    def killed_after_the_rename(self, **changes):  # noqa: ANN001, ANN202
        if "final" in changes and changes["final"] is not None and self.manifest.get("pending"):
            raise KeyboardInterrupt  # the final file is in place; the manifest still calls it pending
        return real(self, **changes)

    monkeypatch.setattr(PartsWriter, "write_manifest", killed_after_the_rename)
    code, _ = run("embed", *images[2:6], "--output", str(out), "--batch-size", "1", "--resume")
    assert code == 130  # interrupted
    monkeypatch.setattr(PartsWriter, "write_manifest", real)
    assert out.with_name(out.name + ".parts").is_dir()  # the merged parts are still there
    code, err = run("embed", *images[2:8], "--output", str(out), "--resume")
    assert code == 0 and "4 already there" in err, err
    if suffix == ".npy":
        with open(tmp_path / "v.index.csv", newline="") as f:
            paths = [r["path"] for r in csv.DictReader(f)]
        vectors = np.load(out)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pylist()
        paths, vectors = [r["path"] for r in table], np.array([r["embedding"] for r in table])
    assert paths == images[2:8]  # once each, in order
    np.testing.assert_allclose(vectors, reference_features(predictor, images[2:8]), rtol=1e-4, atol=1e-5)


def test_a_resume_refused_after_the_model_loads_cuts_nothing(run, images, tmp_path) -> None:
    """The weights are known only once the model is built: the torn record stays until a resume may write."""
    out = tmp_path / "p.csv"
    assert run("classify", images[3], "--output", str(out))[0] == 0
    with open(out, "a") as f:
        f.write('"torn')
    before = out.read_bytes()
    code, err = run("classify", images[3], images[4], "--output", str(out), "--resume", "--weights", "random")
    assert code == 2 and "weights_sha256" in err and out.read_bytes() == before, err
    assert run("classify", images[3], images[4], "--output", str(out), "--resume")[0] == 0
    assert [r["path"] for r in read_output(out)] == images[3:5]
