"""Every way a model answer or the endpoint goes wrong, through the runner over real HTTP.

Each test builds a one- or two-sample seed, scripts the simulated endpoint's answers in
the order the runner asks (``rounds=1`` and ``concurrency=1``: evolve, then judge, sample
after sample) and checks what the results database recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.authors import export_json
from mmevol.run import runner
from mmevol.runtime.llm import EndpointProblem
from mmevol.store.results import Store

BOXES = [
    {"label": "dog", "bbox": [0.1, 0.2, 0.3, 0.4]},
    {"label": "ball", "bbox": [0.55, 0.6, 0.7, 0.75]},
]
SEED_ITEMS = [
    {"question": "What animal is in the picture?", "answer": "A brown dog."},
    {"question": "What colour is the ball?", "answer": "The ball is red."},
]
JUNK = "Response 1 was not good enough."


def make_seed(tmp_path, with_boxes=(True,)):
    """Write a seed of one sample per entry of ``with_boxes`` and their images."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for n, boxed in enumerate(with_boxes):
        Image.new("RGB", (64, 48), (40 * n, 120, 200)).save(images / f"s{n}.png")
        rows.append(
            {
                "id": f"s{n}",
                "image": f"s{n}.png",
                "conversations_v0": SEED_ITEMS,
                "caption": "A dog chases a red ball on a lawn." if boxed else [],
                "det": BOXES if boxed else [],
            }
        )
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return seed, images, [f"{n}_s{n}.png" for n in range(len(rows))]


def item(n, **fields):
    """A valid evolved item, distinct for each ``n``; ``fields`` override or add keys."""
    base = {
        "image_position": "single",
        "objects": ["dog", "ball"],
        "skills": ["Grounding", "Relationship Description"],
        "format": "Norm",
        "question": f"Which way is the dog facing relative to the ball in view {n}?",
        "steps": [
            {"manipulation": "grounding_1(dog)->bbx_1", "description": "Find the dog."},
            {"manipulation": "None", "description": "Compare its heading with the ball."},
        ],
        "answer": f"In view {n} the dog faces the ball and leans toward it.",
    }
    return {**base, **fields}


def fence(value):
    return "```json\n" + json.dumps(value, indent=1, ensure_ascii=False) + "\n```"


def verdicts(count, score=6):
    return json.dumps(
        [
            {"item": i, "improved": "yes", "score": score, "reason": "harder"}
            for i in range(1, count + 1)
        ]
    )


def run(server, make_settings, tmp_path, answers, with_boxes=(True,), **overrides):
    """Script ``answers`` (text, (text, finish_reason), an HTTP status int or a script) and run."""
    seed, images, hash_ids = make_seed(tmp_path, with_boxes)
    for answer in answers:
        if isinstance(answer, dict):
            server.enqueue(**answer)
        elif isinstance(answer, int):
            server.enqueue("status", status=answer)
        elif isinstance(answer, tuple):
            server.enqueue("content", content=answer[0], finish_reason=answer[1])
        else:
            server.enqueue("content", content=answer)
    settings = make_settings(server, images, rounds=1, concurrency=1, **overrides)
    report = runner.run(settings, seed)
    return report, Results(settings), hash_ids


class Results:
    """Rows of a run's results database."""

    def __init__(self, settings):
        with Store(settings.results_db) as store:
            self.samples = {r["hash_id"]: r for r in store.rows("samples")}
            self.rounds = {r["hash_id"]: r for r in store.rows("rounds")}
            self.items = [dict(r, item=json.loads(r["item"])) for r in store.rows("items")]
            self.dropped = store.rows("dropped")
            self.calls = store.rows("calls")

    def parses(self, node):
        return [c["parse"] for c in self.calls if c["node"] == node]


# -- 1. answers that must be recovered -------------------------------------------------

THREE = [item(1), item(2), item(3)]


def raw_newlines():
    multi = item(4, question="Which colour is the ball?\nA. red\nB. blue\nC. green")
    # json.dumps writes a newline inside a string as \n; real models often write it raw.
    return "```json\n" + json.dumps([item(1), multi]).replace("\\n", "\n") + "\n```"


def trailing_commas():
    body = ",\n".join(json.dumps(i, indent=1).replace("\n}", ",\n}") for i in THREE)
    return "```json\n[\n" + body + ",\n]\n```"


def comments():
    body = ",\n".join(f"  // item {n}\n" + json.dumps(i) for n, i in enumerate(THREE, 1))
    return "```json\n[\n" + body + "\n]  // three items\n```"


