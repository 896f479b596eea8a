"""The service's layout: each router module holds the routes of its concern, the key and
service dependencies are defined once (agelens.server.deps), and the API's contract read from
its OpenAPI document (operation ids, tags, parameters, request and response schemas) is the
committed one, so a refactoring cannot change the API unnoticed.

After a deliberate change to the API, rewrite the snapshot with
`PYTHONPATH=src python -m tests.server.test_routers` (it writes
tests/server/api_contract.snapshot.json) and commit it with the change.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from agelens.server import deps
from agelens.server.app import create_app
from agelens.server.routers import analyze, compat, jobs, live, meta, web
from agelens.server.settings import Settings

SERVER = Path(deps.__file__).parent
SNAPSHOT = Path(__file__).with_name("api_contract.snapshot.json")

#: (module, its routes as (path, method or "WS")): every route of the app, and in no other
ROUTES_BY_MODULE: list[tuple[ModuleType, set[tuple[str, str]]]] = [
    (analyze, {("/v1/analyze", "POST"), ("/v1/analyze/batch", "POST")}),
    (meta, {("/health", "GET"), ("/ready", "GET"), ("/v1/models", "GET"), ("/metrics", "GET")}),
    (compat, {("/predict", "POST"), ("/lambda", "POST"), ("/healthz", "GET")}),
    (
        jobs,
        {
            ("/v1/jobs", "POST"),
            ("/v1/jobs/{job_id}", "GET"),
            ("/v1/jobs/{job_id}", "DELETE"),
            ("/v1/jobs/{job_id}/results", "GET"),
            ("/v1/jobs/{job_id}/people", "GET"),
            ("/v1/jobs/{job_id}/video", "GET"),
            ("/v1/jobs/{job_id}/report", "GET"),
        },
    ),
    (live, {("/v1/live", "WS")}),
    (web, {("/", "GET"), ("/v1/examples", "GET"), ("/v1/examples/{name}", "GET")}),
]
KEY_DEPENDENCIES = {"_service", "_require_key", "_require_key_or_basic", "_job_owner"}
#: where the authentication primitives themselves are defined
PRIMITIVES_MODULE = SERVER / "security.py"


def _methods(route: BaseRoute) -> set[tuple[str, str]]:
    if isinstance(route, APIWebSocketRoute):
        return {(route.path, "WS")}
    path = getattr(route, "path", None)
    methods = getattr(route, "methods", None) or set()
    assert path is not None, f"a route without a path: {route!r}"
    return {(path, method) for method in methods}


def _server_modules() -> list[Path]:
    return sorted(SERVER.rglob("*.py"))


def _openapi() -> dict[str, Any]:
    document = create_app(Settings()).openapi()
    document["info"]["version"] = "(the installed version)"
    return document


def _schema_ref(content: dict[str, Any]) -> dict[str, Any]:
    """Each media type's schema reference or type (not FastAPI's full rendering of it)."""
    shapes: dict[str, Any] = {}
    for media_type, body in sorted(content.items()):
        schema = body.get("schema", {})
        if "$ref" in schema:
            shapes[media_type] = schema["$ref"]
        elif "properties" in schema:  # an inline schema: its fields
            shapes[media_type] = {"fields": sorted(schema["properties"])}
        else:
            shapes[media_type] = schema.get("type") or sorted(schema)
    return shapes


def api_contract(document: dict[str, Any]) -> dict[str, Any]:
    """What the API promises, read from an OpenAPI document: per operation its id, tags,
    parameters, request media types and each status's response schema; per component schema
    its fields and required ones. Leaves out how FastAPI and pydantic render the rest (titles,
    descriptions, formats), so a dependency upgrade does not fail the snapshot."""
    operations: dict[str, Any] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            operations[f"{method.upper()} {path}"] = {
                "operation_id": operation["operationId"],
                "tags": operation.get("tags", []),
                "parameters": sorted(
                    f"{p['in']}:{p['name']}{'' if p.get('required') else '?'}"
                    for p in operation.get("parameters", [])
                ),
                "request": _schema_ref(operation.get("requestBody", {}).get("content", {})),
                "responses": {
                    status: _schema_ref(response.get("content", {}))
                    for status, response in sorted(operation["responses"].items())
                },
            }
    schemas = {
        name: {
            "fields": sorted(schema.get("properties", {})),
            "required": sorted(schema.get("required", [])),
        }
        for name, schema in sorted(document["components"]["schemas"].items())
    }
    return {"operations": operations, "schemas": schemas}


@pytest.mark.parametrize(
    ("module", "expected"), ROUTES_BY_MODULE, ids=[m.__name__ for m, _ in ROUTES_BY_MODULE]
)
def test_each_router_module_holds_the_routes_of_its_concern(
    module: ModuleType, expected: set[tuple[str, str]]
) -> None:
    found: set[tuple[str, str]] = set()
    for route in module.router.routes:
        found |= _methods(route)
    assert found == expected


def test_the_api_is_the_routers_routes_and_nothing_else() -> None:
    app = create_app(Settings())
    documented = {
        (path, method.upper())
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    in_schema: set[tuple[str, str]] = set()
    for module, _ in ROUTES_BY_MODULE:
        for route in module.router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                in_schema |= _methods(route)
    assert documented == in_schema
    # the routes outside the schema are there too
    assert app.url_path_for("page") == "/"
    assert app.url_path_for("live") == "/v1/live"


def test_every_api_route_checks_the_key_except_the_probes_and_the_page() -> None:
    unauthenticated = {"/health", "/ready", "/healthz", "/", "/v1/examples", "/v1/examples/{name}"}
    for module, _ in ROUTES_BY_MODULE:
        for route in module.router.routes:
            if not isinstance(route, APIRoute) or route.path in unauthenticated:
                continue
            calls = {d.call for d in _dependency_tree(route.dependant)}
            assert calls & {deps._require_key, deps._require_key_or_basic}, route.path


def _dependency_tree(dependant: Any) -> list[Any]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub)
        found += _dependency_tree(sub)
    return found


def test_the_key_and_service_dependencies_are_defined_in_deps_only() -> None:
    definitions: dict[str, list[str]] = {}
    offenders: list[str] = []
    for path in _server_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = str(path.relative_to(SERVER))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name in KEY_DEPENDENCIES
            ):
                definitions.setdefault(node.name, []).append(where)
            if path.name == "deps.py":
                continue
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name == "Depends" or (
                    name in {"authenticate", "key_matches"} and path != PRIMITIVES_MODULE
                ):
                    offenders.append(f"{where}:{node.lineno} calls {name}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and node.attr in {"service", "jobs"}
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "state"
                and path.parent.name == "routers"
            ):
                offenders.append(f"{where}:{node.lineno} reads app.state.{node.attr}")
    assert definitions == {name: ["deps.py"] for name in KEY_DEPENDENCIES}
    assert not offenders, "dependencies outside agelens.server.deps:\n" + "\n".join(offenders)


def test_the_api_contract_is_the_committed_one() -> None:
    committed = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    current = api_contract(_openapi())
    assert list(current["operations"]) == list(committed["operations"])  # same order too
    assert current == committed, (
        "the API changed; if on purpose, rewrite the snapshot with "
        "`PYTHONPATH=src python -m tests.server.test_routers` and commit it"
    )


def test_the_contract_catches_a_changed_response_model() -> None:
    document = _openapi()
    before = api_contract(document)
    ok = document["paths"]["/v1/models"]["get"]["responses"]["200"]
    ok["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/BatchOut"}
    document["paths"]["/health"]["get"]["tags"] = ["web"]
    after = api_contract(document)
    assert after["operations"]["GET /v1/models"] != before["operations"]["GET /v1/models"]
    assert after["operations"]["GET /health"]["tags"] == ["web"]


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(api_contract(_openapi()), indent=1) + "\n", encoding="utf-8")
