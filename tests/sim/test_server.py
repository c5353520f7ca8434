"""The simulated endpoint, seen over real HTTP through the openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import json_repair
import openai
import pytest

from mmevol.nodes import prompts
from mmevol.sim.answers import GARBAGE, LONE_SURROGATE
from mmevol.sim.server import SimOptions, SimServer

BOXES = [
    ("dog", [0.12, 0.4, 0.38, 0.91]),
    ("ball", [0.5, 0.6, 0.6, 0.7]),
    ("dog", [0.7, 0.1, 0.9, 0.5]),
]
SEED_ITEMS = [
    {"image_position": "single", "objects": [], "skills": [], "format": "Norm",
     "question": "What is the dog doing?", "steps": [], "answer": "The dog is chasing a red ball."},
    {"image_position": "single", "objects": [], "skills": [], "format": "Norm",
     "question": "What colour is the ball?", "steps": [], "answer": "The ball is red."},
    {"image_position": "single", "objects": [], "skills": [], "format": "Norm",
     "question": "Where does the scene take place?", "steps": [], "answer": "On a grassy lawn."},
]  # fmt: skip
IMAGE = {
    "type": "image_url",
    "image_url": {"url": "data:image/jpeg;base64,/9j/AA==", "detail": "low"},
}
BOX_RE = re.compile(r"\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?){3}\s*\]")
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}}


def box_lines(boxes):
    return "\n".join(f"{label}: [{', '.join(f'{v:.3f}' for v in box)}]" for label, box in boxes)


def evolve_prompt(operator, boxes=BOXES, items=SEED_ITEMS, feedback=""):
    return prompts.EVOLVE_PROMPT.format(
        role=prompts.ROLE,
        skills=prompts.SKILLS,
        manipulations=prompts.MANIPULATIONS,
        schema=prompts.ITEM_SCHEMA,
        examples=prompts.EXAMPLES,
        caption="A dog chases a ball on a lawn.",
        boxes=box_lines(boxes) or "(none)",
        operator=operator,
        objective=prompts.OBJECTIVES[operator],
        constraints=prompts.CONSTRAINTS.format(box_rule="" if boxes else prompts.NO_BOX_RULE),
        given_items=json.dumps(items, indent=1),
        feedback=feedback,
    )


def score_prompt(given, rewritten):
    return prompts.SCORE_PROMPT.format(
        given_items=json.dumps(given, indent=1),
        rewritten_items=json.dumps(rewritten, indent=1),
        count=len(rewritten),
        feedback="",
    )


def user(text, images=1):
    return [{"role": "user", "content": [{"type": "text", "text": text}] + [IMAGE] * images}]


def client(server, **kw):
    return openai.OpenAI(
        base_url=server.base_url, api_key=kw.pop("api_key", "test"), max_retries=0, **kw
    )


def ask(server, text, images=1, **kw):
    return client(server).chat.completions.create(
        model="gpt-4o-mini", messages=user(text, images), **kw
    )


def loads(content):
    """Decode an answer the lenient way the pipeline does: drop the fence, repair the rest."""
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", content, re.DOTALL)
    value = json_repair.loads(fenced.group(1) if fenced else content)
    return value if isinstance(value, list) else [value]


def texts(item):
    steps = [f"{s.get('manipulation')} {s.get('description')}" for s in item.get("steps", [])]
    return [item["question"], item.get("answer") or item.get("answers"), *steps]


def http(server, method, path, payload=None):
    url = server.base_url.removesuffix("/v1") + path
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("operator", ["perceptual", "reasoning", "interactive"])
@pytest.mark.parametrize("seed", range(4))
def test_evolution_answer_has_one_item_per_given_item_and_only_listed_boxes(
    sim_factory, operator, seed
):
    server = sim_factory(seed=seed)
    content = ask(server, evolve_prompt(operator)).choices[0].message.content
    assert content.count("```json") == 1
    items = loads(content)
    assert len(items) == len(SEED_ITEMS)
    listed = {f"[{', '.join(f'{v:.3f}' for v in box)}]" for _, box in BOXES}
    for item in items:
        assert item["question"].strip() and (item.get("answer") or item.get("answers")).strip()
        assert not re.search(r"\bgiven\b|\brewritten\b|Q&A", " ".join(texts(item)), re.I)
        for text in texts(item):
            assert set(BOX_RE.findall(text)) <= listed
    if operator == "reasoning":
        assert all(i["question"].endswith("Let's think step by step.") for i in items)
        assert all(len(i["steps"]) >= 2 for i in items)
    if operator == "interactive":
        assert all(i["format"] != "Norm" for i in items)


@pytest.mark.parametrize("operator", ["perceptual", "reasoning", "interactive"])
def test_no_boxes_means_no_coordinates_and_no_localisation(sim_factory, operator):
    server = sim_factory(seed=1, clean=True)
    items = loads(ask(server, evolve_prompt(operator, boxes=[])).choices[0].message.content)
    assert len(items) == len(SEED_ITEMS)
    for item in items:
        assert not any(BOX_RE.search(t) for t in texts(item))
        assert not re.search(r"coordinate|bbox|bounding box|how many", item["question"], re.I)


def test_a_prompt_with_feedback_is_answered_normally(sim):
    feedback = prompts.FEEDBACK.format(problem="the answer held no JSON")
    content = ask(sim, evolve_prompt("interactive", feedback=feedback)).choices[0].message.content
    assert len(loads(content)) == len(SEED_ITEMS)


def test_scoring_answer_has_one_verdict_per_rewritten_item(sim):
    rewritten = SEED_ITEMS + SEED_ITEMS[:1]
    verdicts = loads(
        ask(sim, score_prompt(SEED_ITEMS, rewritten), images=0).choices[0].message.content
    )
    assert len(verdicts) == len(rewritten)
    for verdict in verdicts:
        assert str(verdict["improved"]).lower() in ("yes", "no")
        assert 0 <= int(str(verdict["score"]).split("/")[0]) <= 10


def test_no_rate_sets_the_share_of_no_verdicts(sim_factory):
    server = sim_factory(no_rate=0.0, clean=True)
    content = ask(server, score_prompt(SEED_ITEMS, SEED_ITEMS), images=0).choices[0].message.content
    assert {v["improved"] for v in loads(content)} == {"yes"}


def test_same_seed_and_request_give_the_same_answer(sim_factory):
    text = evolve_prompt("interactive")
    first = ask(sim_factory(seed=7), text).choices[0].message.content
    again = ask(sim_factory(seed=7), text).choices[0].message.content
    other = ask(sim_factory(seed=8), text).choices[0].message.content
    assert first == again
    assert first != other


def test_scripted_500_then_success(sim):
    sim.enqueue("status", status=500)
    with pytest.raises(openai.InternalServerError):
        ask(sim, "hello")
    assert ask(sim, "hello").choices[0].message.content == "OK"
    sim.enqueue("status", status=500)
    retrying = openai.OpenAI(base_url=sim.base_url, api_key="test", max_retries=1)
    reply = retrying.chat.completions.create(model="m", messages=user("hello"))
    assert reply.choices[0].message.content == "OK"
    assert sim.stats()["requests"] == 4


def test_rate_limit_carries_retry_after(sim_factory):
    server = sim_factory(rate_limit_rate=1.0, retry_after=0.05)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(server, "hello")
    assert caught.value.response.headers["retry-after"] == "0.05"
    assert caught.value.response.headers["retry-after-ms"] == "50"
    assert caught.value.code == "rate_limit_exceeded"


def test_a_retry_draws_new_faults_but_gets_the_same_answer(sim_factory):
    text = evolve_prompt("reasoning")
    expected = ask(sim_factory(seed=3), text).choices[0].message.content
    flaky = sim_factory(seed=3, rate_limit_rate=0.8, retry_after=0.001)
    patient = openai.OpenAI(base_url=flaky.base_url, api_key="test", max_retries=40)
    reply = patient.chat.completions.create(model="m", messages=user(text))
    assert reply.choices[0].message.content == expected
    stats = flaky.stats()
    assert stats["requests"] > 1  # the draws for this body with seed 3 fail a few times
    assert stats["faults"]["rate_limit"] == stats["requests"] - 1
    assert list(stats["bodies"].values()) == [stats["requests"]]


def test_error_rate_gives_500(sim_factory):
    with pytest.raises(openai.InternalServerError):
        ask(sim_factory(error_rate=1.0), "hi")


def test_api_key_is_enforced(sim_factory):
    server = sim_factory(api_key="secret")
    with pytest.raises(openai.AuthenticationError) as caught:
        client(server, api_key="wrong").chat.completions.create(model="m", messages=user("hi"))
    assert caught.value.code == "invalid_api_key"
    reply = client(server, api_key="secret").chat.completions.create(model="m", messages=user("hi"))
    assert reply.choices[0].message.content == "OK"


def test_reject_structured_gives_400(sim_factory):
    server = sim_factory(reject_structured=True)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, evolve_prompt("perceptual"), response_format=JSON_SCHEMA)
    assert "response_format" in str(caught.value)
    assert ask(server, "hi").choices[0].message.content == "OK"


def test_structured_output_is_pure_json(sim):
    evolved = ask(sim, evolve_prompt("interactive"), response_format=JSON_SCHEMA)
    assert len(json.loads(evolved.choices[0].message.content)["items"]) == len(SEED_ITEMS)
    judged = ask(sim, score_prompt(SEED_ITEMS, SEED_ITEMS), response_format=JSON_SCHEMA)
    verdicts = json.loads(judged.choices[0].message.content)["verdicts"]
    assert [v["improved"] in ("yes", "no") for v in verdicts] == [True] * len(SEED_ITEMS)


def test_clean_answers_are_fenced_valid_json(sim_factory):
    server = sim_factory(seed=5, clean=True)
    for operator in ("perceptual", "reasoning", "interactive"):
        content = ask(server, evolve_prompt(operator)).choices[0].message.content
        assert content.startswith("```json\n") and content.endswith("\n```")
        assert len(json.loads(content[8:-4])) == len(SEED_ITEMS)


def test_usage_counts_text_and_image_parts(sim):
    reply = ask(sim, "x" * 41, images=2)
    assert reply.usage.prompt_tokens == 11 + 2 * 85
    assert reply.usage.completion_tokens == 1
    assert reply.usage.total_tokens == 11 + 170 + 1
    assert reply.model == "gpt-4o-mini"


def test_cached_share_reports_cached_prompt_tokens_as_openai_does(sim, sim_factory):
    assert ask(sim, "x" * 41).usage.prompt_tokens_details is None  # by default: no details
    server = sim_factory(cached_share=0.5)
    reply = ask(server, "x" * 41, images=2)
    assert reply.usage.prompt_tokens == 181
    assert reply.usage.prompt_tokens_details.cached_tokens == 90  # rounded down
    # langchain-openai reads it where the model client looks for it.
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=server.base_url, api_key="t", model="gpt-4o-mini", max_retries=0)
    usage = chat.invoke("x" * 400).usage_metadata
    assert usage["input_token_details"]["cache_read"] == usage["input_tokens"] // 2 > 0
    with pytest.raises(ValueError, match="cached_share"):
        SimOptions(cached_share=1.5)


def test_stats_script_and_reset_over_http(sim):
    queued = http(sim, "POST", "/sim/script", {"kind": "content", "content": "scripted!"})
    assert queued == {"queued": 1}
    assert ask(sim, "hi").choices[0].message.content == "scripted!"
    ask(sim, evolve_prompt("perceptual"))
    ask(sim, score_prompt(SEED_ITEMS, SEED_ITEMS))
    ask(sim, "hi")
    stats = http(sim, "GET", "/sim/stats")
    assert stats["requests"] == 4
    assert stats["by_kind"] == {"evolve": 1, "score": 1, "other": 2}
    assert stats["faults"]["scripted"] == 1
    assert sorted(stats["bodies"].values()) == [1, 1, 2]
    assert stats == sim.stats()
    http(sim, "POST", "/sim/reset")
    assert sim.stats()["requests"] == 0 and sim.stats()["bodies"] == {}


def test_truncation_stops_for_length(sim_factory):
    full = ask(sim_factory(), evolve_prompt("reasoning")).choices[0].message.content
    cut = ask(sim_factory(truncate_rate=1.0), evolve_prompt("reasoning")).choices[0]
    assert cut.finish_reason == "length"
    assert full.startswith(cut.message.content) and len(cut.message.content) < len(full)


def test_garbage_and_verdict_mismatch_faults(sim_factory):
    garbage = ask(sim_factory(garbage_rate=1.0), evolve_prompt("perceptual")).choices[0]
    assert garbage.message.content in GARBAGE and garbage.finish_reason == "stop"
    server = sim_factory(verdict_mismatch_rate=1.0)
    content = ask(server, score_prompt(SEED_ITEMS, SEED_ITEMS)).choices[0].message.content
    assert abs(len(loads(content)) - len(SEED_ITEMS)) == 1
    assert server.stats()["faults"]["verdict_mismatch"] == 1


def test_a_lone_surrogate_is_sent_escaped_in_the_json(sim_factory):
    """Item 3 of issue 19: the endpoint can send a lone surrogate, which is not text."""
    server = sim_factory(surrogate_rate=1.0)
    prompt = evolve_prompt("reasoning")
    raw = client(server).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user(prompt)
    )
    assert b"\\ud800" in raw.http_response.content  # escaped: the body is valid JSON
    content = raw.parse().choices[0].message.content
    assert LONE_SURROGATE in content
    with pytest.raises(UnicodeEncodeError):
        content.encode("utf-8")
    full = ask(sim_factory(), prompt).choices[0].message.content
    assert content.replace(LONE_SURROGATE, "") == full
    assert server.stats()["faults"]["surrogate"] == 1


def test_latency_delays_answers_without_blocking_others(sim_factory):
    server = sim_factory(latency_ms=3000)
    started = time.perf_counter()
    ask(server, "hi")
    assert time.perf_counter() - started >= 3.0

    async def many(n):
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as c:
            calls = [
                c.chat.completions.create(model="m", messages=user(f"hi {i}")) for i in range(n)
            ]
            return await asyncio.gather(*calls)

    # Delayed answers are held side by side, not one after another: all 100 requests are
    # seen in flight at once. (No wall-clock bound: the machine may be busy.)
    peak = 0
    answers = []
    caller = threading.Thread(target=lambda: answers.extend(asyncio.run(many(100))))
    caller.start()
    while caller.is_alive():
        peak = max(peak, server.stats()["in_flight"])
        time.sleep(0.01)
    caller.join()
    assert len(answers) == 100
    assert peak == 100


def test_hang_holds_one_call_then_answers_normally(sim):
    sim.enqueue("hang", seconds=0.3)
    started = time.perf_counter()
    assert ask(sim, "hi").choices[0].message.content == "OK"
    assert time.perf_counter() - started >= 0.3


def test_streaming_is_refused_and_models_are_listed(sim):
    with pytest.raises(openai.BadRequestError, match="[Ss]treaming"):
        client(sim).chat.completions.create(model="m", messages=user("hi"), stream=True)
    assert [m.id for m in client(sim).models.list()] == [SimOptions().model]


def test_langchain_chat_openai_talks_to_it(sim):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=sim.base_url, api_key="test", model="gpt-4o-mini", max_retries=0)
    assert chat.invoke("hello").content == "OK"


def test_options_are_checked():
    with pytest.raises(ValueError):
        SimOptions(error_rate=1.5)
    with pytest.raises(ValueError):
        SimOptions(latency_dist="uniform")
    with SimServer() as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.port > 0
    with pytest.raises(ValueError):
        server.enqueue("explode")


def test_serve_forever_prints_its_url_and_stops_on_ctrl_c():
    code = (
        "from mmevol.sim.server import SimOptions, serve_forever; serve_forever(SimOptions(seed=1))"
    )
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        remote = SimpleNamespace(base_url=base_url)
        http(remote, "POST", "/sim/script", {"kind": "content", "content": "from afar"})
        reply = openai.OpenAI(
            base_url=base_url, api_key="t", max_retries=0
        ).chat.completions.create(model="m", messages=user("hi"))
        assert reply.choices[0].message.content == "from afar"
        assert http(remote, "GET", "/sim/stats")["faults"]["scripted"] == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


def test_serve_sim_on_a_busy_port_is_one_line(sim):
    """Item 12 of issue 19: a port in use is a one-line error, not a traceback."""
    from typer.testing import CliRunner

    from mmevol.cli import app

    result = CliRunner().invoke(app, ["serve-sim", "--port", str(sim.port)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"127.0.0.1:{sim.port}" in lines[0] and "in use" in lines[0]
    assert "--port" in lines[0]


def test_drop_closes_the_connection_unanswered(sim):
    sim.enqueue("drop")
    with pytest.raises(openai.APIConnectionError):
        ask(sim, "hi")
    assert ask(sim, "hi").choices[0].message.content == "OK"


@pytest.mark.parametrize("kind", ["html", "no_choices", "no_message"])
def test_answers_that_are_not_chat_completions(sim, kind):
    sim.enqueue(kind)
    url = sim.base_url + "/chat/completions"
    request = urllib.request.Request(url, data=json.dumps({"messages": user("hi")}).encode())
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
        body = response.read().decode()
        content_type = response.headers["Content-Type"]
    if kind == "html":
        assert content_type.startswith("text/html") and body.startswith("<!DOCTYPE html>")
    else:
        choices = json.loads(body)["choices"]
        assert choices == [] if kind == "no_choices" else "message" not in choices[0]


def test_a_standing_outage_answers_every_request_until_cleared(sim):
    sim.set_behaviour("status", status=503)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            ask(sim, "hi")
    assert [m.id for m in client(sim).models.list()] == [SimOptions().model]
    http(sim, "POST", "/sim/behaviour", {"kind": None})
    assert ask(sim, "hi").choices[0].message.content == "OK"
    assert sim.stats()["faults"]["behaviour"] == 3
    sim.set_behaviour("html", models=True)
    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK makes of a web page
        client(sim).models.list()
    with pytest.raises(ValueError, match="unknown behaviour"):
        sim.set_behaviour("explode")


def test_hang_without_seconds_holds_every_call_until_cleared(sim):
    http(sim, "POST", "/sim/behaviour", {"kind": "hang"})
    with pytest.raises(openai.APITimeoutError):
        client(sim, timeout=0.3).chat.completions.create(model="m", messages=user("hi"))

    async def held_then_released():
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="t", max_retries=0) as c:
            call = asyncio.ensure_future(c.chat.completions.create(model="m", messages=user("x")))
            while sim.stats()["requests"] < 2:
                await asyncio.sleep(0.01)
            assert not call.done()
            sim.set_behaviour(None)
            return await call

    assert asyncio.run(held_then_released()).choices[0].message.content == "OK"


def test_stats_count_answers_paid_and_requests_in_flight(sim_factory):
    sim = sim_factory(garbage_rate=1.0)
    ask(sim, "hi")  # garbage is still a 200 answer: paid for
    sim.set_behaviour("status", status=503)
    with pytest.raises(openai.InternalServerError):
        ask(sim, "hi")
    sim.set_behaviour("hang")

    async def held():
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="t", max_retries=0) as c:
            call = asyncio.ensure_future(c.chat.completions.create(model="m", messages=user("x")))
            while sim.stats()["in_flight"] < 1:
                await asyncio.sleep(0.01)
            during = sim.stats()
            sim.set_behaviour(None)
            await call
            return during

    during = asyncio.run(held())
    assert (during["answered"], during["in_flight"]) == (1, 1)
    after = sim.stats()
    assert (after["requests"], after["answered"], after["in_flight"]) == (3, 2, 0)
    sim.reset()
    assert sim.stats()["answered"] == 0