def curly_quotes():
    text = json.dumps(THREE[:2], ensure_ascii=False)
    quotes = iter(["\u201c", "\u201d"] * text.count('"'))
    return re.sub('"', lambda _: next(quotes), text)


def renamed(key_from, key_to, value):
    out = []
    for n in (1, 2):
        entry = {k: v for k, v in item(n).items() if k != key_from}
        out.append({**entry, key_to: value})
    return out


RECOVERED = {
    "fence_with_prose": (
        "Sure! Here are the new items:\n" + fence(THREE) + "\nEach item uses the image.",
        3,
        "ok",
        lambda items: [i["question"] for i in items] == [t["question"] for t in THREE],
    ),
    "single_object": (
        fence(item(1)),
        1,
        "ok",
        lambda items: items[0]["answer"] == item(1)["answer"],
    ),
    "raw_newlines_in_strings": (
        raw_newlines(),
        2,
        "repaired",
        lambda items: (
            items[1]["question"] == "Which colour is the ball?\nA. red\nB. blue\nC. green"
        ),
    ),
    "trailing_commas": (
        trailing_commas(),
        3,
        "repaired",
        lambda items: len(items[0]["steps"]) == 2,
    ),
    "comments": (
        comments(),
        3,
        "repaired",
        lambda items: items[2]["question"] == THREE[2]["question"],
    ),
    "curly_quotes": (
        curly_quotes(),
        2,
        "repaired",
        lambda items: [i["answer"] for i in items] == [t["answer"] for t in THREE[:2]],
    ),
    "answers_instead_of_answer": (
        fence(renamed("answer", "answers", "The dog sits left of the ball.")),
        2,
        "ok",
        lambda items: items[0]["answer"] == "The dog sits left of the ball.",
    ),
    "answer_as_list": (
        fence([item(1, answer=["The dog faces right.", "The ball lies ahead of it."])]),
        1,
        "ok",
        lambda items: items[0]["answer"] == "The dog faces right.\nThe ball lies ahead of it.",
    ),
    "answer_as_object": (
        fence([item(1, answer={"choice": "B", "why": "the ball is blue"})]),
        1,
        "ok",
        lambda items: items[0]["answer"] == "choice: B\nwhy: the ball is blue",
    ),
    "steps_as_strings": (
        fence([item(1, steps=["Find the dog.", "Find the ball.", "Compare them."])]),
        1,
        "ok",
        lambda items: (
            items[0]["steps"]
            == [
                {"manipulation": "None", "description": d}
                for d in ("Find the dog.", "Find the ball.", "Compare them.")
            ]
        ),
    ),
    "objects_and_skills_as_strings": (
        fence([item(1, objects="dog, ball", skills="Grounding")]),
        1,
        "ok",
        lambda items: (items[0]["objects"], items[0]["skills"]) == (["dog", "ball"], ["Grounding"]),
    ),
    "wrapped_in_items": (fence({"items": THREE}), 3, "ok", lambda items: len(items) == 3),
    "wrapped_in_rewritten": (
        fence({"rewritten": THREE[:2], "note": "two items"}),
        2,
        "ok",
        lambda items: items[1]["question"] == THREE[1]["question"],
    ),
}


@pytest.mark.parametrize("case", list(RECOVERED))
def test_imperfect_evolution_answer_is_recovered(case, sim, make_settings, tmp_path):
    answer, count, parse, check = RECOVERED[case]
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, [answer, verdicts(count)])
    assert (report.done, report.failed) == (1, 0)
    assert res.parses("evolve") == [parse]
    assert res.parses("score") == ["ok"]
    record = res.rounds[hash_id]
    assert (record["attempts"], record["candidates"], record["kept"]) == (1, count, count)
    assert record["dropped"] == 0 and record["reason"] is None
    kept = [r["item"] for r in res.items]
    assert [r["score"] for r in res.items] == [6] * count
    assert check(kept), kept
    assert all(isinstance(k["answer"], str) and k["answer"] for k in kept)


# -- 2. answers that must cause a retry -------------------------------------------------

INVENTED = [
    item(n, answer=f"The dog at [0.8, 0.1, 0.95, 0.3] faces the ball ({n}).") for n in (1, 2)
]

