"""A small custom MLServer runtime that runs an ONNX model with onnxruntime.

Test support only: ``tests/system/test_upstream.py`` starts MLServer with
this runtime to have a real, independent Open Inference Protocol server to
forward to. MLServer imports it by name (``runtime.OnnxModel``), so its
directory goes on the MLServer process's PYTHONPATH.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.codecs.numpy import to_datatype
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """Runs the ONNX file named by the model settings' ``parameters.uri``."""

    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            # Built by hand: NumpyCodec.encode_output would add a batch
            # dimension to the 1-D label output, which the model does not have.
            outputs=[
                ResponseOutput(
                    name=name,
                    shape=list(value.shape),
                    datatype=to_datatype(value.dtype),
                    data=value.ravel().tolist(),
                )
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
