"""The one inference path: decode -> preset transforms -> backend -> softmax -> top-k with labels.

``resnext classify``, the torch.hub processing utils, evaluation and the inference benchmark all call into
this module, so preprocessing, label lookup and top-k exist exactly once.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .download import MAX_IMAGE_BYTES, fetch_bytes, is_url
from .errors import ImageError, ResnextError
from .labels import imagenet_categories
from .transforms import EvalPreset, eval_preset

#: Images with more pixels than this are refused before decoding (PIL's own decompression-bomb threshold).
MAX_IMAGE_PIXELS = 89_478_485
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageSource = str | os.PathLike | bytes | Image.Image


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _describe(source: ImageSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit greyscale is rescaled, transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """Decode a path, http(s) URL, bytes or PIL image into an upright RGB image; :class:`ImageError` otherwise."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            data: Any = io.BytesIO(source)
        elif is_url(source):
            data = io.BytesIO(fetch_bytes(str(source), max_bytes=max_bytes))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{name}: no such file")
            if path.stat().st_size > max_bytes:
                raise ImageError(f"{name}: file is larger than {max_bytes} bytes")
            data = path
        try:
            # Only the header is read here; Pillow's own bomb check may fire already (2x its limit).
            image = Image.open(data)
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file, or a format Pillow cannot read") from None
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{name}: cannot open image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    opened = image if not isinstance(source, Image.Image) else None
    try:
        # Decode now (RGB images are otherwise decoded lazily, later, outside this error handling).
        image.load()
        rgb = to_rgb(ImageOps.exif_transpose(image))
        if opened is not None and rgb is not opened:
            opened.close()  # multi-frame files (GIF, TIFF) keep their file open until closed
        return rgb
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated data, broken headers
        raise ImageError(f"{name}: image data is corrupt or truncated ({exc})") from None


