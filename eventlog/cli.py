"""`tunelog`: the command line.

Client commands talk HTTP to any tunelog (`TUNELOG_URL`, default http://127.0.0.1:8000; `TUNELOG_API_KEY`, default
the local instance's operator key in `<data dir>/admin_key`): files, jobs, models, registry, chat, docs, admin.
Human output by default, `--json` for scripts; a failed request prints the server's error and exits 1; bad input
found before any request (a missing file) exits 2.

Operator commands run beside the database (`DATABASE_URL`, or the embedded Postgres while `scripts/serve` runs):
serve, migrate, keys create, replay, verify, events.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
files_app = typer.Typer(help="training and validation files", no_args_is_help=True)
jobs_app = typer.Typer(help="fine-tuning, DPO and DSPy jobs", no_args_is_help=True)
models_app = typer.Typer(help="models, aliases, history and lineage", no_args_is_help=True)
docs_app = typer.Typer(help="the school's documents (the knowledge base chat answers from)", no_args_is_help=True)
admin_app = typer.Typer(help="the audit log, keys, webhooks, replay (over HTTP)", no_args_is_help=True)
for sub, name in ((files_app, "files"), (jobs_app, "jobs"), (models_app, "models"), (docs_app, "docs"),
                  (admin_app, "admin")):
    app.add_typer(sub, name=name)

JSON_OUT = {"on": False}
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


class Fail(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---- HTTP ----------------------------------------------------------------------------------------------
def _data_dir() -> Path:
    from eventlog.settings import ROOT

    return Path(os.environ.get("TUNELOG_DATA_DIR") or ROOT / ".data")


def _key() -> str:
    key = os.environ.get("TUNELOG_API_KEY")
    if key:
        return key
    from urllib.parse import urlsplit

    if (urlsplit(_base_url()).hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        raise Fail("set TUNELOG_API_KEY: the local operator key is only sent to a tunelog on this machine", 2)
    try:
        return (_data_dir() / "admin_key").read_text().strip()
    except OSError:
        raise Fail("no API key: set TUNELOG_API_KEY (or run beside a local instance, whose data directory has "
                   "admin_key)", 2) from None


def _base_url() -> str:
    return os.environ.get("TUNELOG_URL", f"http://127.0.0.1:{os.environ.get('TUNELOG_PORT', '8000')}").rstrip("/")


def _client():
    import httpx

    return httpx.Client(base_url=_base_url(), headers={"Authorization": f"Bearer {_key()}"}, timeout=120)


def call(method: str, path: str, **kw: Any) -> Any:
    import httpx

    try:
        with _client() as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as e:
        raise Fail(f"cannot reach tunelog at {os.environ.get('TUNELOG_URL', 'http://127.0.0.1:8000')}: {e}") from None
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            where = f" ({err['param']})" if err.get("param") else ""
            raise Fail(f"{r.status_code} {err.get('code') or ''}{where}: {err.get('message')}")
        except (ValueError, KeyError, TypeError):
            raise Fail(f"{r.status_code}: {r.text[:500]}") from None
    if "json" in r.headers.get("content-type", ""):
        return r.json()
    return r.content


def out(obj: Any, human: str | None = None) -> None:
    if JSON_OUT["on"] or human is None:
        typer.echo(json.dumps(obj, indent=None if JSON_OUT["on"] else 2, default=str))
    else:
        typer.echo(human)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(*cols, box=None, pad_edge=False)
    for r in rows:
        t.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in cols])
    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115 - rendered to text
    console.print(t)
    return console.export_text().rstrip()


def show_list(path: str, cols: list[str], json_: bool) -> None:
    """A list route's `data`, as a table (or JSON)."""
    JSON_OUT["on"] = json_
    data = call("GET", path)["data"]
    out(data, table(data, cols))


def _file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise Fail(f"cannot read {path}: {e.strerror}", 2) from None


# ---- files ---------------------------------------------------------------------------------------------
@files_app.command("upload")
def files_upload(path: Path, purpose: str = "fine-tune", json_: JsonOpt = False):
    """Upload a JSONL file (checked by the server: every problem with its line)."""
    JSON_OUT["on"] = json_
    f = call("POST", "/v1/files", files={"file": (path.name, _file(path))}, data={"purpose": purpose})
    out(f, f"{f['id']}  {f['filename']}  {f['bytes']} bytes")


@files_app.command("list")
def files_list(json_: JsonOpt = False):
    show_list("/v1/files", ["id", "filename", "bytes", "created_at"], json_)


