"""The recipe's data path: chat template, assistant-only labels, truncation counts, and a large file
tokenized to disk with bounded memory (measured in a process of its own: its peak resident size)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers.hf.recipe import DataReport, chat_dataset, tokenize_example

# A 100k-example file in the soak run (TUNELOG_SOAK=1: ~3 minutes of tokenizing); 10k in CI.
LARGE = 100_000 if os.environ.get("TUNELOG_SOAK") else 10_000
SMALL = 1_000


@pytest.fixture(scope="module")
def tokenizer(base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def test_labels_cover_assistant_turns_only_and_weight_zero_turns_are_not_learned(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Five.", "weight": 0}, {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "Four."}]
    row, cut = tokenize_example(tokenizer, messages, 512)
    assert cut == 0
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert "Four." in learned and "Five" not in learned and "Two plus two" not in learned
    assert all(label in (-100, t) for t, label in zip(row["input_ids"], row["labels"]))


def test_truncation_is_counted_and_examples_with_nothing_left_are_skipped(tokenizer, tmp_path):
    long_user = {"role": "user", "content": "word " * 300}
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello " * 40}],  # truncated
        [long_user, {"role": "assistant", "content": "Yes."}],  # the answer is cut away: skipped
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],  # fits
    ]) + "\n")
    report = DataReport()
    ds = chat_dataset(str(path), tokenizer, 48, str(tmp_path / "cache"), report)
    assert (report.examples, report.truncated, report.skipped, len(ds)) == (3, 2, 1, 2)
    assert report.tokens_cut > 250
    assert max(len(r) for r in ds["input_ids"]) == 48


PROBE = textwrap.dedent("""
    import json, resource, sys
    from transformers import AutoTokenizer
    from workers.hf.recipe import DataReport, chat_dataset
    path, model, cache = sys.argv[1:4]
    ds = chat_dataset(path, AutoTokenizer.from_pretrained(model), 128, cache, DataReport())
    print(json.dumps({"rows": len(ds), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def _peak(base_model: Path, tmp: Path, n: int) -> dict:
    path = tmp / f"{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                                             {"role": "assistant", "content": f"It is {2 * i}. " * 6}]}) + "\n")
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(base_model), str(tmp / f"cache-{n}")],
                         capture_output=True, text=True, timeout=1200, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_large_file_is_tokenized_to_disk_with_bounded_memory(base_model, tmp_path):
    """Ten times the examples may not cost more than a fixed margin of memory: the rows go to arrow
    files on disk in batches as they are produced (a list of token lists would grow with the file)."""
    small, large = _peak(base_model, tmp_path, SMALL), _peak(base_model, tmp_path, LARGE)
    assert (small["rows"], large["rows"]) == (SMALL, LARGE)
    # 10k rows of ~60 tokens held as Python lists would take ~100 MiB (100k: ~1 GiB)
    assert large["peak_mib"] - small["peak_mib"] < 48, (small, large)


def test_packing_keeps_the_examples_of_a_batch_apart(tokenizer, base_model):
    """Packed (padding-free) batches, as `packing: true` trains them (no KV cache: the recipe turns it off),
    give each example the same loss as a padded batch: position ids restart per example and attention does
    not cross into the neighbour. With the cache on, transformers does not separate them (found here)."""
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()
    rows = [tokenize_example(tokenizer, m, 128)[0] for m in (
        [{"role": "user", "content": "What is a noun?"}, {"role": "assistant", "content": "A naming word."}],
        [{"role": "user", "content": "Name a verb."}, {"role": "assistant", "content": "Run, as in: we run home."}])]
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(
        [dict(r) for r in rows], return_tensors="pt")
    packed = DataCollatorWithFlattening()([dict(r) for r in rows], return_tensors="pt")
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed

    def token_losses(batch) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none",
                                                   ignore_index=-100)
        return losses[labels != -100]

    assert torch.allclose(token_losses(packed), token_losses(padded), atol=1e-4)
