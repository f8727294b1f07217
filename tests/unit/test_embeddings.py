"""Chunking is token-aware and overlapping; vectors survive the trip through an event."""
import numpy as np
import pytest

from eventlog.projections.documents import decode_vector, encode_vector


def test_vectors_round_trip_through_base64_exactly():
    v = np.random.default_rng(0).standard_normal(384).astype("<f4")
    assert np.array_equal(decode_vector(encode_vector(v)), v)


@pytest.fixture(scope="module")
def emb():
    from eventlog.embeddings import embedder

    return embedder()


def test_chunks_are_overlapping_windows_of_the_original_text(emb):
    text = " ".join(f"Sentence number {i} talks about photosynthesis and light." for i in range(120))
    chunks = emb.chunk(text, size=100, overlap=20)
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.start:c.end].strip() == c.text
        assert len(emb.tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 100
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert [c.idx for c in chunks] == list(range(len(chunks)))


def test_embeddings_are_normalized_and_similar_texts_are_close(emb):
    v = emb.encode(["How do plants make food?", "Photosynthesis turns light into sugar in leaves.",
                    "The French Revolution began in 1789."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_an_empty_text_has_no_chunks(emb):
    assert emb.chunk("   ") == []
