"""Chat data for causal LM fine-tuning: checking conversations, rendering them with the tokenizer's chat template,
and finding the characters of each assistant reply (what the loss learns) and the end-of-turn token.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hftoolkit.data import column_values
from hftoolkit.errors import DataError, ModelError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("hftoolkit")

CHAT_ROLES = ("system", "user", "assistant")
_REPLY_MARK = "hft-reply-marker"  # stand-in reply used to find what the chat template writes after a reply


def chat_mode(options: dict[str, Any], tokenizer: Any) -> bool:
    """Whether prompts are user messages: as the options say, or (None) when the tokenizer has a chat template."""
    chat = options.get("chat")
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else bool(chat)


def check_conversations(split: Dataset, role: str, col: str) -> None:
    """Every row of `col` is a conversation SFT can learn from; the first bad one is an error naming split and row."""
    for i, conversation in enumerate(column_values(split, col)):
        where = f"split {role!r} row {i}: column {col!r}"
        if not isinstance(conversation, list) or not conversation:
            raise DataError(f"{where} is not a list of chat messages ({{role, content}} objects)")
        for m in conversation:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {m!r} is not a {{role, content}} object with text content")
            if m["role"] not in CHAT_ROLES:
                raise DataError(f"{where}: unknown chat role {m['role']!r} (known roles: {', '.join(CHAT_ROLES)})")
        roles = [m["role"] for m in conversation]
        if "assistant" not in roles:
            raise DataError(
                f"{where}: the conversation has no assistant turn; SFT learns from assistant replies, so every "
                "conversation needs at least one"
            )
        if roles[0] == "assistant":
            raise DataError(f"{where}: the conversation starts with an assistant turn; put a user (or system) turn first")


class ChatFormat:
    """Renders conversations with the tokenizer's chat template and finds the characters of each assistant reply.

    Transformers can return an assistant mask itself (`return_assistant_tokens_mask`), but only for templates that
    mark replies with `{% generation %}`, which few do. Rendering the conversation up to each reply instead works
    with any template that renders incrementally (each prefix of a conversation renders to a prefix of the text),
    and that is checked for every conversation rather than assumed.
    """

    def __init__(self, tokenizer: Any, model_name: str):
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"model {model_name!r}: its tokenizer has no chat template, which chat data (columns.messages or "
                "prompt/response) is formatted with; use an instruct/chat model, or train on plain text (columns.text)"
            )
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def end_of_turn(self) -> tuple[str, int]:
        """The token the template writes right after an assistant reply (what the model must learn to emit)."""
        text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY_MARK}])
        after = text[text.rindex(_REPLY_MARK) + len(_REPLY_MARK):].lstrip()
        ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if not ids:
            raise ModelError(
                "the chat template writes nothing after an assistant reply, so the model could not learn where a reply "
                "ends; use a chat template that closes each turn with an end-of-turn token"
            )
        return self.tokenizer.convert_ids_to_tokens(ids[0]), ids[0]

    def adopt_end_of_turn(self, wanted: str | None) -> None:
        """The template's end-of-turn must be what generation stops at: the EOS token, or `wanted` (the recipe's
        dataset.end_of_turn_token, which then becomes the EOS token of the tokenizer, and through the Trainer of the
        saved config)."""
        tokenizer = self.tokenizer
        token, _ = self.end_of_turn()
        if wanted is not None:
            if wanted != token:
                raise ModelError(
                    f"dataset.end_of_turn_token is {wanted!r} but the chat template ends an assistant reply with {token!r}"
                )
            if tokenizer.eos_token != token:
                log.info(
                    "end of turn: %r replaces %r as the EOS token, so generation stops after a reply", token, tokenizer.eos_token
                )
                tokenizer.eos_token = token
        elif token != tokenizer.eos_token:
            raise ModelError(
                f"the chat template ends an assistant reply with {token!r} but the tokenizer's EOS token is "
                f"{tokenizer.eos_token!r}, so a trained model would not stop generating at the end of a reply; set "
                f"dataset.end_of_turn_token: {token!r} to make it the EOS token of the trained model"
            )

    def reply_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the [start, end) characters of each assistant reply with its end-of-turn."""
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (text.startswith(through) and through.startswith(before)):
                raise ModelError(
                    "the chat template does not render conversations incrementally (a conversation's beginning renders "
                    "differently on its own), so assistant replies cannot be located for the loss mask"
                )
            spans.append((len(before), len(through)))
        return text, spans
