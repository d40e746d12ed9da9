"""Stand-ins for ``tensorrt``, ``pycuda.driver`` and torch's CUDA, with the behaviour ``engines`` relies on.

``tensorrt`` (10 or 11): the builder records what it was asked to do (flags, file parsed, profile shapes, timing
cache bytes, progress phases) and parses the ONNX file for real with ``onnx``, so the network's inputs and outputs are
the file's own. TF32 is on by default, as in TensorRT. The "engine" it serializes is JSON holding the ONNX bytes
themselves (so a TensorRT 11 build from a temporary FP16 conversion stays runnable), the profile and the flags.
Return values are the real ones: ``set_input_shape`` is False outside the profile, ``set_tensor_address`` False for
an unknown tensor, ``set_timing_cache`` False for a cache it cannot read; ``nptype`` refuses BF16 and FP8 with
TensorRT's TypeError (numpy has no such dtypes).

Runtime: the deserialized engine runs that ONNX with ONNX Runtime, reading its input from and writing its outputs to
the addresses bound with ``set_tensor_address``, looked up in ``trt.heap`` (address → host array standing in for
device memory), which every memory stand-in here registers its "device" buffers in.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import importlib.machinery
import json
import threading
import types
from dataclasses import dataclass, field

import numpy as np
import onnx

CACHE_MAGIC = b"fake-timing-cache:"
#: TensorRT's DataType values; nptype maps the ones numpy has (python/packaging/bindings_wheel/tensorrt/__init__.py)
DATA_TYPES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7, "INT64": 8}
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_}
NUMPY_TYPES |= {"UINT8": np.uint8, "INT64": np.int64}
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16"}


@dataclass
class Calls:
    flags: list = field(default_factory=list)  # the flags set when the network was built
    parsed: list = field(default_factory=list)
    profiles: list = field(default_factory=list)
    timing_cache_in: list = field(default_factory=list)
    workspace: list = field(default_factory=list)
    network_flags: list = field(default_factory=list)
    phases: list = field(default_factory=list)
    loggers: list = field(default_factory=list)
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
    tensor_dtypes: dict[str, str] | None = None,
    refused_addresses: tuple[str, ...] = (),
) -> tuple[types.ModuleType, Calls]:
    """``tensor_dtypes``: engine tensor name → DataType name, overriding the ONNX's (e.g. ``{"output_0": "BF16"}``);
    ``refused_addresses``: tensors whose ``set_tensor_address`` returns False (TensorRT: a misaligned address)."""
    major = int(version.split(".")[0])
    calls = Calls()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        ERROR, WARNING, INFO, VERBOSE = "error", "warning", "info", "verbose"

        def __init__(self, min_severity):
            self.min_severity = min_severity
            calls.loggers.append(self)

    class IProgressMonitor:
        def __init__(self):
            pass

    members = {"TF32": 1} if major >= 11 else {"FP16": 0, "TF32": 1, "INT8": 2, "BF16": 3}
    trt.BuilderFlag = enum.Enum("BuilderFlag", members)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DataType = enum.Enum("DataType", DATA_TYPES)

    def nptype(dtype):
        if dtype.name in NUMPY_TYPES:
            return NUMPY_TYPES[dtype.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype

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
            out.append(_Tensor(v.name, dims, ONNX_TYPES.get(v.type.tensor_type.elem_type, "OTHER")))
        return out

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            with open(path, "rb") as f:
                self.network.onnx = f.read()
            calls.parsed.append(onnx.load_from_string(self.network.onnx))
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
            self.shapes = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return (self.data or CACHE_MAGIC) + b"+timings"

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default
            self.cache = None
            self.profile = None
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            calls.workspace.append((pool, size))

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def add_optimization_profile(self, profile):
            self.profile = profile
            return 0

        def create_timing_cache(self, data):
            calls.timing_cache_in.append(bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data and not cache.data.startswith(CACHE_MAGIC):
                return False  # TensorRT logs "invalid timing cache" and refuses it
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.loggers.append(logger)

        def create_network(self, flags=0):
            calls.network_flags.append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic selection", "Building engine", 3)
                for step in range(3):
                    calls.phases.append(("Tactic selection", step, monitor.step_complete("Tactic selection", step)))
                monitor.phase_finish("Tactic selection")
                for step in range(2):
                    calls.phases.append(("Building engine", step, monitor.step_complete("Building engine", step)))
                monitor.phase_finish("Building engine")
            if build_fails:
                return None
            calls.flags = sorted(config.flags, key=lambda f: f.name)
            lo, opt, hi = config.profile.shapes
            return json.dumps(
                {
                    "version": version,
                    "flags": [f.name for f in calls.flags],
                    "onnx": base64.b64encode(network.onnx).decode(),
                    "profile": [lo, opt, hi],
                    "dtypes": {t.name: t.dtype for t in [*network.inputs, *network.outputs]} | (tensor_dtypes or {}),
                }
            ).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = fast_fp16  # removed in TensorRT 11

    trt.Logger, trt.Builder, trt.OnnxParser, trt.IProgressMonitor = Logger, Builder, OnnxParser, IProgressMonitor
    _add_runtime(trt, calls, refused_addresses)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # so importlib.util.find_spec finds it
    return trt, calls


def _add_runtime(trt: types.ModuleType, calls: Calls, refused_addresses: tuple[str, ...]) -> None:
    import onnxruntime as ort

    trt.TensorIOMode = enum.Enum("TensorIOMode", {"INPUT": 0, "OUTPUT": 1})
    trt.heap = {}  # address -> host array standing in for device memory

    class Engine:
        def __init__(self, plan: dict):
            self.plan = plan
            model = base64.b64decode(plan["onnx"])
            self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
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
            return trt.DataType[self.plan["dtypes"][name]]

        def get_tensor_profile_shape(self, name, profile):
            if profile != 0 or self.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                raise RuntimeError(f"no profile {profile} shape for {name}")  # TensorRT: invalid Dims, an error
            return tuple(tuple(s) for s in self.plan["profile"])

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.addresses: dict[str, int] = {}
            self.input_shape = None

        def set_tensor_address(self, name, address):
            if name not in [e[0] for e in self.engine.io] or name in refused_addresses:
                return False
            self.addresses[name] = address
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(shape)
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False  # TensorRT logs an error and leaves the shape as it was
            self.input_shape = shape
            return True

        def get_tensor_shape(self, name):
            shape = self.engine.get_tensor_shape(name)
            if self.input_shape is None:
                return shape
            return self.input_shape if name == self.engine.io[0][0] else (self.input_shape[0], *shape[1:])

        def _array(self, name, count):
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            return trt.heap[self.addresses[name]].view(dtype)[:count]

        def execute_async_v3(self, stream):
            names = [e[0] for e in self.engine.io]
            if set(self.addresses) != set(names) or self.input_shape is None:
                return False  # as TensorRT: every I/O tensor must be bound and the input shape set
            if any(self.addresses[n] not in trt.heap for n in names):
                return False
            inp = names[0]
            x = self._array(inp, int(np.prod(self.input_shape))).reshape(self.input_shape)
            outs = self.engine.session.run(None, {inp: x.astype(np.float32)})
            for name, value in zip(names[1:], outs, strict=True):
                self._array(name, value.size)[:] = value.reshape(-1)
            calls.executions.append((self.input_shape[0], stream))
            return True

    class Runtime:
        def __init__(self, logger):
            calls.loggers.append(logger)

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
        self.buffers: list[np.ndarray] = []
        self.closed = False

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
        self.heap[buf.ctypes.data] = buf
        self.buffers.append(buf)
        return buf

    @staticmethod
    def address(buffer) -> int:
        return buffer.ctypes.data

    def upload(self, dst, src):
        assert self.active, "copies must happen inside activate()"
        dst[: src.nbytes] = src.reshape(-1).view(np.uint8)

    def download(self, dst, src):
        assert self.active, "copies must happen inside activate()"
        dst.reshape(-1).view(np.uint8)[:] = src[: dst.nbytes]

    def synchronize(self):
        pass

    def close(self):
        for buf in self.buffers:
            del self.heap[buf.ctypes.data]
        self.buffers.clear()
        self.closed = True


@dataclass
class CudaLedger:
    """What the pycuda stand-in saw: context pushes and pops, allocations and frees, and frees outside a context."""

    pushes: int = 0
    pops: int = 0
    retained: int = 0
    released: int = 0
    allocated: dict = field(default_factory=dict)  # address -> nbytes, device memory live now
    pinned: int = 0  # live page-locked allocations
    streams: int = 0  # live streams
    outside_context: list = field(default_factory=list)  # frees attempted with the context not current


def make_fake_pycuda(heap: dict, fail_open: bool = False) -> tuple[types.ModuleType, types.ModuleType, CudaLedger]:
    """``pycuda`` and ``pycuda.driver`` stand-ins; device allocations are host arrays registered in ``heap``.

    As pycuda: freeing an allocation, a pinned buffer or a stream needs its context current on this thread (pycuda
    would try to push it and refuse from another thread); such a free is recorded in ``outside_context``.
    """
    ledger = CudaLedger()
    cuda = types.ModuleType("pycuda.driver")
    local = threading.local()

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    cuda.Error, cuda.LogicError = Error, LogicError

    def current():
        return bool(getattr(local, "stack", None))

    def check_free(what):
        if not current():
            ledger.outside_context.append(what)
            raise LogicError(f"cannot free {what}: its context is not current (out-of-thread context)")

    class Context:
        def push(self):
            local.stack = [*getattr(local, "stack", []), self]
            ledger.pushes += 1

        @staticmethod
        def pop():
            if not current():
                raise LogicError("context stack is empty")
            local.stack = local.stack[:-1]
            ledger.pops += 1

        def detach(self):
            ledger.released += 1

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            return 1

        def retain_primary_context(self):
            if fail_open:
                raise LogicError("cuDevicePrimaryCtxRetain failed: invalid device ordinal")
            ledger.retained += 1
            return Context()

    class Stream:
        def __init__(self):
            if not current():
                raise LogicError("cuStreamCreate failed: invalid device context")
            ledger.streams += 1
            self.handle = 1234

        def synchronize(self):
            pass

        def __del__(self):
            if not current():
                ledger.outside_context.append("stream")  # pycuda warns and leaks
            ledger.streams -= 1

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.array = np.zeros(nbytes, np.uint8)
            self.address = self.array.ctypes.data
            heap[self.address] = self.array
            ledger.allocated[self.address] = nbytes

        def __int__(self):
            return self.address

        def free(self):
            check_free("device allocation")
            del ledger.allocated[self.address], heap[self.address]

    class HostAllocation(bytearray):
        def free(self):
            check_free("page-locked allocation")
            ledger.pinned -= 1

    def mem_alloc(nbytes):
        if not current():
            raise LogicError("cuMemAlloc failed: invalid device context")
        return DeviceAllocation(int(nbytes))

    def pagelocked_empty(shape, dtype):
        ledger.pinned += 1
        dtype = np.dtype(dtype)
        return np.ndarray(shape, dtype, buffer=HostAllocation(int(np.prod(shape)) * dtype.itemsize))

    def memcpy_htod_async(dst, src, stream):
        assert current(), "copies must happen with the context pushed"
        dst.array[: src.nbytes] = np.ascontiguousarray(src).reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(dst, src, stream):
        assert current(), "copies must happen with the context pushed"
        dst.reshape(-1).view(np.uint8)[:] = src.array[: dst.nbytes]

    cuda.init = lambda: None
    cuda.Context, cuda.Device, cuda.Stream = Context, Device, Stream
    cuda.mem_alloc, cuda.pagelocked_empty = mem_alloc, pagelocked_empty
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    package = types.ModuleType("pycuda")
    package.__path__ = []
    package.driver = cuda
    return package, cuda, ledger


def make_fake_torch_cuda(heap: dict) -> tuple[types.ModuleType, list]:
    """A ``torch`` whose CUDA is the CPU: "device" tensors are CPU tensors registered in ``heap``; the rest is torch.

    Returns the module and the list of "device" tensors allocated through it.
    """
    import torch

    allocated: list = []
    fake = types.ModuleType("torch")
    fake.__getattr__ = lambda name: getattr(torch, name)

    class Stream:
        def __init__(self, device):
            self.cuda_stream = 99
            self.synchronized = 0

        def synchronize(self):
            self.synchronized += 1

    def empty(*shape, dtype, pin_memory=False, device=None):
        tensor = torch.empty(*shape, dtype=dtype)
        if device is not None:
            heap[tensor.data_ptr()] = tensor.numpy()
            allocated.append(tensor)
        return tensor

    fake.empty = empty
    fake.device = lambda kind, index=0: (kind, index)
    fake.cuda = types.SimpleNamespace(
        is_available=lambda: True,
        Stream=Stream,
        device=lambda device: contextlib.nullcontext(),
        stream=lambda stream: contextlib.nullcontext(),
    )
    return fake, allocated
