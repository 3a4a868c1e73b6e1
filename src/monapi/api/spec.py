"""The OpenAPI document: flask-openapi3's, with what its schema model loses put back.

flask-openapi3 passes every JSON schema through its own ``Schema`` model, which silently drops
the JSON Schema keywords it does not declare: ``propertyNames`` (label keys, metric field names,
tag keys), ``examples``. The document would then accept what the API refuses. After generation,
the keywords are restored from their sources: the pydantic models of ``monapi.schemas``, and the
hand-written request bodies registered with :func:`raw_request_body`. The links from a created
resource to the operations on it (:data:`LINKS`), which flask-openapi3 cannot declare, are added
too.
"""

from __future__ import annotations

import copy
from typing import Any

from flask_openapi3 import OpenAPI
from flask_openapi3.utils import get_model_schema, normalize_name
from pydantic import BaseModel

from .. import schemas

_RAW_REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {}


def raw_request_body(path: str, method: str, request_body: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extensions`` for a route whose body is not a pydantic model (``path`` as in the
    document, e.g. ``/api/v1/data``); the document keeps every keyword of it."""
    _RAW_REQUEST_BODIES[(path, method.lower())] = request_body
    return {"requestBody": request_body}


def _restore(dst: Any, src: Any) -> None:
    """Add to ``dst`` whatever ``src`` has and ``dst`` lost, recursively; change nothing else."""
    if isinstance(dst, dict) and isinstance(src, dict):
        for key, value in src.items():
            if key == "$defs":
                continue
            if key not in dst:
                dst[key] = copy.deepcopy(value)
            else:
                _restore(dst[key], value)
    elif isinstance(dst, list) and isinstance(src, list) and len(dst) == len(src):
        for d, s in zip(dst, src, strict=True):
            _restore(d, s)


def _models() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == schemas.__name__
    ]


def restore_json_schema_keywords(doc: dict[str, Any]) -> None:
    """Put back the keywords flask-openapi3 dropped (see the module docstring)."""
    components = doc.get("components", {}).get("schemas", {})
    for model in _models():
        for mode in ("validation", "serialization"):
            raw = get_model_schema(model, mode=mode)
            if model.__name__ in components:
                _restore(components[model.__name__], raw)
            for name, sub in raw.get("$defs", {}).items():
                if normalize_name(name) in components:
                    _restore(components[normalize_name(name)], sub)
    for (path, method), body in _RAW_REQUEST_BODIES.items():
        operation = doc.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            operation["requestBody"] = copy.deepcopy(body)


def drop_unused_validation_errors(doc: dict[str, Any], model_name: str) -> None:
    """flask-openapi3 gives every operation a 422 (a list of its own validation error model)
    unless it declares one. Operations of this API declare a 422 when they validate input, in
    the one error shape; the others never answer 422, so the added response goes."""
    ref = f"#/components/schemas/{model_name}"
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            response = operation.get("responses", {}).get("422", {})
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("items", {}).get("$ref") == ref:
                del operation["responses"]["422"]
    doc.get("components", {}).get("schemas", {}).pop(model_name, None)


def _operation_ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


_SERVER = "/api/v1/servers/{server_id}"
# OpenAPI links (flask-openapi3 has no way to declare them): what a created resource's id opens.
# Clients and stateful test tools (schemathesis) follow them from the create to the operations.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, str]]] = {
    # (path, method, status) -> {link name: (path, method, parameter)}; the value is the id
    ("/api/v1/servers", "post", "201"): {
        "GetServer": (_SERVER, "get", "server_id"),
        "UpdateServer": (_SERVER, "patch", "server_id"),
        "DeleteServer": (_SERVER, "delete", "server_id"),
        "DisableServer": (_SERVER + "/disable", "post", "server_id"),
        "EnableServer": (_SERVER + "/enable", "post", "server_id"),
        "RotateServerKey": (_SERVER + "/rotate-key", "post", "server_id"),
        "GetServerMetrics": (_SERVER + "/metrics", "get", "server_id"),
        "GetServerLatest": (_SERVER + "/latest", "get", "server_id"),
    },
    ("/api/v1/fields", "post", "201"): {
        "GetField": ("/api/v1/fields/{id}", "get", "id"),
        "UpdateField": ("/api/v1/fields/{id}", "patch", "id"),
        "DeleteField": ("/api/v1/fields/{id}", "delete", "id"),
    },
    ("/api/v1/enrollment-tokens", "post", "201"): {
        "RevokeEnrollmentToken": ("/api/v1/enrollment-tokens/{token_id}", "delete", "token_id"),
    },
}


def add_links(doc: dict[str, Any]) -> None:
    """Put :data:`LINKS` into the responses they start from (each target must exist)."""
    paths = doc.get("paths", {})
    for (path, method, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        out = response.setdefault("links", {})
        for name, (target, target_method, parameter) in links.items():
            assert target_method in paths[target], (target, target_method)
            out[name] = {
                "operationRef": _operation_ref(target, target_method),
                "parameters": {parameter: "$response.body#/id"},
            }


class MonapiOpenAPI(OpenAPI):
    """flask-openapi3's app, with a document that says what the API accepts."""

    def generate_spec_json(self) -> None:
        super().generate_spec_json()  # type: ignore[no-untyped-call]
        restore_json_schema_keywords(self.spec_json)
        drop_unused_validation_errors(self.spec_json, self.validation_error_model.__name__)
        add_links(self.spec_json)
