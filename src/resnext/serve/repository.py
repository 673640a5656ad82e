"""``resnext triton-repo``: a standard Triton model repository for a full Triton deployment.

    OUT/<name>/config.pbtxt     backend/platform, input [-1,3,S,S] FP32, logits [-1,C] with label_filename,
                                dynamic batching, instance groups (TensorRT: optimisation profile 0)
    OUT/<name>/labels.txt       class names, one per line, wired to the logits output (classification extension)
    OUT/<name>/1/<model file>   written by resnext.export.driver (parity-checked against PyTorch)

Formats: ``onnx`` (onnxruntime backend, model.onnx), ``torchscript`` (pytorch backend, model.pt; TorchScript
files have no tensor names, so the tensors follow Triton's ``<name>__<index>`` convention), ``tensorrt``
(tensorrt_plan, model.plan; the engine's batch profile is the repository's 1..max batch size) and ``python``
(Python backend running ONNX Runtime or OpenVINO on CPU through :mod:`resnext.runtime.table`: the one format the
``tritonserver`` bundled with PyTriton can load).

TensorRT engines are specific to the GPU (and TensorRT version) that builds them, so on a machine without a GPU
the repository is written without the engine and the command prints the one ``resnext export`` line to run on
the GPU host; :func:`validate_repository` reports the missing engine until it is there.

Every ``config.pbtxt`` is parsed back with Triton's protobuf schema before the command succeeds.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnextError, first_line
from ..model.sources import ModelSource, arch_option, load_source, weights_option
from ..options import (
    check_options,
    image_size_option,
    instances_option,
    max_batch_size_option,
    max_queue_delay_option,
    model_name_option,
    option,
    preferred_batch_sizes_option,
)
from ..runtime.table import RUNTIMES, require
from . import LABELS_FILE, SERVE_EXTRA

FORMATS = ("onnx", "torchscript", "tensorrt", "python")
PYTHON_RUNTIMES = {"onnxruntime": ("onnx", "model.onnx"), "openvino": ("openvino", "model.xml")}
#: format -> (config field, value, model file, input name, output name)
_LAYOUT = {
    "onnx": ("backend", "onnxruntime", "model.onnx", "input", "logits"),
    "torchscript": ("backend", "pytorch", "model.pt", "input__0", "logits__0"),
    "tensorrt": ("platform", "tensorrt_plan", "model.plan", "input", "logits"),
    "python": ("backend", "python", "model.py", "input", "logits"),
}
#: A Triton model name is the name of its folder in the repository and a segment of its URL (/v2/models/<name>):
#: one path component of letters, digits, "_", "-" and "." that does not start with "." (never "." or "..").
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str | None) -> None:
    """Refuse a ``--name`` that is not one folder name (``/abs/dir``, ``..``, ``a/b`` would write elsewhere)."""
    if name is not None and not MODEL_NAME.fullmatch(name):
        raise ResnextError(
            f"--name {name!r} is not a model name: use one folder name of letters, digits, '_', '-' and '.' "
            "(not starting with '.', at most 128 characters)"
        )


def check_batching(max_batch_size: int, preferred_batch_sizes: Sequence[int]) -> None:
    """The batcher's targets must be batches Triton may form."""
    bad = [b for b in preferred_batch_sizes if not 1 <= b <= max_batch_size]
    if bad:
        raise ResnextError(f"--preferred-batch-sizes must lie in 1..{max_batch_size}, got {bad}")


@dataclass
class RepoConfig:
    output: str = option(
        help="model repository folder (created; other models are kept)",
        flags=("output",),
        metavar="OUT_DIR",
        default=MISSING,
    )
    format: str = option(help="", choices=FORMATS, default=MISSING)
    arch: str | None = arch_option()
    weights: Any = weights_option()
    name: str | None = model_name_option()  # default: the architecture
    image_size: int | None = image_size_option()
    max_batch_size: int = max_batch_size_option()
    preferred_batch_sizes: Sequence[int] = preferred_batch_sizes_option()
    max_queue_delay_us: int = max_queue_delay_option()
    instances: int = instances_option()
    kind: str | None = option(None, choices=("cpu", "gpu"), help="instance kind (default: gpu for tensorrt, else cpu)")
    runtime: str = option(  # --format python: onnxruntime | openvino
        "onnxruntime", choices=tuple(PYTHON_RUNTIMES), help="--format python: the runtime model.py runs"
    )
    force: bool = option(False, help="replace an existing model folder of the same name")

    def __post_init__(self) -> None:
        check_options(self)
        check_batching(self.max_batch_size, self.preferred_batch_sizes)
        if self.format == "tensorrt" and self.kind == "cpu":
            raise ResnextError("TensorRT engines run on GPUs: --kind cpu does not apply to --format tensorrt")
        check_model_name(self.name)


@dataclass
class RepoResult:
    path: str
    name: str
    files: list[str]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        return [
            f"wrote Triton model {self.name} to {self.path}:",
            *(f"  {f}" for f in self.files),
            *(f"note: {n}" for n in self.notes),
        ]


