"""torch → ONNX bundle (`edgegen export`), checked against torch and the TensorRT parser tables.

Modules: `pipeline` (the staged export and its quality gates), `onnx_export` (tracing, slimming,
checking), `fp16` (mixed-precision conversion), `parity` (real-input comparisons), `trt_check`
(+ `trt_ops.json`: what the ONNX-TensorRT parser accepts, per TensorRT version), `source`
(a trained checkpoint → the components to export). Importing this package is cheap; torch is
imported by the modules that need it.
"""
