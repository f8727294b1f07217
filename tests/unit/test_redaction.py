"""Emails, phone numbers and roster names are redacted before data leaves for a provider; teaching material is not."""
import copy
import json
import random
import string

import pytest

from domain.redaction import Redaction, Redactor

ROSTER = ["Alice Smith", "Alice", "Bob", "José Álvarez", "O'Brien", "Zoë"]


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(ROSTER)


def redacted(text: str, roster: list[str] | None = None) -> str:
    return Redactor(ROSTER if roster is None else roster).redact_text(text)[0]


# emails

@pytest.mark.parametrize("email", [
    "alice@school.org",
    "alice.smith@school.org",
    "alice.smith+maths@school.org",
    "a_smith-2024@mail.school.org.uk",
    "Alice.Smith@School.ORG",
    "o'brien@school.ie",
    "202-555-0143@school.org",
    "pupil@xn--80ak6aa92e.com",
])
def test_an_email_address_is_replaced_by_its_placeholder(redactor, email):
    assert redactor.redact_text(f"Write to {email} today.") == ("Write to [EMAIL] today.", Redaction(emails=1))


def test_an_email_keeps_the_punctuation_around_it(redactor):
    assert redactor.redact_text("('alice@school.org'), <bob@x.io>; e-mail: carol@x.io.")[0] == \
        "('[EMAIL]'), <[EMAIL]>; e-mail: [EMAIL]."


def test_an_email_next_to_text_without_spaces_keeps_that_text(redactor):
    assert redactor.redact_text("联系alice@school.org谢谢")[0] == "联系[EMAIL]谢谢"


@pytest.mark.parametrize("text", ["x@localhost", "a@b.c", "@alice", "alice@", "me @ school . org", "user@@x.org"])
def test_text_that_is_not_a_full_email_address_is_kept(text):
    assert redacted(text, []) == text


# phone numbers

@pytest.mark.parametrize("phone", [
    "+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "(+44) 20 7946 0958",
    "+447700900123",
    "+44 7700 900123",
    "+1-202-555-0143",
    "+1 (202) 555-0143",
    "+1.202.555.0143",
    "+33 6 12 34 56 78",
    "(202) 555-0143",
    "(202)555-0143",
    "202-555-0143",
    "202.555.0143",
    "202 555 0143",
    "1-800-555-0199",
    "07700 900123",
    "020 7946 0958",
    "0161 496 0000",
    "01632 960123",
    "(020) 7946 0958",
    "06 12 34 56 78",
    "01.23.45.67.89",
])
def test_a_phone_number_is_replaced_by_its_placeholder(redactor, phone):
    assert redactor.redact_text(f"Call {phone} after school.") == ("Call [PHONE] after school.", Redaction(phones=1))


@pytest.mark.parametrize("text, expected", [
    ("tel:202-555-0143.", "tel:[PHONE]."),
    ("(+1-202-555-0143)", "([PHONE])"),
    ("Mum: 07700 900123, Dad: 07700 900456", "Mum: [PHONE], Dad: [PHONE]"),
    ("Phone\n020 7946 0958\n", "Phone\n[PHONE]\n"),
])
def test_a_phone_number_keeps_the_punctuation_around_it(redactor, text, expected):
    assert redactor.redact_text(text)[0] == expected


@pytest.mark.parametrize("text", [
    "07700900123",       # a bare digit run: a number, unless it starts with +
    "12345678901",
    "2025550143",
    "+1234567",          # too short to be an international number
    "+1234567890123456",  # too long (E.164 allows 15 digits)
    "0123 4567",         # too short to be a UK number
])
def test_a_digit_run_that_is_not_written_as_a_phone_is_kept(text):
    assert redacted(text, []) == text


# what teaching material holds is not mangled

@pytest.mark.parametrize("text", [
    "pi is about 3.14159",
    "3.14159265358979",
    "1234 + 5678 = 6912",
    "1234+5678=6912",
    "2+44207946095",
    "x = +3.14159265358",
    "+0.5 0.25 0.125 0.0625",
    "-12.5 + 7.25",
    "The Battle of Hastings was in 1066.",
    "1066 1215 1485 1588 1666",
    "2024-05-01",
    "01/05/2024 and 05.01.2024",
    "2024-05-01 10:30",
    "10:30",
    "10:30:45",
    "pages 10-20",
    "100-200-300",
    "Python 3.12.1",
    "version 10.0.19045.3803",
    "192.168.100.1",
    "$1,000,000",
    "£1 000 000 000",
    "1 234 567 890",
    "12.5% of 800 is 100",
    "ISBN 978-3-16-148410-0",
    "ISBN 978-1-56619-909-4",
    "ISBN 0-306-40615-2",
    "ISBN 9780306406157",
    "a 3x3 matrix: 1 2 3 / 4 5 6 / 7 8 9",
    "coordinates (51.5074, -0.1278)",
])
def test_educational_numbers_are_left_as_they_are(redactor, text):
    assert redactor.redact_text(text) == (text, Redaction())


