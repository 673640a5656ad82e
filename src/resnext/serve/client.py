"""``resnext client``: top-k class names from ``resnext serve`` or any Triton serving a ``triton-repo`` repository.

A model whose input is BYTES (``<arch>_image``) gets the encoded file as it is and answers names and
probabilities. A tensor model (``<arch>``, or a ``triton-repo`` model) gets the image decoded and preprocessed here
by the package's one path (:func:`resnext.images.load_image`, :func:`resnext.transforms.eval_preset` at the
model's input size) and is asked for every class through Triton's classification extension, whose
``"score:index:name"`` answers carry the server's class names; :func:`resnext.inference.predict.top_k` ranks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ResnextError
from ..images import load_image, read_image_bytes
from ..inference.predict import ClassifyResult, Prediction, top_k
from ..model.sources import display_names
from ..options import check_options, greater_than, option, topk_option
from ..runtime.table import require
from ..transforms import eval_preset
from . import SERVE_EXTRA

PROTOCOLS = ("http", "grpc")


def protocol_option() -> Any:
    """The ``--protocol`` field of a config that talks to Triton."""
    return option("http", choices=PROTOCOLS, help="Triton's HTTP or gRPC endpoint")


@dataclass(frozen=True)
class ClientConfig:
    """Which server and model ``resnext client`` asks, and how."""

    url: str = option("127.0.0.1:8000", help="host:port of Triton's HTTP or gRPC endpoint")
    model: str | None = option(None, help="model name (default: the server's <arch>_image model, else its first model)")
    timeout: float = option(60.0, check=greater_than(0.0), help="seconds per request")
    protocol: str = protocol_option()
    topk: int = topk_option()

    def __post_init__(self) -> None:
        check_options(self)


def server_message(exc: BaseException) -> str:
    """The one meaningful line of a Triton error: PyTriton sends the model's whole traceback, whose last
    unindented line (before Triton's ``At:`` trailer) is ``module.SomeError: message``."""
    message = getattr(exc, "message", None)  # tritonclient's InferenceServerException.message()
    text = message() if callable(message) else str(exc)
    lines = [ln.rstrip() for ln in str(text or exc).splitlines()]
    if "At:" in lines:
        lines = lines[: lines.index("At:")]
    lines = [ln for ln in lines if ln.strip() and not ln[0].isspace() and not ln.startswith("Traceback")]
    last = lines[-1] if lines else repr(exc)
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)[:400]


@dataclass
class ModelInfo:
    name: str
    input_name: str
    input_type: str
    input_dims: list[int]
    output_names: list[str]
    output_dims: list[int]  # of the first output: [-1, classes] for a tensor model


