"""Export of a plan to portable formats: ONNX (QuantizeLinear / DequantizeLinear for integer layers,
MatMulNBits for weight-only Linear), run on ONNX Runtime (``deploy --engine onnx``).

Parts: :mod:`.ops` (the torch custom ops and their ONNX translations), :mod:`.modules` (export twins of the
fake-quant layers), :mod:`.onnx` (:func:`export_onnx`, the verb, and :class:`OnnxRuntimeModel`), :mod:`.measure`
(:func:`compare_onnx`: ONNX Runtime beside torch.ao and FP32). Needs the ``[onnx]`` extra (onnx, onnxscript,
onnxruntime).
"""
