"""Evals: templates, create/update validation, and the graders (no I/O, no model: fakes for generate/embed)."""
import copy

import pytest

from domain.errors import ValidationError
from domain.evals import check_template, render, string_check, template_refs, validate_eval, validate_eval_update
from eventlog.item_schema import ItemChecker, check_item_schema
from workers.graders import grade, parse_label, parse_score, similarity

# ------------------------------------------------------------------------------------------------ templates


def test_template_refs_in_order_with_whitespace_and_nesting():
    text = "Q: {{item.question}} / {{ item.meta.source }} / {{  sample.output_text }} {{item.choices.0}}"
    assert template_refs(text) == [("item", "question"), ("item", "meta", "source"),
                                   ("sample", "output_text"), ("item", "choices", "0")]
    assert template_refs("no tags {single} braces") == []
    assert template_refs("{{ bad-ref }} {{item.ok}}") == [("item", "ok")]


CTX = {"item": {"question": "2+2?", "n": 3, "x": 0.5, "flag": True, "none": None, "obj": {"a": [1, "é"]},
                "list": ["zero", "one"], "deep": {"er": {"est": "bottom"}}, "inject": "{{item.question}}"},
       "sample": {"output_text": "4", "output_json": {"answer": 4}}}


@pytest.mark.parametrize("template,expected", [
    ("{{item.question}}", "2+2?"),
    ("{{ item.deep.er.est }}", "bottom"),
    ("[{{item.missing}}][{{item.deep.nope.x}}][{{item.question.x}}]", "[][][]"),
    ("{{item.n}} {{item.x}} {{item.flag}}", "3 0.5 true"),
    ("{{item.none}}", "null"),
    ("{{item.obj}}", '{"a": [1, "é"]}'),
    ("{{item.list.1}} {{item.list.2}} {{item.list}}", 'one  ["zero", "one"]'),
    ("{{sample.output_text}} {{sample.output_json.answer}}", "4 4"),
    ("{{item.inject}}", "{{item.question}}"),  # values are not rendered again
    ("{{ not a ref }} {{x-y}}", "{{ not a ref }} {{x-y}}"),  # malformed tags stay as written
    ("{{other.question}}", ""),
    ("plain {braces} here", "plain {braces} here"),
])
def test_render(template, expected):
    assert render(template, CTX) == expected


def test_render_without_sample_and_format_tricks():
    ctx = {"item": {"a": "{0.__class__}"}, "sample": {}}
    assert render("{{sample.output_text}}|{{item.a}}", ctx) == "|{0.__class__}"
    assert render("{{item.__class__}}", {"item": {}}) == ""


@pytest.mark.parametrize("text", ["", "no templates", "{{item.a}}{{ item.b.c }}", "{{sample.output_text}}",
                                  "{{ sample.output_json.x }}", "{{sample.choices.0}}", "{{item}}",
                                  '{"json": {"single": 1} }'])
def test_check_template_accepts(text):
    check_template(text, "p", allow_sample=True)


@pytest.mark.parametrize("text,allow_sample,fragment", [
    ("{{item.a", True, "never closed"),
    ("item.a}}", True, "without an opening"),
    ("x }} {{item.a}}", True, "without an opening"),
    ("{{ {{item.a}}", True, "never closed"),
    ("{{}}", True, "bad template reference '{{}}'"),
    ("{{   }}", True, "bad template reference '{{   }}'"),
    ("{{item.a-b}}", True, "bad template reference '{{item.a-b}}'"),
    ("{{item..a}}", True, "bad template reference '{{item..a}}'"),
    ("{{item.a[0]}}", True, "bad template reference '{{item.a[0]}}'"),
    ("{{ foo.bar }}", True, "namespace must be 'item' or 'sample'"),
    ("{{sample.output_text}}", False, "'{{sample.output_text}}' uses the sample namespace"),
    ("{{sample.output}}", True, "the sample namespace has output_text"),
])
def test_check_template_refuses(text, allow_sample, fragment):
    with pytest.raises(ValidationError) as e:
        check_template(text, "testing_criteria[0].input", allow_sample=allow_sample)
    assert e.value.code == "invalid_template"
    assert e.value.param == "testing_criteria[0].input"
    assert fragment in e.value.message


