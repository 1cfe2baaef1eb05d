"""What `hft serve` answers with: a run directory (PyTorch) or an ONNX export (ONNX Runtime), behind one interface.

Both backends answer through the task's own `predict`, the code `hft predict` runs, so a served prediction is the
command line's. The ONNX backend hands `predict` an `OrtModel`, which offers the few things a classification
`predict` uses of a transformers model (`model(**batch).logits`, `.device`, `.config.id2label`, the parameter
dtype) on top of an ONNX Runtime session. Image inputs arrive as bytes and are written to a private temporary
folder for the duration of the call, because `predict` reads image files exactly as training did.
Backends are called from the micro-batcher's single worker thread only (tokenizers are not safe to share).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator

from hftoolkit.deploy.report import MODEL, MODEL_INT8, REPORT, read_report
from hftoolkit.errors import ServeError

if TYPE_CHECKING:
    from hftoolkit.deploy.run_access import TrainedRun
    from hftoolkit.tasks.base import Task

log = logging.getLogger("hftoolkit")

Messages = list[dict[str, str]]  # a chat conversation: [{"role": ..., "content": ...}, ...]


@dataclass
class ModelInfo:
    task: str
    backend: str  # "pytorch" | "onnxruntime"
    source: str
    kind: str  # the task's serve_kind: the shape of requests and responses
    labels: list[str] | None
    chat: bool  # answers /v1/chat/completions

    def as_labels(self) -> dict[str, str]:
        return {"task": self.task, "backend": self.backend, "source": self.source}


class Backend:
    """`predict(inputs, options) -> list[dict]`: texts, image bytes, prompts or chat conversations -> results."""

    info: ModelInfo

    def predict(self, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        if self.info.kind != "image":
            return self._predict(list(inputs), options)
        with _image_files(inputs) as paths:
            return self._predict(paths, options)

    def _predict(self, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError


class RunBackend(Backend):
    """A finished run directory or pushed Hub repo, in PyTorch, exactly as `hft predict` loads it."""

    def __init__(self, trained: TrainedRun):
        import torch

        from hftoolkit.deploy.run_access import load_model

        self.trained = trained
        kind = trained.task.serve_kind
        self.model, self.processor = load_model(trained)
        if torch.cuda.is_available():
            self.model.to("cuda")  # as `hft predict` does
        chat = kind == "generate" and _chat_ready(self.processor)
        self.info = ModelInfo(trained.recipe.task, "pytorch", trained.source, kind, trained.manifest.labels, chat)

    def _predict(self, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        from hftoolkit.deploy.run_access import predict, predict_options

        prompts = [chat_prompt(self.processor, x) if isinstance(x, list) else x for x in inputs]
        results = predict(self.trained, self.model, self.processor, prompts, options)
        limit = predict_options(self.trained, options).get("max_new_tokens")
        for item, prompt, result in zip(inputs, prompts, results):
            if isinstance(item, list):  # a chat conversation: the OpenAI response reports usage and why it stopped
                completion = len(self.processor(result["generated_text"], add_special_tokens=False)["input_ids"])
                result["prompt_tokens"] = len(self.processor(prompt)["input_ids"])
                result["completion_tokens"] = completion
                result["finish_reason"] = "length" if limit is not None and completion >= limit else "stop"
        return results


def chat_prompt(tokenizer: Any, messages: Messages) -> str:
    """The conversation rendered with the chat template, ready for `predict` as a plain prompt.

    `predict` tokenizes a plain prompt with the tokenizer's special tokens, which the template already wrote:
    a leading BOS (Llama 3 style) is taken off the text so it is not doubled; other added tokens are refused.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = tokenizer("x")["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    if plain == bare:
        return text
    bos = tokenizer.bos_token
    if bos and plain == [tokenizer.bos_token_id, *bare] and text.startswith(bos):
        return text[len(bos):]
    raise ServeError("this tokenizer adds special tokens around any text, so chat prompts cannot be passed through predict")


def _chat_ready(tokenizer: Any) -> bool:
    """Whether /v1/chat/completions can be offered: a chat template that `chat_prompt` can pass to `predict`."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        chat_prompt(tokenizer, [{"role": "user", "content": "hello"}])
    except ServeError as e:
        log.warning("no /v1/chat/completions: %s", e)
        return False
    return True


class OrtModel:
    """An ONNX Runtime session in the shape a classification task's `predict` uses a transformers model."""

    def __init__(self, session: Any, config: Any):
        import torch

        self.session = session
        self.config = config
        self.device = torch.device("cpu")
        self.names = [i.name for i in session.get_inputs()]
        self._dtype = torch.zeros((), dtype=torch.float32)

    def __call__(self, **batch: Any) -> Any:
        import torch

        missing = [n for n in self.names if n not in batch]
        if missing:
            raise ServeError(f"the ONNX graph needs inputs {missing} that the processor did not produce")
        feed = {n: batch[n].cpu().numpy() for n in self.names}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))

    def parameters(self) -> Iterator[Any]:
        yield self._dtype  # predict casts pixel values to the model's dtype: the graph takes float32

    def eval(self) -> OrtModel:
        return self


class OnnxBackend(Backend):
    """An `hft export` folder served with ONNX Runtime (model.onnx, or model.int8.onnx with `int8`)."""

    def __init__(self, folder: Path, *, int8: bool = False):
        from transformers import AutoConfig

        from hftoolkit.deploy.onnx_export import ort_session
        from hftoolkit.deploy.run_access import deployable_task, load_export_processor

        report = read_report(folder)
        self.task: Task = deployable_task(report.task)
        if not self.task.onnx_servable:
            raise ServeError(
                f"{folder} is a {report.task} export, which scores sequences but has no KV cache for generation; "
                f"serve the run directory instead (`hft serve RUN_DIR`), or the merged weights in vLLM / TGI"
            )
        name = MODEL_INT8 if int8 else MODEL
        if not (folder / name).is_file():
            raise ServeError(f"{folder} has no {name}" + (" (export it with --quantize int8)" if int8 else ""))
        self.processor = load_export_processor(self.task, folder)
        self.options = report.predict_options  # the run's predict defaults, recorded by the export
        self.model = OrtModel(ort_session(folder / name), AutoConfig.from_pretrained(str(folder)))
        source = f"{report.source} ({name})"
        self.info = ModelInfo(report.task, "onnxruntime", source, self.task.serve_kind, report.labels, chat=False)

    def _predict(self, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        return self.task.predict(self.model, self.processor, list(inputs), {**self.options, **options})


def open_backend(target: str, *, int8: bool = False) -> Backend:
    """An export folder (it holds export_report.json), else a run directory or Hub repo id."""
    from hftoolkit.deploy.run_access import open_trained

    path = Path(target).expanduser()
    if (path / REPORT).is_file():
        return OnnxBackend(path, int8=int8)
    if int8:
        raise ServeError(f"--int8 serves an export's model.int8.onnx; {target} is not an hft export folder")
    return RunBackend(open_trained(target))


@contextmanager
def _image_files(images: list[bytes]) -> Iterator[list[str]]:
    """Image bytes as files in a private temporary folder, removed when the call ends."""
    with tempfile.TemporaryDirectory(prefix="hft-serve-") as folder:
        paths = []
        for i, data in enumerate(images):
            path = Path(folder) / f"input-{i}"
            path.write_bytes(data)
            paths.append(str(path))
        yield paths
