"""ONNX Runtime methods: `ort-export` (fp32, export check), `ort-dynamic`, `ort-static`
(calibrated int8, QDQ) and `ort-int4` (MatMulNBits), in the `onnx` environment family."""
