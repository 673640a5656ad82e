"""The Ray Data engine, on a real (single-machine) Ray cluster confined to a network namespace with only loopback.

The engine's private instance listens on 127.0.0.1 only (checked with ``ss``); inside ``unshare -n`` the only
interface is ``lo`` anyway, and every process the run starts (orphans included) can be found by its namespace.
One driver subprocess first runs a command that starts
and stops its own Ray (it must return with no Ray process left, and print none of Ray's start-up noise), then
starts Ray once as the engine does (:func:`resnext.bulk.ray_engine.ray_instance`), runs the other scenarios through the
CLI, and stops it; the tests then check the outputs, and that no process is left in the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_bulk import IMAGE_SIZE, make_images, read_output, reference_features

from resnext.inference.predict import Predictor

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent('''
    import json, os, signal, sys, time
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from resnext import cli
    from resnext.bulk.ray_engine import RayOptions, quiet_private_ray, ray_instance

    folder, weights, out = sys.argv[1:4]
    ns = os.readlink("/proc/self/ns/net")
    report = {"netns": ns}
    common = ["--arch", "resnext_test", "--weights", weights, "--backend", "torch", "--image-size", "64",
              "--engine", "ray", "--actors", "2", "--batch-size", "8"]

    def others_in_namespace():
        """Live processes of this network namespace besides this driver (orphaned Ray workers included)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(pid) == os.getpid() or os.readlink(f"/proc/{pid}/ns/net") != ns:
                    continue
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ")[:80].decode(errors="replace")
            except OSError:
                continue
            if state != "Z":
                found.append(f"{pid} {title}")
        return found

    # The command starts (and must fully stop) its own private Ray instance: a process of its own, as a user runs it.
    import subprocess
    command = [sys.executable, "-m", "resnext", "classify", folder, "--output", f"{out}/private.jsonl", *common]
    private = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report["private"], report["private_stderr"] = private.returncode, private.stderr[-5000:]
    report["left_after_command"] = others_in_namespace()

    # The killer is a process of its own: a thread of this driver can starve while Ray holds the interpreter.
    KILLER = """
    import json, os, signal, sys, time
    ns, result = sys.argv[1], sys.argv[2]
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = open(f"/proc/{pid}/cmdline", "rb").read()
                same = os.readlink(f"/proc/{pid}/ns/net") == ns
            except OSError:
                continue
            # a model actor of this run that has built its model (its title no longer ends in __init__); Ray Data
            # may fuse the decode step into it: "ray::MapWorker(MapBatches(decode_batch)->MapBatches(ModelActor))"
            actor = title.startswith(b"ray::MapWorker(") and b"MapBatches(ModelActor))" in title
            if same and actor and b"__init__" not in title:
                os.kill(int(pid), signal.SIGKILL)
                open(result, "w").write(json.dumps({"pid": int(pid), "at": time.time()}))
                sys.exit(0)
        time.sleep(0.01)
    """

    quiet_private_ray()  # before Ray is imported, as the CLI does
    import ray
    with ray_instance(ray, RayOptions(actors=2, object_store_memory=80 * 2**20)):
        report["node_ip"] = ray.util.get_node_ip_address()
        import shutil, subprocess
        if shutil.which("ss"):  # listening TCP sockets: "Local Address:Port" is the 4th column
            listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.splitlines()
            report["listening"] = sorted({line.split()[3].rsplit(":", 1)[0] for line in listening})
        report["classify"] = cli.main(["classify", folder, "--output", f"{out}/classify.jsonl", *common])
        report["embed"] = cli.main(["embed", folder, "--output", f"{out}/embed.parquet", *common])
        import subprocess, textwrap
        killer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLER), ns, f"{out}/killed.json"])
        try:
            report["killed_run"] = cli.main(["classify", folder, "--output", f"{out}/killed.jsonl", *common[:-1], "2"])
            report["finished_at"] = time.time()
        finally:
            killer.kill()
            killer.wait()
        if os.path.exists(f"{out}/killed.json"):
            report["killed"] = json.load(open(f"{out}/killed.json"))
    print("REPORT " + json.dumps(report), flush=True)
