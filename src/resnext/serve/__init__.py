"""Serving on NVIDIA Triton Inference Server.

- :mod:`resnext.serve.server`: ``resnext serve``, a real ``tritonserver`` (through PyTriton) running any
  :class:`resnext.inference.predict.Predictor` with dynamic batching: ``<arch>`` (tensor in, logits out, class names for
  Triton's classification extension) and ``<arch>_image`` (encoded image bytes in, top-k names out).
- :mod:`resnext.serve.repository`: ``resnext triton-repo``, standard model repositories for a full Triton
  deployment (ONNX Runtime, TorchScript, TensorRT or Python-backend models), every ``config.pbtxt`` validated.
- :mod:`resnext.serve.tritonserver`: the bundled ``tritonserver`` binary run directly on such a repository.
- :mod:`resnext.serve.client`: ``resnext client``, top-k names from any of these servers.

Nothing here is imported by ``import resnext``; PyTriton and tritonclient come with ``pip install 'resnext[serve]'``.
"""

SERVE_EXTRA = "serve"
LABELS_FILE = "labels.txt"  # class names beside a model, one per line (the classification extension reads them)
