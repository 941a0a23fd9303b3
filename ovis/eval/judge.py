"""An optional judge model for replies the rules cannot read, through any OpenAI-compatible API.

VLMEvalKit asks a GPT model to match such a reply to an option (or to yes/no) when its rules fail.
ovis does the same only when asked (``ovis eval --judge-url URL --judge-model NAME``), with any
endpoint that speaks ``POST /chat/completions`` (``ovis serve`` included); its readings are counted
as ``judged`` in the report and marked ``"how": "judge"`` in ``readings.jsonl``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from ovis.errors import OvisError
from ovis.eval.extract import extract_choice, extract_yes_no
from ovis.eval.tsv import Item


class JudgeError(OvisError, ValueError):
    """The judge endpoint could not be reached or answered in an unexpected shape."""


MCQ_TEMPLATE = (
    "Match a reply to a multiple-choice question with the option it chooses.\n"
    "Say only the option's letter. If the reply chooses none of the options, or more than one, say Z.\n"
    "Example: options A. teddy bear B. rabbit C. cat D. dog; reply 'a cute teddy bear' -> A\n"
    "Example: options A. teddy bear B. rabbit C. cat D. dog; reply 'a spider' -> Z\n\n"
    "Question: {question}\nOptions:\n{options}\nReply: {reply}\nLetter:"
)
YESNO_TEMPLATE = (
    "Decide whether a reply to a yes/no question means Yes or No.\n"
    "Say only Yes, No, or Unknown if it means neither.\n"
    "Example: question 'Is the word in the image Hello?'; reply 'The word is Hello.' -> Yes\n"
    "Example: question 'Is the word in the image Hello?'; reply 'The word is not Hello.' -> No\n\n"
    "Question: {question}\nReply: {reply}\nAnswer:"
)


@dataclass
class Judge:
    """``url`` is the API's base (``http://host:port/v1``); the key comes from ``api_key`` or the
    ``OVIS_JUDGE_API_KEY`` environment variable (none is sent when neither is set)."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    max_tokens: int = 8

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-url must be an http(s) URL such as http://localhost:8000/v1, got {self.url!r}")
        if not self.model:
            raise JudgeError("--judge-model must name the model the endpoint serves")
        self.api_key = self.api_key or os.environ.get("OVIS_JUDGE_API_KEY")

    def prompt(self, item: Item, kind: str, reply: str) -> str:
        if kind == "mcq":
            options = "\n".join(f"{k}. {v}" for k, v in item.options.items())
            return MCQ_TEMPLATE.format(question=item.question, options=options, reply=reply)
        return YESNO_TEMPLATE.format(question=item.question, reply=reply)

    def ask(self, prompt: str) -> str:
        """The judge's reply text (greedy, short)."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": self.max_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        endpoint = self.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise JudgeError(f"judge {endpoint} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise JudgeError(f"judge {endpoint} could not be reached: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise JudgeError(f"judge {endpoint} did not answer JSON: {exc}") from exc
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge {endpoint} answered without choices[0].message.content: "
                             f"{json.dumps(payload)[:300]}") from exc

    def __call__(self, item: Item, kind: str, reply: str) -> str | None:
        """The letter, ``yes`` or ``no`` the judge reads in ``reply``; None if it reads none."""
        verdict = self.ask(self.prompt(item, kind, reply))
        return extract_choice(verdict, item.options) if kind == "mcq" else extract_yes_no(verdict)
