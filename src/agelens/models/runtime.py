"""ONNX Runtime sessions with deliberately chosen options."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnxruntime


def default_threads() -> int:
    """Threads per session: the cores this process may use, at most 4 (small graphs scale
    poorly beyond that and the service runs several sessions side by side)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def create_session(
    path: Path,
    threads: int | None = None,
    *,
    extra_outputs: tuple[str, ...] = (),
    rewrite: Callable[[onnx.ModelProto], None] | None = None,
) -> onnxruntime.InferenceSession:
    """A CPU session for one model file; `extra_outputs` names inner tensors to expose as
    outputs too (a backbone's embedding, for trained heads); `rewrite` edits the loaded graph
    in place before the session is built (e.g. `convert.input_size.set_square_input`).

    Full graph optimisation (constant folding, conv+activation fusion pays off for these small
    convnets); intra-op threads as given; one inter-op thread and sequential execution, because
    these graphs are chains with no parallel branches worth scheduling; no spinning threads,
    so an idle service does not burn CPU.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if not extra_outputs and rewrite is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    import onnx

    model = onnx.load(str(path))
    present = {output.name for output in model.graph.output}
    for name in extra_outputs:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    if rewrite is not None:
        rewrite(model)
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