''')


def namespace_command() -> list[str] | None:
    """``unshare`` arguments giving a network namespace with only loopback, or None where none can be made."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for args in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run([*args, "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return args
    return None


def processes_in(netns: str) -> list[str]:
    """Live (non-zombie) processes in the network namespace ``netns``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != netns:
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found.append(f"{pid} {title}")
    return found


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, small_checkpoint) -> dict:
    namespace = namespace_command()
    if namespace is None:
        pytest.skip("no network namespace can be made here (unshare -n / -rn): Ray would listen on a real interface")
    root = tmp_path_factory.mktemp("ray")
    images = make_images(root / "imgs", 196, corrupt=4, seed=7)
    (root / "out").mkdir()
    script = root / "driver.py"
    script.write_text(DRIVER)
    command = f"ip link set lo up && exec {sys.executable} {script} {root / 'imgs'} {small_checkpoint} {root / 'out'}"
    proc = subprocess.run([*namespace, "sh", "-c", command], capture_output=True, text=True, timeout=480)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    report = json.loads(lines[-1][len("REPORT ") :])
    report["left"] = processes_in(report["netns"])  # the engine waited for Ray's processes: none may be left
    return {"report": report, "images": images, "out": root / "out", "stderr": proc.stderr}


@pytest.fixture(scope="module")
def predictor(small_checkpoint) -> Predictor:
    return Predictor.from_pretrained(
        "resnext_test", weights=str(small_checkpoint), backend="torch", device="cpu", image_size=IMAGE_SIZE
    )


@pytest.fixture(scope="module")
def expected(ray_run, predictor) -> dict:
    """In-process classify of the same inputs: the reference for every Ray run."""
    return {r.source: r for r in predictor.classify(ray_run["images"], topk=5)}


def assert_same_classification(rows: list[dict], images: list[str], predictor: Predictor, expected: dict) -> None:
    """Every input exactly once; each row equals in-process classify (batches differ: tolerance on floats)."""
    assert sorted(r["path"] for r in rows) == sorted(images)
    for row in rows:
        ref = expected[row["path"]]
        assert row["error"] == ref.error
        if ref.error is not None:
            continue
        probabilities = [p.probability for p in ref.predictions]
        np.testing.assert_allclose(row["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
        for i, (got, want) in enumerate(zip(row["indices"], [p.index for p in ref.predictions])):
            gaps = [abs(probabilities[i] - probabilities[j]) for j in (i - 1, i + 1) if 0 <= j < len(probabilities)]
            assert got == want or min(gaps) < 1e-4, (row["path"], i)  # only near-ties may swap
            assert row["labels"][i] == predictor.categories[got]


def test_ray_runs_on_loopback_and_leaves_no_process(ray_run, predictor, expected) -> None:
    report = ray_run["report"]
    assert report["node_ip"] == "127.0.0.1"
    if "listening" in report:  # the private instance listens on loopback only (not 0.0.0.0 / [::])
        assert report["listening"] and set(report["listening"]) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, report
    # the command with its own Ray returned only after every Ray process (workers included) had exited
    assert report["private"] == 1 and report["left_after_command"] == [], report["left_after_command"]
    assert_same_classification(read_output(ray_run["out"] / "private.jsonl"), ray_run["images"], predictor, expected)
    assert report["left"] == [], report["left"]


def test_ray_start_up_is_quiet_and_never_asks_outside_addresses(ray_run) -> None:
    # Ray's own probe for its address (a UDP "connection" to 8.8.8.8:53) warns where it fails, as here
    for stderr in (ray_run["report"]["private_stderr"], ray_run["stderr"]):
        assert "8.8.8.8" not in stderr and "Failed to determine local IP" not in stderr, stderr
        assert "Token authentication" not in stderr, stderr


def test_ray_classify_has_every_input_once_equal_to_in_process_classify(ray_run, predictor, expected) -> None:
    report, images = ray_run["report"], ray_run["images"]
    assert report["classify"] == 1  # the corrupt inputs
    rows = read_output(ray_run["out"] / "classify.jsonl")
    assert_same_classification(rows, images, predictor, expected)
    errors = sorted(r["path"] for r in rows if r["error"] is not None)
    assert errors == sorted(p for p in images if "bad" in Path(p).name) and len(errors) == 4


def test_ray_actor_killed_mid_run_is_replaced_and_every_input_appears_once(ray_run, predictor, expected) -> None:
    report, images = ray_run["report"], ray_run["images"]
    assert "killed" in report, "the run finished before an actor could be killed"
    assert report["killed"]["at"] < report["finished_at"]  # killed while the run was going on
    assert report["killed_run"] == 1
    assert_same_classification(read_output(ray_run["out"] / "killed.jsonl"), images, predictor, expected)


def test_ray_embed_vectors_equal_forward_head_pre_logits(ray_run, predictor) -> None:
    import pyarrow.parquet as pq

    images = ray_run["images"]
    table = pq.read_table(ray_run["out"] / "embed.parquet")
    assert sorted(table.column("path").to_pylist()) == sorted(images)
    rows = {r["path"]: r for r in table.to_pylist()}
    good = [p for p in images if "bad" not in Path(p).name]
    expected = reference_features(predictor, good)
    got = np.array([rows[p]["embedding"] for p in good])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert all(np.isnan(rows[p]["embedding"]).all() and rows[p]["error"] for p in images if p not in set(good))