# roster names

def test_a_roster_name_is_replaced_by_its_placeholder(redactor):
    assert redactor.redact_text("Well done, Bob!") == ("Well done, [NAME]!", Redaction(names=1))


def test_roster_names_are_matched_whatever_their_case(redactor):
    assert redactor.redact_text("bob, BOB and Bob; alice SMITH")[0] == "[NAME], [NAME] and [NAME]; [NAME]"


def test_a_roster_name_is_not_found_inside_a_longer_word(redactor):
    text = "Bobby went bobsleighing with Alicexample and Zoëlle; kebob, bob_x, bob2"
    assert redactor.redact_text(text) == (text, Redaction())


def test_the_longest_roster_name_is_replaced_as_one_name(redactor):
    assert redactor.redact_text("Alice Smith and Alice") == ("[NAME] and [NAME]", Redaction(names=2))


def test_a_shorter_name_is_found_where_the_longer_one_does_not_continue():
    r = Redactor(["Alice", "Alice Smithson"])
    assert r.redact_text("Alice Smith, Alice Smithson")[0] == "[NAME] Smith, [NAME]"


def test_a_roster_name_spans_any_whitespace_between_its_words(redactor):
    assert redactor.redact_text("Alice\n  Smith and Alice\u00a0Smith")[0] == "[NAME] and [NAME]"


@pytest.mark.parametrize("text", ["José Álvarez", "JOSÉ ÁLVAREZ", "josé álvarez", "Jose\u0301 A\u0301lvarez",
                                  "ZOË", "zoe\u0308"])
def test_unicode_roster_names_are_matched_in_any_case_and_either_encoding(redactor, text):
    assert redactor.redact_text(f"Ask {text}.")[0] == "Ask [NAME]."


def test_a_name_without_its_accent_is_a_different_name(redactor):
    assert redactor.redact_text("Jose Alvarez, Zoe") == ("Jose Alvarez, Zoe", Redaction())


def test_a_name_is_not_found_inside_an_accented_word():
    assert redacted("Jose\u0301", ["Jose"]) == "José"


def test_a_name_with_regex_special_characters_is_matched_literally():
    r = Redactor(["O'Brien", "A.J. (Tom) Lee", "Anne-Marie", "C++ Kid", "J*"])
    assert r.redact_text("O'Brien, A.J. (Tom) Lee, Anne-Marie, C++ Kid, J*")[0] == \
        "[NAME], [NAME], [NAME], [NAME], [NAME]"
    assert r.redact_text("AxJx (Tom) Lee, Anne Marie, JJJ, Brien")[0] == "AxJx (Tom) Lee, Anne Marie, JJJ, Brien"


def test_names_in_other_scripts_are_matched():
    r = Redactor(["Анна Иванова", "王伟"])
    assert r.redact_text("Анна Иванова и анна иванова; 王伟 says hi")[0] == "[NAME] и [NAME]; [NAME] says hi"


def test_a_roster_name_inside_an_email_goes_with_the_email(redactor):
    assert redactor.redact_text("alice.smith@school.org, Alice") == ("[EMAIL], [NAME]", Redaction(emails=1, names=1))


def test_a_placeholder_is_never_redacted_again():
    r = Redactor(["Name", "Email", "Phone"])
    assert r.redact_text("Name: Bob, Email: bob@x.io, Phone: 202-555-0143") == \
        ("[NAME]: Bob, [NAME]: [EMAIL], [NAME]: [PHONE]", Redaction(emails=1, phones=1, names=3))


def test_without_a_roster_only_emails_and_phones_are_redacted():
    assert Redactor().redact_text("Bob: bob@x.io, 202-555-0143") == ("Bob: [EMAIL], [PHONE]",
                                                                     Redaction(emails=1, phones=1))


def test_all_three_kinds_are_counted_together(redactor):
    text = "Alice Smith (alice@school.org, 07700 900123) and Bob (bob@school.org, +1-202-555-0143) met Zoë."
    out, found = redactor.redact_text(text)
    assert out == "[NAME] ([EMAIL], [PHONE]) and [NAME] ([EMAIL], [PHONE]) met [NAME]."
    assert found == Redaction(emails=2, phones=2, names=3)
    assert found.total == 7


def test_empty_text_is_returned_as_it_is(redactor):
    assert redactor.redact_text("") == ("", Redaction())


# the roster's bounds

