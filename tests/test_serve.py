"""`hft serve`: real HTTP on 127.0.0.1 against a run directory and its ONNX export (the CLI in a subprocess), a chat
run and an image run (the same app in a thread): predictions equal `hft predict`, every bad input answered with the
right status naming the field, a bounded load test whose /metrics counts match what was sent, and a SIGTERM during
load that loses no accepted request."""

from __future__ import annotations

import asyncio
import base64
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hftoolkit.deploy.backends import open_backend
from hftoolkit.deploy.limits import ServeSettings
from hftoolkit.deploy.report import read_report
from hftoolkit.deploy.server import create_app
from tests.deploy_fixtures import (
    CliServer, ThreadServer, chat_export, chat_run, hft, hft_fails, image_run, predict_json, text_export, text_run,
)

TEXTS = ["the kettle works perfectly.", "the tent broke after two days. never again.", "fine."]
TOO_LONG = " ".join(["great"] * 300)  # past the tiny BERT's 128 positions: the model itself fails on it
LOAD_REQUESTS, LOAD_CLIENTS, LOAD_DEADLINE_S = 400, 16, 120


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, reviews):
    return text_run(tmp_path_factory, tiny_bert, reviews)


@pytest.fixture(scope="module")
def export(tmp_path_factory, run):
    return text_export(tmp_path_factory, run)


@pytest.fixture(scope="module")
def run_server(run, tmp_path_factory):
    server = CliServer(run, tmp_path_factory.mktemp("serve-run") / "serve.log", "--max-inputs", "8", "--max-body-kb", "64")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def onnx_server(export, tmp_path_factory):
    server = CliServer(export, tmp_path_factory.mktemp("serve-onnx") / "serve.log")
    yield server
    server.stop()


def post(server, body, path="/v1/predict", **kwargs):
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def metric(text, name, **labels):
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_run_directory_predictions_equal_hft_predict(run, run_server):
    response = post(run_server, {"inputs": TEXTS})
    assert response.status_code == 200, response.text
    expected = [{"label": r["label"], "score": r["score"]} for r in predict_json(run, *TEXTS)]
    assert response.json() == {"predictions": expected}


def test_onnx_export_predictions_equal_hft_predict(run, onnx_server):
    response = post(onnx_server, {"inputs": TEXTS})
    assert response.status_code == 200, response.text
    served, expected = response.json()["predictions"], predict_json(run, *TEXTS)
    assert [p["label"] for p in served] == [r["label"] for r in expected]
    assert [p["score"] for p in served] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    health = httpx.get(onnx_server.url + "/healthz").json()
    assert health["backend"] == "onnxruntime" and health["labels"] == ["negative", "positive"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"inputs": 7}, "inputs"), ({"inputs": ["ok", 3]}, "inputs[1]"), ({"inputs": []}, "inputs"), ({}, "inputs"),
     ({"inputs": ["ok"], "max_new_tokens": 5}, "max_new_tokens"), ({"inputs": ["x"] * 9}, "inputs")],
)
def test_bad_requests_are_422_naming_the_field(run_server, body, field):
    response = post(run_server, body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ") and error["type"] == "invalid_request"
    assert error["request_id"] == response.headers["x-request-id"]
    if body.get("inputs") == ["x"] * 9:
        assert "more than this server's limit of 8" in error["message"]


def test_bodies_over_the_limit_are_413_and_bad_json_is_422(run_server):
    big = b'{"inputs": ["' + b"a" * 70_000 + b'"]}'
    declared = httpx.post(run_server.url + "/v1/predict", content=big, headers={"content-type": "application/json"})
    chunked = httpx.post(run_server.url + "/v1/predict", content=iter([big[:40_000], big[40_000:]]),
                         headers={"content-type": "application/json"})
    for response in (declared, chunked):
        assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
    bad = httpx.post(run_server.url + "/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"


def test_a_model_error_is_500_with_a_request_id_and_fails_only_its_request(run_server):
    async def both():
        async with httpx.AsyncClient(base_url=run_server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"inputs": [text]}) for text in (TOO_LONG, *TEXTS)))

    failed, *fine = asyncio.run(both())  # sent together: micro-batched together, then retried one by one
    assert failed.status_code == 500 and [r.status_code for r in fine] == [200] * len(TEXTS)
    error = failed.json()["error"]
    rid = failed.headers["x-request-id"]
    assert error["type"] == "model_error" and error["request_id"] == rid and rid in error["message"]
    assert "Traceback" not in failed.text and "tensor" not in failed.text
    log = run_server.log.read_text()
    assert f"request {rid}: model error" in log and "Traceback" in log  # the details stay in the server's log
    line = next(line for line in run_server.access_lines() if line["request_id"] == rid)
    assert line["status"] == 500 and line["endpoint"] == "/v1/predict" and set(line) == {
        "time", "request_id", "method", "endpoint", "status", "duration_ms", "client"}  # no bodies, no headers