RETRIED = {
    "empty": ("", "the answer was empty"),
    "refusal": ("I'm sorry, but I can't help with that request.", "the answer was a refusal"),
    "html_error_page": (
        "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
        "<body><h1>502 Bad Gateway</h1></body></html>",
        "the answer was an HTML page, not JSON",
    ),
    "cut_off": (
        ('```json\n[{"question": "Which way is the dog fac', "length"),
        "the answer was cut off at the output token limit",
    ),
    "every_item_breaks_a_constraint": (
        fence(INVENTED),
        "every item broke a constraint: has coordinates that are not among the given boxes: "
        "[0.8, 0.1, 0.95, 0.3]",
    ),
}


@pytest.mark.parametrize("case", list(RETRIED))
def test_unusable_evolution_answer_is_retried_with_feedback(case, sim, make_settings, tmp_path):
    bad, problem = RETRIED[case]
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, [bad, fence(THREE), verdicts(3)])
    assert report.done == 1
    first, second, judge = list(sim.recent)[-3:]
    assert "<feedback>" not in first
    feedback = second[second.index("<feedback>") :]
    assert problem in feedback
    assert "<feedback>" not in judge
    record = res.rounds[hash_id]
    assert (record["attempts"], record["candidates"], record["kept"]) == (2, 3, 3)
    assert record["reason"] is None
    parses = res.parses("evolve")
    if case == "every_item_breaks_a_constraint":
        # The answer parsed; its items were dropped by the checks and stay recorded.
        assert parses == ["ok", "ok"]
        assert [(d["stage"], d["kind"]) for d in res.dropped] == [
            ("check", "has coordinates that are not among the given boxes")
        ] * 2
    else:
        assert parses == [f"unusable: {problem}", "ok"]
        assert res.dropped == []
    assert [r["item"]["question"] for r in res.items] == [t["question"] for t in THREE]


# -- 3. constraint drops, recorded and counted ------------------------------------------


