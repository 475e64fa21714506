"""Three LoRA adapters of the demo model behind a real gateway (issue #29, end to end): each is a model name of its
own, served by one runtime process of the base (torch, CPU), and each answers, through the official OpenAI
client, with what peft's merged model of that adapter answers alone, while the base model's own answer stays the
base's. The requests for the four names are sent at once, so their rows share the runtime's running batch."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import openai
import pytest

from gateway.settings import Adapter
from runtime.settings import RuntimeSettings
from tests.harness import model, replica_processes, run_gateway
from tests.runtime.lora_support import MadeAdapter, make_adapters
from tests.runtime.support import alone, greedy

pytestmark = pytest.mark.integration

PROMPT = "the gateway keeps every request in a queue"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def adapters(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MadeAdapter]:
    return make_adapters(demo_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def expected(
    demo_model_dir: Path, adapters: dict[str, MadeAdapter], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Each name's greedy answer alone: the base model's, and each adapter's merged model's (peft's reference)."""
    from runtime.torch_engine.engine import TorchEngine

    sources = {"demo": demo_model_dir} | {name: made.merged for name, made in adapters.items()}
    answers = {}
    for name, path in sources.items():
        settings = RuntimeSettings(model_name=name, source=str(path), cache_dir=tmp_path_factory.mktemp(name))
        engine = TorchEngine(path, settings)
        engine.load()
        answers[name] = alone(engine, greedy(name, prompt=PROMPT, max_tokens=MAX_TOKENS)).text
    return answers


async def test_three_adapters_answer_as_their_own_models_like_their_merged_models(
    redis_url: str, cache_dir: Path, demo_model_dir: Path, adapters: dict[str, MadeAdapter], expected: dict[str, str]
) -> None:
    assert len(set(expected.values())) == 4, "every adapter changes the demo model's answer"
    base = model("demo", demo_model_dir, max_batch_size=8)
    loras = tuple(
        dataclasses.replace(base.settings, name=name, adapter=Adapter("demo", str(made.directory)))
        for name, made in adapters.items()
    )
    async with run_gateway([base], redis_url, cache_dir, adapters=loras) as gw:
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        names = ["demo", *adapters]

        async def complete(name: str) -> str:
            answer = await sdk.completions.create(model=name, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
            assert answer.model == name
            return answer.choices[0].text

        answers = await asyncio.gather(*(complete(name) for name in names))
        assert dict(zip(names, answers, strict=True)) == expected
        assert len(replica_processes(gw, "demo")) == 1  # one runtime process of the base served all four names
        listed = {m.id: getattr(m, "parent", None) async for m in sdk.models.list()}
        assert listed == {"demo": None} | dict.fromkeys(adapters, "demo")
