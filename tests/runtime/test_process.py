"""A real ``python -m runtime`` process on a loopback port, driven over real HTTP."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.cancellation import cancelled_event
from runtime.scheduling.budget import CPU_BATCH_TOKENS
from runtime.server.faults import FAULT_EXIT_STATUS
from runtime.weights.cache import parse_source
from tests.runtime.support import RuntimeProcess, StreamedBatch, finishes, streamed_text, tokens_of
from wire import (
    BATCH_PATH,
    CANCEL_PATH,
    FREE_ROWS_HEADER,
    HEALTH_PATH,
    NDJSON,
    READY_PATH,
    BatchEventAdapter,
    CancelResponse,
    ErrorBody,
    FinishEvent,
    ReadyBody,
    TokenEvent,
)

pytestmark = pytest.mark.integration


def start_torch_runtime(demo_model_dir: Path, cache_dir: Path, *flags: str) -> RuntimeProcess:
    process = RuntimeProcess(
        "--model-name",
        "tiny-llama",
        "--source",
        str(demo_model_dir),
        "--cache-dir",
        str(cache_dir),
        "--device",
        "cpu",
        *flags,
    )
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def torch_runtime(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    process = start_torch_runtime(demo_model_dir, tmp_path_factory.mktemp("process-cache"), "--max-batch-size", "16")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def static_runtime(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One batch at a time (``--scheduler static``): a batch sent while another runs waits for it."""
    process = start_torch_runtime(demo_model_dir, tmp_path_factory.mktemp("static-cache"), "--scheduler", "static")
    yield process
    process.stop()


def batch_body(
    count: int, *, max_tokens: int = 12, stream: bool = True, model: str = "tiny-llama"
) -> dict[str, object]:
    requests = [
        {
            "id": f"r{i}",
            "prompt": "word " * (i + 1),
            "stream": stream,
            "params": {"max_tokens": max_tokens, "temperature": 0},
        }
        for i in range(count)
    ]
    return {"model": model, "requests": requests}


def test_health_and_ready(torch_runtime: RuntimeProcess) -> None:
    assert httpx.get(torch_runtime.url + HEALTH_PATH).status_code == 200
    ready = httpx.get(torch_runtime.url + READY_PATH)
    assert ready.status_code == 200
    body = ReadyBody.model_validate_json(ready.content)
    assert body.model_copy(update={"startup": None}) == ReadyBody(
        model="tiny-llama",
        max_batch_size=16,
        context_length=512,
        scheduler="continuous",
        max_batch_tokens=CPU_BATCH_TOKENS,
        free_rows=16,
    )
    startup = body.startup
    assert startup is not None
    assert startup.process_s is not None and startup.process_s > 0  # Linux: /proc tells the process's age
    assert startup.imports_s > 0 and startup.load_s > 0 and startup.warmup_s > 0
    phases = startup.process_s + startup.cache_s + startup.imports_s + startup.load_s + startup.warmup_s
    assert startup.total_s == pytest.approx(phases, abs=0.01)


def test_batch_streams_ndjson_events(torch_runtime: RuntimeProcess) -> None:
    events = []
    with httpx.stream("POST", torch_runtime.url + BATCH_PATH, json=batch_body(16), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(NDJSON)
        events = [BatchEventAdapter.validate_json(line) for line in response.iter_lines() if line]
    done = {e.id: e for e in events if isinstance(e, FinishEvent)}
    assert set(done) == {f"r{i}" for i in range(16)}
    for request_id, finish in done.items():
        streamed = "".join(e.text for e in events if isinstance(e, TokenEvent) and e.id == request_id)
        assert streamed == finish.text
        assert finish.usage.completion_tokens == 12
    torch_runtime.wait_for_line("batch of 16:")


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"]]", 400),
        (b'{"model": "tiny-llama", "requests": [{"id": "a", "prompt": "x", "messages": []}]}', 422),
        (json.dumps(batch_body(1, model="other")).encode(), 404),
        (json.dumps(batch_body(17)).encode(), 413),
    ],
)
def test_bad_bodies_get_an_error_body(torch_runtime: RuntimeProcess, content: bytes, status: int) -> None:
    response = httpx.post(torch_runtime.url + BATCH_PATH, content=content)
    assert response.status_code == status
    ErrorBody.model_validate_json(response.content)