def test_constraint_drops_are_recorded_with_reasons_and_counted_in_status(
    sim, make_settings, tmp_path
):
    with_boxes = [
        item(1, answer="The dog at [0.100, 0.200, 0.300, 0.400] faces the ball."),  # given box
        item(2, answer="The dog at [0.12, 0.2, 0.3, 0.4] faces the ball."),  # invented
        item(3, question="Based on the given Q&A, where is the dog looking?"),  # prompt leak
        item(4, answer="I'm sorry, I can't determine that from the image."),  # refusal
        item(5, question="   "),  # empty question
        item(6, **SEED_ITEMS[1]),  # a copy of a seed item
    ]
    without_boxes = [
        item(7),
        item(8, question="What are the bounding box coordinates of the dog?"),
        item(9, answer="The dog at [0.1, 0.2, 0.3, 0.4] faces the ball."),
    ]
    answers = [fence(with_boxes), verdicts(1, 8), fence(without_boxes), verdicts(1, 5)]
    report, res, (boxed, plain) = run(
        sim, make_settings, tmp_path, answers, with_boxes=(True, False)
    )
    assert (report.done, report.failed) == (2, 0)
    assert [(r["hash_id"], r["score"], r["item"]["question"]) for r in res.items] == [
        (boxed, 8, with_boxes[0]["question"]),
        (plain, 5, without_boxes[0]["question"]),
    ]
    assert (res.rounds[boxed]["candidates"], res.rounds[boxed]["dropped"]) == (1, 5)
    assert (res.rounds[plain]["candidates"], res.rounds[plain]["dropped"]) == (1, 2)
    drops = [(d["hash_id"], d["stage"], d["reason"]) for d in res.dropped]
    assert drops == [
        (boxed, "parse", "not a valid item: entry 5: question: Value error, must not be empty"),
        (
            boxed,
            "check",
            "has coordinates that are not among the given boxes: [0.12, 0.2, 0.3, 0.4]",
        ),
        (boxed, "check", "mentions the prompt's own wording"),
        (boxed, "check", "is a refusal"),
        (boxed, "check", "is identical to an item it was made from"),
        (plain, "check", "asks for localisation by coordinates although no boxes were given"),
        (plain, "check", "has coordinates although no boxes were given"),
    ]

    result = CliRunner().invoke(app, ["status", "--run", "test", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    counted = {(d["stage"], d["reason"]): d["items"] for d in summary["dropped"]}
    assert counted == {
        ("parse", "not a valid item"): 1,
        ("check", "has coordinates that are not among the given boxes"): 1,
        ("check", "mentions the prompt's own wording"): 1,
        ("check", "is a refusal"): 1,
        ("check", "is identical to an item it was made from"): 1,
        ("check", "asks for localisation by coordinates although no boxes were given"): 1,
        ("check", "has coordinates although no boxes were given"): 1,
    }
    (per_round,) = summary["rounds"]
    wanted = {
        "round": 1, "samples": 2, "candidates": 2, "kept": 2, "judged_out": 0,
        "dropped_parse": 1, "dropped_check": 6, "empty": 0,
    }  # fmt: skip
    assert {k: per_round[k] for k in wanted} == wanted
    assert per_round["mean_score"] == 6.5


# -- 4. verdict forms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("improved", "score", "expected"),
    [
        ("Yes", 7, 7),
        ("YES", "7", 7),
        (True, "7/10", 7),
        ("yes", 12, 10),
        ("Yes.", 6.6, 7),
        ("no", 9, None),
    ],
)
def test_verdict_forms_give_integer_scores(improved, score, expected, sim, make_settings, tmp_path):
    verdict = json.dumps([{"improved": improved, "score": score, "reason": "r"}])
    _, res, (hash_id,) = run(sim, make_settings, tmp_path, [fence([item(1)]), verdict])
    assert res.parses("score") == ["ok"]
    if expected is None:
        assert res.items == []
        assert [d["reason"] for d in res.dropped] == ["judged not improved (score 9): r"]
        assert res.rounds[hash_id]["reason"] == "no item was judged improved"
    else:
        assert [(r["score"], type(r["score"])) for r in res.items] == [(expected, int)]
        assert res.items[0]["item"]["score"] == expected


# -- 5. the judge's count ----------------------------------------------------------------


def numbered(*entries):
    return json.dumps(
        [{"item": n, "improved": imp, "score": s, "reason": f"v{n}"} for n, imp, s in entries]
    )


def test_too_few_verdicts_are_asked_again_and_then_matched(sim, make_settings, tmp_path):
    answers = [fence(THREE), verdicts(2), verdicts(3, 7)]
    _, res, (hash_id,) = run(sim, make_settings, tmp_path, answers)
    first, second = list(sim.recent)[-2:]
    assert "<feedback>" not in first
    assert (
        "it had 2 verdicts, but there are exactly 3 rewritten items: give one verdict per item"
        in second
    )
    assert res.parses("score") == ["2 verdicts for 3 items", "ok"]
    assert [r["score"] for r in res.items] == [7, 7, 7]
    assert res.dropped == []


@pytest.mark.parametrize("second", ["numbered", "unnumbered"])
def test_a_wrong_count_twice_never_shifts_a_verdict(second, sim, make_settings, tmp_path):
    if second == "numbered":
        retry = numbered((3, "yes", 9), (1, "yes", 4))
    else:
        retry = json.dumps([{"improved": "yes", "score": s} for s in (4, 9)])
    answers = [fence(THREE), verdicts(2), retry]
    _, res, (hash_id,) = run(sim, make_settings, tmp_path, answers)
    assert "exactly 3 rewritten items" in list(sim.recent)[-1]
    assert res.parses("score") == ["2 verdicts for 3 items"] * 2
    unscored = (
        "unscored: judge gave 2 verdicts for 3 items twice; "
        "only verdicts naming their item were used"
    )
    if second == "numbered":
        # Items 1 and 3 get the verdicts that name them; item 2 has none.
        assert [(r["item"]["question"], r["score"]) for r in res.items] == [
            (THREE[0]["question"], 4),
            (THREE[2]["question"], 9),
        ]
        assert [(d["stage"], d["reason"]) for d in res.dropped] == [("judge", unscored)]
        assert json.loads(res.dropped[0]["item"])["question"] == THREE[1]["question"]
    else:
        assert res.items == []
        assert [(d["stage"], d["reason"]) for d in res.dropped] == [("judge", unscored)] * 3
        assert res.rounds[hash_id]["kept"] == 0


def test_verdicts_out_of_order_are_matched_by_number(sim, make_settings, tmp_path):
    judge = numbered((3, "yes", 9), (1, "yes", 4), (2, "no", 2))
    _, res, _ = run(sim, make_settings, tmp_path, [fence(THREE), judge])
    assert res.parses("score") == ["ok"]
    assert [(r["item"]["question"], r["score"]) for r in res.items] == [
        (THREE[0]["question"], 4),
        (THREE[2]["question"], 9),
    ]
    assert [(json.loads(d["item"])["question"], d["reason"]) for d in res.dropped] == [
        (THREE[1]["question"], "judged not improved (score 2): v2")
    ]


def test_partly_numbered_verdicts_are_not_shifted(sim, make_settings, tmp_path):
    judge = json.dumps(
        [
            {"item": 2, "improved": "yes", "score": 9},
            {"item": 1, "improved": "yes", "score": 4},
            {"improved": "yes", "score": 6},
        ]
    )
    # The judge answers the same way when asked again.
    _, res, _ = run(sim, make_settings, tmp_path, [fence(THREE), judge, judge])
    scores = {r["item"]["question"]: r["score"] for r in res.items}
    # The verdict naming item 2 belongs to item 2, whatever its position in the list; the
    # unnumbered one could belong anywhere, so item 3 stays unscored.
    assert scores == {THREE[0]["question"]: 4, THREE[1]["question"]: 9}
    assert [
        (json.loads(d["item"])["question"], d["reason"].split(":")[0]) for d in res.dropped
    ] == [(THREE[2]["question"], "unscored")]


# -- 6. HTTP errors -----------------------------------------------------------------------


def test_http_500_then_success_is_retried_by_the_sdk(sim, make_settings, tmp_path):
    answers = [500, fence(THREE), verdicts(3)]
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, answers, max_retries=2)
    assert (report.done, report.failed) == (1, 0)
    assert sim.stats()["faults"]["scripted"] == 3  # the 500, the evolution, the verdicts
    assert res.samples[hash_id]["status"] == "done"
    assert [(c["node"], c["error"]) for c in res.calls] == [("evolve", None), ("score", None)]
    assert res.rounds[hash_id]["kept"] == 3