def test_check_template_bounds_length():
    check_template("x" * 16384, "p", allow_sample=True)
    with pytest.raises(ValidationError) as e:
        check_template("x" * 16385, "p", allow_sample=True)
    assert e.value.code == "invalid_template"


# ---------------------------------------------------------------------------------------------- string check

@pytest.mark.parametrize("input,reference,operation,expected", [
    ("Paris", "Paris", "eq", True), ("Paris", "paris", "eq", False),
    ("Paris", "paris", "ne", True), ("Paris", "Paris", "ne", False),
    ("It is Paris.", "Paris", "like", True), ("It is paris.", "Paris", "like", False),
    ("IT IS PARIS.", "paris", "ilike", True), ("It is Rome.", "paris", "ilike", False),
    ("100%", "%", "like", True), ("abc", "a%", "like", False),  # substring, not SQL patterns
])
def test_string_check(input, reference, operation, expected):
    assert string_check(input, reference, operation) is expected


def test_string_check_unknown_operation():
    with pytest.raises(ValueError):
        string_check("a", "a", "regex")


# -------------------------------------------------------------------------------------------- validate_eval

SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"]}


def body(*criteria, **extra):
    return {"name": "qa", "data_source_config": {"type": "custom", "item_schema": SCHEMA},
            "testing_criteria": list(criteria) or [STRING], **extra}


STRING = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "eq"}
SIMILAR = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "evaluation_metric": "rouge_l", "pass_threshold": 0.6}
SCORE = {"type": "score_model", "name": "judge", "model": "judge-model",
         "input": [{"role": "system", "content": "Grade the answer."},
                   {"role": "user", "type": "message",
                    "content": {"type": "input_text", "text": "Q: {{item.question}} A: {{sample.output_text}}"}}],
         "range": [1, 10], "pass_threshold": 7, "sampling_params": {"temperature": 0, "seed": 1, "top_p": None}}
LABEL = {"type": "label_model", "name": "tone", "model": "judge-model",
         "input": [{"role": "developer", "content": "Classify."},
                   {"role": "user", "content": "{{sample.output_text}}"}],
         "labels": ["positive", "neutral", "negative"], "passing_labels": ["positive", "neutral"]}


def test_validate_eval_normalizes_every_grader_type():
    record = validate_eval(body(STRING, SIMILAR, SCORE, LABEL, metadata={"team": "nlp"}))
    assert record["name"] == "qa"
    assert record["metadata"] == {"team": "nlp"}
    assert record["data_source_config"] == {
        "type": "custom",
        "schema": {"type": "object", "properties": {"item": SCHEMA}, "required": ["item"]},
        "item_schema": SCHEMA, "include_sample_schema": False}
    assert record["testing_criteria"] == [
        STRING,
        {**SIMILAR},
        {"type": "score_model", "name": "judge", "model": "judge-model",
         "input": [{"type": "message", "role": "system", "content": "Grade the answer."},
                   {"type": "message", "role": "user", "content": "Q: {{item.question}} A: {{sample.output_text}}"}],
         "range": [1.0, 10.0], "pass_threshold": 7.0, "sampling_params": {"temperature": 0, "seed": 1}},
        {"type": "label_model", "name": "tone", "model": "judge-model",
         "input": [{"type": "message", "role": "developer", "content": "Classify."},
                   {"type": "message", "role": "user", "content": "{{sample.output_text}}"}],
         "labels": ["positive", "neutral", "negative"], "passing_labels": ["positive", "neutral"]},
    ]


