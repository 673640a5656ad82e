"""The one inference path: decode -> preset transforms -> backend -> softmax -> top-k with labels.

``resnext classify``, the torch.hub processing utils, evaluation, serving, the demo and the bulk engines all call
into this module (decoding lives in :mod:`resnext.images`, runtimes in :mod:`resnext.runtime.table`, model sources in
:mod:`resnext.model.sources`), so preprocessing, label lookup and top-k exist exactly once.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import ImageError, ResnextError
from ..images import ImageDataset, ImageSource, collate_images, describe_source, load_image
from ..model.sources import ModelSource, display_names, load_source
from ..runtime.backend import Backend, torch_features
from ..runtime.backends import create_backend
from ..runtime.table import AUTO
from ..transforms import EvalPreset, eval_preset
from .auto import auto_backend

if TYPE_CHECKING:
    from .explain import Explanation


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
        backend: str | None = "auto",
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool = False,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        calibration_dir: str | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """A predictor running ``source.model`` on ``backend``: default (``"auto"`` or None) the fastest exact
        runtime installed, exported once into a cache when that pays (:mod:`resnext.inference.auto`;
        ``calibration_dir``: its int8 calibration images); ``"torch"`` for eager PyTorch. ``threads``: CPU threads of an
        exported runtime."""
        engine: Backend
        if backend in (None, AUTO):
            if image_size and image_size != source.image_size:  # the export is made at the size it will run at
                source = dataclasses.replace(source, image_size=image_size, transforms=eval_preset(image_size))
            engine = auto_backend(
                source=source,
                device=device,
                precision=precision,
                channels_last=channels_last,
                calibration_dir=calibration_dir,
                threads=threads,
            )
        else:
            engine = create_backend(
                backend, model=source.model, device=device, precision=precision, channels_last=channels_last
            )
        transforms = eval_preset(image_size) if image_size else source.transforms
        return cls(
            engine,
            transforms=transforms,
            categories=categories or source.categories,
            arch=source.arch,
            model=source.model,
        )

    @classmethod
    def from_pretrained(
        cls,
        arch: str | None = None,
        *,
        weights: Any = "DEFAULT",
        backend: str | None = "auto",
        model_file: str | None = None,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool = False,
        num_classes: int | None = None,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        progress: bool = True,
        calibration_dir: str | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """A predictor for any source (see :mod:`resnext.model.sources`): ``weights`` is ``"DEFAULT"`` (the published
        weights), a weights name, a file, a URL, or ``None``/``"random"``; or ``model_file`` is an exported model,
        whose runtime is inferred from its suffix unless ``backend`` names it. ``backend="auto"`` (the default)
        runs the weights on the fastest exact runtime installed (:mod:`resnext.inference.auto`); ``precision="bf16"`` or
        ``"int8"`` with it opts into approximate runtimes (``calibration_dir=`` for int8 calibration images).

        A checkpoint's own classifier size, class names and image size are used (a fine-tuned 5-class file gives a
        5-class predictor with its folder names); ``num_classes``, when given, must agree: inference never
        re-initialises a head. ``image_size`` overrides the crop the model expects. ``threads``: CPU threads of an
        exported runtime.
        """
        if model_file is not None:
            engine = create_backend(backend, model_file=model_file, device=device, precision=precision, threads=threads)
            meta = engine.metadata
            stored = meta.get("categories")
            if categories is None and isinstance(stored, list) and len(stored) == engine.num_classes:
                categories = stored
            size = image_size or engine.image_size or meta.get("image_size") or 224
            return cls(engine, transforms=eval_preset(size), categories=categories, arch=meta.get("arch", arch))
        source = load_source(weights, arch=arch, progress=progress)
        if num_classes is not None and source.num_classes != num_classes:
            raise ResnextError(f"{source.weights} has {source.num_classes} classes, not the {num_classes} requested")
        return cls.from_source(
            source,
            backend=backend,
            device=device,
            precision=precision,
            channels_last=channels_last,
            categories=categories,
            image_size=image_size,
            calibration_dir=calibration_dir,
            threads=threads,
        )

    def preprocess(self, source: ImageSource) -> Tensor:
        return self.transforms(load_image(source))

    def predict(self, batch: Tensor) -> Tensor:
        """Class probabilities ``[N, C]`` for a preprocessed batch."""
        return torch.softmax(self.backend(batch), dim=-1)

    def top_k_batch(self, batch: Tensor, topk: int) -> list[list[Prediction] | None]:
        """The top-k of each image of a preprocessed batch; None for an image whose scores are not finite
        (see :data:`NON_FINITE`): every engine (local, Ray) reports those the same way."""
        logits = self.backend(batch)
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        ranked = top_k(logits, topk, self.categories, from_logits=True)
        return [predictions if ok else None for ok, predictions in zip(finite, ranked)]

    def classify(self, sources: Sequence[ImageSource], *, topk: int = 5, batch_size: int = 16) -> list[ClassifyResult]:
        """One :class:`ClassifyResult` per source, in order, batched ``batch_size`` at a time.

        An input that cannot be decoded (or whose scores are not finite) does not raise: its result carries the
        one-line ``error`` that ``resnext classify`` prints, and the others are classified. A result is also a
        sequence of its :class:`Prediction` s (``results[0][0].label``); reading the predictions of a failed
        input raises its :class:`~resnext.errors.ImageError`.
        """
        return list(classify_sources(self, sources, topk=topk, batch_size=batch_size, workers=0, progress=False))

    def embed(self, batch: Tensor, *, normalize: bool = False) -> Tensor:
        """Pooled penultimate features ``[N, D]`` (float32, CPU) of a preprocessed batch:
        ``model.forward_head(model.forward_features(x), pre_logits=True)`` on the eager model, or the ``features``
        output of an exported file written with them. ``normalize`` scales each row to unit L2 norm."""
        self.check_embeddable()
        if self.backend.has_features:
            out = self.backend.features(batch)
        else:  # e.g. auto's cached file (it has no features output): the eager model, where the backend takes input
            assert self.model is not None  # check_embeddable
            out = torch_features(self.model, batch, self.backend.device)
        out = out.float().cpu()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def check_embeddable(self) -> None:
        """A one-line error naming the fix when :meth:`embed` cannot run: an exported file without features."""
        if self.backend.has_features or hasattr(self.model, "forward_features"):  # any nn.Module may be given
            return
        raise ResnextError(
            "this model file has no 'features' output: re-export it with `resnext export --features` "
            "(Python: ExportConfig(features=True)), or embed with --backend torch"
        )

    def explain(self, image: ImageSource, target: int | str | None = None) -> Explanation:
        """Grad-CAM heat-map of ``image`` for ``target`` (class index or name; default: the top class), aligned
        with the crop the model sees (:mod:`resnext.inference.explain`). Needs the eager torch model
        (``self.model``)."""
        from .explain import explain_image

        if self.model is None:
            raise ResnextError("explanations need the torch backend: this predictor runs an exported model file")
        return explain_image(self.model, self.transforms, self.categories, image, target)


# ---------------------------------------------------------------------------------------------------------------
# Classifying many inputs (``resnext classify``): background decoding, batches, progress


@dataclass(frozen=True)
class ClassifyResult:
    """One input's outcome: its top-k ``predictions``, or the one-line ``error`` that made it unreadable.

    It is also a read-only sequence of its predictions (``len``, indexing, iteration); on a failed input those
    raise :class:`~resnext.errors.ImageError` with ``error``. ``ok`` tells the two apart without raising.
    """

    source: str
    predictions: list[Prediction] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.predictions is not None

    def _checked(self) -> list[Prediction]:
        if self.predictions is None:
            raise ImageError(self.error or f"{self.source}: not classified")
        return self.predictions

    def __len__(self) -> int:
        return len(self._checked())

    def __getitem__(self, index: int) -> Prediction:
        return self._checked()[index]

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self._checked())

    def __bool__(self) -> bool:
        return True  # a result is always a result; ``ok`` says whether it has predictions


#: The error of an input whose scores came out NaN or infinite (never printed as ``nan%``).
NON_FINITE = "the model's outputs are not finite (NaN or inf): its weights are damaged, or the precision overflows"


def classify_sources(
    predictor: Predictor,
    sources: Sequence[ImageSource],
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
    if topk < 1:
        raise ResnextError(f"--topk must be at least 1, got {topk}")
    for indices, batch, errors in decoded_batches(
        predictor, sources, batch_size=batch_size, workers=workers, progress=progress, desc="classifying"
    ):
        outcome: dict[int, ClassifyResult] = {
            i: ClassifyResult(describe_source(sources[i]), error=e) for i, e in errors
        }
        if batch is not None:
            for i, predictions in zip(indices, predictor.top_k_batch(batch, topk)):
                outcome[i] = (
                    ClassifyResult(describe_source(sources[i]), predictions=predictions)
                    if predictions is not None
                    else ClassifyResult(
                        describe_source(sources[i]), error=f"{describe_source(sources[i])}: {NON_FINITE}"
                    )
                )
        for i in sorted(outcome):
            yield outcome[i]


@dataclass(frozen=True)
class EmbedResult:
    """One input's pooled features (``[D]`` float32 tensor), or the one-line ``error`` that made it unreadable."""

    source: str
    embedding: Tensor | None = None
    error: str | None = None


