"""The API's shapes (pydantic models) and the OpenAPI document served at /docs.json.

BentoML writes the document from the service's APIs: their request bodies and
200 answers come from the type hints of ``Clsloc.predict`` and
``Clsloc.predict_batch``, which use the models here. ``complete`` adds what
BentoML cannot know: the refusals this service really answers (every one in
the ``Error`` shape, see clsloc.serving.http) and the routes the service
mounts beside its APIs (the web page, /docs, /model).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clsloc.images import ERROR_KINDS


class Box(BaseModel):
    """The object's box in pixels of the image as displayed: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResult(BaseModel):
    """What the main object in the image is, and where."""

    model_config = ConfigDict(extra="forbid")
    label: str
    score: float = Field(ge=0, le=1)
    box: Box
    width: int = Field(ge=1, description="width of the image as displayed (EXIF orientation applied)")
    height: int = Field(ge=1, description="height of the image as displayed (EXIF orientation applied)")
    model: ModelRef


class ImageFailure(BaseModel):
    """One image of a batch that could not be used; the others are still answered."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(description=f"one of {', '.join(ERROR_KINDS)}")
    detail: str
    status: int = Field(description="the HTTP status /predict would answer for this image alone")


class Error(BaseModel):
    """Every refusal: what kind, and a message naming the problem."""

    model_config = ConfigDict(extra="forbid")
    error: str
    detail: str


# status -> why, for each API route (clsloc.serving.http answers these, always as an Error)
REFUSALS = {
    "/predict": {
        400: "not an image, truncated or corrupt, or not multipart/form-data with one file in field 'image'",
        401: "CLSLOC_API_KEY is set and the request has no or a wrong 'Authorization: Bearer' header",
        413: "the body or the image is over the byte limit, or the image over the pixel limit",
        415: "an image format that cannot be decoded here (HEIC, AVIF, JPEG XL)",
        503: "overloaded: the worker already holds CLSLOC_MAX_QUEUE requests; retry after Retry-After seconds",
        504: "not answered within the service's time limit (60 s); retry later",
    },
    "/predict_batch": {
        400: "not multipart/form-data with 1 to CLSLOC_MAX_BATCH_IMAGES files in field 'images'",
        401: "CLSLOC_API_KEY is set and the request has no or a wrong 'Authorization: Bearer' header",
        413: "the body is over the byte limit",
        503: "overloaded: the worker already holds CLSLOC_MAX_QUEUE requests; retry after Retry-After seconds",
        504: "not answered within the service's time limit (60 s); retry later",
    },
}

ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, responses: dict, parameters: list | None = None) -> dict:
    operation = {"summary": summary, "tags": ["Service APIs"], "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _page(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def mounted_paths() -> dict[str, dict]:
    """The routes of clsloc.serving.webapp other than POST /predict (which BentoML documents from its API)."""
    not_found = _json(ERROR_REF, "no such file")
    file_param = [{"name": "file", "in": "path", "required": True, "schema": {"type": "string"}, "example": "app.js"}]
    return {
        "/": _get("the web page: upload a photo, see the label and the box", {"200": _page("the page")}),
        "/docs": _get("this document in Swagger UI", {"200": _page("Swagger UI")}),
        "/model": _get(
            "the served model's manifest (classes, input size, metrics, parity check) and providers in use",
            {"200": _json({"type": "object"}, "the manifest"), "401": _json(ERROR_REF, REFUSALS["/predict"][401])},
        ),
        "/samples/{name}": _get(
            "one of the served model's sample images (GET /model lists them)",
            {
                "200": {"description": "the image", "content": {"image/jpeg": {"schema": {"type": "string"}}}},
                "401": _json(ERROR_REF, REFUSALS["/predict"][401]),
                "404": _json(ERROR_REF, "the served model has no sample of that name"),
            },
            [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        ),
        "/web/{file}": _get(
            "the web page's script and style",
            {"200": {"description": "the file", "content": {"*/*": {"schema": {"type": "string"}}}}, "404": not_found},
            file_param,
        ),
    }


def _as_openapi_30(schema: Any) -> None:
    """JSON Schema as BentoML and pydantic write it -> OpenAPI 3.0's dialect, in place.

    BentoML writes uploads as ``type: file`` and pydantic optional fields as
    ``anyOf: [..., {type: null}]``; OpenAPI 3.0 has ``type: string`` (with
    ``format: binary``) and ``nullable: true`` for those.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "file":
            schema["type"] = "string"
        options = schema.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del schema["anyOf"]
            schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
            schema["nullable"] = True
        for value in schema.values():
            _as_openapi_30(value)
    elif isinstance(schema, list):
        for value in schema:
            _as_openapi_30(value)


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document -> the same with this service's answers, refusals and mounted routes."""
    document = copy.deepcopy(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = Error.model_json_schema()
    _as_openapi_30(schemas)
    # BentoML keeps the first type of a union: a batch's items are results or failures.
    items = {"anyOf": [{"$ref": "#/components/schemas/PredictResult"}, {"$ref": "#/components/schemas/ImageFailure"}]}
    document["paths"]["/predict_batch"]["post"]["responses"]["200"] = _json(
        {"type": "array", "items": items}, "one answer per image, in request order"
    )
    for path, refusals in REFUSALS.items():
        body = document["paths"][path]["post"]["requestBody"]
        body["required"] = True
        schema = body["content"]["multipart/form-data"]["schema"]
        schema["additionalProperties"] = False  # other fields: 400
        if path == "/predict":  # an empty file is a 400 there (in a batch, it is one failed item)
            schema["properties"]["image"]["minLength"] = 1
        responses = document["paths"][path]["post"]["responses"]
        for status in list(responses):
            if str(status).startswith("4"):  # BentoML's generic shapes: this service answers an Error instead
                del responses[status]
        for status, why in refusals.items():
            responses[str(status)] = _json(ERROR_REF, why)
        responses["503"]["headers"] = RETRY_AFTER
    document["paths"].update(mounted_paths())
    return document
