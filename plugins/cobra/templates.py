"""Prompt templates: how a question and its answer are laid out as tokens.

A training example (and a generation prompt) is

    [<image>] + template(prompt) + answer + [end-of-text]
    └ the projected image patches are placed just before <image>, so image tokens come first

and the loss is taken only on ``answer + [end-of-text]``. The two templates are Cobra's
(h-zhao1997/cobra, cobra/models/backbones/llm/prompting/):

- ``plain``: ``"In: {prompt}\\nOut: "`` (MambaPromptBuilder, for base language models);
- ``chat``:  ``"<|user|>\\n{prompt}<eot>\\n<|assistant|>\\n"`` (ZephyrChatPromptBuilder, for the
  chat-tuned mamba-2.8b-zephyr), where ``<eot>`` is the end-of-text token itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from mambaverse.errors import unknown_name

from .tokenizer import IMAGE_TOKEN, Tokenizer

END_OF_TEXT_MARK = "{eot}"  # in a template: the end-of-text token, not its spelling
CAPTION_PROMPT = (
    "Describe the image."  # the prompt of caption-only rows and of `mambaverse caption`
)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    user_turn: str  # with "{prompt}" and optionally "{eot}"
    description: str = ""

    def prompt_ids(self, tokenizer: Tokenizer, prompt: str) -> list[int]:
        """[<image>] + the user's turn as ids; the answer follows them."""
        # A literal "<image>" in user text would be read as a second image marker: drop it (as
        # Cobra's prompt builders do).
        text = self.user_turn.replace("{prompt}", prompt.replace(IMAGE_TOKEN, "").strip())
        ids = [tokenizer.image_token_id]
        for i, piece in enumerate(text.split(END_OF_TEXT_MARK)):
            if i:
                ids.append(tokenizer.eot_token_id)
            if piece:
                ids.extend(tokenizer.encode(piece))
        return ids

    @staticmethod
    def answer_ids(tokenizer: Tokenizer, answer: str) -> list[int]:
        """The answer's ids, closed by end-of-text (what the model learns to produce)."""
        return [*tokenizer.encode(answer.strip()), tokenizer.eot_token_id]


TEMPLATES = {
    t.name: t
    for t in (
        PromptTemplate("plain", "In: {prompt}\nOut: ", "Cobra's plain template (base LMs)"),
        PromptTemplate(
            "chat",
            "<|user|>\n{prompt}" + END_OF_TEXT_MARK + "\n<|assistant|>\n",
            "Zephyr chat template (Cobra with mamba-2.8b-zephyr)",
        ),
    )
}


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise unknown_name("prompt template", name, TEMPLATES)
    return TEMPLATES[name]
