"""Exact rendering of every prompt file."""

import random

from selfgen.records import Instance, SeedTask
from selfgen.stages import classify, instances, instructions


def task(i, clf=False, inp=""):
    return SeedTask(f"t{i}", f"n{i}", f"Instruction number {i}.", (Instance(inp, f"out {i}"),), clf)


def test_instruction_prompt():
    prompt = instructions.render_prompt("en", ["Say  hi\nnicely.", "Name a colour."])
    assert prompt == "Come up with a series of tasks:\n\n1. Say hi nicely.\n2. Name a colour.\n3."


def test_instruction_prompt_chinese():
    assert (
        instructions.render_prompt("zh", ["写一首诗。"])
        == "请想出一系列任务：\n\n1. 写一首诗。\n2."
    )


def test_prompt_instructions_mix_seed_and_machine():
    rng = random.Random(0)
    seeds = [f"seed {i}" for i in range(20)]
    chosen = instructions.choose_prompt_instructions(rng, seeds, ["m1", "m2", "m3"], 6, 2)
    assert len(chosen) == 8
    assert sum(c.startswith("m") for c in chosen) == 2
    # While the machine pool is small, human seeds fill the prompt.
    chosen = instructions.choose_prompt_instructions(rng, seeds, [], 6, 2)
    assert len(chosen) == 8 and all(c.startswith("seed") for c in chosen)


def test_classify_prompt():
    demos = classify.pick_demos([task(1), task(2, clf=True), task(3)], 3)
    assert [d.id for d in demos] == ["t3", "t1", "t2"]
    assert classify.render_prompt("en", demos, "Is this spam?") == (
        "Can the following task be regarded as a classification task with finite output labels?\n"
        "\n"
        "Task: Instruction number 3.\nIs it classification? No\n\n"
        "Task: Instruction number 1.\nIs it classification? No\n\n"
        "Task: Instruction number 2.\nIs it classification? Yes\n\n"
        "Task: Is this spam?\nIs it classification?"
    )


def test_input_first_prompt():
    prompt = instances.render_prompt(
        "en", [task(1, inp="some input"), task(2)], "Add two numbers.", False
    )
    assert prompt == (
        "Come up with examples for the following tasks. Try to generate multiple examples when"
        " possible. If the task doesn't require additional input, you can generate the output"
        " directly.\n\n"
        "Task: Instruction number 1.\nExample 1\nInput: some input\nOutput: out 1\n\n"
        "Task: Instruction number 2.\nExample 1\nOutput: out 2\n\n"
        "Task: Add two numbers.\nExample 1\n"
    )


def test_output_first_prompt():
    prompt = instances.render_prompt("en", [task(1, clf=True, inp="x")], "Is it spam?", True)
    assert prompt == (
        "Given the classification task definition and the class labels, generate an input that"
        " corresponds to each of the class labels. If the task doesn't require input, just"
        " generate possible class labels.\n\n"
        "Task: Instruction number 1.\nClass label: out 1\nInput: x\n\n"
        "Task: Is it spam?\nClass label:"
    )


def test_shared_prefix_is_the_few_shot_part():
    from selfgen.stages import shared_prefix

    prompt = classify.render_prompt("en", [task(1)], "Instruction number 1.")
    # The demo repeats the instruction; the prefix ends before the task being asked about.
    assert prompt[shared_prefix(prompt, "Task: Instruction number 1.") :] == (
        "Task: Instruction number 1.\nIs it classification?"
    )
