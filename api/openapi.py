"""The OpenAPI document for the routes this server answers (kept beside the code that serves them).

Every operation lists its success response with the body's schema, and `default` for every other status:
each error is the one JSON shape {"error": {"code", "message", "param", "type"}} (DESIGN §3). The request
schemas carry the validators' bounds (lengths, ranges, enums), so a client generated from this document
sends what the server accepts. tests/security/test_schemathesis.py checks the live server against it.
"""
from __future__ import annotations

from typing import Any

from domain.configs import DEEPSPEED_STAGES, LORA_ONLY, MAX_TARGET_MODULES

NULLABLE_STR = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}
ERR = {"description": "an error (4xx for the client's, 5xx for a fault; 429 and 503 with Retry-After)",
       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def JSON(ref: str) -> dict[str, Any]:  # noqa: N802 - reads as a media type
    return {"application/json": {"schema": _ref(ref)}}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _list(item: str, **extra: Any) -> dict[str, Any]:
    return _obj(["object", "data", *extra], object={"const": "list"}, data={"type": "array", "items": _ref(item)},
                **extra)


def _op(summary: str, tag: str, ok: str = "200", returns: str | dict | None = None, body: dict | None = None,
        params: list | None = None, public: bool = False, body_required: bool = True) -> dict[str, Any]:
    if isinstance(returns, str):
        content: dict[str, Any] | None = JSON(returns)
    else:
        content = returns
    success: dict[str, Any] = {"description": "success"}
    if content:
        success["content"] = content
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {ok: success, "default": ERR}}
    if body:
        op["requestBody"] = {"required": body_required, "content": body}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _q(name: str, desc: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"},
            "description": desc}


def _limit(maximum: int) -> dict[str, Any]:
    return _q("limit", f"page size (1-{maximum})", {"type": "integer", "minimum": 1, "maximum": maximum})


def _p(name: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


ALIAS_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}
BUDGET = {"type": ["number", "null"], "minimum": 0, "maximum": 1e9,
          "description": "USD per calendar month (UTC) for delegated jobs' estimated cost; null: no budget"}
ROSTER = {"type": "array", "maxItems": 10000, "items": {"type": "string", "minLength": 1, "maxLength": 100},
          "description": "names redacted (with emails and phone numbers) from what leaves for a provider"}
ROSTER_SHOWN = {"type": ["array", "null"], "items": {"type": "string"},
                "description": "the roster (null for keys that are not the project's admin: they see the count)"}
JOB_STATUSES = ["validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled"]
# A server-sent event, as OpenAPI 3.1 tools read an event stream's schema (one event; 3.2's itemSchema)
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "JSON (a chat.completion.chunk, or a job event), or [DONE]"},
    "event": {"type": "string", "description": "job streams: job, end, reconnect or error"},
    "id": {"type": "string"}, "retry": {"type": "integer"}}}
SSE = {"text/event-stream": {"schema": SSE_EVENT}}


PROMOTION_EVAL = {"description": "the eval gate (docs/evals.md): a promotion needs the model's latest completed run "
                  "of the eval to pass min_pass_rate of its items on the criterion, and more of them than the "
                  "current target's with must_beat_current; null: no gate",
                  "oneOf": [{"type": "null"}, {"type": "object", "required": ["eval_id", "criterion"], "properties": {
                      "eval_id": {"type": "string"}, "criterion": {"type": "string"},
                      "must_beat_current": {"type": "boolean"}, "min_pass_rate": {"type": "number", "minimum": 0,
                                                                                  "maximum": 1},
                      "alias": {"type": "string"}, "data_source": {"type": "object"}}}]}
EVAL_METADATA = {"type": ["object", "null"], "maxProperties": 16,
                 "additionalProperties": {"type": "string", "maxLength": 512}}


def _int_range(lo: int, hi: int, nullable: bool = False, **extra: Any) -> dict[str, Any]:
    return {"type": ["integer", "null"] if nullable else "integer", "minimum": lo, "maximum": hi, **extra}


def _auto_or(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [{"const": "auto"}, schema]}


# OpenAI's three hyperparameters ("auto", or a value; null is "auto" too)
OPENAI_HP = {
    "n_epochs": _auto_or({"type": ["integer", "null"], "minimum": 1, "maximum": 50}),
    "batch_size": _auto_or({"type": ["integer", "null"], "minimum": 1, "maximum": 256}),
    "learning_rate_multiplier": _auto_or({"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 100}),
}
# tunelog's own (domain/configs.py), for local training only; under method.<type>.hyperparameters
EXTENSION_HP = {
    "lora": {"type": "boolean", "default": True,
             "description": "train LoRA adapters; false: full fine-tuning of every weight (then lora_r, lora_alpha, "
                            "lora_dropout and target_modules may not be given, and qlora may not be true)"},
    "lora_r": _int_range(1, 256, default=16, description="LoRA rank"),
    "lora_alpha": _int_range(1, 4096, description="LoRA scaling; default 2 * lora_r"),
    "lora_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.05},
    "target_modules": {"oneOf": [{"const": "all-linear"}, {
        "type": "array", "minItems": 1, "maxItems": MAX_TARGET_MODULES, "uniqueItems": True,
        "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.]{0,63}$"}}], "default": "all-linear",
        "description": "the modules LoRA adapts: every linear layer, or these module names"},
    "qlora": {"type": "boolean", "default": False,
              "description": "4-bit base weights (QLoRA); needs lora, a CUDA training queue and bitsandbytes"},
    "deepspeed": {"enum": [*DEEPSPEED_STAGES, None], "default": None, "description": "a DeepSpeed ZeRO stage"},
    "checkpoint_interval": _int_range(1, 1_000_000, nullable=True, description=(
        "steps between checkpoints; null: one at the end of each epoch")),
    "eval_interval": _int_range(1, 1_000_000, nullable=True, description=(
        "steps between evaluations (needs a validation_file); null: at each checkpoint")),
    "early_stopping_patience": _int_range(1, 1000, nullable=True, description=(
        "stop after this many evaluations without a better validation loss (needs a validation_file)")),
    "packing": {"type": "boolean", "default": False, "description": "pack several examples into each sequence"},
    "max_seq_len": _int_range(16, 131072, nullable=True, description=(
        "tokens per sequence, at most the model's context length; null: the server's default")),
}
# with lora false, the adapter options may not be given, and qlora may not be true
LORA_FALSE_RULE = {"if": {"required": ["lora"], "properties": {"lora": {"const": False}}},
                   "then": {"not": {"anyOf": [{"required": [name]} for name in LORA_ONLY]},
                            "properties": {"qlora": {"const": False}}}}
BETA = _auto_or({"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10,
                 "description": "DPO's beta (\"auto\": 0.1)"})
# The two dataset formats /v1/files accepts, one JSON object a line (documentation: no operation refers to them)
MESSAGE = _obj(["role"], role={"enum": ["system", "user", "assistant", "tool", "function"]},
               content={"type": "string"}, name={"type": "string"}, weight={"enum": [0, 1]},
               tool_calls={"type": "array"}, function_call={"type": "object"}, tool_call_id={"type": "string"})
ASSISTANT = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {"role": {"const": "assistant"}, "content": {"type": "string", "minLength": 1},
                   "name": {"type": "string"}}}}


