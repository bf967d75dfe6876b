"""
The OpenAPI document, C{refresherd/openapi.json}: valid OpenAPI 3.1, its
schemas valid JSON Schema, every reference resolved and every component used,
examples true to their schemas, and exactly the routes of the two Klein apps
(the document true to a live C{twistd -n refresherd}: tests/e2e/test_openapi.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from refresherd.client import ERRORS, STATUSES
from refresherd.errors import RefresherdError
from refresherd.http.admin import AdminAPI
from refresherd.http.public import PublicAPI
from tests.openapi_document import DOCUMENT, RAW

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# -- the document itself -----------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    errors = [
        f"/{'/'.join(map(str, error.instance_path))}: {error.message}"
        for error in OPENAPI_31_VALIDATOR.iter_errors(DOCUMENT)
    ]
    assert errors == []
    # schemathesis resolves every operation, its parameters and references.
    results = list(schemathesis.openapi.from_dict(DOCUMENT).get_all_operations())
    assert [r.err() for r in results if not isinstance(r, Ok)] == []
    assert len(results) == len(documented_routes())


def test_the_document_is_pretty_printed_json() -> None:
    assert RAW.decode("utf-8") == json.dumps(DOCUMENT, indent=2, ensure_ascii=False) + "\n"


def schema_objects(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document: components, parameters, headers, media types."""
    if isinstance(node, dict):
        for name, value in node.items():
            here = f"{where}/{name}"
            if name == "schema" and isinstance(value, dict | bool):
                yield here, value
            elif name == "schemas" and where == "/components":
                for schema_name, schema in value.items():
                    yield f"{here}/{schema_name}", schema
            else:
                yield from schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_objects(value, f"{where}/{index}")


def test_every_schema_is_valid_json_schema_2020_12() -> None:
    # The OpenAPI 3.1 meta-schema takes any object as a Schema Object.
    schemas = list(schema_objects(DOCUMENT))
    assert len(schemas) > 40
    invalid = {}
    for where, schema in schemas:
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as e:
            invalid[where] = e.message
    assert invalid == {}


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = DOCUMENT
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_every_component_is_used() -> None:
    used = set(references(DOCUMENT))
    for pointer in used:
        resolve(pointer)
    defined = {
        f"#/components/{kind}/{name}"
        for kind, members in DOCUMENT["components"].items()
        if kind != "securitySchemes"
        for name in members
    }
    assert defined - used == set()


def test_examples_match_their_schemas() -> None:
    checked = 0
    for name, schema in DOCUMENT["components"]["schemas"].items():
        validator = jsonschema_rs.validator_for(
            {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
        )
        for example in schema.get("examples", []):
            validator.validate(example)
            checked += 1
    for parameter in DOCUMENT["components"]["parameters"].values():
        validator = jsonschema_rs.validator_for(parameter["schema"])
        for example in parameter.get("examples", {}).values():
            validator.validate(example["value"])
            checked += 1
    assert checked >= 10


def test_path_templates_and_path_parameters_agree() -> None:
    operation_ids = []
    for path, item in DOCUMENT["paths"].items():
        in_template = set(re.findall(r"\{([^}]+)\}", path))
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            operation_ids.append(operation["operationId"])
            parameters = [
                resolve(p["$ref"]) if "$ref" in p else p
                for p in item.get("parameters", []) + operation.get("parameters", [])
            ]
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == in_template, (method, path)
            assert all(p["required"] for p in parameters if p["in"] == "path")
    assert len(operation_ids) == len(set(operation_ids))


# -- the document and the code -----------------------------------------------------


def klein_routes(app: Any) -> set[tuple[str, str]]:
    """(METHOD, path template) of every rule of a Klein app, HEAD included."""
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.update((method.upper(), path) for method in rule.methods)
    return routes


def documented_routes(tag: str | None = None) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in METHODS
        if method in item and (tag is None or tag in item[method].get("tags", []))
    }


def test_the_paths_and_methods_are_exactly_the_routes() -> None:
    public, admin = klein_routes(PublicAPI.app), klein_routes(AdminAPI.app)
    assert ("HEAD", "/v1/jobs/{job}") in public and ("GET", "/v1/entries/{key}") in admin
    documented = documented_routes()
    assert sorted((public | admin) - documented) == []
    assert sorted(documented - (public | admin)) == []
    # The admin listener's routes, and only they, are tagged "admin".
    assert documented_routes("admin") == admin


def every_error() -> Iterator[type[RefresherdError]]:
    """Every class of L{refresherd.errors} a client can be answered with."""
    waiting = [RefresherdError]
    while waiting:
        cls = waiting.pop()
        waiting.extend(cls.__subclasses__())
        yield cls


def test_every_error_code_is_in_the_document_the_docs_and_the_client() -> None:
    codes = {cls.code: cls.status for cls in every_error()}
    assert codes.pop("internal") == 500
    documented = DOCUMENT["components"]["schemas"]["ErrorCode"]
    assert set(documented["enum"]) == set(codes) | {"internal"}
    for code, status in codes.items():
        assert f"`{code}` {status}" in documented["description"], code
    table = (Path(__file__).parents[2] / "docs" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", table, re.MULTILINE))
    assert {code: int(status) for code, status in rows.items()} == codes
    assert dict(STATUSES) == codes
    assert set(ERRORS) == set(codes)
