"""The export layer: ``resnext export``.

- :mod:`.config`: :class:`~resnext.export.config.ExportConfig`, what to export and how.
- :mod:`.driver`: :func:`~resnext.export.driver.export_model`, which writes the file and checks it against eager
  PyTorch.
- :mod:`.writers`: one writer per format (ONNX, OpenVINO, TensorRT, TorchScript, torch.export).
"""
