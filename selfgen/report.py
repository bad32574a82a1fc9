"""`selfgen report`: one self-contained HTML page of a run's figures, drawn with Plotly.

The page carries plotly.js inline (no network is needed to open it) and one chart per figure:
the funnel, the rejection reasons, ROUGE-L to the nearest neighbour, the quality scores, the
instruction lengths, the classification share, the tool-trace pass rates, and a verb-noun
picture of the instructions after the Self-Instruct paper's Figure 2. A figure a run has no data
for (no traces, no scores) shows a line that says so in place of its chart.

The paper found each instruction's root verb and its direct object with a constituency parser.
No parser is available offline here, so the words are chosen by rule: the verb is the
instruction's first word, and the noun the first word after it that is not a function word
(articles, pronouns, prepositions, "following", "given", ...). For imperative instructions
("Write a poem about ...") that is usually the same pair; for questions and requests in other
shapes it is not, and the page says so.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from typing import Any

from selfgen.io import atomic_write
from selfgen.store import RunStore

# Words skipped when looking for the noun after the leading verb.
FUNCTION_WORDS = frozenset(
    """a an the this that these those some any each every all another other such my your our
    their his her its me us them him it i you we they one two three few several many more most
    of to in on for with about from into by at as and or but if than then so very
    following given below above provided next short simple new list brief detailed good
    what which who whom whose how why when where is are was were be do does did can could
    should would will please""".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
TOP_VERBS = 20
NOUNS_PER_VERB = 4

# The charts of the page, in order: (id, title).
CHARTS = (
    ("funnel", "Funnel"),
    ("reasons", "Rejection reasons"),
    ("rouge", "ROUGE-L to the nearest neighbour"),
    ("scores", "Quality scores"),
    ("lengths", "Instruction lengths"),
    ("classification", "Classification share"),
    ("tools", "Tool-trace checks per tool"),
    ("diversity", "Verbs and their nouns"),
)


def verb_noun(instruction: str) -> tuple[str, str | None]:
    """The leading word and the first word after it that is not a function word (lowercase)."""
    words = [w.lower() for w in _WORD.findall(instruction)]
    if not words:
        return "", None
    noun = next((w for w in words[1:] if w not in FUNCTION_WORDS), None)
    return words[0], noun


def verb_noun_counts(instructions: list[str]) -> dict[str, Counter[str]]:
    """For the TOP_VERBS most frequent leading words, how often each noun follows them."""
    pairs = [verb_noun(text) for text in instructions]
    verbs = Counter(v for v, _ in pairs if v)
    out: dict[str, Counter[str]] = {}
    for verb, _ in verbs.most_common(TOP_VERBS):
        out[verb] = Counter(n or "(none)" for v, n in pairs if v == verb)
    return out


def _empty(message: str) -> str:
    return f'<p class="empty">{html.escape(message)}</p>'


def _figures(figures: dict[str, Any], instructions: list[str]) -> dict[str, Any]:
    """A Plotly figure per chart id, or a message (str) where the run has nothing to draw."""
    import plotly.graph_objects as go

    out: dict[str, Any] = {}
    funnel = figures["funnel"]
    left = funnel["candidates"]
    stages, counts = ["candidates"], [left]
    for stage, rejected in funnel["rejected"].items():
        left -= rejected
        stages.append(f"after {stage}")
        counts.append(left)
    if funnel["surplus"]:
        stages.append("kept (surplus left out)")
        counts.append(funnel["kept"])
    out["funnel"] = go.Figure(go.Funnel(y=stages, x=counts, textinfo="value+percent initial"))

    reasons = [
        (f"{stage}: {reason or 'none'}", n)
        for stage, by_reason in figures["reasons"].items()
        for reason, n in by_reason.items()
    ]
    reasons.sort(key=lambda r: r[1])
    out["reasons"] = (
        go.Figure(go.Bar(x=[n for _, n in reasons], y=[r for r, _ in reasons], orientation="h"))
        if reasons
        else "No candidate was rejected."
    )

    bins = figures["rouge_histogram"]
    out["rouge"] = (
        go.Figure(
            go.Bar(
                x=[f"{b['from']:.1f}-{b['to']:.1f}" for b in bins],
                y=[b["count"] for b in bins],
            )
        )
        if any(b["count"] for b in bins)
        else "No candidate reached the novelty filter."
    )

    scores = [s for s in figures["scores"] if s["histogram"]]
    if scores:
        fig = go.Figure()
        for s in scores:
            fig.add_trace(
                go.Bar(
                    name=f"{s['scorer']} ({s['kind']})",
                    x=[f"{b['from']:.3g}-{b['to']:.3g}" for b in s["histogram"]],
                    y=[b["count"] for b in s["histogram"]],
                )
            )
        # A legend even for one scorer: it names what the bars are.
        fig.update_layout(showlegend=True, barmode="group")
        out["scores"] = fig
    else:
        out["scores"] = "The run has no quality scores (selfgen score)."

    words = figures["instruction_words"]
    out["lengths"] = (
        go.Figure(
            go.Bar(
                x=[f"{w['from']}-{w['to']}" if w["to"] else f"{w['from']}+" for w in words],
                y=[w["count"] for w in words],
            )
        )
        if any(w["count"] for w in words)
        else "No task was kept."
    )

    clf = figures["classification"]
    out["classification"] = (
        go.Figure(
            go.Pie(labels=["classification", "other"], values=[clf["yes"], clf["no"]], hole=0.4)
        )
        if clf["yes"] + clf["no"]
        else "No task was kept."
    )

    tools = figures["tools"]
    if tools:
        fig = go.Figure()
        names = [t["tool"] or "(no call parsed)" for t in tools]
        for check in ("format", "target", "execution", "grounding", "semantic"):
            fig.add_trace(
                go.Bar(
                    name=check,
                    x=names,
                    y=[t[check] / t["traces"] for t in tools],
                    customdata=[[t[check], t["traces"]] for t in tools],
                    hovertemplate="%{customdata[0]} of %{customdata[1]} passed<extra></extra>",
                )
            )
        fig.update_layout(barmode="group", yaxis={"tickformat": ".0%", "range": [0, 1]})
        out["tools"] = fig
    else:
        out["tools"] = "The run made no tool-use traces."

    pairs = verb_noun_counts(instructions)
    if pairs:
        ids, labels, parents, values = [], [], [], []
        for verb, nouns in pairs.items():
            top = nouns.most_common(NOUNS_PER_VERB)
            ids.append(verb)
            labels.append(verb)
            parents.append("")
            values.append(sum(nouns.values()))
            for noun, n in top:
                ids.append(f"{verb}/{noun}")
                labels.append(noun)
                parents.append(verb)
                values.append(n)
        out["diversity"] = go.Figure(
            go.Sunburst(
                ids=ids, labels=labels, parents=parents, values=values, branchvalues="total"
            )
        )
    else:
        out["diversity"] = "No task was kept."
    for fig in out.values():
        if not isinstance(fig, str):
            fig.update_layout(margin={"l": 40, "r": 20, "t": 20, "b": 40}, height=380)
    return out


NOTES = {
    "funnel": "Candidates left after each stage of the loop.",
    "rouge": "ROUGE-L F of each candidate that reached the novelty filter against its nearest"
    " neighbour among the seeds and the kept pool; at 0.7 and above it was rejected.",
    "lengths": "Words per kept instruction.",
    "tools": "Share of the traces whose first call named the tool that passed each check.",
    "diversity": "The 20 most frequent leading words of the kept instructions and, for each,"
    " up to 4 of the words that follow it. Without a parser the words are chosen by rule: the"
    " first word, and the first later word that is not a function word (article, pronoun,"
    " preposition, 'following', 'given', ...). For imperative instructions this is usually the"
    " verb and its object; for questions it is not.",
}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }}
section {{ margin: 2em 0; }} .note, .empty {{ color: #555; }}
</style>
<script>{plotly_js}</script>
</head><body>
<h1>{title}</h1>
{summary}
{sections}
</body></html>
"""