def sample_images() -> list[str]:
    """The photos bundled with the package (``resnext classify`` with no inputs classifies these)."""
    from importlib import resources

    folder = Path(str(resources.files("resnext").joinpath("assets/samples")))
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand folders (recursively, sorted) into image files; paths and URLs are kept as given."""
    found: list[str] = []
    for item in inputs:
        if not is_url(item) and Path(item).is_dir():
            found += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(str(item))
    return found


# ---------------------------------------------------------------------------------------------------------------
# Top-k


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def top_k(scores: Tensor, k: int, categories: Sequence[str], *, from_logits: bool = False) -> list[list[Prediction]]:
    """Per sample, the ``k`` highest-scoring classes with their names and probabilities.

    ``scores`` are probabilities, or logits with ``from_logits=True``: ranking logits keeps a correct order among
    classes whose softmax probabilities underflow to the same 0.0 (a saturated softmax ties them arbitrarily).
    """
    k = min(k, scores.shape[-1])
    scores = scores.float()
    values, indices = scores.topk(k, dim=-1)
    if from_logits:
        values = torch.softmax(scores, dim=-1).gather(-1, indices)
    return [
        [Prediction(int(i), categories[int(i)], float(v)) for v, i in zip(row_v, row_i)]
        for row_v, row_i in zip(values.tolist(), indices.tolist())
    ]


def categories_for(num_classes: int, categories: Sequence[str] | None = None) -> list[str]:
    if categories is not None and len(categories) == num_classes:
        return list(categories)
    if num_classes == 1000:
        return imagenet_categories()
    return [f"class_{i}" for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------------------------
# Backends: each maps a normalised float batch [N,3,H,W] to logits [N,C] (float32, on the CPU)


class Backend(Protocol):
    num_classes: int

    def __call__(self, batch: Tensor) -> Tensor: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; a CUDA request without a GPU is a :class:`ResnextError`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ResnextError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ResnextError("--device cuda was requested but no CUDA GPU is available")
    return resolved


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """Eager PyTorch; reduced precision through autocast, optional channels_last memory format."""

    def __init__(
        self, model: torch.nn.Module, *, device: str = "auto", precision: str = "fp32", channels_last: bool = False
    ) -> None:
        if precision not in _DTYPES:
            raise ResnextError(f"unknown precision {precision!r}; choose one of {', '.join(_DTYPES)}")
        self.device = resolve_device(device)
        self.dtype = _DTYPES[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.num_classes = int(getattr(model, "num_classes", 1000))

    @torch.inference_mode()
    def __call__(self, batch: Tensor) -> Tensor:
        batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(batch).float().cpu()


BACKENDS: dict[str, Callable[..., Backend]] = {}


def create_backend(
    name: str = "torch",
    *,
    model: torch.nn.Module | None = None,
    model_file: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    **options: Any,
) -> Backend:
    """Build an inference backend by name; ``model_file`` is the exported file the non-torch backends run."""
    if name == "torch":
        if model is None:
            raise ResnextError("the torch backend needs a model")
        return TorchBackend(model, device=device, precision=precision, channels_last=channels_last)
    if name not in BACKENDS:
        from . import backends  # noqa: F401  - registers the exported-model runtimes into BACKENDS
    if name not in BACKENDS:
        raise ResnextError(f"unknown backend {name!r}; choose one of torch, {', '.join(sorted(BACKENDS))}")
    if model_file is None:
        raise ResnextError(f"the {name} backend needs --model-file (an exported model; see `resnext export`)")
    return BACKENDS[name](model_file, device=device, precision=precision, **options)


# ---------------------------------------------------------------------------------------------------------------
# Predictor


class Predictor:
    """Preprocess, run a backend and label the results. ``Predictor.from_pretrained()`` is the usual start."""

    def __init__(
        self, backend: Backend, *, transforms: EvalPreset | None = None, categories: Sequence[str] | None = None
    ) -> None:
        if categories is not None and len(categories) != backend.num_classes:
            raise ResnextError(
                f"{len(categories)} class names were given for a model with {backend.num_classes} classes"
            )
        self.backend = backend
        self.transforms = transforms or eval_preset()
        self.categories = categories_for(backend.num_classes, categories)

    @classmethod
    def from_pretrained(
        cls,
        arch: str = "resnext101_32x4d",
        *,
        weights: str | None = None,
        backend: str = "torch",
        model_file: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
        channels_last: bool = False,
        num_classes: int | None = None,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        progress: bool = True,
        **options: Any,
    ) -> Predictor:
        """``weights`` is a file, a URL, a weights name, or ``None`` for the published default.

        A checkpoint file's classifier size is used as is (a fine-tuned 5-class file gives a 5-class predictor);
        ``num_classes``, when given, must agree with it: inference never re-initialises a head. ``image_size`` is
        the crop the model expects (default: the exported file's input size, else the weights' preset, 224).
        """
        from .models import create_model
        from .weights import WEIGHTS_BY_MODEL

        model = None
        if backend == "torch":
            if weights is None:
                if arch not in WEIGHTS_BY_MODEL:
                    raise ResnextError(f"{arch} has no published weights; pass --weights FILE")
                weights = "DEFAULT"
            model = create_model(arch, weights=weights, progress=progress)
            if num_classes is not None and model.num_classes != num_classes:
                raise ResnextError(f"{weights} has {model.num_classes} classes, not the {num_classes} requested")
        engine = create_backend(
            backend, model=model, model_file=model_file, device=device, precision=precision,
            channels_last=channels_last, **options,
        )
        image_size = image_size or getattr(engine, "image_size", None)
        if image_size is not None:
            transforms = eval_preset(image_size)
        elif arch in WEIGHTS_BY_MODEL:
            transforms = WEIGHTS_BY_MODEL[arch].DEFAULT.transforms()
        else:
            transforms = eval_preset()
        return cls(engine, transforms=transforms, categories=categories)

    def preprocess(self, source: ImageSource) -> Tensor:
        return self.transforms(load_image(source))

    def predict(self, batch: Tensor) -> Tensor:
        """Class probabilities ``[N, C]`` for a preprocessed batch."""
        return torch.softmax(self.backend(batch), dim=-1)

    def classify(self, sources: Sequence[ImageSource], *, topk: int = 5) -> list[list[Prediction]]:
        batch = torch.stack([self.preprocess(s) for s in sources])
        return top_k(self.backend(batch), topk, self.categories, from_logits=True)


class ImageDataset(torch.utils.data.Dataset):
    """Sources -> ``(index, tensor, error)``; decoding errors are returned, not raised, so a loader survives them."""

    def __init__(self, sources: Sequence[ImageSource], transforms: Callable[[Image.Image], Tensor]) -> None:
        self.sources = list(sources)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.transforms(load_image(self.sources[index])), None
        except ResnextError as exc:
            return index, None, str(exc)


def collate_images(items: list[tuple[int, Tensor | None, str | None]]) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    ok = [(i, t) for i, t, _ in items if t is not None]
    errors = [(i, e) for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, errors


# ---------------------------------------------------------------------------------------------------------------
# Classifying many inputs (``resnext classify``): background decoding, batches, progress, reports


@dataclass(frozen=True)
class ClassifyResult:
    """One input's outcome: its top-k ``predictions``, or the one-line ``error`` that made it unreadable."""

    source: str
    predictions: list[Prediction] | None = None
    error: str | None = None


