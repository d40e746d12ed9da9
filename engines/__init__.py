"""Inference engines: ONNX export, TensorRT engine builds, and the backends that run a stage behind one interface.

TensorRT and pycuda are optional (``requirements-tensorrt.txt``, GPU hosts only) and only ever imported lazily.
"""
