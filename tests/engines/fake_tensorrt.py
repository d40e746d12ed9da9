"""A stand-in ``tensorrt`` module with the attributes ``engines.trt_build`` uses, for TensorRT 10 or 11.

It records what the builder was asked to do (flags set, file parsed, profile shapes, timing cache bytes) and parses
the ONNX file for real with ``onnx`` so the network's inputs and outputs are the file's own.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field

import onnx


@dataclass
class Calls:
    flags: list = field(default_factory=list)
    parsed: list = field(default_factory=list)
    profiles: list = field(default_factory=list)
    timing_cache_in: list = field(default_factory=list)
    workspace: list = field(default_factory=list)
    network_flags: list = field(default_factory=list)


@dataclass
class _Tensor:
    name: str
    shape: tuple
    dtype: str


def make_fake_tensorrt(
    version: str,
    fast_fp16: bool = True,
    parse_errors: tuple[str, ...] = (),
    build_fails: bool = False,
) -> tuple[types.ModuleType, Calls]:
    major = int(version.split(".")[0])
    calls = Calls()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING, INFO, VERBOSE = "warning", "info", "verbose"

        def __init__(self, severity):
            self.severity = severity

    members = {"TF32": 1} if major >= 11 else {"FP16": 0, "TF32": 1, "INT8": 2}
    trt.BuilderFlag = enum.Enum("BuilderFlag", members)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})

    class Network:
        def __init__(self):
            self.inputs, self.outputs = [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    def _tensors(values):
        out = []
        for v in values:
            dims = tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim)
            kind = {1: "FLOAT", 10: "HALF"}.get(v.type.tensor_type.elem_type, "OTHER")
            out.append(_Tensor(v.name, dims, f"DataType.{kind}"))
        return out

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            calls.parsed.append(onnx.load(path))
            if parse_errors:
                self.num_errors = len(parse_errors)
                return False
            model = calls.parsed[-1]
            weights = {i.name for i in model.graph.initializer}
            self.network.inputs = _tensors([v for v in model.graph.input if v.name not in weights])
            self.network.outputs = _tensors(model.graph.output)
            return True

        def get_error(self, i):
            return f"In node 0 (parse): {parse_errors[i]}"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.profiles.append((name, lo, opt, hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timings"

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.workspace.append((pool, size))

        def set_flag(self, flag):
            calls.flags.append(flag)

        def add_optimization_profile(self, profile):
            pass

        def create_timing_cache(self, data):
            calls.timing_cache_in.append(bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            calls.network_flags.append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if build_fails:
                return None
            return f"engine:{version}:{[f.name for f in calls.flags]}".encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = fast_fp16  # removed in TensorRT 11

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt, calls