def test_blank_roster_lines_are_ignored_and_names_are_stripped():
    r = Redactor(["", "   ", "\n", "  Bob \n"])
    assert r.n_names == 1
    assert r.redact_text("Bob") == ("[NAME]", Redaction(names=1))


def test_a_roster_of_10000_names_is_accepted_and_one_more_is_refused():
    assert Redactor([f"Pupil{i}" for i in range(10000)] + [""]).n_names == 10000
    with pytest.raises(ValueError) as e:
        Redactor([f"Pupil{i}" for i in range(10001)])
    assert str(e.value) == "the roster has more than 10000 names"


def test_a_roster_name_of_100_characters_is_accepted_and_one_of_101_is_refused():
    assert Redactor(["a" * 100]).redact_text("a" * 100)[0] == "[NAME]"
    with pytest.raises(ValueError) as e:
        Redactor(["Bob", "", " " + "a" * 101 + " "])
    assert str(e.value) == "roster name 3 is 101 characters long; at most 100 are allowed"


def test_a_roster_name_without_a_letter_is_refused():
    with pytest.raises(ValueError) as e:
        Redactor(["Bob", "-"])
    assert str(e.value) == "roster name 2 has no letter"


def test_a_roster_entry_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError) as e:
        Redactor(["Bob", None])  # type: ignore[list-item]
    assert str(e.value) == "roster name 2 is not a string"


def test_a_single_string_is_not_taken_for_a_roster_of_its_letters():
    with pytest.raises(TypeError) as e:
        Redactor("Alice Smith")
    assert str(e.value) == "roster must be an iterable of names, not a single string"


def test_the_roster_error_messages_do_not_quote_the_name():
    with pytest.raises(ValueError) as e:
        Redactor(["Secretname" * 11])
    assert "Secretname" not in str(e.value)


def test_deeply_nested_prefix_names_compile():
    r = Redactor(["a" * k for k in range(1, 101)] + [" ".join("b" * 50)])
    assert r.redact_text("a aaa " + "a" * 100 + " " + " ".join("b" * 50)) == \
        ("[NAME] [NAME] [NAME] [NAME]", Redaction(names=4))


def test_a_10000_name_roster_redacts_a_megabyte_of_text():
    rng = random.Random(7)

    def word(lo: int, hi: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))

    roster = [f"{word(3, 9).capitalize()} {word(3, 12).capitalize()}" for _ in range(9999)] + ["Bob"]
    words = [word(1, 9) for _ in range(170_000)]
    for i in range(0, len(words), 100):
        words[i] = "Bob"
    text = " ".join(words)
    assert len(text) > 1_000_000
    out, found = Redactor(roster).redact_text(text)
    assert found.names >= 1700 and out.count("[NAME]") == found.names
    assert "Bob" not in out


# the Redaction counts

def test_redactions_add_up_field_by_field():
    total = Redaction(1, 2, 3) + Redaction(emails=10, names=1)
    assert total == Redaction(emails=11, phones=2, names=4)
    assert total.total == 17
    assert sum([Redaction(1), Redaction(phones=1)], Redaction()) == Redaction(1, 1, 0)


def test_a_redaction_is_frozen_and_serialises_its_counts():
    found = Redaction(emails=1, phones=2, names=3)
    assert found.to_dict() == {"emails": 1, "phones": 2, "names": 3}
    with pytest.raises(AttributeError):
        found.emails = 5  # type: ignore[misc]


def test_a_redaction_does_not_add_to_other_types():
    with pytest.raises(TypeError):
        Redaction() + 1  # type: ignore[operator]


# examples

def chat() -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are a tutor for Alice Smith's class."},
            {"role": "user", "name": "pupil_7", "content": [
                {"type": "text", "text": "I'm Bob, bob@school.org, what is 1234 + 5678?"},
                {"type": "image_url", "image_url": {"url": "https://example.org/bob.png"}},
            ]},
            {"role": "assistant", "content": "6912, Bob.", "weight": 1},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        ],
        "metadata": {"pupil": "Bob"},
    }


def test_every_chat_message_content_is_redacted_and_the_rest_kept(redactor):
    out, found = redactor.redact_example(chat(), "chat")
    expected = chat()
    expected["messages"][0]["content"] = "You are a tutor for [NAME]'s class."
    expected["messages"][1]["content"][0]["text"] = "I'm [NAME], [EMAIL], what is 1234 + 5678?"
    expected["messages"][2]["content"] = "6912, [NAME]."
    assert out == expected
    assert found == Redaction(emails=1, names=3)


