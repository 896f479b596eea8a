"""ONNX Runtime sessions: importing the runtime whatever the length of the command line."""

from __future__ import annotations

import resource
import subprocess
import sys

SMALL_STACK_BYTES = 2 * 1024 * 1024


def _small_stack() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (SMALL_STACK_BYTES, SMALL_STACK_BYTES))


def test_onnxruntime_imports_with_thousands_of_arguments_under_a_small_stack() -> None:
    """ONNX Runtime's initialisation needs ~260 bytes of stack per byte of the command line:
    5,000 arguments of 40 characters overflow a 2 MiB main-thread stack (exit 139) unless the
    import runs on a thread with a stack of its own."""
    code = (
        "from agelens.models.runtime import import_onnxruntime\n"
        "import onnxruntime\n"
        "assert import_onnxruntime() is onnxruntime\n"
        "print(onnxruntime.__version__)\n"
    )
    arguments = [f"/tmp/argument-{index:05d}-{'x' * 24}.jpg" for index in range(5000)]
    completed = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_small_stack,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip()
