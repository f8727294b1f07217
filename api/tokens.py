"""Token counting for dataset checks, with the bundled model's tokenizer (tokenizers only, no torch)."""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def counter(model_dir: Path, model_id: str = "smollm2-135m-instruct"):
    """A function counting a conversation's tokens as the chat template renders it (ChatML)."""
    from eventlog.catalog import ensure_base_model

    with _lock:
        path = ensure_base_model(model_dir, model_id) / "tokenizer.json"
    tok = _tokenizer(str(path))

    def count(messages: list[dict[str, Any]]) -> int:
        text = "".join(f"<|im_start|>{m.get('role')}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count