def test_client_disconnect_cancels_the_batch(torch_runtime: RuntimeProcess) -> None:
    body = batch_body(16, max_tokens=400)
    with httpx.stream("POST", torch_runtime.url + BATCH_PATH, json=body, timeout=60) as response:
        first = next(response.iter_lines())
        assert BatchEventAdapter.validate_json(first).type == "token"
    line = torch_runtime.wait_for_line("cancelled with")
    assert "cancelled with 16 unfinished" in line
    after = httpx.post(torch_runtime.url + BATCH_PATH, json=batch_body(1), timeout=60)
    assert after.status_code == 200


def streaming(model: str = "tiny-llama", **max_tokens: int) -> dict[str, object]:
    """A batch of streaming greedy requests, one per keyword: its id and its ``max_tokens``."""
    requests = [
        {"id": name, "prompt": f"{name} word", "stream": True, "params": {"max_tokens": n, "temperature": 0}}
        for name, n in max_tokens.items()
    ]
    return {"model": model, "requests": requests}


def cancel(url: str, *request_ids: str) -> tuple[str, ...]:
    response = httpx.post(url + CANCEL_PATH, json={"ids": list(request_ids)}, timeout=30)
    assert response.status_code == 200, response.text
    return CancelResponse.model_validate_json(response.content).cancelled


# One step may already be under way when the cancel lands, and events made just before it may still be on
# their way through the event loop and the socket when the cancel's answer arrives. Measured: 0 or 1.
STEPS_OF_SLACK = 3


def test_cancel_stops_one_request_within_steps_while_its_batch_mate_finishes(torch_runtime: RuntimeProcess) -> None:
    stream = StreamedBatch(torch_runtime.url, streaming(leaves=400, stays=400))
    stream.wait_for(lambda s: tokens_of(s.events, "leaves") >= 1)
    assert cancel(torch_runtime.url, "leaves") == ("leaves",)
    seen_before_the_answer = stream.received()
    events = stream.wait_done()
    assert stream.failure is None
    after_the_answer = tokens_of(events[seen_before_the_answer:], "leaves")
    assert after_the_answer <= STEPS_OF_SLACK, f"{after_the_answer} tokens after the cancel was answered"
    assert [e for e in events if e.id == "leaves"][-1] == cancelled_event("leaves")
    assert tokens_of(events, "leaves") < 200
    done = finishes(events)
    assert set(done) == {"stays"}
    assert done["stays"].usage.completion_tokens == 400
    assert streamed_text(events, "stays") == done["stays"].text
    prompt = done["stays"].usage.prompt_tokens
    assert "1 cancelled" in torch_runtime.wait_for_line(f"batch of 2: {prompt} prompt + 400 completion tokens")


def test_cancelling_unknown_ids_cancels_nothing(torch_runtime: RuntimeProcess) -> None:
    assert cancel(torch_runtime.url, "never-sent", "long-finished") == ()


def test_a_request_queued_behind_a_running_batch_is_cancelled_without_running(static_runtime: RuntimeProcess) -> None:
    running = StreamedBatch(static_runtime.url, streaming(runs=480))
    running.wait_for(lambda s: tokens_of(s.events, "runs") >= 1)
    queued = StreamedBatch(static_runtime.url, streaming(waits=8, gives_up=8))
    queued.wait_for(lambda s: s.status is not None)  # the 200 is out: the runtime holds the batch
    assert cancel(static_runtime.url, "gives_up") == ("gives_up",)
    assert queued.wait_for(lambda s: len(s.events) >= 1) == [cancelled_event("gives_up")]
    assert cancel(static_runtime.url, "runs") == ("runs",), "the first batch must still have been running"
    assert running.wait_done()[-1] == cancelled_event("runs")
    events = queued.wait_done()
    assert [e for e in events if e.id == "gives_up"] == [cancelled_event("gives_up")]
    usage = finishes(events)["waits"].usage
    assert usage.completion_tokens == 8
    line = static_runtime.wait_for_line(f"batch of 2: {usage.prompt_tokens} prompt + 8 completion tokens")
    assert line.endswith("0 errors, 1 cancelled")


