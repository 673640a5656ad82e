"""Triton Python-backend model written by ``resnext triton-repo --format python`` (copied as ``<name>/1/model.py``).

It runs the exported file beside it on CPU through the package's runtime registry (ONNX Runtime or OpenVINO, the
``runtime`` parameter of ``config.pbtxt``), so the Triton host needs ``pip install 'resnext[onnx]'`` (or
``[openvino]``) in the Python environment its Python backend runs. Requests Triton batched together run as one
backend call.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # provided by Triton

from resnext.runtime.backends import create_backend, run_merged


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("threads", "0")) or None
        self.backend = create_backend(
            params["runtime"], model_file=str(folder / params["model_file"]), device="cpu", threads=threads
        )

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in run_merged(self.backend, arrays)
        ]