@files_app.command("validate")
def files_validate(path: Path, model: str = "smollm2-135m-instruct", json_: JsonOpt = False):
    """Run the server's own checks here (line numbers included) and print the token counts."""
    from domain.datasets import check_jsonl
    from domain.errors import ValidationError

    JSON_OUT["on"] = json_
    content = _file(path)
    count = None
    try:
        from api.tokens import counter
        from eventlog.settings import ROOT

        count = counter(Path(os.environ.get("TUNELOG_MODEL_DIR") or ROOT / ".data" / "models"), model)
    except Exception:  # noqa: BLE001 - no local model folder: the checks run without token counts
        count = None
    try:
        report = check_jsonl(content, min_examples=1, max_tokens=10**9, count_tokens=count)
    except ValidationError as e:
        raise Fail(f"{path}: {e.message}") from None
    stats = report.stats()
    out(stats, f"{path}: {stats['n_examples']} examples in {stats['format']} format, OK"
        + (f"; {stats['total_tokens']} tokens, the longest {stats['max_tokens']}" if count else ""))


@files_app.command("convert")
def files_convert(src: Path, dst: Path, to: Annotated[str, typer.Option(help="chat | dspy | hf-text")]):
    """Convert question/answer data between OpenAI's chat JSONL, DSPy examples and the HF text format; a
    preference (DPO) file converts too, its preferred answers taken."""
    from domain.datasets import check_jsonl, dspy_examples
    from domain.errors import ValidationError

    content = _file(src)
    try:
        if check_jsonl(content, min_examples=1, max_tokens=10**9).format == "preference":
            content = "".join(json.dumps({"messages": ex["input"]["messages"] + ex["preferred_output"][:1]}) + "\n"
                              for ex in map(json.loads, content.decode("utf-8-sig").splitlines()) if ex).encode()
        examples = dspy_examples(content)
    except ValidationError as e:
        raise Fail(f"{src}: {e.message}") from None
    lines = []
    for e in examples:
        if to == "chat":
            system = [{"role": "system", "content": "\n".join(e["context"])}] if e["context"] else []
            lines.append({"messages": system + [{"role": "user", "content": e["question"]},
                                                {"role": "assistant", "content": e["answer"]}]})
        elif to == "dspy":
            lines.append({"question": e["question"], "answer": e["answer"], **({"context": e["context"]}
                                                                               if e["context"] else {})})
        elif to == "hf-text":
            lines.append({"text": f"Question: {e['question']}\nAnswer: {e['answer']}"})
        else:
            raise Fail("--to must be chat, dspy or hf-text", 2)
    dst.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    typer.echo(f"{len(lines)} examples written to {dst} ({to})")


# ---- jobs ----------------------------------------------------------------------------------------------
def _job_line(j: dict[str, Any]) -> str:
    return (f"{j['id']}  {j['status']:<16} {j['model']}  {(j.get('method') or {}).get('type', '')}  "
            f"{j.get('fine_tuned_model') or ''}")


@jobs_app.command("create")
def jobs_create(model: str, training_file: str, validation_file: str | None = None,
                method: Annotated[str, typer.Option(help="supervised | dpo | dspy")] = "supervised",
                n_epochs: int | None = None, batch_size: int | None = None,
                learning_rate_multiplier: float | None = None,
                optimizer: Annotated[str | None, typer.Option(help="dspy: the optimizer")] = None,
                metric: Annotated[str | None, typer.Option(help="dspy: the metric")] = None,
                suffix: str | None = None, seed: int | None = None,
                follow: Annotated[bool, typer.Option(help="follow it to the end")] = False, json_: JsonOpt = False):
    """Create a job (`training_file` is a file id; upload with `tunelog files upload`)."""
    JSON_OUT["on"] = json_
    if method == "dspy":
        opts = {k: v for k, v in (("optimizer", optimizer), ("metric", metric)) if v is not None}
        m: dict[str, Any] = {"type": "dspy", "dspy": opts}
    else:
        hp = {k: v for k, v in (("n_epochs", n_epochs), ("batch_size", batch_size),
                                ("learning_rate_multiplier", learning_rate_multiplier)) if v is not None}
        m = {"type": method, method: {"hyperparameters": hp}}
    body = {"model": model, "training_file": training_file, "method": m, "suffix": suffix, "seed": seed}
    if validation_file:
        body["validation_file"] = validation_file
    j = call("POST", "/v1/fine_tuning/jobs", json={k: v for k, v in body.items() if v is not None})
    out(j, _job_line(j))
    if follow:
        jobs_follow(j["id"])