def model_config(config: RepoConfig, name: str, image_size: int, num_classes: int) -> Any:
    """The ``ModelConfig`` protobuf message for one model of the repository."""
    require("tritonclient.grpc", SERVE_EXTRA)
    from tritonclient.grpc import model_config_pb2 as pb

    field_name, value, filename, input_name, output_name = _LAYOUT[config.format]
    msg = pb.ModelConfig(name=name, max_batch_size=config.max_batch_size, default_model_filename=filename)
    setattr(msg, field_name, value)
    msg.input.add(name=input_name, data_type=pb.TYPE_FP32, dims=[3, image_size, image_size])
    msg.output.add(name=output_name, data_type=pb.TYPE_FP32, dims=[num_classes], label_filename=LABELS_FILE)
    msg.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    msg.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
    gpu = (config.kind or ("gpu" if config.format == "tensorrt" else "cpu")) == "gpu"
    group = msg.instance_group.add(
        count=config.instances, kind=pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    )
    if config.format == "tensorrt":
        group.profile.append("0")  # the engine's one profile: batch 1..max_batch_size (see export command)
    if config.format == "python":
        _, model_file = PYTHON_RUNTIMES[config.runtime]
        msg.parameters["runtime"].string_value = config.runtime
        msg.parameters["model_file"].string_value = model_file
    return msg


def parse_config(path: str | os.PathLike) -> Any:
    """Parse a ``config.pbtxt`` with Triton's schema; a one-line error if it does not parse."""
    require("tritonclient.grpc", SERVE_EXTRA)
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ResnextError(f"{path}: not a valid Triton model config ({first_line(exc)})") from exc


def validate_repository(root: str | os.PathLike, *, allow_missing_engine: bool = False) -> dict[str, Any]:
    """Parse every ``<model>/config.pbtxt`` under ``root`` and check that the files it names exist.

    Returns {model name: parsed config}. ``allow_missing_engine`` tolerates an absent TensorRT plan (to be built
    on the GPU host).
    """
    root = Path(root)
    configs = {}
    for path in sorted(root.glob("*/config.pbtxt")):
        cfg = parse_config(path)
        folder = path.parent
        if cfg.name and cfg.name != folder.name:
            raise ResnextError(f"{path}: model name {cfg.name!r} differs from its folder {folder.name!r}")
        versions = [d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()]
        if not versions:
            raise ResnextError(f"{folder}: no version folder (e.g. {folder.name}/1/)")
        needed = [v / cfg.default_model_filename for v in versions if cfg.default_model_filename]
        needed += [folder / o.label_filename for o in cfg.output if o.label_filename]
        if cfg.backend == "python":
            model_file = cfg.parameters["model_file"].string_value if "model_file" in cfg.parameters else ""
            needed += [v / model_file for v in versions if model_file]
        skip = cfg.platform == "tensorrt_plan" and allow_missing_engine
        missing = [str(p) for p in needed if not p.is_file() and not (skip and p.suffix == ".plan")]
        if missing:
            raise ResnextError(f"{path} names files that do not exist: {', '.join(missing)}")
        configs[folder.name] = cfg
    if not configs:
        raise ResnextError(f"no <model>/config.pbtxt found in {root}")
    return configs


def _export(config: RepoConfig, source: ModelSource, fmt: str, output: Path) -> list[str]:
    from ..export.driver import ExportConfig, export_model

    result = export_model(
        ExportConfig(
            format=fmt,
            output=str(output),
            arch=source.arch,
            weights=source.weights,
            batch_range=(1, config.max_batch_size),
            image_size=config.image_size,
        ),
        source,
    )
    return [f"{Path(f).name}: {result.parity[-1].line()}" if result.parity else Path(f).name for f in result.files]


def _write_model_files(config: RepoConfig, source: ModelSource, version: Path, image_size: int) -> list[str]:
    notes: list[str] = []
    if config.format in ("onnx", "torchscript"):
        notes += _export(config, source, config.format, version / _LAYOUT[config.format][2])
    elif config.format == "python":
        fmt, model_file = PYTHON_RUNTIMES[config.runtime]
        notes += _export(config, source, fmt, version / model_file)
        shutil.copyfile(Path(__file__).with_name("python_model.py"), version / "model.py")
    else:
        notes.append(
            "TensorRT engines are built on the GPU that runs them; on the Triton host run: resnext export "
            f"--format tensorrt --arch {source.arch} --weights {source.weights} --image-size {image_size} "
            f"--batch-size-range 1:{config.max_batch_size} "
            f"--output {Path(config.output) / (config.name or source.arch) / '1' / 'model.plan'}"
        )
    return notes


def write_repository(config: RepoConfig, source: ModelSource | None = None) -> RepoResult:
    """Write (or add to) the repository ``config.output``; the model folder appears only once it validated."""
    from google.protobuf import text_format

    gpu_here = config.format == "tensorrt" and RUNTIMES["tensorrt"].installed()  # else: config + build command
    source = source or load_source(config.weights, arch=config.arch)
    name = config.name or source.arch
    check_model_name(name)
    image_size = config.image_size or source.image_size
    root = Path(config.output)
    final = root / name
    if final.exists() and not config.force:
        raise ResnextError(f"{final} already exists: remove it or pass --force")
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".resnext-repo-"))
    try:
        folder = stage / name
        version = folder / "1"
        version.mkdir(parents=True)
        (folder / LABELS_FILE).write_text("\n".join(source.categories) + "\n", encoding="utf-8")
        if gpu_here:
            notes = _export(config, source, "tensorrt", version / "model.plan")
        else:
            notes = _write_model_files(config, source, version, image_size)
        msg = model_config(config, name, image_size, len(source.categories))
        (folder / "config.pbtxt").write_text(text_format.MessageToString(msg), encoding="utf-8")
        validate_repository(stage, allow_missing_engine=config.format == "tensorrt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(folder, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    files = sorted(str(p.relative_to(root)) for p in final.rglob("*") if p.is_file())
    return RepoResult(str(root), name, files, notes)