def test_persistent_500_interrupts_that_sample_only_and_the_next_run_finishes_it(
    sim, make_settings, tmp_path
):
    answers = [500, fence(THREE), verdicts(3)]
    report, res, (broken, fine) = run(
        sim, make_settings, tmp_path, answers, with_boxes=(True, False), max_retries=0
    )
    # The endpoint's fault, not the sample's: it is interrupted and resumes by itself.
    assert (report.done, report.failed, report.interrupted) == (1, 0, 1)
    assert res.samples[broken]["status"] == "interrupted"
    assert res.samples[fine]["status"] == "done"
    assert [r["hash_id"] for r in res.items] == [fine] * 3
    errors = [(c["hash_id"], c["node"], (c["error"] or "")[:22]) for c in res.calls]
    assert errors == [
        (broken, "evolve", "InternalServerError: E"),
        (fine, "evolve", ""),
        (fine, "score", ""),
    ]
    # The same command again: the interrupted sample runs, the finished one is skipped.
    seed = tmp_path / "seed.jsonl"
    result = CliRunner().invoke(
        app,
        ["run", str(seed), "--images", str(tmp_path / "images"), "--run", "test",
         "--base-url", sim.base_url, "--rounds", "1"],
        env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed, 1 skipped" in result.output
    assert Results(make_settings(sim, tmp_path)).samples[broken]["status"] == "done"


def test_a_run_with_samples_interrupted_by_the_endpoint_does_not_exit_0(
    sim, make_settings, tmp_path
):
    seed, images, (broken, fine) = make_seed(tmp_path, (True, False))
    sim.enqueue("drop")
    result = CliRunner().invoke(
        app,
        ["run", str(seed), "--images", str(images), "--run", "test", "--retries", "0",
         "--base-url", sim.base_url, "--rounds", "1", "--concurrency", "1"],
        env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "1 done, 0 failed" in result.output
    assert "1 samples interrupted" in result.output
    assert "run the same command again" in result.output


def test_a_400_naming_the_request_fails_that_sample_only(sim, make_settings, tmp_path):
    answers = [400, fence(THREE), verdicts(3)]
    report, res, (broken, fine) = run(
        sim, make_settings, tmp_path, answers, with_boxes=(True, False), max_retries=2
    )
    assert (report.done, report.failed, report.interrupted) == (1, 1, 0)
    failed = res.samples[broken]
    assert failed["status"] == "failed"
    assert re.match(rf"row 0 \({broken}\): \w*Error: Error code: 400 - ", failed["reason"])
    assert "Scripted error 400." in failed["reason"]
    assert res.samples[fine]["status"] == "done"
    assert sim.stats()["faults"]["scripted"] == 3  # a 400 is not retried


def test_an_outage_stops_the_run_and_the_next_run_exports_every_sample_once(
    sim_factory, make_settings, tmp_path
):
    server = sim_factory(seed=0, latency_ms=10)
    seed, images, hash_ids = make_seed(tmp_path, (True, False) * 12)
    settings = make_settings(server, images, rounds=1, max_retries=0)

    def go_down_after(requests):
        while server.stats()["requests"] < requests:
            time.sleep(0.002)
        server.set_behaviour("status", status=503)

    outage = threading.Thread(target=go_down_after, args=(12,), daemon=True)
    outage.start()
    first = runner.run(settings, seed)
    outage.join()
    assert first.stop.kind == "breaker"
    assert first.stop.message.startswith("the endpoint keeps failing")
    assert "InternalServerError" in first.stop.message
    assert first.failed == 0 and first.interrupted >= 10
    with Store(settings.results_db) as store:
        assert "failed" not in set(store.statuses().values())

    server.set_behaviour(None)  # the endpoint is back
    second = runner.run(settings, seed)
    assert not second.stopped and second.failed == second.interrupted == 0
    assert second.done + first.done == 24
    out = tmp_path / "out.json"
    assert export_json(settings.results_db, out).written == 24
    assert [s["hash_id"] for s in json.loads(out.read_text())] == hash_ids


# -- 7. answers that are not chat completions --------------------------------------------

NOT_A_COMPLETION = "the endpoint's answer was not a chat completion"


@pytest.mark.parametrize("kind", ["html", "no_choices", "no_message"])
def test_an_evolution_answer_that_is_not_a_completion_is_unusable_and_retried(
    kind, sim, make_settings, tmp_path
):
    answers = [{"kind": kind}, fence(THREE), verdicts(3)]
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, answers)
    assert (report.done, report.failed) == (1, 0)
    assert res.parses("evolve") == [f"unusable: {NOT_A_COMPLETION}", "ok"]
    first = res.calls[0]
    assert first["error"] is None
    # What came back is kept for `mmevol trace --raw`.
    assert {"html": "text/html", "no_choices": '"choices": []', "no_message": "chatcmpl-nomessage"}[
        kind
    ] in first["response"]
    record = res.rounds[hash_id]
    assert (record["attempts"], record["kept"], record["reason"]) == (2, 3, None)


def test_a_judge_answer_that_is_not_a_completion_is_asked_again(sim, make_settings, tmp_path):
    answers = [fence(THREE), {"kind": "no_choices"}, verdicts(3)]
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, answers)
    assert report.done == 1
    assert res.parses("score") == [f"unusable: {NOT_A_COMPLETION}", "ok"]
    assert res.rounds[hash_id]["kept"] == 3