def test_healthz_docs_and_openapi(run_server):
    health = httpx.get(run_server.url + "/healthz").json()
    assert health == {"status": "ok", "task": "text-classification", "backend": "pytorch", "source": "deploy-text-run",
                      "labels": ["negative", "positive"]}
    docs = httpx.get(run_server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(run_server.url + "/openapi.json").json()
    assert spec["components"]["schemas"]["TextRequest"]["properties"]["inputs"]["type"] == "array"
    assert "/v1/chat/completions" not in spec["paths"] and {"413", "422", "500"} <= set(spec["paths"]["/v1/predict"]["post"]["responses"])


async def _load(url: str) -> tuple[list[int], float]:
    todo = iter(range(LOAD_REQUESTS))
    codes: list[int] = []

    async def client_loop(client):
        for i in todo:
            response = await client.post("/v1/predict", json={"inputs": [f"review {i}: the kettle works."]})
            assert len(response.json()["predictions"]) == 1
            codes.append(response.status_code)

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=LOAD_CLIENTS)) as client:
        await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(LOAD_CLIENTS))), LOAD_DEADLINE_S)
    return codes, time.monotonic() - start


def test_load_test_and_metrics_count_what_was_sent(onnx_server):
    before = httpx.get(onnx_server.url + "/metrics").text
    codes, seconds = asyncio.run(_load(onnx_server.url))
    after = httpx.get(onnx_server.url + "/metrics").text
    assert codes == [200] * LOAD_REQUESTS and seconds < LOAD_DEADLINE_S

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("hft_requests_total", endpoint="/v1/predict", status="200") == LOAD_REQUESTS
    assert delta("hft_request_duration_seconds_count", endpoint="/v1/predict") == LOAD_REQUESTS
    assert delta("hft_batch_size_sum") == LOAD_REQUESTS  # every input went through exactly one model call
    assert delta("hft_batch_size_count") < LOAD_REQUESTS  # ... and concurrent requests shared calls
    assert metric(after, "hft_in_flight_requests") == 1  # the /metrics request itself
    assert metric(after, "hft_model_info", task="text-classification", backend="onnxruntime") == 1
    assert sum(1 for line in onnx_server.access_lines() if line["endpoint"] == "/v1/predict") >= LOAD_REQUESTS


def test_sigterm_during_load_answers_every_accepted_request(run, tmp_path):
    server = CliServer(run, tmp_path / "serve.log")
    answered, refused, after_signal = [], [], []
    signalled = {"at": None}

    async def client_loop(client, worker):
        for i in range(LOAD_REQUESTS):
            try:
                response = await client.post("/v1/predict", json={"inputs": [f"review {worker}-{i} works."]})
            except httpx.TransportError as e:  # the server stopped accepting: this request never reached it
                refused.append(type(e).__name__)
                return
            assert response.status_code == 200 and len(response.json()["predictions"]) == 1
            answered.append(response)
            if signalled["at"] is not None:
                after_signal.append(response)
            elif len(answered) == 40:
                signalled["at"] = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)

    async def load():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=LOAD_CLIENTS)) as client:
            await asyncio.wait_for(asyncio.gather(*(client_loop(client, w) for w in range(LOAD_CLIENTS))), LOAD_DEADLINE_S)

    asyncio.run(load())
    assert server.proc.wait(timeout=60) == 0
    logged = [line for line in server.access_lines() if line["endpoint"] == "/v1/predict"]
    assert [line["status"] for line in logged] == [200] * len(answered)  # every request it took was answered
    assert after_signal and len(refused) == LOAD_CLIENTS  # some were in flight at SIGTERM; then every client was refused
    assert "stopped: every accepted request was answered" in server.log.read_text()


