"""The container door without a Docker engine: the Dockerfile, .dockerignore and compose.yaml
say what they must, and the image's own entry and health-check commands work in this venv,
with the environment the container would have."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from numpy.typing import NDArray
from PIL import Image

from agelens.server.settings import hash_api_key

ROOT = Path(__file__).resolve().parents[1]
AGELENS = Path(sys.executable).parent / "agelens"
KEY = "docker-test-key"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD argument."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index(" CMD ") + len(" CMD ") :].strip()
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped; `stage` counts FROMs."""
    instructions: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(ROOT / "Dockerfile")


def _final(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


# ------------------------------------------------------------------ the Dockerfile itself


def test_every_stage_is_python_3_11_slim(dockerfile: list[Instruction]) -> None:
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1]
        for i in dockerfile
        if i.keyword == "ARG" and "=" in i.args
    }
    froms = [i.args.split()[0] for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 1
    for image in froms:
        resolved = args.get(image.strip("${}"), image) if image.startswith("$") else image
        assert resolved == "python:3.11-slim"


def test_the_int8_faceres_graph_is_built_into_the_image(dockerfile: list[Instruction]) -> None:
    """After the models are fetched, a RUN step builds `accurate`'s int8 faceres graph into
    $AGELENS_HOME/derived, so read-only containers do not build it at every start: its Python
    code, run here against the fetched models, must leave that graph behind."""
    from agelens.paths import agelens_home

    runs = [i.args for i in dockerfile if i.keyword == "RUN"]
    fetch = next(n for n, args in enumerate(runs) if "agelens models fetch" in args)
    [(position, step)] = [(n, args) for n, args in enumerate(runs) if "AGELENS_INT8=1" in args]
    assert position > fetch
    code = step.split('python -c "', 1)[1].split('"', 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "AGELENS_INT8": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list((agelens_home() / "derived").glob("faceres@192-int8-*.onnx"))


def test_the_runtime_stage_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    final = _final(dockerfile)
    user = _one(final, "USER").args
    assert user not in {"root", "0", "0:0"}
    assert any(i.keyword == "RUN" and "useradd" in i.args and user in i.args for i in final)
    keywords = [i.keyword for i in final]
    assert keywords.index("USER") < keywords.index("CMD")


def test_models_are_fetched_at_build_time_into_a_fixed_home_the_user_owns(
    dockerfile: list[Instruction],
) -> None:
    fetches = [i for i in dockerfile if i.keyword == "RUN" and "agelens models fetch" in i.args]
    assert len(fetches) == 1
    fetch = fetches[0]
    homes = [
        i.args.split("AGELENS_HOME=", 1)[1].split()[0]
        for i in dockerfile
        if i.keyword == "ENV" and "AGELENS_HOME=" in i.args
    ]
    assert homes
    assert all(h == "/opt/agelens" for h in homes)
    # the runtime stage has the fetched folder, owned by the service's user
    final = _final(dockerfile)
    user = _one(final, "USER").args
    if fetch.stage != final[0].stage:
        copies = [i for i in final if i.keyword == "COPY" and "/opt/agelens" in i.args]
        assert copies, "the runtime stage must copy the fetched models"
        assert all(f"--chown={user}:{user}" in c.args for c in copies)
    # the package is installed with the server extra
    assert any(i.keyword == "RUN" and 'pip install ".[server]"' in i.args for i in dockerfile)


def test_healthcheck_uses_python_and_cmd_serves_on_port_8080_by_default(
    dockerfile: list[Instruction],
) -> None:
    final = _final(dockerfile)
    health = _one(final, "HEALTHCHECK")
    argv = health.exec_form()
    assert argv[0] == "python"
    assert "/health" in argv[-1]
    assert "PORT" in argv[-1]
    assert "curl" not in health.args
    assert "wget" not in health.args
    # the TF container it replaces listened on 8080; platforms such as Cloud Run set PORT
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PORT=8080" in env.split()
    assert _one(final, "EXPOSE").args == "8080"
    assert _one(final, "CMD").exec_form() == ["agelens", "serve", "--host", "0.0.0.0"]


def test_dockerignore_keeps_the_context_small_but_complete(
    dockerfile: list[Instruction],
) -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".cache", "artifacts", "tools/node/node_modules", ".git"} <= patterns
    sources = [
        part
        for i in dockerfile
        if i.keyword == "COPY" and "--from" not in i.args
        for part in i.args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") not in patterns, f"{source} is copied but ignored"


def test_compose_service(dockerfile: list[Instruction]) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["agelens"]
    assert service["build"] == "."
    assert "8000:8080" in service["ports"]
    assert "AGELENS_API_KEY_HASHES" in service["environment"]
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True
    assert any(t.startswith("/tmp") for t in service["tmpfs"])
    limits = service["deploy"]["resources"]["limits"]
    assert limits["cpus"]
    assert limits["memory"]
    assert service["environment"]["AGELENS_THREADS"] == limits["cpus"]
    assert service["healthcheck"]["test"] == [
        "CMD",
        *_one(_final(dockerfile), "HEALTHCHECK").exec_form(),
    ]


# ------------------------------------------------------------------ the entry command, live


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _container_env(**extra: str) -> dict[str, str]:
    """This environment minus every AGELENS_ setting but the model home, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGELENS_")}
    if "AGELENS_HOME" in os.environ:
        env["AGELENS_HOME"] = os.environ["AGELENS_HOME"]
    env.update(PYTHONUNBUFFERED="1", AGELENS_THREADS="2", **extra)
    return env


def _image_env(port: int, **extra: str) -> dict[str, str]:
    """`_container_env` plus the image's own ENV PORT, pointed at `port`."""
    return _container_env(PORT=str(port), **extra)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@dataclass
class Served:
    port: int
    process: subprocess.Popen[str]
    output: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def _serve(argv: list[str], env: dict[str, str]) -> Iterator[Served]:
    """Run the image's CMD with `env`, which must set PORT (as the image's ENV does)."""
    port = int(env["PORT"])
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(port, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"the server exited with {process.returncode}:\n{output}")
            try:
                if _get(f"{served.url}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health"
            time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            served.output = process.stdout.read()
            process.stdout.close()


def _png(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _cmd(dockerfile: list[Instruction]) -> list[str]:
    argv = _one(_final(dockerfile), "CMD").exec_form()
    assert argv[0] == "agelens"
    return [str(AGELENS), *argv[1:]]


@pytest.mark.slow
def test_the_cmd_serves_with_keys_and_passes_its_healthcheck(
    dockerfile: list[Instruction], astronaut: NDArray[np.uint8]
) -> None:
    env = _image_env(_free_port(), AGELENS_API_KEY_HASHES=hash_api_key(KEY))
    health_argv = _one(_final(dockerfile), "HEALTHCHECK").exec_form()
    health_argv[0] = sys.executable
    with _serve(_cmd(dockerfile), env) as served:
        check = subprocess.run(health_argv, env=env, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
        assert _get(f"{served.url}/ready")[0] == 200
        status, body = _get(f"{served.url}/v1/models")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = _get(f"{served.url}/v1/models", {"Authorization": f"Bearer {KEY}"})
        assert status == 200
        assert body["default_estimator"] == "ensemble"
        upload = urllib.request.Request(
            f"{served.url}/v1/analyze",
            data=_png(astronaut),
            headers={"Content-Type": "image/png", "X-API-Key": KEY},
        )
        with urllib.request.urlopen(upload, timeout=30) as response:
            faces = json.loads(response.read())["faces"]
        assert len(faces) == 1
    # SIGTERM (docker stop) shuts down gracefully; uvicorn then re-raises the signal
    assert served.process.returncode in {0, -signal.SIGTERM}
    assert "Application shutdown complete" in served.output
    # ... and the health check fails once nothing answers
    down = subprocess.run(health_argv, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


@pytest.mark.slow
def test_the_cmd_serves_without_keys_when_told_a_proxy_authenticates(
    dockerfile: list[Instruction],
) -> None:
    env = _image_env(_free_port(), AGELENS_INSECURE="true")
    with _serve(_cmd(dockerfile), env) as served:
        status, body = _get(f"{served.url}/v1/models")
        assert status == 200
        assert body["loaded"]["estimators"] == ["ensemble"]


def test_the_cmd_refuses_to_serve_without_keys(dockerfile: list[Instruction]) -> None:
    started = time.monotonic()
    completed = subprocess.run(
        _cmd(dockerfile), env=_image_env(_free_port()), capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2, completed.stderr
    message = " ".join(completed.stderr.split())
    assert "refusing to serve on 0.0.0.0 without API keys" in message
    assert "AGELENS_API_KEY_HASHES" in message
    assert "--insecure" in message
    assert time.monotonic() - started < 30  # refused before loading any model
