"""ONNX Runtime sessions with deliberately chosen options."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# ONNX Runtime's extension module (1.30.0, and the incumbent's build too) recurses at
# initialisation to a depth that grows with the length of the process's command line: measured
# ~260 bytes of stack per byte of /proc/self/cmdline, whatever sys.argv says. 3,000 file
# arguments of 34 characters overflow the default 8 MiB main-thread stack (exit 139). The
# import therefore runs on a thread whose stack is sized from the command line, with margin.
_IMPORT_STACK_BASE_BYTES = 32 * 1024 * 1024
_IMPORT_STACK_BYTES_PER_CMDLINE_BYTE = 768
_IMPORT_LOCK = threading.Lock()


def _command_line_bytes() -> int:
    """Length of the process's command line as the C runtime holds it."""
    try:
        with open("/proc/self/cmdline", "rb") as cmdline:
            return len(cmdline.read())
    except OSError:  # not Linux
        return sum(len(os.fsencode(arg)) + 1 for arg in sys.orig_argv)


def import_onnxruntime() -> ModuleType:
    """The `onnxruntime` module, imported on a thread with a stack large enough for its
    initialisation whatever the length of the command line (see `_IMPORT_STACK_*`).

    Raises what `import onnxruntime` raises (ImportError when it is not installed).
    """
    module = sys.modules.get("onnxruntime")
    if module is not None:
        return module
    with _IMPORT_LOCK:
        module = sys.modules.get("onnxruntime")
        if module is not None:
            return module
        stack_bytes = (
            _IMPORT_STACK_BASE_BYTES + _IMPORT_STACK_BYTES_PER_CMDLINE_BYTE * _command_line_bytes()
        )
        outcome: dict[str, object] = {}

        def work() -> None:
            try:
                outcome["module"] = importlib.import_module("onnxruntime")
            except BaseException as error:  # re-raised on the calling thread
                outcome["error"] = error

        previous = threading.stack_size()
        try:
            threading.stack_size(stack_bytes)
            thread = threading.Thread(target=work, name="agelens-import-onnxruntime")
            thread.start()
        except (RuntimeError, ValueError):  # no room for such a stack: try in place
            return importlib.import_module("onnxruntime")
        finally:
            threading.stack_size(previous)
        thread.join()
        error = outcome.get("error")
        if isinstance(error, BaseException):
            raise error
        imported = outcome["module"]
        assert isinstance(imported, ModuleType)
        return imported


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
    ort = import_onnxruntime()
    options = _session_options(threads)
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


def _session_options(threads: int | None) -> onnxruntime.SessionOptions:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def create_session_from_bytes(
    model: bytes, threads: int | None = None
) -> onnxruntime.InferenceSession:
    """`create_session` for a serialised graph built in memory (an int8 graph, say)."""
    ort = import_onnxruntime()
    return ort.InferenceSession(
        model, _session_options(threads), providers=["CPUExecutionProvider"]
    )
