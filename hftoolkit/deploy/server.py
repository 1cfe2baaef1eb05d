"""The HTTP API of `hft serve`: a FastAPI app factory with pydantic request and response bodies (OpenAPI at /docs).

    POST /v1/predict            {"inputs": [...]} -> {"predictions": [...]}: label + score (classifiers; every label
                                over the threshold for multi-label, the value for regression), `hft predict --json`'s
                                entity objects (token classification), generated text (causal LM, generation
                                settings as optional fields); images as base64 strings
    POST /v1/chat/completions   OpenAI-style, non-streaming (causal LM runs whose tokenizer has a chat template)
    GET  /healthz               the model is loaded and what it is
    GET  /metrics               Prometheus text format (hftoolkit/deploy/monitoring.py)

Errors are JSON `{"error": {"type", "message", "field", "request_id"}}`: 413 for a body over the size limit, 422
naming the field (wrong types, too many inputs, `inputs[3]` for an image that does not decode), 500 with the
request id and no stack trace when the model fails (the traceback goes to the server's log under that id).
The server never fetches anything: images come in the request body, never as URLs.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from hftoolkit import __version__
from hftoolkit.deploy.backends import Backend
from hftoolkit.deploy.batching import MicroBatcher
from hftoolkit.deploy.limits import ServeSettings
from hftoolkit.deploy.monitoring import Metrics, RequestMonitor, request_id
from hftoolkit.errors import DataError

log = logging.getLogger("hftoolkit")

MS = 1000


# ----------------------------------------------------------------------------------------------------------------------
# Request and response bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextRequest(_Body):
    inputs: list[str] = Field(min_length=1, description="Texts to classify.")


class ImageRequest(_Body):
    inputs: list[str] = Field(min_length=1, description="Image files (JPEG, PNG ...), each base64-encoded. No URLs.")


class GenerateRequest(_Body):
    inputs: list[str] = Field(min_length=1, description="Prompts (user messages for chat-trained runs).")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="Tokens to generate (default: the run's recipe).")
    do_sample: Optional[bool] = Field(None, description="Sample instead of greedy decoding.")
    temperature: Optional[float] = Field(None, gt=0, description="Sampling temperature.")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Nucleus sampling mass.")


class LabelPrediction(BaseModel):
    label: str
    score: float


class MultiLabelPrediction(BaseModel):
    labels: list[LabelPrediction] = Field(description="Every label at or over the run's threshold, most probable first.")


class ValuePrediction(BaseModel):
    value: float = Field(description="The predicted number (regression).")


class ClassifyResponse(BaseModel):
    # One label and its score; every label over the threshold (multi-label); or a number (regression).
    predictions: list[Union[LabelPrediction, MultiLabelPrediction, ValuePrediction]]


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(description="Character offset of the entity in the input.")
    end: int = Field(description="Character offset after the entity (exclusive).")
    score: float


class EntitiesPrediction(BaseModel):
    input: str
    entities: list[Entity]


class EntitiesResponse(BaseModel):
    predictions: list[EntitiesPrediction] = Field(description="What `hft predict RUN TEXT --json` prints, per input.")


class Generated(BaseModel):
    generated_text: str


class GenerateResponse(BaseModel):
    predictions: list[Generated]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields (penalties, user ...) hft does not use

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, description="0 = greedy; unset = the run's generation settings.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stream: Literal[False] = Field(False, description="Streaming is not supported.")
    n: Literal[1] = 1


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Health(BaseModel):
    status: Literal["ok"]
    task: str
    backend: str
    source: str
    labels: Optional[list[str]]


class ErrorBody(BaseModel):
    type: str
    message: str
    field: Optional[str] = None
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class InvalidInput(Exception):
    """A request the model cannot take, found after schema validation (too many inputs, an undecodable image)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ModelFailure(Exception):
    """The model raised on a request: answered 500 with the request id; the traceback is logged, not sent."""


ERRORS = {413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}


