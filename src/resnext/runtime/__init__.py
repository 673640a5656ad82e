"""The runtime layer: how a model runs, below everything that runs one.

- :mod:`.table`: the runtime table, data only (name, file suffixes, precisions, export format, extra, module).
- :mod:`.backend`: the :class:`~resnext.runtime.backend.Backend` contract and eager PyTorch's backend.
- :mod:`.exported`: what every exported file's backend shares (loading steps, input checks, batch splitting).
- :mod:`.backends`: the backends of exported files (ONNX Runtime, OpenVINO, TensorRT, TorchScript, torch.export),
  found by plain imports in :func:`~resnext.runtime.backends.create_backend`.
- :mod:`.hardware`: CPU features (and the mask that hides them) that decide which precisions run natively.
"""