def test_serve_refuses_a_causal_lm_export(tmp_path_factory):
    export = chat_export(tmp_path_factory, chat_run(tmp_path_factory))
    result = hft_fails("serve", export, "--port", "1")
    assert "causal-lm export, which scores sequences but has no KV cache for generation" in result.stderr
    assert "serve the run directory instead (`hft serve RUN_DIR`)" in result.stderr


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    run = chat_run(tmp_path_factory)
    server = ThreadServer(create_app(open_backend(str(run)), ServeSettings()))
    yield run, server
    server.stop()


def test_causal_lm_run_generates_like_hft_predict_and_answers_chat_completions(chat_server):
    run, server = chat_server
    prompt = "What should I cook tonight?"
    expected = predict_json(run, prompt, options=("--max-new-tokens", "6"))[0]["generated_text"]
    generated = post(server, {"inputs": [prompt], "max_new_tokens": 6})
    assert generated.status_code == 200 and generated.json() == {"predictions": [{"generated_text": expected}]}

    chat = post(server, {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 6,
                         "presence_penalty": 0}, path="/v1/chat/completions")
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected}  # the same prompt through the chat template
    assert choice["finish_reason"] in {"stop", "length"} and 0 < body["usage"]["completion_tokens"] <= 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]

    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": prompt}]
    assert post(server, {"messages": turns, "temperature": 0}, path="/v1/chat/completions").status_code == 200
    for bad, field in (({"messages": turns, "stream": True}, "stream"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role")):
        response = post(server, bad, path="/v1/chat/completions")
        assert response.status_code == 422 and response.json()["error"]["field"] == field


def test_image_run_and_its_export_take_base64_images_and_name_a_bad_one(tmp_path_factory, tiny_vit, colour_images, tmp_path):
    run = image_run(tmp_path_factory, tiny_vit, colour_images)
    files = [colour_images / "test" / "red" / "red_1.png", colour_images / "test" / "blue" / "blue_0.jpg"]
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    expected = [{"label": r["label"], "score": r["score"]} for r in predict_json(run, *map(str, files))]
    hft("export", run, "--onnx", tmp_path / "export", "--opset", "14")
    assert read_report(tmp_path / "export").opset >= 18  # asked for 14: the exporter raises it
    exported = ThreadServer(create_app(open_backend(str(tmp_path / "export")), ServeSettings()))
    try:
        served = post(exported, {"inputs": images}).json()["predictions"]
        assert [p["label"] for p in served] == [e["label"] for e in expected]
        assert [p["score"] for p in served] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    finally:
        exported.stop()
    server = ThreadServer(create_app(open_backend(str(run)), ServeSettings()))
    try:
        response = post(server, {"inputs": images})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": expected}
        for inputs, index, what in (
            ([images[0], "not base64!"], 1, "not valid base64"),
            ([base64.b64encode(b"GIF89a broken").decode()], 0, "not a decodable image"),
            ([images[0], images[1], "https://example.com/cat.jpg"], 2, "URLs are not fetched"),
        ):
            error = post(server, {"inputs": inputs}).json()["error"]
            assert error["field"] == f"inputs[{index}]" and what in error["message"], error
    finally:
        server.stop()


def test_a_busy_port_is_one_line(export):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hft_fails("serve", export, "--port", port)
    assert f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" in result.stderr