def test_redacting_an_example_leaves_the_input_unchanged(redactor):
    example = chat()
    before = copy.deepcopy(example)
    out, _ = redactor.redact_example(example, "chat")
    assert example == before
    out["metadata"]["pupil"] = "x"
    out["messages"][1]["content"][1]["image_url"]["url"] = "x"
    assert example == before


def test_every_preference_message_content_is_redacted(redactor):
    example = {
        "input": {"messages": [{"role": "user", "content": "Hi, I'm Zoë (07700 900123)."}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": "Hello Zoë!"}],
        "non_preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "Email zoe@x.io"}]}],
    }
    out, found = redactor.redact_example(example, "preference")
    assert out == {
        "input": {"messages": [{"role": "user", "content": "Hi, I'm [NAME] ([PHONE])."}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": "Hello [NAME]!"}],
        "non_preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "Email [EMAIL]"}]}],
    }
    assert found == Redaction(emails=1, phones=1, names=2)
    assert example["preferred_output"][0]["content"] == "Hello Zoë!"


def test_an_example_without_the_expected_shape_is_returned_unchanged(redactor):
    for example, fmt in [({"text": "Bob"}, "chat"), ({"messages": "Bob"}, "chat"), ({"messages": ["Bob"]}, "chat"),
                         ({"input": "Bob"}, "preference"), ({"preferred_output": [{"content": 3}]}, "preference")]:
        assert redactor.redact_example(example, fmt) == (example, Redaction())


def test_an_unknown_format_is_refused(redactor):
    with pytest.raises(ValueError) as e:
        redactor.redact_example({"messages": []}, "completion")
    assert str(e.value) == "fmt must be \"chat\" or \"preference\", got 'completion'"
    with pytest.raises(ValueError):
        redactor.redact_jsonl(b"", "completion")


# JSONL files

def test_a_jsonl_file_is_redacted_line_by_line_keeping_blank_lines(redactor):
    lines = [json.dumps(chat()), "", "   ", json.dumps({"messages": [{"role": "user", "content": "Zoë: 1066"}]}), ""]
    out, found = redactor.redact_jsonl("\n".join(lines).encode(), "chat")
    got = out.decode().split("\n")
    assert got[1:3] == ["", "   "] and got[4] == ""
    assert json.loads(got[0]) == redactor.redact_example(chat(), "chat")[0]
    assert got[3] == '{"messages": [{"role": "user", "content": "[NAME]: 1066"}]}'
    assert found == Redaction(emails=1, names=4)


def test_a_jsonl_file_keeps_non_ascii_text_unescaped_and_its_line_endings(redactor):
    data = '{"messages": [{"role": "user", "content": "Zoë, ½ + ¼ = ¾"}]}\r\n\r\n'.encode()
    out, found = redactor.redact_jsonl(b"\xef\xbb\xbf" + data, "chat")
    assert out == '{"messages": [{"role": "user", "content": "[NAME], ½ + ¼ = ¾"}]}\r\n\r\n'.encode()
    assert found == Redaction(names=1)


def test_a_jsonl_preference_file_is_redacted(redactor):
    line = {"input": {"messages": [{"role": "user", "content": "I'm Bob"}]},
            "preferred_output": [{"role": "assistant", "content": "Hi Bob"}],
            "non_preferred_output": [{"role": "assistant", "content": "Hi"}]}
    out, found = redactor.redact_jsonl(json.dumps(line).encode(), "preference")
    assert json.loads(out)["preferred_output"][0]["content"] == "Hi [NAME]"
    assert found == Redaction(names=2)


def test_a_lone_surrogate_is_written_escaped(redactor):
    out, _ = redactor.redact_jsonl(b'{"messages": [{"role": "user", "content": "Bob \\ud800"}]}', "chat")
    assert out == b'{"messages": [{"role": "user", "content": "[NAME] \\ud800"}]}'


def test_a_line_that_is_not_json_names_its_line_number(redactor):
    with pytest.raises(ValueError) as e:
        redactor.redact_jsonl(b'{"messages": []}\n\n{not json\n', "chat")
    assert str(e.value) == "line 3 is not valid JSON"


def test_a_line_that_is_not_an_object_names_its_line_number(redactor):
    with pytest.raises(ValueError) as e:
        redactor.redact_jsonl(b'{"messages": []}\n[1, 2]\n', "chat")
    assert str(e.value) == "line 2 is not a JSON object"


def test_a_file_that_is_not_utf8_names_its_line_number(redactor):
    with pytest.raises(ValueError) as e:
        redactor.redact_jsonl(b'{"messages": []}\n{"messages": "\xff"}\n', "chat")
    assert str(e.value) == "the file is not UTF-8 text (line 2)"


def test_an_empty_file_is_returned_empty(redactor):
    assert redactor.redact_jsonl(b"", "chat") == (b"", Redaction())