def classify_sources(
    predictor: Predictor,
    sources: Sequence[str],
    *,
    topk: int = 5,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> Iterator[ClassifyResult]:
    """Yield one :class:`ClassifyResult` per source, in input order.

    Images are decoded and preprocessed by ``workers`` background processes (a torch ``DataLoader``; 0 decodes
    in this process) while the previous batch runs; unreadable inputs are yielded with their error, never raised.
    """
    from tqdm.auto import tqdm

    if topk < 1:
        raise ResnextError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise ResnextError(f"--batch-size must be at least 1, got {batch_size}")
    loader = torch.utils.data.DataLoader(
        ImageDataset(sources, predictor.transforms),
        batch_size=batch_size,
        num_workers=max(0, min(workers, len(sources))),
        collate_fn=collate_images,
        pin_memory=getattr(predictor.backend, "device", torch.device("cpu")).type == "cuda",
    )
    with tqdm(total=len(sources), unit="img", desc="classifying", disable=not progress, file=sys.stderr) as bar:
        for indices, batch, errors in loader:
            outcome: dict[int, ClassifyResult] = {i: ClassifyResult(str(sources[i]), error=e) for i, e in errors}
            if batch is not None:
                for i, predictions in zip(indices, top_k(predictor.backend(batch), topk, predictor.categories, from_logits=True)):
                    outcome[i] = ClassifyResult(str(sources[i]), predictions=predictions)
            for i in sorted(outcome):
                yield outcome[i]
            bar.update(len(outcome))


def format_table(result: ClassifyResult) -> str:
    """A readable block for one classified image: its name, then one ``rank  probability  class`` row per class."""
    assert result.predictions is not None
    rows = [result.source]
    for rank, p in enumerate(result.predictions, 1):
        rows.append(f"  {rank:>2}  {100 * p.probability:6.2f}%  {p.label}  [{p.index}]")
    return "\n".join(rows)


def format_json(result: ClassifyResult) -> str:
    """One JSON line: ``{"source", "predictions": [{"rank", "index", "label", "probability"}, ...]}``."""
    assert result.predictions is not None
    predictions = [
        {"rank": rank, "index": p.index, "label": p.label, "probability": round(p.probability, 6)}
        for rank, p in enumerate(result.predictions, 1)
    ]
    return json.dumps({"source": result.source, "predictions": predictions}, ensure_ascii=False)


#: Images drawn into one ``--plot`` figure at most; more would give an unreadably tall PNG.
MAX_PLOT_ROWS = 64


def plot_predictions(results: Sequence[ClassifyResult], path: str | os.PathLike[str]) -> Path:
    """Write one PNG: each image beside a horizontal bar chart of its top-k classes. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ResnextError("--plot needs matplotlib: pip install 'resnext[plot]'") from None
    results = [r for r in results if r.predictions is not None][:MAX_PLOT_ROWS]
    if not results:
        raise ResnextError("nothing to plot: no image was classified")
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 2.6 * len(results)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for (image_ax, bar_ax), result in zip(axes, results):
        image = load_image(result.source)
        image.thumbnail((320, 320))
        image_ax.imshow(image)
        image_ax.set_title(Path(result.source).name if not is_url(result.source) else result.source[-40:], fontsize=9)
        image_ax.axis("off")
        predictions = result.predictions or []
        labels = [p.label if len(p.label) <= 40 else p.label[:37] + "..." for p in predictions]
        values = [100 * p.probability for p in predictions]
        positions = range(len(predictions))[::-1]  # most probable on top
        bar_ax.barh(list(positions), values, color="tab:blue")
        bar_ax.set_yticks(list(positions), labels, fontsize=8)
        bar_ax.set_xlim(0, 100)
        bar_ax.set_xlabel("probability (%)", fontsize=8)
        for y, v in zip(positions, values):
            bar_ax.text(min(v + 1, 85), y, f"{v:.1f}%", va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fig.savefig(tmp, format="png", dpi=80)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# torch.hub processing utils (NVIDIA's `nvidia_convnets_processing_utils` surface)


class ProcessingUtils:
    """Drop-in for NVIDIA's hub utils, with any image mode accepted and labels shipped in the package."""

    def __init__(self, transforms: EvalPreset | None = None, categories: Sequence[str] | None = None) -> None:
        self.transforms = transforms or eval_preset()
        self.categories = list(categories) if categories is not None else imagenet_categories()

    def prepare_input_from_image(self, image: Image.Image, cuda: bool = False) -> Tensor:
        batch = self.transforms(load_image(image)).unsqueeze(0)
        return batch.cuda() if cuda else batch

    def prepare_input_from_uri(self, uri: str | os.PathLike, cuda: bool = False) -> Tensor:
        batch = self.transforms(load_image(uri)).unsqueeze(0)
        return batch.cuda() if cuda else batch

    def pick_n_best(self, predictions: Tensor, n: int = 5) -> list[list[tuple[str, str]]]:
        results = []
        for i, row in enumerate(top_k(predictions.detach().cpu(), n, categories_for(predictions.shape[-1], self.categories))):
            formatted = [(p.label, f"{100 * p.probability:.1f}%") for p in row]
            print(f"sample {i}: {formatted}")
            results.append(formatted)
        return results