def embed_sources(
    predictor: Predictor,
    sources: Sequence[str],
    *,
    normalize: bool = False,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> Iterator[EmbedResult]:
    """Like :func:`classify_sources`, yielding :meth:`Predictor.embed` vectors instead of top-k classes."""
    for indices, batch, errors in decoded_batches(
        predictor, sources, batch_size=batch_size, workers=workers, progress=progress, desc="embedding"
    ):
        outcome: dict[int, EmbedResult] = {i: EmbedResult(str(sources[i]), error=e) for i, e in errors}
        if batch is not None:
            for i, vector in zip(indices, predictor.embed(batch, normalize=normalize)):
                outcome[i] = EmbedResult(str(sources[i]), embedding=vector)
        for i in sorted(outcome):
            yield outcome[i]


def decoded_batches(
    predictor: Predictor,
    sources: Sequence[ImageSource],
    *,
    batch_size: int,
    workers: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[list[int], Tensor | None, list[tuple[int, str]]]]:
    """``collate_images`` batches of ``sources`` decoded in ``workers`` background processes, with a progress bar
    (img/s, ETA) on stderr that counts each batch once the caller has consumed it."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ResnextError(f"--batch-size must be at least 1, got {batch_size}")
    # --backend auto on an empty cache exports only when the job is big enough to repay it
    predictor.backend.expect(len(sources))
    loader = torch.utils.data.DataLoader(
        ImageDataset(sources, predictor.transforms),
        batch_size=batch_size,
        num_workers=max(0, min(workers, len(sources))),
        collate_fn=collate_images,
        pin_memory=predictor.backend.device.type == "cuda",
    )
    with tqdm(total=len(sources), unit="img", desc=desc, disable=not progress, file=sys.stderr) as bar:
        for indices, batch, errors in loader:
            yield indices, batch, errors
            bar.update(len(indices) + len(errors))
