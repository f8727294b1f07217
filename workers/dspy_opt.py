"""The DSPy optimization of one attempt, run as a child of the worker: `python -m workers.dspy_opt config.json`.

It reads the job's files, optimizes the tutor program (eventlog/programs.py) with the job's optimizer and
metric, and writes JSON lines to `metrics_file` (the worker turns them into events, as for training):
`trial` for each evaluated candidate, `message`, then `done` (or `paused`). The compiled program is saved as
DSPy's JSON state only.

Every LM call goes to tunelog's own generation (eventlog/generation.py, the model the program runs on,
in this process) or to the delegated provider of a provider model (redacted first), never elsewhere; DSPy's
cache lives in the job's folder (`cache_dir`, kept across attempts). Generation is deterministic per request
(greedy at temperature 0, else seeded from the request), so an attempt re-run after a crash replays what was
answered from the cache, asks the model only for the rest, and ends with the same program as an uninterrupted
run. The worker cancels by stopping this process; a pause (the file control/pause) and the job's time budget
are checked before each LM call that is not in the cache.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tunelog.dspy")


class Stop(BaseException):  # noqa: N818 - not an error: DSPy catches Exception per example, this must pass through
    """Raised from an LM call to end the optimization: DSPy's loops catch Exception only."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class Paused(Stop):
    pass


class BudgetSpent(Stop):
    pass


class ProviderFailed(Stop):
    pass


class ContextTooLong(ValueError):
    pass


class Out:
    """JSON lines to the worker (appended and flushed one by one: the worker tails the file)."""

    def __init__(self, path: str):
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, kind: str, **data: Any) -> None:
        self.f.write(json.dumps({"kind": kind, **data}) + "\n")
        self.f.flush()

    def message(self, text: str, level: str = "info") -> None:
        self.write("message", message=text, level=level)


class Stats:
    def __init__(self) -> None:
        self.lm_calls = 0  # every call, those the cache answered included
        self.new_calls = 0  # calls this attempt sent to a model
        self.new_seconds = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0


class Guard:
    """What may end the run at the next LM call that needs a model: a pause, the time budget."""

    def __init__(self, control_dir: str):
        self.pause_file = Path(control_dir) / "pause"
        self.deadline: float | None = None

    def check(self) -> None:
        if self.pause_file.exists():
            raise Paused("pause requested")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetSpent("time budget spent")