def _summary(figures: dict[str, Any]) -> str:
    speed = figures["completion_tokens_per_s"]
    rows = [
        ("kept tasks", figures["kept"]),
        ("instances", figures["instances"]),
        ("candidates", figures["candidates"]),
        ("rounds", figures["rounds"]),
        ("tokens (prompt + completion)", figures["tokens"]["total"]),
        ("completion tokens/s", f"{speed:.1f}" if speed else "n/a"),
        (
            "marked by hand (accepted / rejected)",
            f"{figures['curation']['accepted']} / {figures['curation']['rejected']}",
        ),
    ]
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def render_report(store: RunStore, title: str) -> str:
    """The report page of the run in `store`."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    figures = store.figures()
    charts = _figures(figures, store.kept_instructions())
    sections = []
    for chart_id, heading in CHARTS:
        fig = charts[chart_id]
        body = (
            _empty(fig)
            if isinstance(fig, str)
            else pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,
                div_id=f"chart-{chart_id}",
                config={"displaylogo": False, "responsive": True},
            )
        )
        note = f'<p class="note">{html.escape(NOTES[chart_id])}</p>' if chart_id in NOTES else ""
        sections.append(
            f'<section class="chart" data-chart="{chart_id}"'
            f' data-empty="{str(isinstance(fig, str)).lower()}">'
            f"<h2>{html.escape(heading)}</h2>{note}{body}</section>"
        )
    # plotly.js as a script element: a "</script>" inside it would end the element early.
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    return PAGE.format(
        title=html.escape(title),
        plotly_js=plotly_js,
        summary=_summary(figures),
        sections="\n".join(sections),
    )


def write_report(store: RunStore, out: Path, title: str) -> None:
    """Write the report page to `out` (whole or not at all)."""
    page = render_report(store, title)
    with atomic_write(out) as f:
        f.write(page)