@jobs_app.command("list")
def jobs_list(limit: int = 20, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    data = call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]
    out(data, "\n".join(_job_line(j) for j in data) or "no jobs")


@jobs_app.command("get")
def jobs_get(job_id: str, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    j = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    out(j, _job_line(j) + (f"\nerror: {j['error']['message']}" if j.get("error") else ""))


def _steer(job_id: str, verb: str, json_: bool) -> None:
    JSON_OUT["on"] = json_
    j = call("POST", f"/v1/fine_tuning/jobs/{job_id}/{verb}")
    out(j, _job_line(j))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, json_: JsonOpt = False):
    _steer(job_id, "cancel", json_)


@jobs_app.command("pause")
def jobs_pause(job_id: str, json_: JsonOpt = False):
    _steer(job_id, "pause", json_)


@jobs_app.command("resume")
def jobs_resume(job_id: str, json_: JsonOpt = False):
    _steer(job_id, "resume", json_)


EXIT_BY_STATUS = {"succeeded": 0, "failed": 1, "cancelled": 3, "paused": 4}


@jobs_app.command("follow")
def jobs_follow(job_id: str, interval: float = 1.0):
    """A live progress bar (step, loss or score, ETA) until the job ends; exit 0 succeeded, 1 failed,
    3 cancelled, 4 paused."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    seen: set[str] = set()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[metric]}"), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(job_id, total=None, metric="")
        while True:
            j = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
            events = call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})["data"][::-1]
            for e in events:
                if e["id"] in seen:
                    continue
                seen.add(e["id"])
                d = e.get("data") or {}
                if e["type"] == "metrics":
                    metric = (f"score {d['score']:.3f}" if d.get("score") is not None else
                              f"loss {d['train_loss']:.4f}" if d.get("train_loss") is not None else "")
                    bar.update(task, completed=d.get("step") or 0, total=d.get("total_steps"), metric=metric)
                else:  # a job's message is text, never markup
                    from rich.markup import escape

                    bar.console.print(f"[dim]{escape(e['message'])}[/dim]", highlight=False, soft_wrap=True)
            bar.update(task, description=f"{job_id} {j['status']}")
            if j["status"] in EXIT_BY_STATUS:
                break
            time.sleep(interval)
    if j.get("fine_tuned_model"):
        typer.echo(f"model: {j['fine_tuned_model']}")
    if j.get("error"):
        typer.echo(f"error: {j['error']['message']}", err=True)
    raise typer.Exit(EXIT_BY_STATUS[j["status"]])


# ---- models, registry ----------------------------------------------------------------------------------
@models_app.command("list")
def models_list(json_: JsonOpt = False):
    show_list("/v1/models", ["id", "kind", "root", "target"], json_)


@models_app.command("get")
def models_get(model_id: str):
    out(call("GET", f"/v1/models/{model_id}"))


@models_app.command("delete")
def models_delete(model_id: str, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    out(call("DELETE", f"/v1/models/{model_id}"), f"deleted {model_id}")


@models_app.command("export")
def models_export(model_id: str, format: str = "safetensors", json_: JsonOpt = False):  # noqa: A002
    """Ask for an export (merged safetensors or GGUF; a DSPy program's state: `models program`)."""
    JSON_OUT["on"] = json_
    x = call("POST", f"/api/models/{model_id}/export", json={"format": format})
    out(x, f"{x['id']} {x['status']}")


@models_app.command("program")
def models_program(model_id: str, output: Path):
    """Save a DSPy program's JSON state (DSPy's `program.load(path)` reads it)."""
    content = call("GET", f"/api/models/{model_id}/program")
    output.write_text(json.dumps(content, indent=1) if isinstance(content, dict) else content.decode())
    typer.echo(f"saved {model_id} to {output}")


@models_app.command("load")
def models_load(path: Path, model: Annotated[str, typer.Option(help="the chat model it runs on")],
                suffix: str | None = None, json_: JsonOpt = False):
    """Import a DSPy program's JSON state as a new model."""
    JSON_OUT["on"] = json_
    try:
        state = json.loads(_file(path))
    except ValueError:
        raise Fail(f"{path} is not JSON", 2) from None
    m = call("POST", "/api/programs", json={"model": model, "program": state, "suffix": suffix})
    out(m, m["id"])


@models_app.command("promote")
def models_promote(alias: str, model: str, reason: Annotated[str, typer.Option(help="why (kept in the log)")],
                   json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    a = call("POST", f"/api/aliases/{alias}", json={"model": model, "reason": reason})
    out(a, f"{alias} -> {a['model']} (was {a['previous']})")


@models_app.command("history")
def models_history(model_id: str, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    data = call("GET", f"/api/models/{model_id}/history")["data"]
    out(data, "\n".join(f"{e['at']}  {e['type']:<18} {e.get('change') or ''} {e['actor'] or ''} "
                        f"{e['reason'] or ''}".rstrip() for e in data))


@models_app.command("lineage")
def models_lineage(model_id: str, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    g = call("GET", f"/api/models/{model_id}/lineage")
    out(g, "\n".join(f"{e['from']} --{e['kind']}--> {e['to']}" for e in g["edges"]))


@app.command("registry")
def registry(as_of: Annotated[str, typer.Option("--as-of", help="an ISO time or a global position")],
             json_: JsonOpt = False):
    """Every model and alias as they stood at a time or position."""
    JSON_OUT["on"] = json_
    r = call("GET", "/api/registry", params={"as_of": as_of})
    lines = [f"as of position {r['as_of']['position']} ({r['as_of']['time']})"]
    lines += [f"  alias {a['alias']} -> {a['model']}" for a in r["aliases"]]
    lines += [f"  model {m['id']} ({m['backend']})" for m in r["models"]]
    out(r, "\n".join(lines))


# ---- chat, docs ----------------------------------------------------------------------------------------
def _ask(client, model: str, messages: list[dict[str, str]], retrieval: bool, max_tokens: int) -> str:
    body = {"model": model, "messages": messages, "stream": True, "retrieval": retrieval, "max_tokens": max_tokens}
    parts, sources = [], []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code >= 400:
            r.read()
            try:
                raise Fail(f"{r.status_code}: {r.json()['error']['message']}")
            except (ValueError, KeyError):
                raise Fail(f"{r.status_code}: {r.text[:300]}") from None
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            sources = chunk.get("sources") or sources
            for ch in chunk.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ""
                parts.append(piece)
                typer.echo(piece, nl=False)
    typer.echo()
    for i, s in enumerate(sources, 1):
        typer.echo(f"  [{i}] {s['title']} (chunk {s['chunk']}, score {s['score']})")
    return "".join(parts)


@app.command("chat")
def chat(question: Annotated[str | None, typer.Argument(help="one question; none: an interactive session")] = None,
         model: str = "tutor", retrieval: bool = True, max_tokens: int = 256):
    """Ask the tutor (streamed, with its sources)."""
    with _client() as c:
        if question:
            _ask(c, model, [{"role": "user", "content": question}], retrieval, max_tokens)
            return
        messages: list[dict[str, str]] = []
        while True:
            try:
                line = input("> ")
            except EOFError:
                return
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": _ask(c, model, messages, retrieval, max_tokens)})


@docs_app.command("add")
def docs_add(path: Path, title: str | None = None, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    data = {"title": title} if title else {}
    d = call("POST", "/api/documents", files={"file": (path.name, _file(path))}, data=data)
    out(d, f"{d['id']}  {d['title']}  {d['status']}")


@docs_app.command("list")
def docs_list(json_: JsonOpt = False):
    show_list("/api/documents", ["id", "title", "status", "n_chunks"], json_)


@docs_app.command("delete")
def docs_delete(document_id: str, json_: JsonOpt = False):
    JSON_OUT["on"] = json_
    out(call("DELETE", f"/api/documents/{document_id}"), f"deleted {document_id}")


# ---- admin (HTTP) --------------------------------------------------------------------------------------
@admin_app.command("events")
def admin_events(after: int = 0, limit: int = 100, stream: str | None = None,
                 type_: Annotated[str | None, typer.Option("--type")] = None):
    """The audit log as JSON lines."""
    params = {k: v for k, v in (("after", after), ("limit", limit), ("stream", stream), ("type", type_)) if v}
    for e in call("GET", "/api/events", params=params)["data"]:
        typer.echo(json.dumps(e, default=str))


@admin_app.command("keys")
def admin_keys(role: str = "trainer", project: str | None = None, name: str | None = None):
    """Create an API key (printed once)."""
    body = {k: v for k, v in (("role", role), ("project", project), ("name", name)) if v}
    out(call("POST", "/api/keys", json=body))


@admin_app.command("webhooks")
def admin_webhooks(action: Annotated[str, typer.Argument(help="list | create | delete")] = "list",
                   target: Annotated[str | None, typer.Argument(help="create: the URL; delete: the id")] = None,
                   event_type: Annotated[list[str] | None, typer.Option("--event-type")] = None):
    if action == "list":
        out(call("GET", "/api/webhooks")["data"])
    elif action == "create" and target:
        out(call("POST", "/api/webhooks", json={"url": target, **({"event_types": event_type} if event_type else {})}))
    elif action == "delete" and target:
        out(call("DELETE", f"/api/webhooks/{target}"))
    else:
        raise Fail("usage: tunelog admin webhooks [list | create URL | delete ID]", 2)


@admin_app.command("replay")
def admin_replay():
    """Rebuild every read model from the log on the server (operator)."""
    out(call("POST", "/api/admin/replay"))


@admin_app.command("verify")
def admin_verify():
    """Compare the live read models with a rebuild (operator); exit 1 on any difference."""
    r = call("POST", "/api/admin/verify")
    out(r)
    if r.get("differences"):
        raise typer.Exit(1)


# ---- operator commands (beside the database) -----------------------------------------------------------
def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _db() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        from eventlog.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(_data_dir() / "pg")
        if not pg.running():
            raise Fail("DATABASE_URL is not set and the embedded Postgres is not running (start scripts/serve)", 2)
        url = pg.url
    return url


@app.command("serve")
def serve():
    """Run the whole service (what scripts/serve runs)."""
    from eventlog.supervisor import main as run

    raise typer.Exit(run())


@app.command("migrate")
def migrate():
    """alembic upgrade head."""
    from eventlog.supervisor import migrate as run

    run(_db())


keys_app = typer.Typer(help="API keys, made beside the database (operator)", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(role: str = "trainer", project: str = "default", name: str | None = None):
    """Create a key and print it (shown once)."""
    from api.auth import new_key
    from eventlog.keys import register_key

    if role not in ("admin", "trainer", "viewer"):
        raise Fail("--role must be admin, trainer or viewer", 2)
    key = new_key()
    kid = register_key(_db(), key, role=role, project=project, name=name or role)
    typer.echo(json.dumps({"id": kid, "key": key, "role": role, "project": project}))


@app.command("replay")
def replay(verify_only: Annotated[bool, typer.Option("--verify", help="only compare: report the differences "
                                                      "of the live read models from a fresh replay")] = False):
    """Rebuild every read model from the log aside, then swap it in (reads go on); with --verify, only compare
    (exit 1 on any difference)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from eventlog.db import pool
    from eventlog.runner import replay as run
    from eventlog.runner import verify as check

    started = time.monotonic()
    with Progress(TextColumn("verifying" if verify_only else "replaying"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True, console=_stderr()) as bar:
        task = bar.add_task("events", total=None)
        result = (check if verify_only else run)(
            pool(_db()), progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"{'verified' if verify_only else 'replayed'} {result.get('events')} events in "
               f"{time.monotonic() - started:.1f} s ({result.get('events_per_second')} events/s); "
               f"{len(result['differences'])} difference(s)", err=True)
    typer.echo(json.dumps(result, default=str))
    if verify_only and result["differences"]:
        raise typer.Exit(1)


@app.command("verify")
def verify():
    """Rebuild aside and print how the live read models differ (exit 1 on any difference)."""
    from eventlog.db import pool
    from eventlog.runner import verify as run

    result = run(pool(_db()))
    typer.echo(json.dumps(result, default=str))
    if result["differences"]:
        raise typer.Exit(1)


@app.command("events")
def events(after: int = 0, limit: int = 100, stream: str | None = None):
    """Print the log as JSON lines (read from the database)."""
    from eventlog.db import pool
    from eventlog.store import EventStore

    for e in EventStore(pool(_db())).read_all(after, limit):
        if stream and e.stream_id != stream:
            continue
        typer.echo(json.dumps({"position": e.global_position, "stream": e.stream_id, "version": e.stream_version,
                               "type": e.type, "data": e.data, "metadata": e.metadata,
                               "recorded_at": e.recorded_at.isoformat()}))


def main(argv: list[str] | None = None) -> int:
    try:
        rc = app(args=argv, prog_name="tunelog", standalone_mode=False)
    except Fail as e:
        typer.echo(f"tunelog: {e}", err=True)
        return e.code
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
