"""Calibration: an fp32 bundle → a new bundle that also carries an int8 or fp8 precision.

Explicit quantization (Q/DQ) that TensorRT 10.3/11 builds from and ONNX Runtime CPU runs:
symmetric, per-channel weights, per-tensor activations, on the inputs of Conv / ConvTranspose /
MatMul / Gemm only, biases in float. Calibration inputs are captured from the runtime's own
streaming loop (every step, every chunk, the KV cache filled), layers that cost too much
accuracy stay in float, and the result is checked against fp32 (component error, clips, judge,
latency) in a report stored inside the new bundle.

    from edgegen.calibration import Settings, calibrate_bundle
    report = calibrate_bundle("bundle/", "bundle-int8/", Settings(precision="int8"))

Needs `onnx` (the `train` extra) besides onnxruntime; imported lazily by the CLI.
"""

from edgegen.calibration.pipeline import PRECISIONS, Settings, calibrate_bundle, default_out

__all__ = ["PRECISIONS", "Settings", "calibrate_bundle", "default_out"]