def _method(name: str, hyperparameters: str) -> dict[str, Any]:
    return {"type": "object", "required": ["type"], "additionalProperties": False, "properties": {
        "type": {"const": name},
        name: {"type": ["object", "null"], "additionalProperties": False, "properties": {
            "hyperparameters": {"oneOf": [_ref(hyperparameters), {"type": "null"}]}}}}}


def schemas() -> dict[str, Any]:
    return {
        "Error": _obj(["error"], error=_obj(["message"], code=NULLABLE_STR, message={"type": "string"},
                                             param=NULLABLE_STR, type={"type": "string"})),
        # ---- files
        "File": _obj(["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
                     id={"type": "string"}, object={"const": "file"}, bytes={"type": "integer"},
                     created_at={"type": "integer"}, filename={"type": "string"}, purpose={"type": "string"},
                     status={"type": "string"}, status_details={"type": "null"}, expires_at=NULLABLE_INT),
        "FileList": _list("File", has_more={"type": "boolean"}, first_id=NULLABLE_STR, last_id=NULLABLE_STR),
        "FileDeleted": _obj(["id", "object", "deleted"], id={"type": "string"}, object={"const": "file"},
                            deleted={"const": True}),
        "FeedbackFile": {"allOf": [_ref("File"), _obj(["examples"], examples={"type": "integer"})]},
        # ---- fine-tuning
        "CreateJob": {
            "type": "object", "required": ["model", "training_file"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "minLength": 1,
                          "description": "a bundled model (smollm2-135m-instruct) or hf/<folder inside the model "
                                         "roots>"},
                "training_file": {"type": "string"}, "validation_file": NULLABLE_STR,
                "suffix": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1},
                "metadata": {"type": ["object", "null"], "maxProperties": 16,
                             "propertyNames": {"maxLength": 64},
                             "additionalProperties": {"type": "string", "maxLength": 512}},
                "method": {"oneOf": [{"type": "null"}, _ref("SupervisedMethod"), _ref("DpoMethod"),
                                     _ref("DspyMethod")],
                           "description": "supervised trains on a chat-format file, dpo on a preference-format "
                                          "one (training_file and validation_file alike); dspy optimizes the tutor "
                                          "program over the chat model `model` (any model or alias this project "
                                          "can chat with) on question/answer pairs (DspyExample or chat format)"},
                "hyperparameters": {"oneOf": [_ref("Hyperparameters"), {"type": "null"}],
                                    "description": "deprecated (OpenAI's): the supervised method's three; not "
                                                   "together with method"},
                "integrations": {"type": ["array", "null"], "maxItems": 0},
            },
            # not both method and the deprecated hyperparameters (null stands for absent)
            "not": {"required": ["method", "hyperparameters"], "properties": {
                "method": {"type": "object"}, "hyperparameters": {"type": "object"}}}},
        "Hyperparameters": {"type": "object", "additionalProperties": False, "properties": OPENAI_HP},
        "SupervisedMethod": _method("supervised", "SupervisedHyperparameters"),
        "DpoMethod": _method("dpo", "DpoHyperparameters"),
        "DspyMethod": {"type": "object", "required": ["type"], "additionalProperties": False, "properties": {
            "type": {"const": "dspy"}, "dspy": {"oneOf": [_ref("DspyOptions"), {"type": "null"}]}}},
        "DspyOptions": {"type": "object", "additionalProperties": False, "properties": {
            "optimizer": {"enum": ["bootstrap_few_shot", "bootstrap_few_shot_with_random_search", "mipro_v2",
                                   "gepa"], "default": "bootstrap_few_shot"},
            "metric": {"enum": ["exact_match", "contains", "f1", "semantic_f1", "llm_judge"], "default": "contains"},
            "judge_model": {"type": ["string", "null"], "maxLength": 256,
                            "description": "the model that judges (llm_judge: required; semantic_f1: optional)"},
            "auto": {"enum": ["light", "medium", "heavy", None], "description": "mipro_v2 and gepa only"},
            "max_bootstrapped_demos": _int_range(0, 16, description="default 4"),
            "max_labeled_demos": _int_range(0, 16, description="default 4"),
            "num_candidate_programs": _int_range(1, 32, nullable=True, description=(
                "random search: candidates besides DSPy's three baselines (default 4); mipro_v2 with auto null")),
            "num_trials": _int_range(1, 200, nullable=True, description="mipro_v2 with auto null"),
            "seed": _int_range(0, 2**31 - 1, nullable=True, description="the job's seed when not given"),
            "time_budget_s": _int_range(10, 86400, nullable=True, description=(
                "stop the search after this long; the best candidate so far is the result")),
            "max_tokens": _int_range(16, 1024, description="the cap on each LM call's output (default 128)")}},
        "DspyExample": {**_obj(["question", "answer"], question={"type": "string", "minLength": 1},
                               answer={"type": "string", "minLength": 1},
                               context={"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 50,
                                                                        "items": {"type": "string"}}]},
                               metadata={"type": "object"}),
                        "additionalProperties": False,
                        "description": "one line of a DSPy example file (dspy jobs; chat-format files work too)"},
        "ImportProgram": _obj(["model", "program"], model={"type": "string", "minLength": 1, "description": (
            "the chat model the program runs on")}, program={"type": "object", "description": (
            "DSPy's JSON state of the tutor program (GET /api/models/{id}/program)")},
            suffix={"type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{1,64}$"}),
        "SupervisedHyperparameters": {"type": "object", "additionalProperties": False,
                                      "properties": {**OPENAI_HP, **EXTENSION_HP}, **LORA_FALSE_RULE},
        "DpoHyperparameters": {"type": "object", "additionalProperties": False,
                               "properties": {**OPENAI_HP, "beta": BETA, **EXTENSION_HP}, **LORA_FALSE_RULE},
        "ChatExample": {**_obj(["messages"], messages={"type": "array", "minItems": 1, "items": MESSAGE},
                               tools={"type": "array"}, functions={"type": "array"},
                               parallel_tool_calls={"type": "boolean"}, metadata={"type": "object"}),
                        "additionalProperties": False,
                        "description": "one line of a chat-format file (supervised): at least one assistant "
                                       "message"},
        "PreferenceExample": {**_obj(["input", "preferred_output", "non_preferred_output"],
                                     input={**_obj(["messages"], messages={"type": "array", "minItems": 1,
                                                                           "items": MESSAGE},
                                                   tools={"type": "array"}, parallel_tool_calls={"type": "boolean"}),
                                            "additionalProperties": False},
                                     preferred_output=ASSISTANT, non_preferred_output=ASSISTANT),
                              "additionalProperties": False,
                              "description": "one line of a preference-format file (OpenAI's, for dpo): the "
                                             "conversation so far, a preferred and a non-preferred answer"},
        "Job": _obj(
            ["id", "object", "created_at", "model", "status", "training_file", "hyperparameters", "method"],
            id={"type": "string"}, object={"const": "fine_tuning.job"}, created_at={"type": "integer"},
            error={"oneOf": [{"type": "null"}, _obj(["message"], code=NULLABLE_STR, message={"type": "string"},
                                                    param=NULLABLE_STR)]},
            fine_tuned_model=NULLABLE_STR, finished_at=NULLABLE_INT, hyperparameters={
                "type": "object", "description": "the resolved values: every hyperparameter of the method, "
                                                 "nothing \"auto\" (jobs created before the extensions have "
                                                 "OpenAI's three only)"},
            model={"type": "string"}, organization_id={"type": "string"}, result_files={"type": "array"},
            seed=NULLABLE_INT, status={"enum": JOB_STATUSES}, trained_tokens=NULLABLE_INT,
            training_file={"type": "string"}, validation_file=NULLABLE_STR, estimated_finish=NULLABLE_INT,
            integrations={"type": "array"}, metadata={"type": ["object", "null"]}, method={"type": "object"},
            user_provided_suffix=NULLABLE_STR),
        "JobList": _list("Job", has_more={"type": "boolean"}),
        "JobEvent": _obj(["id", "object", "created_at", "level", "message", "type"],
                         id={"type": "string"}, object={"const": "fine_tuning.job.event"},
                         created_at={"type": "integer"}, level={"type": "string"},
                         message={"type": "string"}, type={"enum": ["message", "metrics"]}, data={"type": "object"}),
        "JobEventList": _list("JobEvent", has_more={"type": "boolean"}),
        "Checkpoint": _obj(["id", "object", "created_at", "fine_tuned_model_checkpoint", "fine_tuning_job_id",
                            "metrics", "step_number"],
                           id={"type": "string"}, object={"const": "fine_tuning.job.checkpoint"},
                           created_at={"type": "integer"}, fine_tuned_model_checkpoint={"type": "string"},
                           fine_tuning_job_id={"type": "string"}, metrics={"type": "object"},
                           step_number={"type": "integer"}),
        "CheckpointList": _list("Checkpoint", has_more={"type": "boolean"}, first_id=NULLABLE_STR,
                                last_id=NULLABLE_STR),
        # ---- models
        "Model": _obj(["id", "object", "created", "owned_by", "kind"],
                      id={"type": "string"}, object={"const": "model"}, created={"type": "integer"},
                      owned_by={"type": "string"},
                      kind={"enum": ["base", "fine-tuned", "dspy-program", "remote", "alias"]},
                      target={"type": "string"}, root={"type": "string"}, parent={"type": "string"},
                      job_id=NULLABLE_STR, lineage={"type": "object"}),
        "ModelList": _list("Model"),
        "ModelDeleted": _obj(["id", "object", "deleted"], id={"type": "string"}, object={"const": "model"},
                             deleted={"type": "boolean"}),
        "ExportRequest": {"type": "object", "additionalProperties": False, "properties": {
            "format": {"enum": ["safetensors", "gguf"], "default": "safetensors"}}},
        "ModelExport": {"type": "object", "required": ["object", "id", "model", "format", "status"], "properties": {
            "object": {"const": "model.export"}, "id": {"type": "string"}, "model": {"type": "string"},
            "format": {"enum": ["safetensors", "gguf"]}, "status": {"enum": ["queued", "succeeded", "failed"]}}},
        "ModelExportList": _list("ModelExport"),
        # ---- keys and the log
        "CreateKey": {"type": "object", "additionalProperties": True, "properties": {
            "role": {"enum": ["admin", "trainer", "viewer"]},
            "project": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "name": {"type": "string", "maxLength": 200}}},
        "ApiKey": _obj(["object", "id", "name", "role", "project", "created_at"],
                       object={"const": "api_key"}, id={"type": "string"},
                       key={"type": ["string", "null"], "description": "the key itself, in this response only "
                                                                       "(null in an idempotent replay)"},
                       key_redacted={"type": "boolean"}, name={"type": "string"}, role={"type": "string"},
                       project={"type": "string"}, created_at={"type": "integer"}),
        "ApiKeyInfo": _obj(["id", "name", "role", "project", "created_at", "revoked"],
                           id={"type": "string"}, name={"type": "string"}, role={"type": "string"},
                           project={"type": "string"}, created_at={"type": "integer"}, revoked={"type": "boolean"}),
        "ApiKeyList": _list("ApiKeyInfo"),
        "ApiKeyRevoked": _obj(["object", "id", "revoked"], object={"const": "api_key"}, id={"type": "string"},
                              revoked={"const": True}),
        "LogEvent": _obj(["global_position", "stream_id", "stream_version", "type", "data", "metadata",
                          "recorded_at"],
                         global_position={"type": "integer"}, stream_id={"type": "string"},
                         stream_version={"type": "integer"}, type={"type": "string"}, data={"type": "object"},
                         metadata={"type": "object"}, recorded_at={"type": "string"}),
        "AuditLog": _list("LogEvent", next_after={"type": "integer"}),
        "CreateWebhook": {**_obj(["url"], url={"type": "string", "format": "uri"},
                                 event_types={"type": "array", "minItems": 1, "items": {"enum": [
                                     "job.created", "job.started", "job.paused", "job.succeeded", "job.failed",
                                     "job.cancelled", "model.registered", "model.deleted", "model.exported",
                                     "alias.promoted"]}},
                                 description={"type": "string"}), "additionalProperties": False},
        "Rebuild": _obj(["object"], object={"enum": ["replay", "verify"]}, actor={"type": "string"}),
        "DeadLetter": _obj(["projection", "global_position", "stream_id", "type", "attempts", "error", "parked"],
                           projection={"type": "string"}, global_position={"type": "integer"},
                           stream_id={"type": "string"}, type={"type": "string"}, attempts={"type": "integer"},
                           error={"type": "string"}, parked={"type": "boolean"},
                           first_failed_at={"type": "string"}, last_failed_at={"type": "string"}),
        "DeadLetters": _list("DeadLetter"),
        # ---- knowledge base
        "CreateDocument": _obj(["title", "text"], title={"type": "string", "minLength": 1, "pattern": "\\S"},
                               text={"type": "string", "minLength": 1, "pattern": "\\S"}),
        "UploadDocument": _obj(["file"], file={"type": "string", "format": "binary",
                                               "description": ".txt, .md or .pdf (at most 500 pages)"},
                               title={"type": "string"}),
        "Document": _obj(["id", "object", "title", "media_type", "bytes", "sha256", "status", "n_chunks",
                          "created_at"],
                         id={"type": "string"}, object={"const": "document"}, title={"type": "string"},
                         filename=NULLABLE_STR, media_type={"type": "string"}, bytes={"type": "integer"},
                         sha256={"type": "string"}, status={"enum": ["processing", "indexed", "failed"]},
                         n_chunks={"type": "integer"}, error={}, created_at={"type": "integer"},
                         indexed_at=NULLABLE_INT),
        "DocumentList": _list("Document"),
        "DocumentDeleted": _obj(["id", "object", "deleted"], id={"type": "string"}, object={"const": "document"},
                                deleted={"const": True}),
        "Chunk": _obj(["idx", "text", "char_start", "char_end"], idx={"type": "integer"}, text={"type": "string"},
                      char_start={"type": "integer"}, char_end={"type": "integer"}),
        "ChunkList": _list("Chunk", has_more={"type": "boolean"}, next_after=NULLABLE_INT),
        # ---- registry
        "Promote": _obj(["model", "reason"], model={"type": "string", "minLength": 1},
                        reason={"type": "string", "minLength": 1, "pattern": "\\S"}),
        "Alias": _obj(["object", "alias", "model"], object={"const": "alias"}, alias={"type": "string"},
                      model={"type": "string"}, previous=NULLABLE_STR, reason={"type": "string"},
                      updated_at=NULLABLE_INT),
        "AliasList": _list("Alias"),
        "AliasChange": _obj(["model", "previous", "reason", "actor", "at", "position"],
                            model={"type": "string"}, previous=NULLABLE_STR, reason={"type": "string"},
                            actor=NULLABLE_STR, at=NULLABLE_INT, position=NULLABLE_INT),
        "AliasHistory": _list("AliasChange", alias={"type": "string"}),
        "SettingsPatch": {"type": "object", "additionalProperties": False, "properties": {
            "store_chat_text": {"type": "boolean"}, "promotion_requires_better_eval": {"type": "boolean"},
            "local_only": {"type": "boolean"}, "monthly_budget_usd": BUDGET, "pii_roster": ROSTER,
            "promotion_eval": PROMOTION_EVAL, "auto_evaluate": {"type": "boolean"},
            "auto_promote": {"type": "boolean"}}},
        "Settings": _obj(["object", "project", "store_chat_text", "promotion_requires_better_eval", "local_only",
                          "monthly_budget_usd", "pii_roster", "version"],
                         object={"const": "settings"}, project={"type": "string"},
                         store_chat_text={"type": "boolean"}, promotion_requires_better_eval={"type": "boolean"},
                         local_only={"type": "boolean"}, monthly_budget_usd=BUDGET, pii_roster=ROSTER_SHOWN,
                         pii_roster_count={"type": "integer"}, version={"type": "integer"},
                         promotion_eval=PROMOTION_EVAL, auto_evaluate={"type": "boolean"},
                         auto_promote={"type": "boolean"}),
        "RerunRequest": {"type": "object", "additionalProperties": False, "required": ["model"], "properties": {
            "model": {"type": "string", "description": "the model (or provider/model) the spec is re-run on"},
            "suffix": NULLABLE_STR, "seed": NULLABLE_INT, "metadata": {"type": ["object", "null"]},
            "method": {"type": "object"}, "hyperparameters": {"type": "object"}}},
        # ---- chat
        "ChatMessage": _obj(["role"], role={"enum": ["system", "developer", "user", "assistant", "tool"]},
                            content={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}},
                                               {"type": "null"}]}),
        "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["tutor"]},
            "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": _ref("ChatMessage")},
            "stream": {"type": "boolean"}, "stream_options": {"type": ["object", "null"]},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2048},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 2048},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "n": {"const": 1}, "seed": NULLABLE_INT,
            "retrieval": {"oneOf": [{"type": "boolean"}, {"type": "object", "properties": {
                "enabled": {"type": "boolean"}, "top_k": {"type": "integer", "minimum": 1, "maximum": 20}}}]}}},
        "ChatCompletion": _obj(["id", "object", "created", "model", "choices", "usage"],
                               id={"type": "string"}, object={"const": "chat.completion"},
                               created={"type": "integer"}, model={"type": "string"},
                               choices={"type": "array", "items": _obj(
                                   ["index", "message", "finish_reason"], index={"type": "integer"},
                                   message=_obj(["role", "content"], role={"const": "assistant"},
                                                content={"type": "string"}),
                                   finish_reason=NULLABLE_STR)},
                               usage=_obj(["prompt_tokens", "completion_tokens", "total_tokens"],
                                          prompt_tokens={"type": "integer"}, completion_tokens={"type": "integer"},
                                          total_tokens={"type": "integer"}),
                               sources={"type": "array", "items": {"type": "object"}},
                               tunelog={"type": "object"}),
        "ChatAnswers": _list("ChatAnswer"),
        "ChatAnswer": _obj(["id", "model", "created_at"], id={"type": "string"}, model={"type": "string"},
                           alias=NULLABLE_STR, created_at={"type": "integer"}),
        "GiveFeedback": _obj(["chat_id", "rating"], chat_id={"type": "string"},
                             rating={"type": "integer", "minimum": 1, "maximum": 5},
                             corrected_answer={"type": ["string", "null"]}, comment={"type": ["string", "null"]},
                             messages={"type": "array", "items": {"type": "object"}}),
        "Feedback": _obj(["object", "id", "chat_id", "rating", "approved"], object={"const": "chat.feedback"},
                         id={"type": "string"}, chat_id={"type": "string"}, project={"type": "string"},
                         rating={"type": "integer"}, comment=NULLABLE_STR, corrected_answer=NULLABLE_STR,
                         approved={"type": "boolean"}),
        "FeedbackApproved": _obj(["object", "id", "approved"], object={"const": "chat.feedback"},
                                 id={"type": "string"}, approved={"const": True}),
        "FeedbackItem": _obj(
            ["object", "id", "chat_id", "rating", "approved", "rejected", "created_at"],
            object={"const": "chat.feedback"}, id={"type": "string"}, chat_id={"type": "string"},
            model={**NULLABLE_STR, "description": "the model that answered (where the project stores chat records)"},
            rating={"type": "integer"}, comment=NULLABLE_STR, corrected_answer=NULLABLE_STR,
            messages={"type": ["array", "null"], "items": {"type": "object"},
                      "description": "the conversation the correction is about"},
            answer={**NULLABLE_STR, "description": "the model's answer that the correction replaces"},
            approved={"type": "boolean"}, rejected={"type": "boolean"}, reviewed_by=NULLABLE_STR,
            reviewed_at=NULLABLE_INT, review_reason=NULLABLE_STR, actor={"type": "string"},
            created_at={"type": "integer"}),
        "FeedbackList": _list("FeedbackItem", has_more={"type": "boolean"}, first_id=NULLABLE_STR,
                              last_id=NULLABLE_STR),
        "RejectFeedback": {"type": "object", "additionalProperties": True, "properties": {
            "reason": {"type": ["string", "null"], "maxLength": 2000}}},
        "FeedbackRejected": _obj(["object", "id", "approved", "rejected"], object={"const": "chat.feedback"},
                                 id={"type": "string"}, approved={"const": False}, rejected={"const": True},
                                 reviewed_by=NULLABLE_STR, reviewed_at=NULLABLE_INT, review_reason=NULLABLE_STR,
                                 in_files={"type": "array", "items": {"type": "string"}, "description": (
                                     "this project's training files already built from this correction (they keep "
                                     "it: it is left out of files built from now on)")}),
        "JobEstimate": _obj(
            ["object", "backend", "steps", "estimated_seconds", "estimated_cost_usd", "basis"],
            object={"const": "fine_tuning.estimate"}, backend={"enum": ["local", "provider", "dspy"]},
            method={"enum": ["supervised", "dpo", "dspy"]},
            steps={**NULLABLE_INT, "description": "optimizer steps (local), evaluations (dspy with a fixed plan)"},
            n_epochs=NULLABLE_INT, batch_size=NULLABLE_INT, training_tokens=NULLABLE_INT, lm_calls=NULLABLE_INT,
            estimated_seconds=NULLABLE_INT, estimated_cost_usd={"type": ["number", "null"]},
            basis={"type": "string", "description": "how the numbers were reached, in one sentence"}),
        # ---- evaluations (OpenAI's Evals shapes; docs/evals.md)
        "Eval": _obj(["object", "id", "name", "data_source_config", "testing_criteria", "created_at"],
                     object={"const": "eval"}, id={"type": "string"}, name={"type": "string"},
                     data_source_config=_obj(["type", "schema"], type={"const": "custom"}, schema={"type": "object"}),
                     testing_criteria={"type": "array", "items": {"type": "object"}},
                     metadata={"type": ["object", "null"]}, created_at={"type": "integer"}),
        "EvalList": _list("Eval", has_more={"type": "boolean"}, first_id=NULLABLE_STR, last_id=NULLABLE_STR),
        "CreateEval": _obj(
            ["data_source_config", "testing_criteria"], name={"type": "string", "maxLength": 256},
            metadata=EVAL_METADATA,
            data_source_config=_obj(["type", "item_schema"], type={"const": "custom"},
                                    item_schema={"type": "object", "description": "a JSON Schema of each item"},
                                    include_sample_schema={"type": "boolean"}),
            testing_criteria={"type": "array", "minItems": 1, "maxItems": 16, "items": _obj(
                ["type"], type={"enum": ["string_check", "text_similarity", "score_model", "label_model"]},
                name={"type": "string"})}),
        "UpdateEval": _obj([], name={"type": "string", "maxLength": 256}, metadata=EVAL_METADATA),
        "EvalDeleted": _obj(["object", "deleted", "eval_id"], object={"const": "eval.deleted"},
                            deleted={"const": True}, eval_id={"type": "string"}),
        "CreateEvalRun": _obj(["data_source"], name={"type": "string", "maxLength": 256}, metadata=EVAL_METADATA,
                              data_source=_obj(["type", "source"], type={"enum": ["completions", "jsonl"]},
                                               source={"type": "object"}, model={"type": "string"},
                                               input_messages={"type": "object"},
                                               sampling_params={"type": "object"})),
        "EvalRun": _obj(
            ["object", "id", "eval_id", "name", "status", "model", "data_source", "result_counts",
             "per_testing_criteria_results", "per_model_usage", "error", "created_at", "report_url"],
            object={"const": "eval.run"}, id={"type": "string"}, eval_id={"type": "string"}, name={"type": "string"},
            status={"enum": ["queued", "in_progress", "completed", "failed", "canceled"]}, model={"type": "string"},
            data_source={"type": "object"}, metadata={"type": ["object", "null"]}, created_at={"type": "integer"},
            result_counts=_obj(["total", "passed", "failed", "errored"], total={"type": "integer"},
                               passed={"type": "integer"}, failed={"type": "integer"}, errored={"type": "integer"}),
            per_testing_criteria_results={"type": "array", "items": _obj(
                ["testing_criteria", "passed", "failed"], testing_criteria={"type": "string"},
                passed={"type": "integer"}, failed={"type": "integer"})},
            per_model_usage={"type": "array", "items": {"type": "object"}},
            error=_obj(["code", "message"], code={"type": "string"}, message={"type": "string"}),
            report_url={"type": "string"}),
        "EvalRunList": _list("EvalRun", has_more={"type": "boolean"}, first_id=NULLABLE_STR, last_id=NULLABLE_STR),
        "EvalOutputItem": _obj(
            ["object", "id", "run_id", "eval_id", "status", "datasource_item_id", "datasource_item", "results",
             "sample", "created_at"],
            object={"const": "eval.run.output_item"}, id={"type": "string"}, run_id={"type": "string"},
            eval_id={"type": "string"}, status={"enum": ["pass", "fail", "error"]},
            datasource_item_id={"type": "integer"}, datasource_item={"type": "object"},
            results={"type": "array", "items": _obj(["name", "score", "passed"], name={"type": "string"},
                                                    score={"type": "number"}, passed={"type": "boolean"})},
            sample={"type": "object"}, created_at={"type": "integer"}),
        "EvalOutputItemList": _list("EvalOutputItem", has_more={"type": "boolean"}, first_id=NULLABLE_STR,
                                    last_id=NULLABLE_STR),
        # ---- operations
        "Health": _obj(["status"], status={"enum": ["ok", "degraded", "unavailable"]}, postgres={"type": "string"},
                       redis={"type": "string"}, parts={"type": "object"}),
    }


