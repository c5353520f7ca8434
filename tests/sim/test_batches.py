"""The simulated Files and Batch APIs, over real HTTP through the openai SDK."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from mmevol.nodes import prompts
from mmevol.sim.server import SimOptions, SimServer

ENDPOINT = "/v1/chat/completions"
IMAGE = {
    "type": "image_url",
    "image_url": {"url": "data:image/jpeg;base64,/9j/AA==", "detail": "low"},
}
ITEMS = [
    {"image_position": "single", "objects": [], "skills": [], "format": "Norm",
     "question": "What is the dog doing?", "steps": [], "answer": "The dog chases a red ball."},
    {"image_position": "single", "objects": [], "skills": [], "format": "Norm",
     "question": "What colour is the ball?", "steps": [], "answer": "The ball is red."},
]  # fmt: skip


def evolve_text(operator: str, caption: str) -> str:
    return prompts.EVOLVE_PROMPT.format(
        role=prompts.ROLE,
        skills=prompts.SKILLS,
        manipulations=prompts.MANIPULATIONS,
        schema=prompts.ITEM_SCHEMA,
        examples=prompts.EXAMPLES,
        caption=caption,
        boxes="dog: [0.120, 0.400, 0.380, 0.910]",
        operator=operator,
        objective=prompts.OBJECTIVES[operator],
        constraints=prompts.CONSTRAINTS.format(box_rule=""),
        given_items=json.dumps(ITEMS, indent=1),
        feedback="",
    )


def score_text(caption: str) -> str:
    rewritten = [{**item, "question": f"{item['question']} ({caption})"} for item in ITEMS]
    return prompts.SCORE_PROMPT.format(
        given_items=json.dumps(ITEMS, indent=1),
        rewritten_items=json.dumps(rewritten, indent=1),
        count=len(rewritten),
        feedback="",
    )


def body(text: str, **extra) -> dict:
    content = [{"type": "text", "text": text}, IMAGE]
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def bodies(n: int) -> dict[str, dict]:
    """Evolution, judge and plain requests, by custom_id."""
    made = {}
    for i in range(n):
        caption = f"Scene number {i} with a dog."
        kind = i % 3
        text = (evolve_text("reasoning", caption), score_text(caption), f"Say hi {i}")[kind]
        made[f"req-{i}"] = body(text, max_tokens=4000)
    return made


def jsonl(requests: dict[str, dict], **override) -> bytes:
    lines = [
        {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": b, **override}
        for cid, b in requests.items()
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def client(server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def submit(server: SimServer, data: bytes, **metadata: str):
    api = client(server)
    upload = api.files.create(file=("shard.jsonl", data), purpose="batch")
    return api.batches.create(
        input_file_id=upload.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata=metadata or None,
    )


def records(server: SimServer, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    text = client(server).files.content(file_id).text
    return {r["custom_id"]: r for r in map(json.loads, text.splitlines())}


def until(server: SimServer, batch_id: str, done=None):
    """Poll a batch until it is over, or until ``done(batch)`` holds; return it."""
    api = client(server)
    while True:
        batch = api.batches.retrieve(batch_id)
        if done(batch) if done else batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch


def online(api: openai.OpenAI, request: dict) -> tuple[int, object]:
    """Ask one body online; return its status and (content, finish_reason) or error code."""
    try:
        reply = api.chat.completions.create(**request)
    except openai.APIStatusError as exc:
        return exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None
    return 200, (reply.choices[0].message.content, reply.choices[0].finish_reason)


def offline(record: dict) -> tuple[int, object]:
    response = record["response"]
    if response["status_code"] != 200:
        return response["status_code"], response["body"]["error"]["code"]
    choice = response["body"]["choices"][0]
    return 200, (choice["message"]["content"], choice["finish_reason"])


def http(server: SimServer, path: str, payload: dict) -> dict:
    url = server.base_url.removesuffix("/v1") + path
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


FAULTY = {"seed": 5, "garbage_rate": 0.2, "truncate_rate": 0.1, "error_rate": 0.1}


def test_batch_answers_equal_online_answers_of_the_same_bodies_and_seed(sim_factory):
    requests = bodies(30)
    online_server, batch_server = sim_factory(**FAULTY), sim_factory(**FAULTY)
    api = client(online_server)
    expected = {cid: online(api, request) for cid, request in requests.items()}

    batch = submit(batch_server, jsonl(requests), run="trial", shard="1")
    assert batch.status == "validating" and batch.metadata == {"run": "trial", "shard": "1"}
    done = until(batch_server, batch.id)
    assert done.status == "completed" and done.request_counts.total == 30
    assert done.completed_at and done.finalizing_at and done.in_progress_at
    answered, failed = (
        records(batch_server, done.output_file_id),
        records(batch_server, done.error_file_id),
    )
    assert done.request_counts.completed == len(answered) and done.request_counts.failed == len(
        failed
    )
    got = {cid: offline(record) for cid, record in {**answered, **failed}.items()}
    assert got == expected
    # The standing faults were drawn, and drawn alike: the same garbage, cuts and 500s.
    first, second = online_server.stats(), batch_server.stats()
    assert first["faults"]["garbage"] and first["faults"]["error"] and first["faults"]["truncate"]
    assert first["faults"] == second["faults"]
    assert first["bodies"] == second["bodies"] and first["by_kind"] == second["by_kind"]
    assert first["answered"] == second["answered"] == second["batch_lines_answered"]
    assert second["batch_lines_failed"] == len(failed) and first["batch_lines_answered"] == 0
    assert second["batches_created"] == second["files_created"] == 1
    record = next(iter(answered.values()))
    assert record["id"].startswith("batch_req_") and record["error"] is None
    assert record["response"]["request_id"] and record["response"]["body"]["object"] == (
        "chat.completion"
    )
    assert all(r["response"]["body"]["error"]["type"] == "server_error" for r in failed.values())


def test_a_body_answered_online_and_in_a_batch_counts_as_seen_twice(sim):
    requests = bodies(3)
    online(client(sim), requests["req-0"])
    batch = submit(sim, jsonl(requests))
    assert until(sim, batch.id).status == "completed"
    stats = sim.stats()
    assert sorted(stats["bodies"].values()) == [1, 1, 2]
    assert stats["answered"] == 4 and stats["batch_lines_answered"] == 3


def test_failed_lines_are_drawn_from_the_seed_and_go_to_the_error_file(sim_factory):
    requests = bodies(40)
    runs = []
    for _ in range(2):
        server = sim_factory(seed=2, batch_failed_lines=0.3)
        done = until(server, submit(server, jsonl(requests)).id)
        failed = records(server, done.error_file_id)
        answered = records(server, done.output_file_id)
        assert done.status == "completed" and failed and answered
        assert set(failed) | set(answered) == set(requests) and not set(failed) & set(answered)
        assert done.request_counts.failed == len(failed) == server.stats()["faults"]["batch_failed"]
        for record in failed.values():
            assert record["response"]["status_code"] == 500 and record["error"] is None
            assert record["response"]["body"]["error"]["type"] == "server_error"
        runs.append((server, sorted(failed)))
    assert runs[0][1] == runs[1][1]
    # Retried in a later batch, the failed lines draw again: some of them get answers now.
    server, failed_ids = runs[0]
    retry = submit(server, jsonl({cid: requests[cid] for cid in failed_ids}))
    again = until(server, retry.id)
    assert 0 < again.request_counts.completed <= len(failed_ids)


def test_lines_are_answered_over_the_turnaround(sim_factory):
    server = sim_factory(batch_turnaround=100)
    api = client(server)
    batch = submit(server, jsonl(bodies(10)))
    seen = api.batches.retrieve(batch.id)
    assert seen.status == "in_progress" and seen.request_counts.completed == 0
    assert seen.output_file_id is None
    server.advance(50)
    seen = until(server, batch.id, lambda b: b.request_counts.completed >= 5)
    assert seen.status == "in_progress" and seen.request_counts.completed == 5
    assert server.stats()["batch_lines_answered"] == 5
    server.advance(60)
    seen = until(server, batch.id)
    assert seen.status == "completed" and seen.request_counts.completed == 10
    assert len(records(server, seen.output_file_id)) == 10 and seen.error_file_id is None
    assert server.stats()["batch_lines_answered"] == 10


def test_an_expired_batch_keeps_its_partial_output(sim_factory):
    server = sim_factory(batch_turnaround=100, batch_expire_after=40)
    batch = submit(server, jsonl(bodies(10)))
    assert batch.expires_at == batch.created_at + 40
    server.advance(70)
    seen = until(server, batch.id)
    assert seen.status == "expired" and seen.expired_at
    assert seen.request_counts.completed == 4 and seen.request_counts.total == 10
    answered, missing = records(server, seen.output_file_id), records(server, seen.error_file_id)
    assert sorted(answered) == [f"req-{i}" for i in range(4)]
    assert sorted(missing) == sorted(f"req-{i}" for i in range(4, 10))
    for record in missing.values():
        assert record["response"] is None and record["error"]["code"] == "batch_expired"
    assert server.stats()["answered"] == 4


def test_a_cancelled_batch_keeps_its_partial_output(sim_factory):
    server = sim_factory(batch_turnaround=100)
    api = client(server)
    batch = submit(server, jsonl(bodies(10)))
    server.advance(30)
    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    server.advance(50)  # lines due after the cancel are never run
    seen = until(server, batch.id)
    assert seen.status == "cancelled" and seen.cancelled_at
    assert seen.request_counts.completed == 3
    answered, missing = records(server, seen.output_file_id), records(server, seen.error_file_id)
    assert len(answered) == 3 and len(missing) == 7
    assert {r["error"]["code"] for r in missing.values()} == {"batch_cancelled"}
    assert api.batches.cancel(batch.id).status == "cancelled"
    finished = submit(server, jsonl(bodies(1)))
    server.set_batch(batch_turnaround=0)
    assert until(server, finished.id).status == "completed"
    with pytest.raises(openai.ConflictError):
        api.batches.cancel(finished.id)


def test_batch_options_change_at_run_time(sim_factory):
    server = sim_factory(batch_turnaround=1000)
    api = client(server)
    batch = submit(server, jsonl(bodies(4)))
    assert api.batches.retrieve(batch.id).request_counts.completed == 0
    server.set_batch(batch_turnaround=0)
    assert until(server, batch.id).status == "completed"
    settings = http(server, "/sim/batch", {"batch_turnaround": 1000, "batch_expire_after": 10})
    assert settings["batch_turnaround"] == 1000 and settings["batch_expire_after"] == 10
    late = submit(server, jsonl(bodies(4)))
    http(server, "/sim/advance", {"seconds": 20})
    assert until(server, late.id).status == "expired"
    with pytest.raises(ValueError, match="unknown batch options"):
        server.set_batch(error_rate=1)
    with pytest.raises(ValueError):
        server.set_batch(batch_failed_lines=2)
    with pytest.raises(urllib.error.HTTPError):
        http(server, "/sim/batch", {"batch_turnaround": -1})


def test_list_batches_newest_first_with_after_and_auto_pagination(sim):
    api = client(sim)
    made = [submit(sim, jsonl(bodies(1)), n=str(i)).id for i in range(5)]
    newest = made[::-1]
    page = api.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more
    assert page.first_id == newest[0] and page.last_id == newest[1]
    nxt = api.batches.list(limit=2, after=page.last_id)
    assert [b.id for b in nxt.data] == newest[2:4] and nxt.has_more
    last = api.batches.list(limit=2, after=newest[3])
    assert [b.id for b in last.data] == newest[4:] and not last.has_more
    assert [b.id for b in api.batches.list(limit=2)] == newest  # the SDK follows the pages
    assert {b.status for b in api.batches.list()} == {"completed"}
    assert [b.metadata["n"] for b in api.batches.list()] == ["4", "3", "2", "1", "0"]


def _line(**fields) -> str:
    base = {"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": body("hi")}
    return json.dumps({**base, **fields})


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([_line(), _line(custom_id="b"), _line(custom_id="a")], "duplicate_custom_id", 3),
        ([_line(), _line(custom_id="b", url="/v1/embeddings")], "invalid_url", 2),
        ([_line(method="GET")], "invalid_method", 1),
        ([_line(), "{not json"], "invalid_json_line", 2),
        ([_line(body="hi")], "invalid_body", 1),
        ([_line(custom_id="")], "missing_required_parameter", 1),
        ([_line(custom_id=str(i)) for i in range(4)], "too_many_requests", 4),
        ([_line(custom_id=str(i), body=body("x" * 900)) for i in range(2)], "file_too_large", None),
        ([""], "empty_file", None),
    ],
)
def test_a_bad_input_file_fails_the_batch_with_the_line(sim_factory, lines, code, line):
    server = sim_factory(batch_max_requests=3, batch_max_bytes=1600)
    batch = submit(server, "\n".join(lines).encode())
    seen = until(server, batch.id)
    assert seen.status == "failed" and seen.failed_at and seen.output_file_id is None
    assert (seen.errors.data[0].code, seen.errors.data[0].line) == (code, line)
    assert seen.errors.data[0].message
    assert server.stats()["requests"] == 0 and server.stats()["batches_created"] == 1


def test_creating_a_batch_checks_its_file_endpoint_and_window(sim):
    api = client(sim)
    notes = api.files.create(file=("notes.jsonl", jsonl(bodies(1))), purpose="user_data")
    good = api.files.create(file=("in.jsonl", jsonl(bodies(1))), purpose="batch")
    create = api.batches.create
    with pytest.raises(openai.NotFoundError):
        create(input_file_id="file-missing", endpoint=ENDPOINT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        create(input_file_id=notes.id, endpoint=ENDPOINT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        create(input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        create(input_file_id=good.id, endpoint=ENDPOINT, completion_window="1h")
    with pytest.raises(openai.BadRequestError, match="metadata"):
        create(input_file_id=good.id, endpoint=ENDPOINT, completion_window="24h", metadata={"a": 1})
    assert sim.stats()["batches_created"] == 0


def test_unknown_ids_are_404(sim):
    api = client(sim)
    calls = [
        lambda: api.files.retrieve("file-nope"),
        lambda: api.files.content("file-nope"),
        lambda: api.files.delete("file-nope"),
        lambda: api.batches.retrieve("batch_nope"),
        lambda: api.batches.cancel("batch_nope"),
        lambda: api.batches.list(after="batch_nope"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body["type"] == "invalid_request_error"


def test_files_are_listed_read_and_deleted_from_disk(sim):
    api = client(sim)
    data = jsonl(bodies(2))
    upload = api.files.create(file=("shard-1.jsonl", data), purpose="batch")
    assert upload.id.startswith("file-") and upload.object == "file"
    assert (upload.bytes, upload.filename, upload.purpose) == (len(data), "shard-1.jsonl", "batch")
    assert upload.status == "processed" and upload.created_at
    assert api.files.retrieve(upload.id) == upload
    assert api.files.content(upload.id).content == data
    assert (sim.files_dir / upload.id).read_bytes() == data
    assert [f.id for f in api.files.list()] == [upload.id]
    assert [f.id for f in api.files.list(purpose="batch_output")] == []
    deleted = api.files.delete(upload.id)
    assert deleted.id == upload.id and deleted.deleted and deleted.object == "file"
    assert list(api.files.list()) == [] and not (sim.files_dir / upload.id).exists()
    with pytest.raises(openai.BadRequestError, match="purpose"):
        api.files.create(file=("x.jsonl", data), purpose="nonsense")
    assert sim.stats()["files_created"] == 1 and list(sim.files_dir.iterdir()) == []


def test_an_upload_larger_than_the_chat_body_limit_streams_to_disk(sim):
    data = jsonl(bodies(1)) * 1  # a real line, then padding lines of base64-like bulk
    pad = json.dumps({"pad": "A" * (2**20)}).encode() + b"\n"
    data += pad * 70  # 70 MB, above the 64 MB a chat request may carry
    upload = client(sim).files.create(file=("big.jsonl", data), purpose="batch")
    assert upload.bytes == len(data) == (sim.files_dir / upload.id).stat().st_size


def test_a_batch_keeps_reading_its_input_after_the_file_is_deleted(sim_factory):
    server = sim_factory(batch_turnaround=100)
    api = client(server)
    batch = submit(server, jsonl(bodies(4)))
    api.batches.retrieve(batch.id)
    api.files.delete(batch.input_file_id)
    server.advance(200)
    assert until(server, batch.id).request_counts.completed == 4


def test_the_file_folder_is_removed_on_stop():
    with SimServer(SimOptions()) as server:
        folder = server.files_dir
        done = until(server, submit(server, jsonl(bodies(3))).id)
        assert done.status == "completed" and len(list(folder.iterdir())) == 2
    assert not folder.exists() and server.files_dir is None


def test_a_large_batch_does_not_hold_up_other_requests(sim):
    requests = {f"r{i}": body(evolve_text("perceptual", f"Scene {i}.")) for i in range(1500)}
    batch = submit(sim, jsonl(requests))
    poll = threading.Thread(target=client(sim).batches.retrieve, args=(batch.id,))
    poll.start()
    try:
        while sim.stats()["batch_lines_answered"] == 0:
            poll.join(0.01)
        # Lines are being answered; an online request still gets through before they end.
        assert online(client(sim), body("Say hi"))[0] == 200
        assert sim.stats()["batch_lines_answered"] < len(requests)
    finally:
        poll.join()
    assert until(sim, batch.id).status == "completed"
    assert sim.stats()["batch_lines_answered"] == len(requests)


def test_stopping_in_the_middle_of_a_batch_stops_its_work():
    server = SimServer(SimOptions()).start()
    requests = {f"r{i}": body(evolve_text("perceptual", f"Scene {i}.")) for i in range(3000)}
    batch = submit(server, jsonl(requests))

    def retrieve() -> None:
        # Answered with the batch as it stands, or cut off by the stop: both are fine.
        with contextlib.suppress(openai.APIConnectionError):
            client(server).batches.retrieve(batch.id)

    poll = threading.Thread(target=retrieve)
    poll.start()
    while server.stats()["batch_lines_answered"] == 0:
        poll.join(0.01)
    folder = server.files_dir
    server.stop()
    poll.join()
    answered = server.stats()["batch_lines_answered"]
    assert 0 < answered < len(requests) and not folder.exists()


def test_files_and_batches_need_the_api_key_when_one_is_set(sim_factory):
    server = sim_factory(api_key="right")
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.files.create(file=("in.jsonl", jsonl(bodies(1))), purpose="batch")
    with pytest.raises(openai.AuthenticationError):
        wrong.batches.list()
    right = openai.OpenAI(base_url=server.base_url, api_key="right", max_retries=0)
    upload = right.files.create(file=("in.jsonl", jsonl(bodies(1))), purpose="batch")
    batch = right.batches.create(
        input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
    )
    assert right.batches.retrieve(batch.id).id == batch.id


def test_a_server_restarted_without_its_batch_table_forgets_every_batch(sim_factory):
    server = sim_factory(batch_turnaround=100)
    api = client(server)
    running = submit(server, jsonl(bodies(4)))
    server.set_batch(batch_turnaround=0)
    done = until(server, submit(server, jsonl(bodies(2))).id)
    server.set_batch(batch_turnaround=100)
    assert server.forget_batches() == 2
    for batch_id in (running.id, done.id):
        with pytest.raises(openai.NotFoundError):
            api.batches.retrieve(batch_id)
        with pytest.raises(openai.NotFoundError):
            api.batches.cancel(batch_id)
    assert list(api.batches.list()) == []
    # The files stay: the uploads and the output of the batch that had finished.
    assert len(records(server, done.output_file_id)) == 2
    assert api.files.retrieve(running.input_file_id).purpose == "batch"
    # Over HTTP too; new batches run as before.
    again = submit(server, jsonl(bodies(1)))
    assert http(server, "/sim/forget-batches", {}) == {"forgotten": 1}
    with pytest.raises(openai.NotFoundError):
        api.batches.retrieve(again.id)
    server.set_batch(batch_turnaround=0)
    assert until(server, submit(server, jsonl(bodies(1))).id).status == "completed"