def _request_messages(request) -> list[dict[str, str]]:
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(
            getattr(p, "text", "") or "" for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


class Engine:
    """dspy.LM's engine (DSPy 3.4's complete(Request) -> Response contract) over the runner model."""

    def __init__(self, runner: dict[str, Any], cfg: dict[str, Any], stats: Stats, guard: Guard):
        self.runner, self.cfg, self.stats, self.guard = runner, cfg, stats, guard
        self.cap = int(cfg["options"]["max_tokens"])

    def complete(self, request):
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import Message, Response, TextPart, Usage

        validate_request(request)
        self.guard.check()
        messages = _request_messages(request)
        c = request.config
        max_tokens = min(int(c.max_tokens or self.cap), self.cap)
        temperature = float(c.temperature or 0.0)
        seed = c.seed
        if seed is None and temperature > 0:  # sampled, but the same request samples the same way every time
            digest = hashlib.sha256(json.dumps([messages, temperature, max_tokens, self.cfg["seed"]]).encode())
            seed = int.from_bytes(digest.digest()[:4], "big") % (2**31)
        started = time.monotonic()
        if self.runner["backend"] == "provider":
            text, usage = self._remote(messages, max_tokens, temperature, c.top_p, seed)
        else:
            text, usage = self._local(messages, max_tokens, temperature, c.top_p, seed)
        self.stats.new_calls += 1
        self.stats.new_seconds += time.monotonic() - started
        self.stats.prompt_tokens += usage[0]
        self.stats.completion_tokens += usage[1]
        return Response(id=None, model=self.runner["model"], message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=Usage(input_tokens=usage[0], output_tokens=usage[1],
                                                          total_tokens=usage[0] + usage[1]))

    def _local(self, messages, max_tokens, temperature, top_p, seed) -> tuple[str, tuple[int, int]]:
        from eventlog.generation import Generation, server

        gen = Generation()
        srv = server(Path(self.cfg["model_dir"]), Path(self.cfg["data_dir"]))
        base = self.runner["base_model"]
        needed = srv.count_prompt_tokens(base, messages) + max_tokens
        if needed > srv.context_window(base):  # an Exception: DSPy counts the example as failed
            raise ContextTooLong(f"the prompt and answer need {needed} tokens; the model's context is "
                                 f"{srv.context_window(base)}")
        run = srv.stream(base_id=self.runner["base_model"], model_id=self.runner["model"],
                         artifact_path=self.runner.get("artifact_path"), messages=messages, max_tokens=max_tokens,
                         temperature=temperature, top_p=float(top_p or 1.0), seed=seed, result=gen)
        try:
            text = "".join(run)
        finally:
            run.close()
        return text, (gen.prompt_tokens, gen.completion_tokens)

    def _remote(self, messages, max_tokens, temperature, top_p, seed) -> tuple[str, tuple[int, int]]:
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        from domain.redaction import redactor_for
        from eventlog import providers

        provider, remote = providers.load(Path(self.cfg["data_dir"])).split(self.runner["model"])
        redactor = redactor_for(tuple(self.cfg.get("roster") or ()))
        sent = [{"role": m["role"], "content": redactor.redact_text(m["content"])[0]} for m in messages]
        params: dict[str, Any] = {"model": remote, "messages": sent, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if top_p is not None:
            params["top_p"] = top_p
        if seed is not None:
            params["seed"] = seed
        if provider.chat_extra_body:
            params["extra_body"] = dict(provider.chat_extra_body)
        import openai

        transient = retry_if_exception(lambda e: isinstance(e, Exception) and providers.classify(e)[0])
        try:
            for attempt in Retrying(stop=stop_after_attempt(6), wait=wait_exponential(min=1, max=30), reraise=True,
                                    retry=transient):
                with attempt:
                    self.guard.check()
                    resp = provider.client(timeout=120).chat.completions.create(**params)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            # the key or the model refused: every call would fail the same way
            _transient, code, message = providers.classify(e)
            raise ProviderFailed(f"provider {provider.name!r}: {provider.scrub(message)} ({code})") from None
        except Exception as e:  # this request refused (too long, filtered...): the example fails, the run goes on
            _transient, code, message = providers.classify(e)
            raise RuntimeError(f"provider {provider.name!r} refused a call: {provider.scrub(message)} ({code})") \
                from None
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = resp.usage
        return text, ((usage.prompt_tokens or 0) if usage else 0, (usage.completion_tokens or 0) if usage else 0)


def make_lm(runner: dict[str, Any], cfg: dict[str, Any], stats: Stats, guard: Guard):
    import dspy

    return dspy.LM(f"tunelog/{runner['model']}", engine=Engine(runner, cfg, stats, guard), temperature=0.0,
                   max_tokens=int(cfg["options"]["max_tokens"]), cache=True, num_retries=0)


# ---- metrics ---------------------------------------------------------------------------------------------
CONTINUOUS = ("f1", "semantic_f1")  # scores in [0, 1]; a bootstrapped demo needs at least this much
PASS_MARK = 0.5


def make_metric(name: str, judge_lm=None):
    """metric(example, prediction, trace=None, *gepa_args) -> float in [0, 1] (a bool while bootstrapping,
    as DSPy's optimizers expect); an unreadable judgement scores 0."""
    import dspy
    from dspy.evaluate.metrics import f1_score, normalize_text

    judge = None
    if name == "semantic_f1":
        judge = dspy.evaluate.SemanticF1(decompositional=False)
    elif name == "llm_judge":
        class JudgeAnswer(dspy.Signature):
            """Judge whether the student's tutor answered the question correctly, compared with the reference
            answer. Answer yes or no."""

            question: str = dspy.InputField()
            reference_answer: str = dspy.InputField()
            answer: str = dspy.InputField()
            correct: bool = dspy.OutputField(desc="yes or no")

        judge = dspy.Predict(JudgeAnswer)

    def score(example, pred) -> float:
        predicted = str(getattr(pred, "answer", "") or "").strip()
        gold = str(example.answer).strip()
        if not predicted:  # an empty answer is never right (and could not be a demo)
            return 0.0
        g, p = normalize_text(gold), normalize_text(predicted)
        if not g:  # the gold answer is only articles or punctuation ("A", "The"): compare it as written
            g, p = gold.lower(), predicted.lower()
        if name == "exact_match":
            return float(g == p)
        if name == "contains":  # whole tokens: "b" is not in "bees"
            return float(f" {g} " in f" {p} ")
        if name == "f1":
            return float(f1_score(predicted, gold))
        try:
            with dspy.context(lm=judge_lm) if judge_lm is not None else _nullcontext():
                if name == "semantic_f1":  # DSPy's SemanticF1 reads `response` fields
                    judged = judge(dspy.Example(question=example.question, response=gold),
                                   dspy.Prediction(response=predicted))
                    return max(0.0, min(1.0, float(judged.score)))
                verdict = judge(question=example.question, reference_answer=gold, answer=predicted)
                return float(bool(verdict.correct))
        except Stop:
            raise
        except Exception:  # a judge's unreadable answer: the example fails, the run goes on
            return 0.0

    def metric(example, pred, trace=None, pred_name=None, pred_trace=None):
        s = score(example, pred)
        if trace is not None and pred_name is None:  # bootstrapping: is this trace good enough to be a demo?
            return s >= PASS_MARK if name in CONTINUOUS else s >= 1.0
        return s

    return metric


class _nullcontext:  # noqa: N801 - contextlib.nullcontext, without importing contextlib twice
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---- progress --------------------------------------------------------------------------------------------
def tracker_class():
    from dspy.utils.callback import BaseCallback

    class Tracker(BaseCallback):
        """A `trial` line per evaluation (the dev-set score before, each candidate, after), with the best
        candidate so far kept (a time budget ends the run with it)."""

        def __init__(self, out: Out, stats: Stats, expected_trials: int | None, dev_size: int):
            self.out, self.stats, self.dev_size = out, stats, dev_size
            self.phase = "baseline"
            self.seq = 0
            self.best: float | None = None
            self.best_state: dict[str, Any] | None = None
            self.programs: dict[str, Any] = {}
            self.expected = expected_trials
            self.started = time.monotonic()
            self.scores: dict[str, float] = {}
            self.last_tick = time.monotonic()

        def on_lm_start(self, call_id, instance, inputs):
            self.stats.lm_calls += 1
            if time.monotonic() - self.last_tick > 10:  # alive (the worker stops a child silent for too long)
                self.last_tick = time.monotonic()
                self.out.write("tick", lm_calls=self.stats.lm_calls)

        def on_evaluate_start(self, call_id, instance, inputs):
            devset = inputs.get("devset") or getattr(instance, "devset", None) or []
            # a minibatch's score is no candidate's score: only whole-dev-set evaluations may be "the best"
            self.programs[call_id] = (inputs.get("program"), len(devset))

        def on_evaluate_end(self, call_id, outputs, exception=None):
            program, n = self.programs.pop(call_id, (None, 0))
            if outputs is None:
                return
            score = round(float(outputs.score) / 100.0, 4)  # DSPy reports a percentage
            self.seq += 1
            if self.phase == "search" and n >= self.dev_size and (self.best is None or score > self.best):
                self.best = score
                if program is not None:
                    self.best_state = copy.deepcopy(program.dump_state())
            self.scores[self.phase] = score
            remaining = None
            if self.expected and self.seq < self.expected:
                per = (time.monotonic() - self.started) / self.seq
                remaining = int(per * (self.expected - self.seq))
            self.out.write("trial", trial=self.seq, phase=self.phase, total_trials=self.expected, score=score,
                           best_score=self.best if self.phase == "search" else score, lm_calls=self.stats.lm_calls,
                           lm_cache_hits=self.stats.lm_calls - self.stats.new_calls,
                           remaining_seconds=remaining)

    return Tracker


# ---- the run ---------------------------------------------------------------------------------------------
def examples(path: str | None) -> list:
    import dspy

    from domain.datasets import dspy_examples

    if not path:
        return []
    return [dspy.Example(question=e["question"], context=e["context"], answer=e["answer"])
            .with_inputs("question", "context") for e in dspy_examples(Path(path).read_bytes())]


def expected_trials(opts: dict[str, Any]) -> int | None:
    """Evaluations the run will report (the before and after included), where the optimizer fixes it."""
    if opts["optimizer"] == "bootstrap_few_shot":
        return 2
    if opts["optimizer"] == "bootstrap_few_shot_with_random_search":
        return opts["num_candidate_programs"] + 3 + 2  # DSPy adds zero-shot, labeled-only, unshuffled
    return None


def optimize(opts: dict[str, Any], student, trainset, valset, metric, lm, seed: int):
    import dspy

    name = opts["optimizer"]
    common = {"max_bootstrapped_demos": opts["max_bootstrapped_demos"],
              "max_labeled_demos": opts["max_labeled_demos"]}
    if name == "bootstrap_few_shot":
        return dspy.BootstrapFewShot(metric=metric, max_rounds=1, max_errors=10**9, **common).compile(
            student, trainset=trainset)
    if name == "bootstrap_few_shot_with_random_search":
        return dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, num_candidate_programs=opts["num_candidate_programs"], num_threads=1, max_errors=10**9,
            **common).compile(student, trainset=trainset, valset=valset or None)
    if name == "mipro_v2":
        auto = opts.get("auto")
        mipro = dspy.MIPROv2(metric=metric, prompt_model=lm, task_model=lm, auto=auto,
                             num_candidates=None if auto else opts["num_candidate_programs"], num_threads=1,
                             max_errors=10**9, seed=seed, verbose=False, track_stats=False, **common)
        kwargs: dict[str, Any] = {} if auto else {"num_trials": opts["num_trials"]}
        # MIPROv2's default minibatch (35) is over a small dev set, which it refuses: evaluate on all of it
        n_val = len(valset) if valset else min(1000, max(1, int(len(trainset) * 0.8)))
        return mipro.compile(student, trainset=trainset, valset=valset or None, seed=seed,
                             minibatch=n_val > 35, **kwargs)
    if name == "gepa":
        return dspy.GEPA(metric=metric, auto=opts.get("auto") or "light", reflection_lm=lm, num_threads=1,
                         seed=seed, track_stats=False).compile(student, trainset=trainset,
                                                               valset=valset or None)
    raise ValueError(f"unknown optimizer {name!r}")


def run(cfg: dict[str, Any]) -> int:
    from eventlog import programs

    programs.dspy_offline()
    out = Out(cfg["metrics_file"])
    import dspy

    opts = cfg["options"]
    stats = Stats()
    guard = Guard(cfg["control_dir"])
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=cfg["cache_dir"],
                         disk_size_limit_bytes=2 * 1024**3, memory_max_entries=10_000, restrict_pickle=True)
    lm = make_lm(cfg["runner"], cfg, stats, guard)
    judge_lm = make_lm(cfg["judge"], cfg, stats, guard) if cfg.get("judge") else None
    _sig, _program, adapter_cls = programs.classes()
    trainset = examples(cfg["train_file"])
    valset = examples(cfg.get("valid_file"))
    devset = valset or trainset
    # the size of a whole-dev-set evaluation in the search (MIPROv2 without a validation file holds out 80%)
    search_dev = len(valset) if valset else (min(1000, max(1, int(len(trainset) * 0.8)))
                                             if opts["optimizer"] == "mipro_v2" else len(trainset))
    tracker = tracker_class()(out, stats, expected_trials(opts), search_dev)
    # no LM history: a long run would keep every prompt in memory
    dspy.configure(lm=lm, adapter=adapter_cls(), callbacks=[tracker], max_errors=10**9, num_threads=1,
                   disable_history=True)
    metric = make_metric(opts["metric"], judge_lm)
    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=1, display_progress=False,
                             max_errors=10**9)
    seed = int(cfg["seed"])
    student = programs.new_program()
    stopped = None
    try:
        tracker.phase = "baseline"
        evaluate(student)
        tracker.phase = "search"
        if opts.get("time_budget_s"):
            guard.deadline = time.monotonic() + float(opts["time_budget_s"])
        try:
            compiled = optimize(opts, student, trainset, valset, metric, lm, seed)
        except BudgetSpent:
            stopped = "time_budget"
            compiled = programs.new_program()
            if tracker.best_state is not None:
                compiled.load_state(tracker.best_state)
            best = (f"score {tracker.best}" if tracker.best is not None
                    else "none was evaluated, so the unoptimized program")
            out.message(f"The time budget of {opts['time_budget_s']} s was spent: the best candidate evaluated so "
                        f"far is the result ({best})", level="warn")
        guard.deadline = None
        tracker.phase = "final"
        evaluate(compiled)
    except Paused:
        out.write("paused", step=tracker.seq)
        return 0
    except ProviderFailed as e:
        out.write("failed", code="provider_error", message=e.why)
        return 3
    path = Path(cfg["program_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".raw.json")
    compiled.save(str(tmp), save_program=False)  # JSON state only: never pickled code
    state, dropped = programs.fit_state(json.loads(tmp.read_bytes()))
    tmp.unlink()
    if dropped:
        out.message(f"{dropped} demo(s) the program could not keep were dropped (an empty answer, text over the "
                    "limits, or over the program's size limit)", level="warn")
    path.write_bytes(programs.state_bytes(state))
    cached = stats.lm_calls - stats.new_calls
    out.message(f"LM calls: {stats.lm_calls} ({cached} answered from the cache, {stats.new_calls} new in this "
                f"attempt, {stats.new_seconds:.1f} s of generation)")
    metrics = {
        "dev_score_before": tracker.scores.get("baseline"), "dev_score_after": tracker.scores.get("final"),
        "best_trial_score": tracker.best, "trials": tracker.seq, "lm_calls": stats.lm_calls,
        "lm_cache_hits": cached, "new_lm_calls": stats.new_calls, "demos": len(state["respond"]["demos"]),
        "dev_examples": len(devset), "train_examples": len(trainset), "stopped": stopped,
    }
    out.write("done", trained_tokens=stats.prompt_tokens + stats.completion_tokens, metrics=metrics,
              program_file=str(path))
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(Path(sys.argv[1]).read_text())
    threads = cfg.get("num_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
