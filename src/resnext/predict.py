"""The one inference path: decode -> preset transforms -> backend -> softmax -> top-k with labels.

``resnext classify``, the torch.hub processing utils, evaluation, serving, the demo and the bulk engines all call
into this module (decoding lives in :mod:`resnext.images`, runtimes in :mod:`resnext.runtimes`, model sources in
:mod:`resnext.sources`), so preprocessing, label lookup and top-k exist exactly once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .errors import ResnextError
from .images import ImageDataset, ImageSource, collate_images, load_image
from .runtimes import Backend, create_backend
from .sources import DEFAULT_ARCH, ModelSource, display_names, load_source
from .transforms import EvalPreset, eval_preset


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


class Predictor:
    """Preprocess, run a backend and label the results. ``Predictor.from_pretrained()`` is the usual start."""

    def __init__(
        self,
        backend: Backend,
        *,
        transforms: EvalPreset | None = None,
        categories: Sequence[str] | None = None,
        arch: str | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        if categories is not None and len(categories) != backend.num_classes:
            raise ResnextError(
                f"{len(categories)} class names were given for a model with {backend.num_classes} classes"
            )
        self.backend = backend
        self.transforms = transforms or eval_preset()
        self.categories = list(categories) if categories is not None else display_names(backend.num_classes)
        self.arch = arch
        #: the eager torch model when there is one (explanations and embeddings need it); None for exported files
        self.model = model

    @property
    def image_size(self) -> int:
        return self.transforms.crop_size

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        *,
        backend: str | None = None,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool = False,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        **options: Any,
    ) -> Predictor:
        """A predictor running ``source.model`` on ``backend`` (default torch)."""
        engine = create_backend(backend or "torch", model=source.model, device=device, precision=precision,
                                channels_last=channels_last, **options)
        transforms = eval_preset(image_size) if image_size else source.transforms
        return cls(engine, transforms=transforms, categories=categories or source.categories, arch=source.arch,
                   model=source.model)

    @classmethod
    def from_pretrained(
        cls,
        arch: str | None = None,
        *,
        weights: Any = "DEFAULT",
        backend: str | None = None,
        model_file: str | None = None,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool = False,
        num_classes: int | None = None,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        progress: bool = True,
        **options: Any,
    ) -> Predictor:
        """A predictor for any source (see :mod:`resnext.sources`): ``weights`` is ``"DEFAULT"`` (the published
        weights), a weights name, a file, a URL, or ``None``/``"random"``; or ``model_file`` is an exported model,
        whose runtime is inferred from its suffix unless ``backend`` names it.

        A checkpoint's own classifier size, class names and image size are used (a fine-tuned 5-class file gives a
        5-class predictor with its folder names); ``num_classes``, when given, must agree: inference never
        re-initialises a head. ``image_size`` overrides the crop the model expects.
        """
        if model_file is not None:
            engine = create_backend(backend, model_file=model_file, device=device, precision=precision, **options)
            meta = getattr(engine, "metadata", {}) or {}
            stored = meta.get("categories")
            if categories is None and isinstance(stored, list) and len(stored) == engine.num_classes:
                categories = stored
            size = image_size or getattr(engine, "image_size", None) or meta.get("image_size") or 224
            return cls(engine, transforms=eval_preset(size), categories=categories, arch=meta.get("arch", arch))
        source = load_source(weights, arch=arch, progress=progress)
        if num_classes is not None and source.num_classes != num_classes:
            raise ResnextError(f"{source.weights} has {source.num_classes} classes, not the {num_classes} requested")
        return cls.from_source(source, backend=backend, device=device, precision=precision,
                               channels_last=channels_last, categories=categories, image_size=image_size, **options)

    def preprocess(self, source: ImageSource) -> Tensor:
        return self.transforms(load_image(source))

    def predict(self, batch: Tensor) -> Tensor:
        """Class probabilities ``[N, C]`` for a preprocessed batch."""
        return torch.softmax(self.backend(batch), dim=-1)

    def classify(self, sources: Sequence[ImageSource], *, topk: int = 5) -> list[list[Prediction]]:
        batch = torch.stack([self.preprocess(s) for s in sources])
        return top_k(self.backend(batch), topk, self.categories, from_logits=True)


# ---------------------------------------------------------------------------------------------------------------
# Classifying many inputs (``resnext classify``): background decoding, batches, progress


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