def test_validate_eval_defaults():
    score = {k: v for k, v in SCORE.items() if k not in ("range", "pass_threshold", "sampling_params", "name")}
    plain = {k: v for k, v in STRING.items() if k != "name"}
    b = {"data_source_config": {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
         "testing_criteria": [plain, score]}
    record = validate_eval(b)
    assert record["name"] == "eval" and record["metadata"] == {}
    schema = record["data_source_config"]["schema"]
    assert schema["required"] == ["item", "sample"]
    assert schema["properties"]["item"] == SCHEMA
    assert set(schema["properties"]["sample"]["properties"]) == {"model", "choices", "output_text", "output_json",
                                                                 "output_tools"}
    assert record["data_source_config"]["include_sample_schema"] is True
    first, second = record["testing_criteria"]
    assert first["name"] == "string_check_0" and second["name"] == "score_model_1"
    assert second["range"] == [0.0, 1.0] and second["pass_threshold"] == 0.5 and second["sampling_params"] == {}


def test_validate_eval_does_not_modify_the_body():
    b = body(STRING, SCORE)
    before = copy.deepcopy(b)
    validate_eval(b)
    assert b == before


def refused(b, param, code=None, fragment=None):
    with pytest.raises(ValidationError) as e:
        validate_eval(b)
    assert e.value.param == param, e.value.message
    if code:
        assert e.value.code == code
    if fragment:
        assert fragment in e.value.message
    return e.value


@pytest.mark.parametrize("kind", ["logs", "stored_completions"])
def test_unsupported_data_source_configs(kind):
    b = body()
    b["data_source_config"] = {"type": kind, "metadata": {"usecase": "chat"}}
    refused(b, "data_source_config.type", "unsupported_data_source_config", "only 'custom'")


def test_data_source_config_refusals():
    refused({"testing_criteria": [STRING]}, "data_source_config", "missing_required_parameter")
    b = body()
    b["data_source_config"] = {"type": "custom"}
    refused(b, "data_source_config.item_schema", "missing_required_parameter")
    b["data_source_config"] = {"type": "custom", "item_schema": ["not", "an", "object"]}
    refused(b, "data_source_config.item_schema", "invalid_item_schema")
    b["data_source_config"] = {"type": "custom", "item_schema": {"description": "x" * 70000}}
    refused(b, "data_source_config.item_schema", "invalid_item_schema", "bytes")
    b["data_source_config"] = {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": "yes"}
    refused(b, "data_source_config.include_sample_schema", "invalid_type")
    b["data_source_config"] = {"type": "custom", "item_schema": SCHEMA, "extra": 1}
    refused(b, "data_source_config.extra", "unknown_parameter")


@pytest.mark.parametrize("kind", ["python", "multi"])
def test_unsupported_graders(kind):
    grader = {"type": kind, "name": "code", "source": "def grade(sample, item): return 1.0"}
    refused(body(STRING, grader), "testing_criteria[1].type", "unsupported_grader")


def test_criteria_refusals():
    refused(body(STRING, {**STRING, "name": "exact"}), "testing_criteria[1].name", "duplicate_name")
    refused(body(STRING, {**STRING, "name": "two", "weight": 2}), "testing_criteria[1].weight", "unknown_parameter",
            "weight")
    refused(body({**STRING, "type": "regex"}), "testing_criteria[0].type")
    refused(body({**STRING, "name": ""}), "testing_criteria[0].name")
    refused(body({**STRING, "name": "n" * 257}), "testing_criteria[0].name", "string_above_max_length")
    refused(body({**STRING, "operation": "startswith"}), "testing_criteria[0].operation")
    refused(body({k: v for k, v in STRING.items() if k != "reference"}), "testing_criteria[0].reference",
            "missing_required_parameter")
    refused(body({**SIMILAR, "evaluation_metric": "bertscore"}), "testing_criteria[0].evaluation_metric")
    refused(body({k: v for k, v in SIMILAR.items() if k != "pass_threshold"}), "testing_criteria[0].pass_threshold",
            "missing_required_parameter")
    refused(body({**SIMILAR, "pass_threshold": 1.5}), "testing_criteria[0].pass_threshold")
    refused(body({**SIMILAR, "pass_threshold": True}), "testing_criteria[0].pass_threshold")
    b = body()
    b["testing_criteria"] = []
    refused(b, "testing_criteria", "invalid_type")
    b["testing_criteria"] = [{**STRING, "name": f"g{i}"} for i in range(17)]
    refused(b, "testing_criteria", fragment="at most 16")
    refused({"data_source_config": body()["data_source_config"]}, "testing_criteria", "missing_required_parameter")


def test_template_errors_name_the_exact_param():
    refused(body(STRING, {**SIMILAR, "input": "{{sample.output_txt}}"}), "testing_criteria[1].input",
            "invalid_template", "{{sample.output_txt}}")
    refused(body(STRING, {**SIMILAR, "reference": "{{item.answer"}), "testing_criteria[1].reference",
            "invalid_template")
    score = copy.deepcopy(SCORE)
    score["input"][0]["content"] = "Grade {{ctx.answer}}"
    refused(body(STRING, SIMILAR, score), "testing_criteria[2].input[0].content", "invalid_template", "{{ctx.answer}}")
    score = copy.deepcopy(SCORE)
    score["input"][1]["content"]["text"] = "{{item.}}"
    refused(body(score), "testing_criteria[0].input[1].content.text", "invalid_template")
    label = copy.deepcopy(LABEL)
    label["input"][1]["content"] = [{"type": "input_text", "text": "ok "}, {"type": "input_text", "text": "{{x}}"}]
    refused(body(label), "testing_criteria[0].input[1].content[1].text", "invalid_template")


def test_content_parts_join_and_images_are_refused():
    label = copy.deepcopy(LABEL)
    label["input"][1]["content"] = ["A: ", {"type": "output_text", "text": "{{sample.output_text}}"}]
    assert validate_eval(body(label))["testing_criteria"][0]["input"][1]["content"] == "A: {{sample.output_text}}"
    label["input"][1]["content"] = [{"type": "input_image", "image_url": "https://example.com/x.png"}]
    refused(body(label), "testing_criteria[0].input[1].content[0].type", "unsupported_content")


def test_model_grader_refusals():
    def with_(base, **changes):
        return {**copy.deepcopy(base), **changes}
    refused(body(with_(SCORE, model="")), "testing_criteria[0].model")
    refused(body(with_(SCORE, input=[])), "testing_criteria[0].input", "invalid_type")
    refused(body(with_(SCORE, input=[{"role": "user", "content": "x"}] * 33)), "testing_criteria[0].input",
            fragment="at most 32")
    refused(body(with_(SCORE, input=[{"role": "tool", "content": "x"}])), "testing_criteria[0].input[0].role")
    refused(body(with_(SCORE, input=[{"role": "user", "content": "x", "name": "n"}])),
            "testing_criteria[0].input[0].name", "unknown_parameter")
    refused(body(with_(SCORE, input=[{"role": "user"}])), "testing_criteria[0].input[0].content",
            "missing_required_parameter")
    refused(body(with_(SCORE, range=[1])), "testing_criteria[0].range")
    refused(body(with_(SCORE, range=[5, 5])), "testing_criteria[0].range")
    refused(body(with_(SCORE, pass_threshold=11)), "testing_criteria[0].pass_threshold")
    refused(body(with_(SCORE, sampling_params={"temperature": 3})), "testing_criteria[0].sampling_params.temperature")
    refused(body(with_(SCORE, sampling_params={"max_tokens": 5})), "testing_criteria[0].sampling_params.max_tokens",
            "unknown_parameter")
    refused(body(with_(LABEL, labels=[])), "testing_criteria[0].labels", "invalid_type")
    refused(body(with_(LABEL, labels=["yes", "Yes"], passing_labels=["yes"])), "testing_criteria[0].labels[1]")
    refused(body(with_(LABEL, passing_labels=[])), "testing_criteria[0].passing_labels", "invalid_type")
    refused(body(with_(LABEL, passing_labels=["positive", "great"])), "testing_criteria[0].passing_labels[1]",
            fragment="'great' is not one of labels")
    refused(body(with_(LABEL, range=[0, 1])), "testing_criteria[0].range", "unknown_parameter")


def test_name_metadata_and_body_refusals():
    refused(body(name="n" * 257), "name", "string_above_max_length")
    refused(body(name=5), "name", "invalid_type")
    refused(body(metadata={f"k{i}": "v" for i in range(17)}), "metadata")
    refused(body(metadata={"k" * 65: "v"}), "metadata." + "k" * 65)
    refused(body(metadata={"k": "v" * 513}), "metadata.k")
    refused(body(metadata={"k": 1}), "metadata.k")
    refused(body(metadata=["k"]), "metadata", "invalid_type")
    refused(body(extra=True), "extra", "unknown_parameter")
    with pytest.raises(ValidationError):
        validate_eval(["not", "an", "object"])


def test_validate_eval_update():
    assert validate_eval_update({"name": "renamed"}) == {"name": "renamed"}
    assert validate_eval_update({"metadata": {"a": "b"}}) == {"metadata": {"a": "b"}}
    assert validate_eval_update({"metadata": None}) == {"metadata": {}}
    assert validate_eval_update({}) == {}
    for bad, param in [({"testing_criteria": []}, "testing_criteria"), ({"name": 3}, "name"),
                       ({"metadata": {"k": 2}}, "metadata.k"),
                       ({"data_source_config": {"type": "custom", "item_schema": {}}}, "data_source_config")]:
        with pytest.raises(ValidationError) as e:
            validate_eval_update(bad)
        assert e.value.param == param


# ------------------------------------------------------------------------------------------- item schemas

def test_check_item_schema():
    check_item_schema(SCHEMA)
    check_item_schema({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                       "properties": {"pattern": {"type": "string"}, "$ref": {"type": "string"}}})  # names, fine
    for bad, fragment in [({"type": "strin"}, "item_schema.type is not a valid JSON Schema"),
                          ({"properties": {"a": {"pattern": "^(a+)+$"}}}, "item_schema.properties.a.pattern is not "
                                                                         "supported"),
                          ({"patternProperties": {"^x": {"type": "string"}}}, "regular expressions can backtrack"),
                          ({"properties": {"a": {"$ref": "https://example.com/s.json"}}}, "references can expand"),
                          ({"$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}, {"$ref": "#/$defs/n"}]}}},
                           "item_schema.$defs.n.anyOf[0].$ref"),
                          ({"type": "array", "uniqueItems": True}, "compares every pair"),
                          ({"properties": {"a": {"enum": ["x" * 70000]}}}, "over 65536 bytes"),
                          ([], "must be a JSON Schema object")]:
        with pytest.raises(ValidationError) as e:
            check_item_schema(bad)
        assert e.value.code == "invalid_item_schema"
        assert e.value.param == "data_source_config.item_schema"
        assert fragment in e.value.message


def test_item_checker_never_raises_and_is_bounded_in_time():
    assert ItemChecker({"multipleOf": 0.1}).errors(10 ** 400) == [
        "item: could not be checked against the schema (OverflowError)"]
    checker = ItemChecker({"type": "object"})
    checker._spent = 11.0
    with pytest.raises(ValidationError) as e:
        checker.errors({})
    assert e.value.code == "item_schema_too_slow"


def test_item_checker_messages_best_first_at_most_five():
    checker = ItemChecker({"type": "object", "additionalProperties": False, "required": ["question", "answer"],
                           "properties": {"question": {"type": "string"}, "odd key": {"type": "integer"},
                                          "tags": {"type": "array", "items": {"type": "string"}}}})
    assert checker.errors({"question": "q", "answer": "a"}) == [
        "item: Additional properties are not allowed ('answer' was unexpected)"]
    assert checker.errors({"question": 3, "tags": ["x", 4], "odd key": "no", "extra": 1}) == [
        "item: Additional properties are not allowed ('extra' was unexpected)",  # ties keep the schema's order
        "item: 'answer' is a required property",
        "item.question: 3 is not of type 'string'",
        "item[\"odd key\"]: 'no' is not of type 'integer'",
        "item.tags[1]: 4 is not of type 'string'",
    ]
    many = ItemChecker({"type": "array", "items": {"type": "string"}})
    assert len(many.errors(list(range(20)))) == 5
    assert ItemChecker(SCHEMA).errors({"question": "q", "answer": "a"}) == []


def test_item_checker_details():
    any_of = ItemChecker({"anyOf": [{"type": "string"}, {"type": "object", "properties": {"a": {"type": "integer"}}}]})
    assert any_of.errors({"a": "x"}) == ["item.a: 'x' is not of type 'integer'"]
    assert ItemChecker({"type": "string", "format": "email"}).errors("not an email") == []  # formats not asserted
    long = ItemChecker({"type": "object", "properties": {"n": {"type": "integer"}}}).errors({"n": "x" * 1000})[0]
    assert len(long) < 320 and long.endswith("is not of type 'integer'")
    dangling = ItemChecker({"$ref": "#/$defs/missing"}).errors(1)  # (check_item_schema refuses $ref first)
    assert len(dangling) == 1 and "cannot be resolved" in dangling[0]


# -------------------------------------------------------------------------------------------- similarity

OUT = "The quick brown fox jumps over the lazy dog"
REF = "A quick brown fox jumped over the lazy dog"
EXPECTED = {  # computed once with rapidfuzz 3.14 / nltk 3.10 / rouge-score 0.1.2
    "fuzzy_match": 0.9176470588235294, "bleu": 0.43167001068522526, "gleu": 0.5333333333333333,
    "meteor": 0.8880208333333333, "rouge_1": 0.8888888888888888, "rouge_2": 0.875, "rouge_3": 0.8571428571428571,
    "rouge_4": 0.8333333333333334, "rouge_5": 0.8, "rouge_l": 0.8888888888888888,
}


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_similarity_values(metric):
    assert similarity(metric, OUT, REF) == pytest.approx(EXPECTED[metric], abs=1e-9)


@pytest.mark.parametrize("metric", sorted(set(EXPECTED) - {"meteor"}))
def test_identical_texts_score_one(metric):
    assert similarity(metric, OUT, OUT) == pytest.approx(1.0)


def test_similarity_edges():
    # meteor's fragmentation penalty keeps identical texts just under 1
    assert similarity("meteor", "one two three four five", "one two three four five") == pytest.approx(0.996)
    # no WordNet: synonyms do not match (only "a" and "dog" do), stems do
    assert similarity("meteor", "a big dog", "a large dog") == pytest.approx(1 / 3)
    assert similarity("rouge_1", "jumps", "jumped") == 1.0
    # short identical texts: bleu (4-grams, smoothed) and rouge_2 stay below 1
    assert similarity("bleu", "Paris", "Paris") == pytest.approx(0.1778279410038923)
    assert similarity("rouge_2", "Paris", "Paris") == 0.0
    assert similarity("fuzzy_match", "Paris", "paris") == pytest.approx(0.8)  # case-sensitive
    assert similarity("rouge_1", "Tōkyō café", "tōkyō CAFÉ") == 1.0  # non-ASCII words count
    for metric in EXPECTED:
        assert similarity(metric, "", "  ") == 1.0
        assert similarity(metric, "", "text") == 0.0
        assert similarity(metric, "text", "") == 0.0
    assert similarity("bleu", "?!", "...") == 0.0 and similarity("gleu", "?!", " ?! ") == 1.0
    with pytest.raises(ValueError):
        similarity("bertscore", "a", "b")


def test_cosine_with_fake_embed():
    calls = []

    def embed(texts):
        calls.append(texts)
        return {"same": [[1.0, 0.0], [2.0, 0.0]], "orthogonal": [[1.0, 0.0], [0.0, 3.0]],
                "opposite": [[1.0, 0.0], [-1.0, 0.0]], "diagonal": [[1.0, 0.0], [1.0, 1.0]],
                "zero": [[0.0, 0.0], [1.0, 1.0]]}[texts[0]]

    assert similarity("cosine", "same", "ref", embed=embed) == pytest.approx(1.0)
    assert similarity("cosine", "orthogonal", "ref", embed=embed) == 0.0
    assert similarity("cosine", "opposite", "ref", embed=embed) == 0.0  # clipped
    assert similarity("cosine", "diagonal", "ref", embed=embed) == pytest.approx(2 ** -0.5)
    assert similarity("cosine", "zero", "ref", embed=embed) == 0.0
    assert calls[0] == ["same", "ref"]
    with pytest.raises(ValueError):
        similarity("cosine", "a", "b")
    with pytest.raises(ValueError):
        similarity("cosine", "a", "b", embed=lambda texts: [[1.0], [1.0, 2.0]])


# ------------------------------------------------------------------------------------------------ grading

ITEM = {"question": "Capital of France?", "answer": "Paris"}
SAMPLE = {"output_text": "Paris"}


def criterion(raw):
    return validate_eval(body(raw))["testing_criteria"][0]


def no_model(*args):
    raise AssertionError("no model call expected")


def test_grade_string_check_and_similarity():
    assert grade(criterion(STRING), ITEM, SAMPLE, generate=no_model, embed=no_model) == {
        "name": "exact", "type": "string-check-grader", "score": 1.0, "passed": True, "sample": None}
    assert grade(criterion(STRING), ITEM, {"output_text": "paris"})["passed"] is False
    assert grade(criterion(STRING), ITEM, None)["score"] == 0.0  # no sample: renders ""
    similar = criterion({**SIMILAR, "evaluation_metric": "rouge_1", "pass_threshold": 0.5})
    result = grade(similar, {"answer": "the capital is Paris"}, {"output_text": "Paris"})
    assert result == {"name": "close", "type": "text-similarity-grader", "score": pytest.approx(0.4),
                      "passed": False, "sample": None}
    cosine = criterion({**SIMILAR, "evaluation_metric": "cosine", "pass_threshold": 0.9})
    assert grade(cosine, ITEM, SAMPLE, embed=lambda texts: [[1, 0], [1, 0]])["passed"] is True


class FakeJudge:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def __call__(self, model, messages, sampling_params):
        self.calls.append((model, messages, sampling_params))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.mark.parametrize("reply,score,passed", [
    ("8", 8.0, True), ("Score: 6.5/10", 6.5, False), ('{"score": 7}', 7.0, True), ('{"result": "9.5"}', 9.5, True),
    ('```json\n{"score": 3}\n```', 3.0, False), ("<think>maybe 2, maybe 9</think>\n7", 7.0, True),
    ("42", 10.0, True), ("-3", 1.0, False), ('Reasoning... {"rating": 10}', 10.0, True),
])
def test_grade_score_model(reply, score, passed):
    judge = FakeJudge(reply)
    result = grade(criterion(SCORE), ITEM, SAMPLE, generate=judge)
    assert result["score"] == score and result["passed"] is passed
    assert result["name"] == "judge" and result["type"] == "score-model-grader" and "error" not in result
    ((model, messages, params),) = judge.calls
    assert model == "judge-model" and params == {"temperature": 0, "seed": 1}
    assert messages == [
        {"role": "system",
         "content": "Grade the answer.\n\nReply with only the score: a single number from 1 to 10, and nothing else."},
        {"role": "user", "content": "Q: Capital of France? A: Paris"}]
    assert result["sample"] == {"input": messages, "output": [{"role": "assistant", "content": reply}]}


@pytest.mark.parametrize("reply", ["no idea", "", "NaN", '{"score": "high"}'])
def test_grade_score_model_unparseable(reply):
    result = grade(criterion(SCORE), ITEM, SAMPLE, generate=FakeJudge(reply))
    assert result["score"] == 0.0 and result["passed"] is False
    assert result["error"]["code"] == "grader_output_unparseable"
    assert result["sample"]["output"] == [{"role": "assistant", "content": reply}]


def test_grade_score_model_default_range_and_instruction_first_without_system():
    raw = {k: v for k, v in SCORE.items() if k not in ("range", "pass_threshold")}
    raw["input"] = [{"role": "user", "content": "Rate {{sample.output_text}}"}]
    judge = FakeJudge("0.5")
    result = grade(criterion(raw), ITEM, SAMPLE, generate=judge)
    assert result["score"] == 0.5 and result["passed"] is True  # default threshold: the middle of [0, 1]
    assert judge.calls[0][1] == [
        {"role": "system", "content": "Reply with only the score: a single number from 0 to 1, and nothing else."},
        {"role": "user", "content": "Rate Paris"}]


@pytest.mark.parametrize("reply,label,passed", [
    ("positive", "positive", True), ("Negative.", "negative", False), ('{"label": "Neutral"}', "neutral", True),
    ("The tone is NEGATIVE, not positive.", "negative", False), ("<think>positive?</think>negative", "negative", False),
    ("non-negative overall", "negative", False),
])
def test_grade_label_model(reply, label, passed):
    judge = FakeJudge(reply)
    result = grade(criterion(LABEL), ITEM, SAMPLE, generate=judge)
    assert result["type"] == "label-model-grader" and "error" not in result
    assert result["passed"] is passed and result["score"] == (1.0 if passed else 0.0)
    assert result["sample"]["label"] == label
    assert judge.calls[0][1][0] == {
        "role": "developer",
        "content": 'Classify.\n\nReply with only one of these labels, exactly as written, and nothing else: '
                   '"positive", "neutral", "negative".'}
    assert judge.calls[0][1][1] == {"role": "user", "content": "Paris"}
    assert judge.calls[0][2] == {}


def test_parse_label_prefers_whole_words():
    assert parse_label("incorrect", ["correct", "incorrect"]) == "incorrect"
    assert parse_label("That is incorrect.", ["correct", "incorrect"]) == "incorrect"
    assert parse_label("I'd say correct", ["correct", "incorrect"]) == "correct"
    assert parse_label("verygood", ["good", "bad"]) == "good"  # substring as a last resort
    assert parse_label("nothing here", ["good", "bad"]) is None
    assert parse_score("no digits") is None and parse_score("1e400") is None


def test_grade_label_model_unparseable_and_errors_propagate():
    result = grade(criterion(LABEL), ITEM, SAMPLE, generate=FakeJudge("I cannot decide"))
    assert result["error"]["code"] == "grader_output_unparseable"
    assert result["score"] == 0.0 and result["passed"] is False
    with pytest.raises(TimeoutError):
        grade(criterion(LABEL), ITEM, SAMPLE, generate=FakeJudge(TimeoutError("judge down")))
    with pytest.raises(ValueError):
        grade(criterion(SCORE), ITEM, SAMPLE)  # no generate
    def embedder_down(texts):
        raise RuntimeError("embedder down")
    with pytest.raises(RuntimeError):
        grade(criterion({**SIMILAR, "evaluation_metric": "cosine"}), ITEM, SAMPLE, embed=embedder_down)