def test_every_answer_not_a_completion_ends_the_round_empty_with_that_problem(
    sim, make_settings, tmp_path
):
    report, res, (hash_id,) = run(sim, make_settings, tmp_path, [{"kind": "html"}] * 3)
    assert (report.done, report.failed) == (1, 0)
    assert (
        res.rounds[hash_id]["reason"] == f"no usable evolution after 3 attempts: {NOT_A_COMPLETION}"
    )


@pytest.mark.parametrize("kind", ["html", "no_choices"])
def test_preflight_names_the_endpoint_and_what_came_back(kind, sim, make_settings, tmp_path):
    seed, images, _ = make_seed(tmp_path)
    sim.set_behaviour(kind, models=True)
    settings = make_settings(sim, images)
    with pytest.raises(EndpointProblem) as caught:
        runner.run(settings, seed)
    message = str(caught.value)
    assert sim.base_url in message
    assert {"html": "text/html: <!DOCTYPE html>", "no_choices": '{"id": "chatcmpl-empty"'}[
        kind
    ] in message
    assert "\n" not in message
    assert not settings.run_dir.exists()
    assert sim.stats()["by_kind"] == {"evolve": 0, "score": 0, "other": 0}
    result = CliRunner().invoke(
        app,
        ["run", str(seed), "--images", str(images), "--base-url", sim.base_url],
        env={"OPENAI_API_KEY": "sim"},
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: the endpoint ") and sim.base_url in result.output


def test_judge_unusable_every_time_leaves_the_round_empty_with_that_reason(
    sim, make_settings, tmp_path
):
    garbage = "<html><body>upstream timeout</body></html>"
    _, res, (hash_id,) = run(
        sim, make_settings, tmp_path, [fence(THREE), garbage, garbage, garbage]
    )
    record = res.rounds[hash_id]
    assert record["kept"] == 0
    assert record["reason"] == (
        "no item could be scored: judge answer unusable: the answer was an HTML page, not JSON"
    )
    assert {d["reason"].split(":")[0] for d in res.dropped} == {"unscored"}
    assert [c["node"] for c in res.calls] == ["evolve", "score", "score", "score"]
