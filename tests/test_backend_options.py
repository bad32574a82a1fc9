"""Each backend declares its options; an option it does not take is refused by name, at once."""

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from conftest import ROOT, selfgen_cmd

from selfgen.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    Completion,
    GenerationRequest,
    check_options,
    get_backend,
    register_backend,
)


class Greeter(Backend):
    """A plug-in backend with its own options."""

    name = "greeter"

    @dataclass(frozen=True)
    class Options(BackendOptions):
        greeting: str = "hello"

    def __init__(self, options: Options) -> None:
        self.options = options

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [Completion(self.options.greeting, "stop", 1, 1) for _ in requests]


def test_a_plugin_backend_gets_its_options_and_refuses_others():
    register_backend("greeter", Greeter)
    backend = get_backend("greeter", {"greeting": "hi"}, seed=3)
    assert backend.options == Greeter.Options(seed=3, greeting="hi")
    assert get_backend("greeter").options == Greeter.Options()
    with pytest.raises(BackendError) as caught:
        get_backend("greeter", {"greeting": "hi", "colour": "red"})
    assert caught.value.option == "colour"
    assert "greeter" in str(caught.value) and "colour" in str(caught.value)


def test_a_plain_factory_takes_any_options():
    made = []
    register_backend("plain", lambda **options: made.append(options) or Greeter(Greeter.Options()))
    get_backend("plain", {"anything": 1}, seed=2)
    assert made == [{"anything": 1, "seed": 2}]
    assert check_options("plain", {"anything": 1}) is None


def test_an_unknown_option_names_the_backend_and_the_option():
    # Refused before the model is looked for, so nothing loads.
    with pytest.raises(BackendError) as caught:
        get_backend("llamacpp", {"model": "/no/such.gguf", "base_url": "http://127.0.0.1:1/v1"})
    assert caught.value.option == "base_url"
    assert str(caught.value).startswith("option 'base_url': not taken by the llamacpp backend")
    with pytest.raises(BackendError, match="option 'n_ctx': not taken by the openai backend"):
        check_options("openai", {"n_ctx": 4096})
    with pytest.raises(BackendError, match="option 'api_key': not taken by the vllm backend"):
        check_options("vllm", {"model": "m", "api_key": "k"})


def test_a_backend_error_names_the_option_its_value_belongs_to(tmp_path):
    with pytest.raises(BackendError) as caught:
        get_backend("llamacpp", model=str(tmp_path / "none.gguf"))
    assert caught.value.option == "model"
    assert caught.value.problem == f"no such GGUF file: {tmp_path / 'none.gguf'}"


def test_the_api_key_is_not_shown_with_the_options():
    from selfgen.backends.openai import OpenAIBackend

    assert "sk-secret" not in repr(OpenAIBackend.Options(api_key="sk-secret"))


def test_the_ray_driver_checks_options_before_starting_ray(monkeypatch):
    import selfgen.engines.ray as engine

    def no_ray():
        raise AssertionError("Ray must not start for options the backend refuses")

    monkeypatch.setattr(engine, "_import_ray", no_ray)
    with pytest.raises(BackendError) as caught:
        engine.RayBackend("llamacpp", {"base_url": "http://127.0.0.1:1/v1"}, workers=1)
    assert caught.value.option == "base_url"


def test_cli_refuses_an_option_the_backend_does_not_take_at_once(tmp_path, child_env):
    # The missing model shows that nothing was loaded: the option is refused first.
    out = tmp_path / "run"
    proc = subprocess.run(
        [*selfgen_cmd(), "run", "--base-url", "http://127.0.0.1:1/v1"]
        + ["--model", str(tmp_path / "none.gguf"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --base-url: not taken by the llamacpp backend")
    assert len(proc.stderr.splitlines()) == 1
    assert not out.exists()
