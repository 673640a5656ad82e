"""The Python-backend model ``resnext serve`` gives Triton for each of its models (``<version>/model.py``).

PyTriton's own proxy model (copied beside this file as ``pytriton_model.py``) runs in Triton's Python-backend
stub and hands every request to the model function in the ``resnext serve`` process. Two of its ways are not
fit for requests from anyone: a failure there becomes an internal error (HTTP 500) carrying the whole server
traceback, and the shared memory of every failed request is kept (measured: ~2x the request in the stub and
1x in tritonserver, per failed request, never given back). This subclass, in the stub:

- refuses a request whose ``BYTES`` inputs hold more than ``max_request_bytes`` (a parameter of the model's
  config) before PyTriton copies it anywhere;
- turns a response holding only :data:`ERROR_OUTPUT` (how the model function reports a client's mistake, an
  image that does not decode, as a normal answer) into an ``INVALID_ARG`` error: HTTP 400 / gRPC
  INVALID_ARGUMENT with that one line.

It runs inside the stub's interpreter, where only the standard library, numpy and Triton's utilities are
imported (not this package); :data:`ERROR_OUTPUT` is repeated in :mod:`resnext.serve.server`.
"""

import json

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # provided by Triton

from . import pytriton_model  # type: ignore[attr-defined]  # PyTriton's proxy model, beside this file

ERROR_OUTPUT = "__resnext_client_error__"
_wrap_response = pytriton_model._wrap_response


def _client_error(message: str) -> object:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message[:400], pb_utils.TritonError.INVALID_ARG))


def _wrap_response_or_error(response, requested_outputs_names, model_outputs_dict):  # noqa: ANN001, ANN202
    if response.data is not None and ERROR_OUTPUT in response.data:
        message = response.data[ERROR_OUTPUT].reshape(-1)[0]
        return _client_error(message.decode(errors="replace") if isinstance(message, bytes) else str(message))
    return _wrap_response(response, requested_outputs_names, model_outputs_dict)


# PyTriton builds each Triton response with this module-level function (nvidia-pytriton is pinned by the extra)
pytriton_model._wrap_response = _wrap_response_or_error


class TritonPythonModel(pytriton_model.TritonPythonModel):
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_request_bytes = int(params.get("max_request_bytes") or 0)
        self.bytes_inputs = [i["name"] for i in config.get("input", []) if i.get("data_type") == "TYPE_STRING"]
        super().initialize(args)

    def _oversized(self, request: object) -> str | None:
        """Why ``request`` is refused for its size, or None."""
        if not self.max_request_bytes:
            return None
        total = 0
        for name in self.bytes_inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                total += sum(len(item) for item in tensor.as_numpy().reshape(-1))
        if total > self.max_request_bytes:
            return f"request holds {total} bytes of images, more than the limit of {self.max_request_bytes} bytes"
        return None

    def execute(self, requests: list) -> list:
        refused = {i: why for i, r in enumerate(requests) if (why := self._oversized(r))}
        accepted = [r for i, r in enumerate(requests) if i not in refused]
        answers = iter(super().execute(accepted) if accepted else [])
        return [_client_error(refused[i]) if i in refused else next(answers) for i in range(len(requests))]
