"""LoRA adapters through a real ``python -m runtime`` process and real HTTP (issue #29): one ``POST /v1/batch``
mixing three adapters and the base model, each row as its adapter's merged model generates alone; the loaded
adapters in ``/readyz`` and in the batch answer's ``x-kaltstart-adapters`` header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime.lora_support import MadeAdapter
from tests.runtime.support import WORDS, RuntimeProcess, alone, errors, finishes, greedy
from wire import ADAPTERS_HEADER, BATCH_PATH, READY_PATH, BatchEventAdapter, BatchRequest, ReadyBody

pytestmark = pytest.mark.integration


def post_batch(url: str, body: BatchRequest) -> httpx.Response:
    return httpx.post(url + BATCH_PATH, content=body.model_dump_json(), timeout=120)


def test_a_mixed_adapter_batch_over_http_equals_the_merged_models(
    demo_model_dir: Path,
    tmp_path: Path,
    lora_adapters: dict[str, MadeAdapter],
    merged_engines: dict[str, Any],
    torch_engine: Any,
    runtime_processes: list[RuntimeProcess],
) -> None:
    process = RuntimeProcess(
        "--model-name", "tiny-llama", "--source", str(demo_model_dir), "--cache-dir", str(tmp_path / "cache"),
        "--device", "cpu", "--no-warmup", "--max-adapters", "4",
    )  # fmt: skip
    runtime_processes.append(process)
    process.wait_ready()
    names = [None, "attn16", "all64", "mlp8", "all64", None, "attn16", "mlp8"]
    requests = [
        greedy(f"r{i}", prompt=" ".join(WORDS[: 2 + 3 * i]), max_tokens=12).model_copy(
            update={"adapter": lora_adapters[name].ref if name else None}
        )
        for i, name in enumerate(names)
    ]
    response = post_batch(process.url, BatchRequest(model="tiny-llama", requests=tuple(requests)))
    assert response.status_code == 200
    events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines() if line]
    assert not errors(events)
    done = finishes(events)
    for request in requests:
        engine = merged_engines[request.adapter.name] if request.adapter else torch_engine
        assert done[request.id].text == alone(engine, request.model_copy(update={"adapter": None})).text
    ready = ReadyBody.model_validate_json(httpx.get(process.url + READY_PATH).content)
    assert set(ready.adapters) == {"attn16", "all64", "mlp8"}
    again = post_batch(process.url, BatchRequest(model="tiny-llama", requests=(requests[1],)))
    assert set(again.headers[ADAPTERS_HEADER].split(",")) == {"attn16", "all64", "mlp8"}
