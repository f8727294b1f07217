"""An evaluation run, as a durable job on the cpu queue: `run_eval(run_id, attempt)`.

Fenced start (EvalRunStarted at the stream's expected version), a heartbeat lease in Postgres (the dispatcher
declares a dead worker's attempt lost and enqueues the next), then one EvalItemGraded per item, appended in the
order they finish and fenced the same way: a resumed attempt skips every item already graded, and no item is
ever graded twice. A cancel is seen between items (each item is seconds: well within 10 s); the samples come
from the serving tier over OpenAI's protocol (eventlog/serving.py), several items in flight at once so the
replica batches them.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from domain.errors import ConcurrencyConflict, DomainError
from domain.eval_runs import EvalRunState, counts, fold, item_status
from domain.events import (
    AliasPromoted,
    EvalItemGraded,
    EvalRunCanceled,
    EvalRunCompleted,
    EvalRunFailed,
    EvalRunStarted,
    PromotionEvaluated,
    alias_stream,
    eval_run_stream,
    eval_stream,
)
from eventlog.bootstrap import Services, bootstrap
from eventlog.store import NewEvent
from workers.jobs import Lease

log = logging.getLogger("tunelog.evals")
MAX_REFERENCED_MESSAGES = 32
NO_ERROR = {"code": "", "message": ""}  # OpenAI's sample.error when there was none (as its run objects have it)


def concurrency() -> int:
    return max(1, min(32, int(os.environ.get("TUNELOG_EVAL_CONCURRENCY", "8"))))


def _now() -> int:
    return int(time.time())


class Stop(Exception):
    """This attempt must stop: canceled, fenced by another attempt, or its lease is lost."""


def _read(svc: Services, run_id: str) -> EvalRunState:
    return fold([(e.type, e.data, e.stream_version) for e in svc.store.read_stream(eval_run_stream(run_id))])


def run_eval(run_id: str, attempt: int) -> str:
    logging.basicConfig(level=logging.INFO)
    svc = bootstrap(pool_size=3)
    try:
        return _run(svc, run_id, attempt)
    finally:
        svc.close()


def _run(svc: Services, run_id: str, attempt: int) -> str:
    stream = eval_run_stream(run_id)
    state = _read(svc, run_id)
    meta = {"actor": "worker", "correlation_id": run_id}
    if not state.id or state.terminal:
        return "nothing to do"
    if state.cancel_requested:
        try:
            svc.store.append(stream, state.version, [NewEvent("EvalRunCanceled", EvalRunCanceled(
                reason="canceled before this attempt started", at=_now()).to_data(), meta)])
        except ConcurrencyConflict:
            pass
        return "canceled"
    if state.attempt != attempt or state.status != "queued":
        return f"attempt {attempt} is not the run's queued attempt ({state.status}, attempt {state.attempt})"
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lease = Lease(svc, run_id, attempt, worker)
    if not lease.acquire():
        return "another worker holds this attempt"
    try:
        try:
            svc.store.append(stream, state.version, [NewEvent("EvalRunStarted", EvalRunStarted(
                attempt=attempt, worker=worker, at=_now()).to_data(), meta)])
            version = state.version + 1
        except ConcurrencyConflict:
            return "fenced at start"
        return Grading(svc, state, version, attempt, lease, meta).run()
    finally:
        lease.release()


class Grading:
    def __init__(self, svc: Services, state: EvalRunState, version: int, attempt: int, lease: Lease,
                 meta: dict[str, Any]):
        self.svc, self.state, self.version, self.attempt, self.lease, self.meta = svc, state, version, attempt, \
            lease, meta
        self.run_id = state.id
        self.stream = eval_run_stream(state.id)
        self.created = state.created
        self.graded: dict[int, dict[str, Any]] = dict(state.graded)
        self._embed_lock = threading.Lock()
        self._programs: dict[str, dict[str, Any]] = {}
        self.stopping = threading.Event()  # set when this attempt stops: samples waiting on the serving tier give up

    # ---- the parts -----------------------------------------------------------------------------------------
    def _eval(self) -> dict[str, Any]:
        events = self.svc.store.read_stream(eval_stream(self.created["eval_id"]))
        created = next((e.data for e in events if e.type == "EvalCreated"), None)
        if created is None:
            raise ValueError(f"the eval {self.created['eval_id']} is missing from the log")
        return created

    def _items(self) -> list[dict[str, Any]]:
        with self.svc.pool.connection() as c:
            row = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (self.created["items_sha256"],)).fetchone()
        if row is None:
            raise ValueError("the run's items are missing from the store")
        return [json.loads(line) for line in bytes(row["content"]).decode().split("\n") if line.strip()]

    def _generate(self, name: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
        """One answer of model `name` (as the run resolved it) from the serving tier: text, usage, finish."""
        from domain.errors import ServiceUnavailable, TooManyRequests
        from eventlog.generation import Generation
        from eventlog.serving import open_stream

        model = self.created["models"][name]
        chat = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                for m in messages]
        program = self._program(model) if model["backend"] == "dspy-program" else None
        if program is not None:  # the program's own prompt for the question (as chat answers with it)
            from eventlog.programs import render

            question = next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")
            own = "\n".join(m["content"] for m in chat if m["role"] == "system" and m["content"])
            chat = render(program, question, [], own)
        delay = 0.5
        while True:
            gen = Generation()
            try:
                pieces, _timing = open_stream(
                    self.svc.settings.data_dir, model["base_model"], model.get("artifact_path"), chat,
                    max_tokens=int(sampling.get("max_completion_tokens") or sampling.get("max_completions_tokens")
                                   or 128),
                    temperature=float(sampling.get("temperature", 1.0) if sampling.get("temperature") is not None
                                      else 1.0),
                    top_p=float(sampling.get("top_p") if sampling.get("top_p") is not None else 1.0),
                    seed=sampling.get("seed"), result=gen, time_limit=300.0, queue_timeout=120.0,
                    user=self.created["project"])
                try:
                    if program is not None:  # the answer field of DSPy's format; generation stops at its end
                        from eventlog.programs import AnswerFilter

                        text = "".join(AnswerFilter(pieces, pieces.close, result=gen))
                    else:
                        text = "".join(pieces)
                finally:
                    pieces.close()
                if gen.finish_reason == "error":
                    raise ServiceUnavailable("the serving replica broke while answering")
                return {"text": text, "finish_reason": gen.finish_reason, "model": model["id"],
                        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                                  "total_tokens": gen.prompt_tokens + gen.completion_tokens, "cached_tokens": 0}}
            except (ServiceUnavailable, TooManyRequests) as e:
                # The serving tier busy or restarting is no fault of the item: wait for it (an item recorded as
                # errored would count against the model at the gate). The attempt's loop stops this on a cancel
                # or a lost lease; RQ's job timeout bounds the whole run.
                if self.stopping.is_set():
                    raise
                log.info("run %s: serving busy or down (%s); retrying in %.1f s", self.run_id, e, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _program(self, model: dict[str, Any]) -> dict[str, Any]:
        """A DSPy program's checked state, by the hash the run recorded (read once per attempt)."""
        from eventlog.programs import check_state

        sha = model["program_sha256"]
        if sha not in self._programs:
            with self.svc.pool.connection() as c:
                row = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (sha,)).fetchone()
            if row is None:
                raise ValueError(f"the program of {model['id']} is missing from the store")
            self._programs[sha] = check_state(bytes(row["content"]))
        return self._programs[sha]

    def _embed(self, texts: list[str]) -> list[list[float]]:
        from eventlog.embeddings import embedder

        with self._embed_lock:
            return [list(map(float, v)) for v in embedder().encode(texts)]

    def _messages(self, item: dict[str, Any]) -> list[dict[str, str]]:
        from domain.evals import render

        spec = self.created["data_source"]["input_messages"]
        if spec["type"] == "item_reference":
            value: Any = {"item": item}
            for part in spec["item_reference"].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_REFERENCED_MESSAGES or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) and len(m["content"]) <= 16384
                    and m.get("role", "user") in ("system", "developer", "user", "assistant") for m in value):
                raise ValueError(f"{spec['item_reference']} is not a list of 1 to {MAX_REFERENCED_MESSAGES} messages "
                                 "with a role (system, developer, user, assistant) and text content (16384 "
                                 "characters at most)")
            return [{"role": m.get("role", "user"), "content": m["content"]} for m in value]
        return [{"role": m["role"], "content": render(m["content"], {"item": item})} for m in spec["template"]]

    def grade_one(self, index: int, line: dict[str, Any], criteria: list[dict[str, Any]]) -> EvalItemGraded:
        """The item's event; any failure of this item (its data, a grader) is this item's error, never the run's:
        a poison item must not crash every attempt."""
        from domain.errors import ServiceUnavailable, TooManyRequests

        try:
            return self._grade_one(index, line, criteria)
        except (ServiceUnavailable, TooManyRequests):
            raise  # only when the attempt is stopping
        except Exception as e:  # noqa: BLE001
            log.exception("run %s: item %s failed", self.run_id, index)
            error = {"code": "item_failed", "message": f"{type(e).__name__}: {str(e)[:300]}"}
            return EvalItemGraded(index=index, item=line["item"], sample=_sample(
                model=self.created["data_source"].get("model") or "", error=error), results=[], status="error",
                attempt=self.attempt, at=_now())

    def _grade_one(self, index: int, line: dict[str, Any], criteria: list[dict[str, Any]]) -> EvalItemGraded:
        from domain.errors import ServiceUnavailable, TooManyRequests
        from workers.graders import grade

        item = line["item"]
        ds = self.created["data_source"]
        error = None
        if ds["type"] == "completions":
            sampling = ds["sampling_params"]
            try:
                messages = self._messages(item)
                out = self._generate(ds["model"], messages, sampling)
                text = out["text"]
                sample = {"input": messages, "output": [{"role": "assistant", "content": text}],
                          "finish_reason": out["finish_reason"], "model": out["model"], "usage": out["usage"],
                          "error": NO_ERROR, "temperature": sampling["temperature"],
                          "max_completion_tokens": sampling["max_completion_tokens"], "top_p": sampling["top_p"],
                          "seed": sampling["seed"]}
            except (DomainError, ValueError) as e:
                if isinstance(e, (ServiceUnavailable, TooManyRequests)):
                    raise
                text = ""
                error = {"code": getattr(e, "code", None) or "sample_failed", "message": str(e)[:500]}
                sample = _sample(model=ds["model"], error=error)
        else:  # jsonl: the sample was given (only its text counts: no usage or model of its own is believed)
            text = line["sample"]["output_text"]
            sample = _sample(model="", output=text)
        results = []
        if error is None:
            ctx_sample = {k: v for k, v in line.get("sample", {}).items()} if ds["type"] == "jsonl" else {}
            ctx_sample["output_text"] = text
            try:
                ctx_sample.setdefault("output_json", json.loads(text))
            except ValueError:
                pass
            for crit in criteria:
                try:
                    results.append(grade(crit, item, ctx_sample, generate=self._judge, embed=self._embed))
                except (DomainError, ValueError) as e:  # a judge the serving tier could not run: this criterion
                    results.append({"name": crit["name"], "type": crit["type"], "score": 0.0, "passed": False,
                                    "sample": None, "error": {"code": getattr(e, "code", None) or "grader_failed",
                                                              "message": str(e)[:500]}})
        return EvalItemGraded(index=index, item=item, sample=sample, results=results,
                              status=item_status(results, error is not None), attempt=self.attempt, at=_now())

    def _judge(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any] | None) -> str:
        from domain.evals_limits import MAX_SAMPLE_TOKENS

        given = dict(sampling or {})
        tokens = given.pop("max_completions_tokens", None) or given.pop("max_completion_tokens", None) or 16
        params = {"temperature": 0.0, "top_p": 1.0, "seed": 42, **given,
                  "max_completion_tokens": max(1, min(int(tokens), MAX_SAMPLE_TOKENS))}
        if not isinstance(params.get("seed"), int) or not 0 <= params["seed"] < 2 ** 31:
            params["seed"] = 42
        return self._generate(model, messages, params)["text"]

    # ---- the loop ------------------------------------------------------------------------------------------
    def _append(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            self.svc.store.append(self.stream, self.version, [NewEvent(t, d, self.meta) for t, d in events])
            self.version += len(events)
        except ConcurrencyConflict:
            raise Stop(self._why_fenced()) from None

    def _why_fenced(self) -> str:
        now = _read(self.svc, self.run_id)
        if now.cancel_requested and not now.terminal and now.attempt == self.attempt:
            try:
                self.svc.store.append(self.stream, now.version, [NewEvent("EvalRunCanceled", EvalRunCanceled(
                    reason="canceled by request", at=_now()).to_data(), self.meta)])
            except ConcurrencyConflict:
                pass
            return "canceled"
        return "fenced: another attempt owns this run"

    def _check(self) -> None:
        if self.lease.lost.is_set():
            raise Stop("lease lost")
        if self.svc.store.stream_version(self.stream) != self.version:
            raise Stop(self._why_fenced())

    def run(self) -> str:
        try:
            spec = self._eval()
            lines = self._items()
        except ValueError as e:
            self._append([("EvalRunFailed", EvalRunFailed(error={"code": "run_failed", "message": str(e)},
                                                          at=_now()).to_data())])
            return "failed"
        criteria = spec["testing_criteria"]
        todo = [i for i in range(len(lines)) if i not in self.graded]
        log.info("run %s attempt %s: %s of %s items to grade", self.run_id, self.attempt, len(todo), len(lines))
        pool = ThreadPoolExecutor(max_workers=concurrency(), thread_name_prefix="eval")
        running: dict[Future, int] = {}
        try:
            while todo or running:
                while todo and len(running) < concurrency():
                    i = todo.pop(0)
                    running[pool.submit(self.grade_one, i, lines[i], criteria)] = i
                done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                if not done:
                    self._check()  # a cancel or a lost lease is seen within a second, not after the next item
                    continue
                batch = []
                for f in done:
                    running.pop(f)
                    ev = f.result()
                    batch.append(ev)
                batch.sort(key=lambda e: e.index)
                self._append([(e.type, e.to_data()) for e in batch])
                for e in batch:
                    self.graded[e.index] = e.to_data()
        except Stop as stop:
            log.info("run %s attempt %s stops: %s", self.run_id, self.attempt, stop)
            return str(stop)
        finally:
            self.stopping.set()
            for f in running:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
        result_counts, per = counts(self.graded.values(), criteria)
        done_ev = EvalRunCompleted(result_counts=result_counts, per_testing_criteria_results=per,
                                   per_model_usage=usage(self.graded.values()), at=_now())
        try:
            self._append([(done_ev.type, done_ev.to_data())])
        except Stop as stop:
            return str(stop)
        log.info("run %s completed: %s", self.run_id, result_counts)
        trigger = self.created.get("trigger") or {}
        if trigger.get("auto_promote"):
            auto_promote(self.svc, self.created, trigger)
        return "completed"


def _sample(model: str, output: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """An output item's sample in OpenAI's shape, for a given (jsonl) answer or a failed one."""
    return {"input": [], "output": [] if output is None else [{"role": "assistant", "content": output}],
            "finish_reason": "error" if error else "stop", "model": model,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0},
            "error": error or NO_ERROR, "temperature": 0.0, "max_completion_tokens": 0, "top_p": 1.0, "seed": 0}


def usage(graded) -> list[dict[str, Any]]:
    per: dict[str, dict[str, Any]] = {}
    for g in graded:
        s = g.get("sample") or {}
        u = s.get("usage")
        if not u or not s.get("model"):
            continue
        m = per.setdefault(s["model"], {"model_name": s["model"], "invocation_count": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
        m["invocation_count"] += 1
        for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
            m[k] += int(u.get(k) or 0)
    return list(per.values())


# ---- auto_promote: the candidate's run decides, once the current target's run (if any) has finished --------
def auto_promote(svc: Services, created: dict[str, Any], trigger: dict[str, Any],
                 wait_seconds: float = 1800.0) -> None:
    """The same gate as POST /api/aliases (the eval gate and promotion_requires_better_eval), applied to the model
    this run evaluated, on the alias the gate names now: AliasPromoted with the numbers when it wins; either way
    a PromotionEvaluated on the run's stream says what was decided and why."""
    from domain.errors import Conflict
    from domain.projects import check_eval_gate, check_promotion
    from eventlog.evals import _servable, gate_numbers, latest_settings, model_score
    from eventlog.runner import catch_up

    project, model = created["project"], created["model"]
    meta = {"actor": "auto_promote", "correlation_id": created["id"]}

    def decided(promoted: bool, alias: str, reason: str) -> None:
        ev = PromotionEvaluated(model=model, alias=alias, promoted=promoted, reason=reason[:2000], at=_now())
        svc.store.append(eval_run_stream(created["id"]), None, [NewEvent(ev.type, ev.to_data(), meta)])

    deadline = time.monotonic() + wait_seconds
    while True:
        catch_up(svc.pool)  # the run's own completion must be in the read model the gate reads
        settings = latest_settings(svc, project)
        gate = settings.promotion_eval
        if not settings.auto_promote or gate is None or gate["eval_id"] != created["eval_id"]:
            return decided(False, trigger.get("alias") or "tutor", "auto_promote is off, or the gate's eval changed")
        alias = gate.get("alias", "tutor")
        if alias != trigger.get("alias"):
            return decided(False, alias, f"the gate's alias changed (from {trigger.get('alias')!r} to {alias!r}) "
                                         "since this run was started; promote by hand")
        numbers = gate_numbers(svc, project, gate, model, alias)
        if numbers.get("current_pending") and time.monotonic() < deadline:
            time.sleep(2.0)  # the current target's run is still grading: compare with its result
            continue
        break
    stream = alias_stream(project, alias)
    for _ in range(10):
        version = svc.store.stream_version(stream)
        numbers = gate_numbers(svc, project, gate, model, alias)
        current_model = numbers["current_model"] or numbers["unrunnable"]
        if current_model == model:
            return decided(False, alias, f"{model} is already the target of {alias!r}")
        with svc.pool.connection() as c:
            servable = _servable(c, project, model) is not None
            scores = (model_score(c, project, model), model_score(c, project, current_model) if current_model
                      else None)
        try:
            if not servable:
                raise Conflict(f"promotion refused: {model} no longer exists")
            why = check_eval_gate(gate, alias, model, numbers["candidate"], numbers["current_model"],
                                  numbers["current"])
            check_promotion(settings, alias, model, scores[0], current_model or "(none)", scores[1])
        except Conflict as refused:
            return decided(False, alias, str(refused))
        reason = f"auto_promote after eval run {created['id']}: {why}"
        promoted = AliasPromoted(project=project, alias=alias, model=model, previous=current_model, reason=reason,
                                 at=_now())
        try:
            svc.store.append(stream, version, [NewEvent(promoted.type, promoted.to_data(), meta)])
        except ConcurrencyConflict:
            continue  # someone moved the alias meanwhile: decide again on what it is now
        return decided(True, alias, reason)