def error_json(scope_or_request: Any, status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
    scope = getattr(scope_or_request, "scope", scope_or_request)
    body = ErrorResponse(error=ErrorBody(type=kind, message=message, field=field, request_id=request_id(scope)))
    return JSONResponse(body.model_dump(), status_code=status)


# ----------------------------------------------------------------------------------------------------------------------
# The app


def create_app(backend: Backend, settings: ServeSettings) -> FastAPI:
    info = backend.info
    metrics = Metrics(info.as_labels())
    batcher = MicroBatcher(
        backend.predict, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / MS, on_batch=metrics.batch_size.observe
    )

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await batcher.start()
        yield
        await batcher.close()  # uvicorn has drained in-flight requests by now; this finishes the queue

    app = FastAPI(title=f"hft serve: {info.source}", version=__version__, lifespan=lifespan,
                  description=f"{info.task} served with {info.backend}.")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    routes: set[str] = set()  # filled below: a refused request (413) still counts under its route
    app.add_middleware(RequestMonitor, metrics=metrics, routes=routes)
    _add_error_handlers(app)
    _add_routes(app, backend, batcher, metrics, settings)
    routes.update(route.path for route in app.routes)
    return app


def _add_error_handlers(app: Any) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = "body" if first.get("type") == "json_invalid" else _field(first.get("loc", ()))
        return error_json(request, 422, "invalid_request", f"{field}: {first.get('msg')}", field)

    @app.exception_handler(InvalidInput)
    async def bad_input(request: Any, exc: InvalidInput) -> Any:
        return error_json(request, 422, "invalid_request", f"{exc.field}: {exc}", exc.field)

    @app.exception_handler(ModelFailure)
    async def failed(request: Any, exc: ModelFailure) -> Any:
        rid = request_id(request.scope)
        return error_json(request, 500, "model_error", f"the model failed on this request (request id {rid}); the "
                          "server log has the details")


def _field(loc: tuple | list) -> str:
    """`("body", "inputs", 0)` -> `inputs[0]`: the field as the client wrote it."""
    parts = [p for p in loc if p != "body"] or ["body"]
    out = str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _add_routes(app: Any, backend: Backend, batcher: MicroBatcher, metrics: Metrics, settings: ServeSettings) -> None:
    info = backend.info

    async def answer(request: Request, inputs: list[Any], options: dict[str, Any], decode: Any = None) -> list[dict]:
        if len(inputs) > settings.max_inputs:
            raise InvalidInput("inputs", f"{len(inputs)} inputs, more than this server's limit of {settings.max_inputs}")
        if decode is not None:  # after the count check: never decode more inputs than the server would take
            inputs = await run_in_threadpool(decode, inputs)
        try:
            return await batcher.submit(inputs, options)
        except DataError as e:  # the task's predict names an input it cannot take
            raise InvalidInput("inputs", str(e)) from None
        except Exception as e:
            log.error("request %s: model error", request_id(request.scope), exc_info=e)
            raise ModelFailure() from None

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", task=info.task, backend=info.backend, source=info.source, labels=info.labels)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    if info.kind == "text":
        @app.post("/v1/predict", response_model=ClassifyResponse, responses=ERRORS)
        async def predict_text(body: TextRequest, request: Request) -> ClassifyResponse:
            return _classified(await answer(request, body.inputs, {}))
    elif info.kind == "image":
        @app.post("/v1/predict", response_model=ClassifyResponse, responses=ERRORS)
        async def predict_image(body: ImageRequest, request: Request) -> ClassifyResponse:
            return _classified(await answer(request, body.inputs, {}, decode=decode_images))
    elif info.kind == "entities":
        @app.post("/v1/predict", response_model=EntitiesResponse, responses=ERRORS)
        async def predict_entities(body: TextRequest, request: Request) -> EntitiesResponse:
            return EntitiesResponse(predictions=[EntitiesPrediction(**r) for r in await answer(request, body.inputs, {})])
    elif info.kind == "generate":
        _add_generation_routes(app, answer, info)


def _classified(results: list[dict]) -> ClassifyResponse:
    """The task's results without the echoed input; which shape follows the saved config's problem type."""
    def one(r: dict) -> Any:
        if "labels" in r:
            return MultiLabelPrediction(labels=[LabelPrediction(**x) for x in r["labels"]])
        if "value" in r:
            return ValuePrediction(value=r["value"])
        return LabelPrediction(label=r["label"], score=r["score"])

    return ClassifyResponse(predictions=[one(r) for r in results])


def _add_generation_routes(app: Any, answer: Any, info: Any) -> None:
    @app.post("/v1/predict", response_model=GenerateResponse, responses=ERRORS)
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        options = body.model_dump(exclude={"inputs"}, exclude_none=True)
        results = await answer(request, body.inputs, options)
        return GenerateResponse(predictions=[Generated(generated_text=r["generated_text"]) for r in results])

    if not info.chat:
        return

    @app.post("/v1/chat/completions", response_model=ChatResponse, responses=ERRORS)
    async def chat(body: ChatRequest, request: Request) -> ChatResponse:
        options: dict[str, Any] = {"chat": False}  # the conversation is rendered with the template already
        if body.max_tokens is not None:
            options["max_new_tokens"] = body.max_tokens
        if body.temperature is not None:
            options["do_sample"] = body.temperature > 0
            if body.temperature > 0:
                options["temperature"] = body.temperature
        if body.top_p is not None:
            options["top_p"] = body.top_p
        [result] = await answer(request, [[m.model_dump() for m in body.messages]], options)
        prompt, completion = result["prompt_tokens"], result["completion_tokens"]
        return ChatResponse(
            id=f"chatcmpl-{request_id(request.scope)}", created=int(time.time()), model=body.model or info.source,
            choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=result["generated_text"]),
                                finish_reason=result["finish_reason"])],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        )


def decode_images(items: list[str]) -> list[bytes]:
    """Base64 -> image bytes that decode; InvalidInput names the first index that does not."""
    from PIL import Image

    out = []
    for i, text in enumerate(items):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"inputs[{i}]", "not valid base64 (send the image file's bytes base64-encoded; URLs are not fetched)") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ... per format
            raise InvalidInput(f"inputs[{i}]", f"not a decodable image ({type(e).__name__})") from None
        out.append(data)
    return out


class BodyLimit:
    """Pure ASGI middleware: a request body over `limit` bytes is answered 413 before the app reads it.

    A declared Content-Length is checked up front; a chunked body is read up to the limit, then handed on.
    """

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if int(declared) > self.limit:
                await self._too_large(scope, send)
                return
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._too_large(scope, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, send: Any) -> None:
        response = error_json(scope, 413, "payload_too_large", f"the request body is over this server's limit of {self.limit:,} bytes")
        await response(scope, None, send)