@pytest.mark.parametrize(
    ("engine", "trigger"),
    [
        ("echo", {"id": "boom", "messages": [{"role": "user", "content": "please CRASH-HERE now"}]}),
        ("torch", {"id": "boom", "prompt": "please CRASH-HERE now"}),
    ],
)
def test_fault_flag_exits_with_status_70_on_its_text_and_only_then(
    engine: str,
    trigger: dict[str, object],
    demo_model_dir: Path,
    tmp_path: Path,
    runtime_processes: list[RuntimeProcess],
) -> None:
    flags = ["--engine", engine, "--model-name", "m", "--source", str(demo_model_dir), "--cache-dir", str(tmp_path)]
    process = RuntimeProcess(*flags, "--device", "cpu", "--no-warmup", "--fault-exit-on", "CRASH-HERE")
    runtime_processes.append(process)
    process.wait_ready()
    calm = {"id": "calm", "messages": [{"role": "user", "content": "crash here, in lower case"}]}
    fine = httpx.post(process.url + BATCH_PATH, json={"model": "m", "requests": [calm]}, timeout=60)
    assert fine.status_code == 200
    assert "calm" in finishes(BatchEventAdapter.validate_json(line) for line in fine.text.splitlines())
    with pytest.raises(httpx.HTTPError):  # the process is gone before it answers
        httpx.post(process.url + BATCH_PATH, json={"model": "m", "requests": [calm, trigger]}, timeout=60)
    assert process.wait_exit() == FAULT_EXIT_STATUS
    assert "request boom contains 'CRASH-HERE'" in process.wait_for_line("fault injection")


def test_second_start_hits_the_cache(
    demo_model_dir: Path, tmp_path: Path, runtime_processes: list[RuntimeProcess]
) -> None:
    flags = ["--source", str(demo_model_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--no-warmup"]
    first = RuntimeProcess(*flags)
    runtime_processes.append(first)
    first.wait_ready()
    assert first.wait_for_line("weight cache filled:")
    first.stop()
    assert (tmp_path / parse_source(str(demo_model_dir)).slug).is_dir()
    second = RuntimeProcess(*flags)
    runtime_processes.append(second)
    second.wait_ready()
    assert second.wait_for_line("weight cache hit")


def test_sigterm_shuts_down_gracefully(runtime_processes: list[RuntimeProcess]) -> None:
    process = RuntimeProcess("--engine", "echo", "--model-name", "echo")
    runtime_processes.append(process)
    process.wait_ready()
    process.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises the signal so the exit status says "terminated by SIGTERM".
    assert process.wait_exit() == -signal.SIGTERM
    assert process.wait_for_line("Finished server process")


def test_echo_engine_starts_fast_and_answers(runtime_processes: list[RuntimeProcess]) -> None:
    started = time.monotonic()
    process = RuntimeProcess("--engine", "echo", "--model-name", "echo", "--source", "/does/not/matter")
    runtime_processes.append(process)
    process.wait_ready(timeout_s=10)
    startup_s = time.monotonic() - started
    response = httpx.post(process.url + BATCH_PATH, json=batch_body(2, model="echo"))
    events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines()]
    done = {e.id: e for e in events if isinstance(e, FinishEvent)}
    assert done["r1"].text == "word word"
    assert startup_s < 5, f"the echo runtime took {startup_s:.2f} s to become ready"


def test_unloadable_source_exits_with_status_1(tmp_path: Path, runtime_processes: list[RuntimeProcess]) -> None:
    process = RuntimeProcess("--source", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "cache"))
    runtime_processes.append(process)
    assert process.wait_exit() == 1
    assert any("not a directory" in line for line in process.lines)


