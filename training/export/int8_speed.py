"""How much faster an int8 variant runs than its fp32 reference on this CPU, measured at export.

The result goes into the int8 file's metadata (``int8_speedup`` = "<cpu class>:<ratio>") and a CPU
server without VNNI/AMX runs the int8 file first only when a CPU of its class recorded at least
``pixforge.service.engine.MIN_INT8_SPEEDUP`` (docs/serving.md, "Precision variants"). Measured
here, once, rather than timed at every server start: timings at load drift with whatever else the
machine does, and two processes on one machine (a server and `convert --models`, two replicas)
must pick the same file to give the same pixels.

The sessions use the server's own options (all available CPUs, full graph optimisation, CPU
provider); the two files run interleaved, round by round, on one blank image of the model's tile
size (capped at :data:`EDGE`), and each keeps its fastest round: other work on the machine only
ever adds time, so the minimum is the estimate noise disturbs least.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

from pixforge.contract import INPUT_NAME, OUTPUT_NAME, ModelContract

from .parity import round_up
from .tile_size import time_interleaved

EDGE = 256  # input pixels a side: sr-x4's ratio measured the same at 256 and 512
ROUNDS = 7


def time_models(models: dict[str, onnx.ModelProto], edge: int, channels: int) -> dict[str, float]:
    """Fastest ms per model of one uint8 ``edge`` x ``edge`` image (after one warm-up run each)."""
    import onnxruntime as ort

    from pixforge.service.config import EngineConfig
    from pixforge.service.engine import session_options

    image = np.zeros((1, edge, edge, channels), np.uint8)
    calls = {}
    for name, model in models.items():
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(EngineConfig()),
            providers=["CPUExecutionProvider"],
        )
        calls[name] = functools.partial(session.run, [OUTPUT_NAME], {INPUT_NAME: image})
        calls[name]()  # warm-up
    times = time_interleaved(calls, ROUNDS)
    return {name: min(t) * 1000.0 for name, t in times.items()}


def int8_speedup(fp32: onnx.ModelProto, int8: onnx.ModelProto, contract: ModelContract) -> tuple[float, dict]:
    """(fp32 time / int8 time, the timings and image edge) on this CPU.

    Args:
        fp32, int8: the reference graph and its int8 variant.
        contract: their model contract (tile size, size multiple, input channels).
    """
    edge = round_up(min(contract.tile_size, EDGE), contract.size_multiple)
    ms = time_models({"fp32": fp32, "int8": int8}, edge, contract.input_channels)
    return ms["fp32"] / ms["int8"], {"edge": edge, "ms": {k: round(v, 1) for k, v in ms.items()}}