def document() -> dict[str, Any]:
    job_id, file_id, doc_id = _p("job_id"), _p("file_id"), _p("document_id")
    alias = _p("alias", ALIAS_NAME)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tunelog", "version": "0.1.0",
                 "description": "Fine-tuning and serving an educational chatbot's models, OpenAI-compatible. "
                                "Every error is JSON {\"error\": {\"code\", \"message\", \"param\", \"type\"}}."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": schemas()},
        "security": [{"bearer": []}],
        "paths": {
            # ---- no key needed
            "/": {"get": _op("The web UI", "ui", returns={"text/html": {"schema": {"type": "string"}}},
                             public=True)},
            "/ui/{name}": {"get": _op("The web UI's files", "ui", params=[_p("name")], public=True,
                                      returns={"*/*": {"schema": {"type": "string"}}})},
            "/healthz": {"get": {**_op("Liveness and dependencies (503 with Retry-After when Postgres or Redis is "
                                       "unreachable)", "ops", returns="Health", public=True)}},
            "/metrics": {"get": _op("Prometheus metrics", "ops", returns={"text/plain": {"schema": {"type": "string"}}},
                                    public=True)},
            "/openapi.json": {"get": _op("This document", "ops", returns={"application/json": {"schema": {
                "type": "object"}}}, public=True)},
            # ---- OpenAI-shaped
            "/v1/files": {
                "get": _op("List files", "files", returns="FileList", params=[
                    _q("purpose", "filter"), _q("after", "cursor: a file id"), _limit(10000)]),
                "post": _op("Upload a JSONL training file", "files", returns="File", body={"multipart/form-data": {
                    "schema": {"type": "object", "required": ["file", "purpose"],
                               "properties": {"file": {"type": "string", "format": "binary", "description": (
                                   "JSONL, one example a line: chat format (ChatExample, for supervised jobs) "
                                   "or OpenAI's preference format (PreferenceExample, for dpo jobs), told by "
                                   "the first example; every bad line is reported with its number")},
                                              "purpose": {"enum": ["fine-tune", "evals"]}}}}}),
            },
            "/v1/files/{file_id}": {"get": _op("Retrieve a file", "files", returns="File", params=[file_id]),
                                    "delete": _op("Delete a file", "files", returns="FileDeleted", params=[file_id])},
            "/v1/files/{file_id}/content": {"get": _op(
                "File content", "files", params=[file_id],
                returns={"application/jsonl": {"schema": {"type": "string"}}})},
            "/v1/fine_tuning/jobs": {
                "post": _op("Create a fine-tuning job", "fine-tuning", returns="Job", body=JSON("CreateJob")),
                "get": _op("List jobs", "fine-tuning", returns="JobList", params=[
                    _q("after", "cursor: a job id"), _limit(100),
                    {**_q("metadata", "metadata filter: metadata[key]=value", {
                        "type": "object", "additionalProperties": {"type": "string"}}), "style": "deepObject",
                     "explode": True}]),
            },
            "/v1/fine_tuning/jobs/{job_id}": {"get": _op("Retrieve a job", "fine-tuning", returns="Job",
                                                         params=[job_id])},
            "/v1/fine_tuning/jobs/{job_id}/cancel": {"post": _op("Cancel a job", "fine-tuning", returns="Job",
                                                                 params=[job_id])},
            "/v1/fine_tuning/jobs/{job_id}/rerun": {"post": _op(
                "Re-run a job's spec (files, method, portable hyperparameters, seed, suffix, metadata) on another "
                "model or backend, e.g. a delegated job on a local model; lineage links the two (tunelog)",
                "fine-tuning", returns="Job", params=[job_id], body=JSON("RerunRequest"))},
            "/v1/fine_tuning/jobs/{job_id}/pause": {"post": _op(
                "Pause a job: a running job saves a checkpoint and stops (pausing, then paused); a queued one is "
                "paused at once", "fine-tuning", returns="Job", params=[job_id])},
            "/v1/fine_tuning/jobs/{job_id}/resume": {"post": _op(
                "Resume a paused job: queued again, it continues from its latest checkpoint", "fine-tuning",
                returns="Job", params=[job_id])},
            "/v1/fine_tuning/jobs/{job_id}/events": {"get": _op(
                "Job events, newest first", "fine-tuning", returns="JobEventList",
                params=[job_id, _q("after", "cursor: an event id (ftevent-<n>)"), _limit(100),
                        _q("type", "message or metrics", {"enum": ["message", "metrics"]})])},
            "/v1/fine_tuning/jobs/{job_id}/checkpoints": {"get": _op(
                "Job checkpoints", "fine-tuning", returns="CheckpointList",
                params=[job_id, _q("after", "cursor: a checkpoint id"), _limit(100)])},
            "/v1/models": {"get": _op("Base and fine-tuned models, and this project's aliases", "models",
                                      returns="ModelList")},
            "/v1/models/{model_id}": {
                "get": _op("Retrieve a model", "models", returns="Model", params=[_p("model_id")]),
                "delete": _op("Delete a fine-tuned model: its artifacts are removed, its history stays in the log "
                              "(409 while an alias points at it)", "models", returns="ModelDeleted",
                              params=[_p("model_id")])},
            "/api/models/{model_id}/export": {"post": _op(
                "Export a fine-tuned model: merged safetensors that plain transformers loads, optionally GGUF "
                "(done by a worker)", "models", ok="202", returns="ModelExport", body=JSON("ExportRequest"),
                params=[_p("model_id")], body_required=False)},
            "/api/models/{model_id}/exports": {"get": _op("A model's exports", "models", returns="ModelExportList",
                                                          params=[_p("model_id")])},
            "/api/models/{model_id}/exports/{export_id}/files/{name}": {"get": _op(
                "Download a file of a finished export", "models",
                returns={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                params=[_p("model_id"), _p("export_id"), _p("name")])},
            "/api/models/{model_id}/program": {"get": _op(
                "A DSPy program's JSON state (DSPy's `program.load(path)` reads it)", "models",
                returns={"application/json": {"schema": {"type": "object"}}}, params=[_p("model_id")])},
            "/api/programs": {"post": _op(
                "Import a DSPy program's JSON state as a model of kind dspy-program (checked: the tutor's fields, "
                "no unknown keys, no LM of its own, at most 256 KiB)", "models", ok="201", returns="Model",
                body=JSON("ImportProgram"))},
            "/v1/chat/completions": {"post": _op(
                "Chat (OpenAI shape; stream true/false) with retrieval over the knowledge base", "chat",
                body=JSON("ChatRequest"), returns={**JSON("ChatCompletion"), **SSE})},
            # ---- keys, the log, the operator's tools
            "/api/keys": {"post": _op("Create an API key (admin: its own project; operator: any)", "admin",
                                      ok="201", returns="ApiKey", body=JSON("CreateKey")),
                          "get": _op("List API keys (admin; the operator may pass project=NAME or *)", "admin",
                                     returns="ApiKeyList", params=[_q("project", "operator only")])},
            "/api/keys/{key_id}": {"delete": _op("Revoke an API key (admin)", "admin", returns="ApiKeyRevoked",
                                                 params=[_p("key_id")])},
            "/api/events": {"get": _op("Audit log: the project's streams in log order (readers other than its admin "
                                       "without chat text, key hashes or names; the operator: all)", "audit",
                                       returns="AuditLog", params=[
                                           _q("after", "position", {"type": "integer", "minimum": 0}),
                                           _limit(1000), _q("stream", "stream id"),
                                           _q("type", "an event type, or a comma-separated list"),
                                           _q("since", "ISO time"), _q("until", "ISO time")])},
            "/api/models/{model_id}/history": {"get": _op(
                "Every event that shaped a model (its job's submission and states, checkpoints, registration, "
                "exports, promotions and demotions, deletion), with actor, reason and time", "audit",
                returns={"application/json": {"schema": {"type": "object"}}}, params=[_p("model_id")])},
            "/api/models/{model_id}/lineage": {"get": _op(
                "A model's lineage as a graph: files -> job -> checkpoints -> model -> aliases -> chats -> feedback "
                "-> training files built from it -> next models; and the previous model of one trained from "
                "feedback", "audit", returns={"application/json": {"schema": {"type": "object"}}},
                params=[_p("model_id")])},
            "/api/registry": {"get": _op(
                "Every model and alias of the project as they stood at `as_of` (an ISO time or a global position), "
                "folded from the log", "audit", returns={"application/json": {"schema": {"type": "object"}}},
                params=[{**_q("as_of", "ISO time or global position"), "required": True}])},
            "/api/chats/{chat_id}": {"get": _op(
                "What produced a chat answer: model (kind, content hash), sampling settings, chunks with their "
                "document versions", "audit", returns={"application/json": {"schema": {"type": "object"}}},
                params=[_p("chat_id")])},
            "/api/webhooks": {
                "post": _op("Create a webhook (admin): job, model and alias events POSTed to `url` (a host the "
                            "operator allows), signed per Standard Webhooks; the secret is in this response only",
                            "webhooks", ok="201", returns={"application/json": {"schema": {"type": "object"}}},
                            body=JSON("CreateWebhook")),
                "get": _op("This project's webhooks (admin)", "webhooks",
                           returns={"application/json": {"schema": {"type": "object"}}})},
            "/api/webhooks/{webhook_id}": {
                "get": _op("A webhook and its latest delivery attempts (admin)", "webhooks",
                           returns={"application/json": {"schema": {"type": "object"}}},
                           params=[_p("webhook_id"), _limit(200)]),
                "delete": _op("Delete a webhook (admin)", "webhooks",
                              returns={"application/json": {"schema": {"type": "object"}}},
                              params=[_p("webhook_id")])},
            "/api/admin/replay": {"post": _op("Rebuild every read model from the log and swap it in (operator)",
                                              "admin", returns="Rebuild")},
            "/api/admin/verify": {"post": _op("Rebuild aside and compare with the live read models (operator)",
                                              "admin", returns="Rebuild")},
            "/api/admin/dead-letters": {"get": _op("Events a projection parked (operator)", "admin",
                                                   returns="DeadLetters")},
            # ---- knowledge base
            "/api/documents": {
                "post": _op("Add a document (multipart file .txt/.md/.pdf, or JSON {title, text})", "knowledge",
                            ok="201", returns="Document", body={**JSON("CreateDocument"), "multipart/form-data": {
                                "schema": _ref("UploadDocument")}}),
                "get": _op("List documents", "knowledge", returns="DocumentList", params=[_limit(1000)]),
            },
            "/api/documents/{document_id}": {
                "get": _op("Retrieve a document", "knowledge", returns="Document", params=[doc_id]),
                "delete": _op("Delete a document and its chunks", "knowledge", returns="DocumentDeleted",
                              params=[doc_id])},
            "/api/documents/{document_id}/chunks": {"get": _op(
                "A page of a document's chunks, in order", "knowledge", returns="ChunkList",
                params=[doc_id, _q("after", "the last chunk index of the previous page",
                                   {"type": "integer", "minimum": 0}), _limit(1000)])},
            # ---- registry
            "/api/aliases": {"get": _op("Aliases of this project", "registry", returns="AliasList")},
            "/api/aliases/{alias}": {
                "get": _op("An alias's target", "registry", returns="Alias", params=[alias]),
                "post": _op("Promote a model to the alias, with a reason", "registry", returns="Alias",
                            params=[alias], body=JSON("Promote"))},
            "/api/aliases/{alias}/history": {"get": _op("Every change of the alias", "registry",
                                                        returns="AliasHistory", params=[alias])},
            "/api/settings": {
                "get": _op("Project settings (the ETag is their version)", "registry", returns="Settings"),
                "put": _op("Change project settings (admin; If-Match: the version expected)", "registry",
                           returns="Settings", body=JSON("SettingsPatch")),
                "patch": _op("Change project settings (admin; If-Match: the version expected)", "registry",
                             returns="Settings", body=JSON("SettingsPatch"))},
            # ---- chat records and feedback
            "/api/chat/answers": {"get": _op("Which model answered what (admin)", "chat", returns="ChatAnswers",
                                             params=[_q("model", "filter"), _limit(1000)])},
            "/api/chat/feedback": {
                "post": _op("Rate an answer, optionally with a correction", "chat", ok="201", returns="Feedback",
                            body=JSON("GiveFeedback")),
                "get": _op("This project's feedback, newest first (admin, trainer): pending corrections (not yet "
                           "approved or rejected), approved, rejected or all", "chat", returns="FeedbackList",
                           params=[_q("status", "which feedback (default all)",
                                      {"enum": ["pending", "approved", "rejected", "all"]}),
                                   _q("after", "cursor: a feedback id"), _limit(100)])},
            "/api/chat/feedback/{feedback_id}/approve": {"post": _op(
                "Approve a correction for training (also one rejected before)", "chat", returns="FeedbackApproved",
                params=[_p("feedback_id")])},
            "/api/chat/feedback/{feedback_id}/reject": {"post": _op(
                "Reject a correction (admin, trainer): later training files built from feedback leave it out; an "
                "approved one may be rejected, and approved again (files already built stay as they were)", "chat",
                returns="FeedbackRejected", params=[_p("feedback_id")], body=JSON("RejectFeedback"),
                body_required=False)},
            "/api/fine_tuning/estimate": {"post": _op(
                "What a fine-tuning job with this body would take (steps, seconds, cost, and how they were "
                "reached), checked as creating it is (the same 4xx); appends nothing", "fine-tuning",
                returns="JobEstimate", body=JSON("CreateJob"))},
            "/api/datasets/from-feedback": {"post": _op("Build a fine-tune file from approved corrections", "chat",
                                                        returns="FeedbackFile")},
            "/api/jobs/{job_id}/stream": {"get": _op("A job's events as server-sent events", "fine-tuning",
                                                     params=[job_id], returns=SSE)},
            # ---- evaluations (OpenAI's Evals API)
            "/v1/evals": {
                "post": _op("Create an eval: a custom data source (item_schema) and testing criteria", "evals",
                            returns="Eval", body=JSON("CreateEval")),
                "get": _op("List evals", "evals", returns="EvalList", params=[
                    _q("after", "cursor: an eval id"), _limit(100),
                    _q("order", "asc or desc", {"enum": ["asc", "desc"]}),
                    _q("order_by", "created_at or updated_at", {"enum": ["created_at", "updated_at"]})])},
            "/v1/evals/{eval_id}": {
                "get": _op("Retrieve an eval", "evals", returns="Eval", params=[_p("eval_id")]),
                "post": _op("Update an eval's name and metadata", "evals", returns="Eval", params=[_p("eval_id")],
                            body=JSON("UpdateEval")),
                "delete": _op("Delete an eval (409 while it gates promotion)", "evals", returns="EvalDeleted",
                              params=[_p("eval_id")])},
            "/v1/evals/{eval_id}/runs": {
                "post": _op("Start a run: completions (tunelog samples a model) or jsonl (samples given); graded by a "
                            "cpu worker", "evals", returns="EvalRun", params=[_p("eval_id")],
                            body=JSON("CreateEvalRun")),
                "get": _op("List an eval's runs", "evals", returns="EvalRunList", params=[
                    _p("eval_id"), _q("after", "cursor: a run id"), _limit(100),
                    _q("order", "asc or desc", {"enum": ["asc", "desc"]}),
                    _q("status", "filter", {"enum": ["queued", "in_progress", "completed", "canceled", "failed"]})])},
            "/v1/evals/{eval_id}/runs/{run_id}": {
                "get": _op("Retrieve a run", "evals", returns="EvalRun", params=[_p("eval_id"), _p("run_id")]),
                "post": _op("Cancel a run (as the openai SDK sends it)", "evals", returns="EvalRun",
                            params=[_p("eval_id"), _p("run_id")]),
                "delete": _op("Runs are kept as the evidence of promotions: 409 run_kept", "evals", returns="EvalRun",
                              params=[_p("eval_id"), _p("run_id")])},
            "/v1/evals/{eval_id}/runs/{run_id}/cancel": {"post": _op(
                "Cancel a run: a queued one at once, a running one before its next item", "evals", returns="EvalRun",
                params=[_p("eval_id"), _p("run_id")])},
            "/v1/evals/{eval_id}/runs/{run_id}/output_items": {"get": _op(
                "A run's graded items: the item, the sample and every criterion's result", "evals",
                returns="EvalOutputItemList", params=[
                    _p("eval_id"), _p("run_id"), _q("after", "cursor: an output item id"), _limit(1000),
                    _q("order", "asc or desc", {"enum": ["asc", "desc"]}),
                    _q("status", "pass, fail or error", {"enum": ["pass", "fail", "error"]})])},
            "/v1/evals/{eval_id}/runs/{run_id}/output_items/{item_id}": {"get": _op(
                "Retrieve a graded item", "evals", returns="EvalOutputItem",
                params=[_p("eval_id"), _p("run_id"), _p("item_id")])},
        },
    }
