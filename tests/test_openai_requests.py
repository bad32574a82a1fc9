"""How the `openai` backend writes constraints for each server flavour, and reads them back."""

import json

import jsonschema

from selfgen.backends.base import Constraint
from selfgen.backends.openai import constraint_body, unwrap

OBJECT = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}
CALLS = {"anyOf": [OBJECT, {"type": "object", "properties": {"m": {"type": "string"}}}]}


def test_vllm_gets_structured_outputs_never_guided_json():
    body = constraint_body("vllm", Constraint(choices=(" Yes", " No")), chat=False)
    assert body == {"extra_body": {"structured_outputs": {"choice": [" Yes", " No"]}}}
    body = constraint_body("vllm", Constraint(json_schema=OBJECT), chat=True)
    assert body == {"extra_body": {"structured_outputs": {"json": OBJECT}}}
    assert "guided_json" not in json.dumps(body)


def test_llamacpp_gets_a_grammar():
    body = constraint_body("llamacpp", Constraint(choices=(" Yes", " No")), chat=False)
    assert set(body) == {"extra_body"} and "root" in body["extra_body"]["grammar"]


def test_openai_choices_are_a_strict_object_and_come_back_as_the_choice():
    body = constraint_body("openai", Constraint(choices=("Yes", "No")), chat=True)
    spec = body["response_format"]["json_schema"]
    assert spec["strict"] is True and spec["schema"]["type"] == "object"
    jsonschema.validate({"answer": "Yes"}, spec["schema"])
    assert unwrap("openai", '{"answer": "No"}', Constraint(choices=("Yes", "No")), True) == "No"


def test_openai_schemas_whose_root_is_not_an_object_are_wrapped():
    constraint = Constraint(json_schema=CALLS)
    spec = constraint_body("openai", constraint, chat=True)["response_format"]["json_schema"]
    assert spec["schema"]["type"] == "object" and spec["strict"] is False
    jsonschema.validate({"answer": {"n": 3}}, spec["schema"])
    assert json.loads(unwrap("openai", '{"answer": {"n": 3}}', constraint, True)) == {"n": 3}
    # An object schema goes as it is, and its answer is not touched.
    spec = constraint_body("openai", Constraint(json_schema=OBJECT), True)["response_format"]
    assert spec["json_schema"]["schema"] == OBJECT
    assert unwrap("openai", '{"n": 1}', Constraint(json_schema=OBJECT), True) == '{"n": 1}'


def test_answers_that_do_not_fit_the_wrapper_are_left_for_the_parser():
    constraint = Constraint(choices=("Yes", "No"))
    assert unwrap("openai", "Yes, it is", constraint, True) == "Yes, it is"
    assert unwrap("openai", "[1, 2]", constraint, True) == "[1, 2]"
    assert constraint_body("none", constraint, True) == {}
    assert constraint_body("openai", constraint, chat=False) == {}
