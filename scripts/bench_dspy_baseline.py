"""The baseline of `scripts/bench --only dspy`: plain DSPy in a script, no tunelog machinery (no API, log, queue,
worker, child process, disk cache or events). The same tutor program, adapter, optimizer, metric, examples and
model as the job, with the model called through plain transformers `generate` (greedy) in this process.

Usage: python scripts/bench_dspy_baseline.py MODEL_FOLDER TRAIN.jsonl VALID.jsonl OPTIONS_JSON THREADS
Prints one JSON line: {"seconds", "lm_calls", "dev_before", "dev_after", "demos"}."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class GenerateEngine:
    """dspy.LM's engine over transformers' generate: the least a script would write."""

    def __init__(self, folder: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.calls = 0

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tok(text, return_tensors="pt", add_special_tokens=False)
        with self.torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=request.config.max_tokens, do_sample=False,
                                      temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        n_in = ids["input_ids"].shape[1]
        answer = self.tok.decode(out[0, n_in:], skip_special_tokens=True)
        self.calls += 1
        n_out = int(out.shape[1] - n_in)
        return Response(id=None, model="smollm2", message=Message.assistant([TextPart(answer)]), finish_reason="stop",
                        usage=Usage(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out))

    def stream(self, request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self):
        pass


def main() -> None:
    folder, train_path, valid_path, options, threads = sys.argv[1:6]
    import torch

    torch.set_num_threads(int(threads))
    from eventlog import programs

    programs.dspy_offline()
    import dspy

    from workers.dspy_opt import examples, make_metric, optimize

    opts = json.loads(options)
    engine = GenerateEngine(folder)
    started = time.monotonic()
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)  # what a script gets by default, in memory
    lm = dspy.LM("local/smollm2", engine=engine, temperature=0.0, max_tokens=opts["max_tokens"], cache=True,
                 num_retries=0)
    dspy.configure(lm=lm, adapter=programs.classes()[2](), max_errors=10**9, num_threads=1)
    trainset, valset = examples(train_path), examples(valid_path)
    metric = make_metric(opts["metric"])
    evaluate = dspy.Evaluate(devset=valset, metric=metric, num_threads=1, display_progress=False, max_errors=10**9)
    student = programs.new_program()
    before = evaluate(student).score / 100
    compiled = optimize(opts, student, trainset, valset, metric, lm, 0)
    after = evaluate(compiled).score / 100
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "lm_calls": engine.calls, "dev_before": before, "dev_after": after,
                      "demos": len(compiled.respond.demos)}))


if __name__ == "__main__":
    main()