def test_bad_flags_exit_with_status_2(runtime_processes: list[RuntimeProcess]) -> None:
    process = RuntimeProcess("--device", "tpu")
    runtime_processes.append(process)
    assert process.wait_exit() == 2


def run_alone(url: str, request: dict[str, object]) -> FinishEvent:
    response = httpx.post(url + BATCH_PATH, json={"model": "tiny-llama", "requests": [request]}, timeout=60)
    return finishes(BatchEventAdapter.validate_json(line) for line in response.text.splitlines())[str(request["id"])]


def test_a_batch_sent_while_another_decodes_joins_it_and_both_decode_as_if_alone(
    torch_runtime: RuntimeProcess,
) -> None:
    first = streaming(first_long=300, first_short=6)["requests"]
    assert isinstance(first, list)
    sampled = {"max_tokens": 20, "temperature": 1.2, "seed": 5}
    second = [
        {"id": "second_a", "prompt": "the runtime goes away when", "params": {"max_tokens": 30, "temperature": 0}},
        {"id": "second_b", "messages": [{"role": "user", "content": "queue"}], "params": sampled},
    ]
    expected = {str(r["id"]): run_alone(torch_runtime.url, r) for r in [*first, *second]}
    running = StreamedBatch(torch_runtime.url, {"model": "tiny-llama", "requests": first})
    running.wait_for(lambda s: "first_short" in finishes(s.events))  # a neighbour left; first_long decodes on
    joining = StreamedBatch(torch_runtime.url, {"model": "tiny-llama", "requests": second})
    done = finishes(joining.wait_done())
    assert "first_long" not in finishes(running.events), "the second batch finished while the first decoded"
    done |= finishes(running.wait_done())
    assert done == expected
    assert int(joining.headers[FREE_ROWS_HEADER]) == 16 - 3, "first_long and the two of the second batch held"


def test_a_request_waiting_for_room_is_cancelled_without_running(
    demo_model_dir: Path, tmp_path: Path, runtime_processes: list[RuntimeProcess]
) -> None:
    # "runs" may reach 480 + a few prompt tokens: a second request cannot join it within 600 tokens.
    process = start_torch_runtime(demo_model_dir, tmp_path, "--max-batch-tokens", "600", "--no-warmup")
    runtime_processes.append(process)
    ready = ReadyBody.model_validate_json(httpx.get(process.url + READY_PATH).content)
    assert (ready.scheduler, ready.max_batch_tokens, ready.context_length) == ("continuous", 600, 512)
    running = StreamedBatch(process.url, streaming(runs=480))
    running.wait_for(lambda s: tokens_of(s.events, "runs") >= 1)
    waiting = StreamedBatch(process.url, streaming(waits=8, gives_up=8))
    waiting.wait_for(lambda s: s.status is not None)
    assert int(waiting.headers[FREE_ROWS_HEADER]) == 16 - 3
    assert cancel(process.url, "gives_up") == ("gives_up",)
    assert waiting.wait_for(lambda s: len(s.events) >= 1) == [cancelled_event("gives_up")]
    assert cancel(process.url, "runs") == ("runs",), "the first batch must still have been running"
    assert running.wait_done()[-1] == cancelled_event("runs")
    events = waiting.wait_done()
    assert [e for e in events if e.id == "gives_up"] == [cancelled_event("gives_up")]
    usage = finishes(events)["waits"].usage
    assert usage.completion_tokens == 8
    line = process.wait_for_line(f"batch of 2: {usage.prompt_tokens} prompt + 8 completion tokens")
    assert line.endswith("0 errors, 1 cancelled")
