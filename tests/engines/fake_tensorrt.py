"""A stand-in ``tensorrt`` module with the attributes ``engines.trt_build`` and ``engines.trt_backend`` use.

Builder side (TensorRT 10 or 11): it records what it was asked to do (flags set, file parsed, profile shapes, timing
cache bytes) and parses the ONNX file for real with ``onnx``, so the network's inputs and outputs are the file's own.
The "engine" it serializes is a small JSON naming that ONNX file and the profile's largest batch.

Runtime side: the deserialized engine runs that ONNX file with ONNX Runtime, reading its input from and writing its
outputs to the addresses bound with ``set_tensor_address``, in a host-memory stand-in for the GPU
(:class:`FakeCudaMemory`), so the backend's binding, shape and copy logic is exercised as on a GPU.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.machinery
import json
import types
from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass
class Calls:
    flags: list = field(default_factory=list)
    parsed: list = field(default_factory=list)
    profiles: list = field(default_factory=list)
    timing_cache_in: list = field(default_factory=list)
    workspace: list = field(default_factory=list)
    network_flags: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    executions: list = field(default_factory=list)


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
            calls.paths.append(str(path))
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
            plan = {"version": version, "flags": [f.name for f in calls.flags], "onnx": calls.paths[-1]}
            plan["max_batch"] = calls.profiles[-1][3][0]
            return json.dumps(plan).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = fast_fp16  # removed in TensorRT 11

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    _add_runtime(trt, calls)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # so importlib.util.find_spec finds it
    return trt, calls


def _add_runtime(trt: types.ModuleType, calls: Calls) -> None:
    import onnxruntime as ort

    trt.TensorIOMode = enum.Enum("TensorIOMode", {"INPUT": 0, "OUTPUT": 1})
    trt.DataType = enum.Enum("DataType", {"FLOAT": 0})
    trt.nptype = lambda dtype: np.float32
    trt.heap = {}  # address -> host array standing in for device memory

    class Engine:
        def __init__(self, plan: dict):
            self.plan = plan
            self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.io = [(t.name, trt.TensorIOMode.INPUT, t.shape) for t in self.session.get_inputs()]
            self.io += [(t.name, trt.TensorIOMode.OUTPUT, t.shape) for t in self.session.get_outputs()]

        @property
        def num_io_tensors(self):
            return len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _entry(self, name):
            return next(e for e in self.io if e[0] == name)

        def get_tensor_mode(self, name):
            return self._entry(name)[1]

        def get_tensor_shape(self, name):
            return tuple(d if isinstance(d, int) else -1 for d in self._entry(name)[2])

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            shape = self.get_tensor_shape(name)
            return (1, *shape[1:]), (1, *shape[1:]), (self.plan["max_batch"], *shape[1:])

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.addresses: dict[str, int] = {}
            self.input_shape = None
            self.output_rows = 0

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def set_input_shape(self, name, shape):
            self.input_shape = tuple(shape)

        def get_tensor_shape(self, name):
            shape = self.engine.get_tensor_shape(name)
            return (self.input_shape[0], *shape[1:])

        def execute_async_v3(self, stream):
            names = [e[0] for e in self.engine.io]
            if set(self.addresses) != set(names) or self.input_shape is None:
                return False  # as TensorRT: every I/O tensor must be bound and the input shape set
            n = self.input_shape[0]
            inp = self.engine.io[0][0]
            x = trt.heap[self.addresses[inp]].view(np.float32)[: int(np.prod(self.input_shape))]
            outs = self.engine.session.run(None, {inp: x.reshape(self.input_shape)})
            for (name, _, _), value in zip(self.engine.io[1:], outs, strict=True):
                flat = value.astype(np.float32).reshape(-1)
                trt.heap[self.addresses[name]].view(np.float32)[: flat.size] = flat
            calls.executions.append((n, stream))
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                return None  # TensorRT logs an error and returns None for a plan it cannot read
            return Engine(plan) if plan.get("version") == trt.__version__ else None

    trt.Runtime = Runtime


class FakeCudaMemory:
    """``engines.cuda_memory``'s interface over host arrays registered in the fake module's heap."""

    name = "fake"
    errors = (MemoryError,)
    stream_handle = 7

    def __init__(self, trt: types.ModuleType) -> None:
        self.heap = trt.heap
        self.active = 0

    @contextlib.contextmanager
    def activate(self):
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def host_buffer(self, shape, dtype):
        return np.zeros(shape, dtype)

    def device_buffer(self, nbytes):
        buf = np.zeros(int(nbytes), np.uint8)
        self.heap[id(buf)] = buf
        return buf

    @staticmethod
    def address(buffer) -> int:
        return id(buffer)

    def upload(self, dst, src):
        assert self.active, "copies must happen inside activate()"
        dst[: src.nbytes] = src.reshape(-1).view(np.uint8)

    def download(self, dst, src):
        assert self.active, "copies must happen inside activate()"
        dst.reshape(-1).view(np.uint8)[:] = src[: dst.nbytes]

    def synchronize(self):
        pass