class TritonClient:
    """A Triton HTTP or gRPC client for one server (``url`` is ``host:port``, no scheme)."""

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", timeout: float = 60.0) -> None:
        if protocol not in PROTOCOLS:
            raise ResnextError(f"--protocol must be http or grpc, got {protocol!r}")
        url = url.split("://", 1)[-1].rstrip("/")
        self.protocol, self.url = protocol, url
        self.module = require(f"tritonclient.{protocol}", SERVE_EXTRA)
        if protocol == "http":
            self.client = self.module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self.client = self.module.InferenceServerClient(url)
        self.timeout = timeout
        try:
            live = self.client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - any transport failure means "no server here"
            raise ResnextError(f"no Triton server answers at {url} ({protocol}): {server_message(exc)}") from exc
        if not live:
            raise ResnextError(f"the Triton server at {url} is not live")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def models(self) -> list[str]:
        """Ready models: the repository index, or (where that API is restricted, as PyTriton does) probing the
        names ``resnext serve`` uses."""
        from ..model.resnet import list_models

        try:
            index = self.client.get_model_repository_index()
            rows = index if isinstance(index, list) else [{"name": m.name, "state": m.state} for m in index.models]
            return [r["name"] for r in rows if r.get("state", "READY") == "READY"]
        except Exception:  # noqa: BLE001 - restricted endpoint: fall back to probing known names
            names = [n for arch in list_models() for n in (f"{arch}_image", arch)]
            return [n for n in names if self._ready(n)]

    def _ready(self, name: str) -> bool:
        try:
            return bool(self.client.is_model_ready(name))
        except Exception:  # noqa: BLE001
            return False

    def pick_model(self, name: str | None = None) -> str:
        if name is not None:
            if not self._ready(name):
                raise ResnextError(f"model {name!r} is not ready on {self.url}")
            return name
        names = self.models()
        if not names:
            raise ResnextError(f"no ready model on {self.url}")
        images = [n for n in names if n.endswith("_image")]
        return (images or names)[0]

    def info(self, name: str) -> ModelInfo:
        meta = self.client.get_model_metadata(name)
        if not isinstance(meta, dict):
            from google.protobuf import json_format

            meta = json_format.MessageToDict(meta, preserving_proto_field_name=True)
        first, output = meta["inputs"][0], meta["outputs"][0]
        return ModelInfo(
            name,
            first["name"],
            first["datatype"],
            [int(d) for d in first["shape"]],
            [o["name"] for o in meta["outputs"]],
            [int(d) for d in output["shape"]],
        )

    def input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        """A request input holding ``array``."""
        item = self.module.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        return item

    def infer(self, model: str, inputs: list, outputs: list | None = None) -> Any:
        try:
            return self.client.infer(model, inputs, outputs=outputs)
        except Exception as exc:  # noqa: BLE001 - InferenceServerException or transport errors
            raise ResnextError(server_message(exc)) from exc

    def classify_bytes(self, info: ModelInfo, data: Sequence[bytes], topk: int) -> list[list[Prediction]]:
        """``<arch>_image``: encoded images -> the server's top-k."""
        array = np.array([[d] for d in data], dtype=np.object_)
        outputs = [self.module.InferRequestedOutput(n) for n in ("labels", "probabilities", "indices")]
        result = self.infer(info.name, [self.input(info.input_name, array, "BYTES")], outputs)
        labels, probs, indices = (result.as_numpy(n) for n in ("labels", "probabilities", "indices"))
        return [
            [
                Prediction(int(i), lab.decode() if isinstance(lab, bytes) else str(lab), float(p))
                for lab, p, i in list(zip(rl, rp, ri))[:topk]
            ]
            for rl, rp, ri in zip(labels, probs, indices)
        ]

    def logits_with_names(self, info: ModelInfo, batch: np.ndarray) -> tuple[torch.Tensor, list[str]]:
        """A tensor model's logits ``[N, C]`` and class names: the classification extension over all classes."""
        num_classes = info.output_dims[-1]
        out = self.module.InferRequestedOutput(info.output_names[0], class_count=num_classes)
        result = self.infer(info.name, [self.input(info.input_name, batch, "FP32")], [out])
        rows = result.as_numpy(info.output_names[0]).reshape(batch.shape[0], -1)
        logits = torch.full((batch.shape[0], num_classes), float("-inf"))
        names = display_names(num_classes)
        for n, row in enumerate(rows):
            for entry in row:
                score, index, *name = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
                logits[n, int(index)] = float(score)
                if name:
                    names[int(index)] = name[0]
        return logits, names

    def classify(self, sources: Sequence[str], *, model: str | None = None, topk: int = 5) -> Iterator[ClassifyResult]:
        """One :class:`ClassifyResult` per source, in order; unreadable or refused inputs carry their error."""
        if topk < 1:
            raise ResnextError(f"--topk must be at least 1, got {topk}")
        info = self.info(self.pick_model(model))
        transforms = eval_preset(info.input_dims[-1]) if info.input_type != "BYTES" else None
        for source in sources:
            try:
                if transforms is None:
                    predictions = self.classify_bytes(info, [read_image_bytes(source)], topk)[0]
                else:
                    batch = transforms(load_image(source)).unsqueeze(0).numpy()
                    logits, names = self.logits_with_names(info, batch)
                    predictions = top_k(logits, topk, names, from_logits=True)[0]
                yield ClassifyResult(str(source), predictions=predictions)
            except ResnextError as exc:
                yield ClassifyResult(str(source), error=f"{source}: {exc}")
