"""Deploying a trained run: ONNX export with parity checks, int8 quantization, and the HTTP inference server."""
