"""The scorers' arithmetic and control flow with a scripted log-probability backend; the real
model scores in test_scorers_model.py."""

import math

import pytest

from selfgen.backends.base import Backend, BackendError, ContinuationLoss
from selfgen.scoring import Example, ScorerError, TraceExample, get_scorer
from selfgen.scoring.judge import DIGITS


class Losses(Backend):
    """Answers continuation_loss from `table(request) -> token log-probabilities`."""

    name = "losses"
    supports_continuation_loss = True

    def __init__(self, table):
        self.table = table
        self.seen = []

    def generate(self, requests):
        raise AssertionError("the scorer should not generate")

    def continuation_loss(self, requests):
        self.seen += requests
        out = []
        for r in requests:
            value = self.table(r)
            if isinstance(value, Exception):
                raise value
            out.append(ContinuationLoss(tuple(value)))
        return out


def test_ifd_is_the_conditioned_loss_over_the_direct_loss():
    def table(r):
        if r.messages == ():
            return [-2.0, -4.0]  # no user turn: mean loss 3
        return [-1.0, -2.0]  # after the instruction: mean loss 1.5

    backend = Losses(table)
    [score] = get_scorer("ifd", backend).score([Example("Say hi.", "", "Hi there")])
    assert score.value == pytest.approx(0.5)
    assert score.detail == {"conditioned_loss": 1.5, "direct_loss": 3.0, "tokens": 2}
    given, alone = backend.seen
    assert given.messages == ({"role": "user", "content": "Say hi."},)
    assert given.continuation == alone.continuation == "Hi there"
    # The input joins the instruction in the user turn, as export writes it.
    get_scorer("ifd", backend).score([Example("Add.", "2 3", "5")])
    assert backend.seen[2].messages[0]["content"] == "Add.\n\n2 3"


def test_an_item_that_does_not_fit_is_unscored_and_the_rest_are_scored():
    def table(r):
        if "long" in r.continuation:
            return BackendError("the request does not fit the context")
        return [-1.0]

    scores = get_scorer("ifd", Losses(table)).score(
        [Example("A.", "", "short"), Example("B.", "", "long"), Example("C.", "", "fine")]
    )
    assert [s.value for s in scores] == [1.0, None, 1.0]
    assert "does not fit" in scores[1].detail["error"]


def test_the_judge_weights_the_digits_by_their_probability():
    probs = {"1": 0.05, "2": 0.05, "3": 0.1, "4": 0.3, "5": 0.5}
    judge = get_scorer("judge", Losses(lambda r: [math.log(probs[r.continuation])]))
    assert judge.settings()["mode"] == "logprobs"
    [score] = judge.score([Example("Name a colour.", "", "Blue.")])
    assert score.value == pytest.approx(1 * 0.05 + 2 * 0.05 + 3 * 0.1 + 4 * 0.3 + 5 * 0.5)
    assert score.detail["mass"] == pytest.approx(1.0)


def test_the_judge_chooses_a_digit_where_there_are_no_log_probabilities(scripted):
    from selfgen.backends.base import get_backend

    scripted(lambda r: " 4" if "Blue" in r.messages[0]["content"] else "x")
    backend = get_backend("scripted")
    judge = get_scorer("judge", backend)
    assert judge.settings()["mode"] == "choice"
    good, bad = judge.score([Example("Name a colour.", "", "Blue."), Example("Q", "", "A")])
    assert good.value == 4.0 and bad.value is None
    [request] = backend.requests[:1]
    assert request.constraint.choices == DIGITS


def test_a_scorer_that_needs_log_probabilities_refuses_a_backend_without_them(scripted):
    from selfgen.backends.base import get_backend

    scripted(lambda r: "")
    with pytest.raises(ScorerError, match="the ifd scorer needs log-probabilities of a given text"):
        get_scorer("ifd", get_backend("scripted"))
    with pytest.raises(ScorerError, match="unknown scorer 'nope'"):
        get_scorer("nope", get_backend("scripted"))


def test_toolformer_is_how_much_the_results_lower_the_answers_loss():
    trace = TraceExample(
        (
            {"role": "user", "content": "What is 17*23?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "calculator", "arguments": '{"expression": "17*23"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "391"},
            {"role": "assistant", "content": "It is 391."},
        )
    )

    def table(r):
        if "Result: 391" in r.prompt:
            return [-0.5]
        if "Call:" in r.prompt:
            return [-2.0]  # the call without its result
        return [-3.0]  # no call at all

    backend = Losses(table)
    [score] = get_scorer("toolformer", backend).score([trace])
    assert score.value == pytest.approx(1.5)  # min(3.0, 2.0) - 0.5
    assert score.detail["helps"] is True
    assert all(r.continuation == " It is 391." for r in backend.seen)
    [none] = get_scorer("toolformer", backend).score(
        [TraceExample(({"role": "user", "content": "Hi"},))]
    )
    assert none.value is None


def test_toolformer_scores_a_conversation_by_its_weakest_turn_after_calls():
    from selfgen.records import FollowUp, ToolCall, Trace

    trace = Trace(
        request="What is 17*23?",
        generation_index=0,
        kind="multiturn",
        calls=[ToolCall("calculator", {"expression": "17*23"}, "391")],
        answer="It is 391.",
        followups=[
            FollowUp(
                request="And plus 9?",
                generation_index=1,
                calls=[ToolCall("calculator", {"expression": "391 + 9"}, "400")],
                answer="That makes 400.",
            ),
            FollowUp(request="Is that even?", generation_index=2, answer="Yes, 400 is even."),
        ],
    )

    def table(r):
        if r.continuation == " It is 391.":
            return [-0.5] if "Result: 391" in r.prompt else [-3.0]  # helps by 2.5
        assert r.continuation == " That makes 400."
        # The first turn comes first, in full.
        assert r.prompt.startswith("Request: What is 17*23?\nCall: ")
        assert "Result: 391\nAnswer: It is 391.\nRequest: And plus 9?\n" in r.prompt
        return [-1.0] if "Result: 400" in r.prompt else [-1.25]  # helps by 0.25

    backend = Losses(table)
    [score] = get_scorer("toolformer", backend).score([TraceExample(tuple(trace.messages()))])
    # The turn answered without a call is not scored; the weakest of the others counts.
    assert len(backend.seen) == 6
    assert score.value == pytest.approx(0.25)
    assert score.detail["turn"] == 2 and score.detail["helps"] is False
