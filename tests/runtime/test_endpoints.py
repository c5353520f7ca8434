"""Several endpoints: the pool's choices and rests (on its own, with a clock the test
moves), then runs and calls over real HTTP against two simulated endpoints."""

from __future__ import annotations

import asyncio

import openai
import pytest

from mmevol.inspection.status import run_summary
from mmevol.run import runner
from mmevol.run.events import Notice
from mmevol.runtime import endpoints
from mmevol.runtime.endpoints import EndpointPool, display_url, note_unusable
from mmevol.runtime.llm import CallKey, EndpointFailed, EndpointProblem, ModelClient
from mmevol.store.results import Store


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def pool_of(clock, *names, notices=None):
    notices = notices if notices is not None else []
    return EndpointPool([f"http://{n}/v1" for n in names], notices.append, clock)


def names(pool, slots):
    return [s.endpoint.name.removeprefix("http://").removesuffix("/v1") for s in slots]


def test_each_call_goes_to_the_endpoint_with_fewest_calls_in_flight(clock):
    pool = pool_of(clock, "a", "b", "c")
    first = [pool.take() for _ in range(3)]
    assert names(pool, first) == ["a", "b", "c"]
    pool.release(first[1])  # b has none in flight now
    assert names(pool, [pool.take()]) == ["b"]
    pool.release(first[0])
    pool.release(first[2])
    # a and c have none in flight; a has had as many calls as c: the first wins.
    assert names(pool, [pool.take(), pool.take()]) == ["a", "c"]


def test_a_failing_endpoint_rests_then_one_call_tries_it_again(clock):
    notices: list[str] = []
    pool = pool_of(clock, "a", "b", notices=notices)
    a = pool.take()
    pool.release(a, "APIConnectionError: Connection error.")
    assert [e.name for e in pool.usable()] == ["http://b/v1"]
    assert notices == [
        "endpoint http://a/v1 failed a call (APIConnectionError: Connection error.): resting "
        "it 15 s, the other 1 endpoint(s) take the calls"
    ]
    assert names(pool, [pool.take() for _ in range(3)]) == ["b", "b", "b"]
    clock.now += endpoints.FIRST_REST
    trial = pool.take()
    assert names(pool, [trial]) == ["a"] and trial.trial
    # While one call tries it, the others do not go there.
    assert names(pool, [pool.take()]) == ["b"]
    pool.release(trial)
    assert notices[-1] == "endpoint http://a/v1 answers again: calls go to it again"
    assert len(pool.usable()) == 2


def test_the_rest_doubles_while_the_endpoint_keeps_failing_up_to_five_minutes(clock):
    notices: list[str] = []
    pool = pool_of(clock, "a", "b", notices=notices)
    pool.release(pool.take(), "InternalServerError: 503")
    busy = pool.take()  # b has a call in flight: a, once its rest is over, takes the next
    rests = []
    for _ in range(7):
        a = pool.endpoints[0]
        clock.now = a.resting_until
        slot = pool.take()
        assert slot.endpoint is a and slot.trial
        pool.release(slot, "InternalServerError: 503")
        rests.append(a.rest)
    assert rests == [30, 60, 120, 240, 300, 300, 300]
    # An answer ends the rests: the next failure rests it 15 s again.
    clock.now = pool.endpoints[0].resting_until
    pool.release(pool.take())
    pool.release(busy)
    pool.release(pool.take(exclude=pool.endpoints[1:]), "InternalServerError: 503")
    assert pool.endpoints[0].rest == endpoints.FIRST_REST


def test_calls_that_began_before_the_rest_do_not_lengthen_it(clock):
    pool = pool_of(clock, "a", "b")
    early = [pool.take(), pool.take(), pool.take()]  # a, b, a
    pool.release(early[0], "APIConnectionError: x")
    until = pool.endpoints[0].resting_until
    pool.release(early[2], "APIConnectionError: x")
    assert pool.endpoints[0].resting_until == until and pool.endpoints[0].rest == 15


def test_when_every_endpoint_rests_a_call_goes_where_the_rest_ends_first(clock):
    pool = pool_of(clock, "a", "b")
    pool.release(pool.take(), "APIConnectionError: x")
    clock.now += 1
    pool.release(pool.take(), "APIConnectionError: x")
    assert pool.usable() == []
    slot = pool.take()
    assert names(pool, [slot]) == ["a"] and not slot.trial
    # Its failure is the call's (the client counts it); the rest stays as it was.
    pool.release(slot, "APIConnectionError: x")
    assert pool.endpoints[0].rest == 15
    # Its answer brings the endpoint back.
    pool.release(pool.take())
    assert [e.name for e in pool.usable()] == ["http://a/v1"]
    # Every endpoint left out: nothing to take.
    assert pool.take(exclude=pool.endpoints) is None


def test_one_endpoint_never_rests(clock):
    notices: list[str] = []
    pool = pool_of(clock, "a", notices=notices)
    pool.release(pool.take(), "APIConnectionError: x")
    assert pool.usable() == pool.endpoints and notices == []


def test_a_call_stopped_without_a_verdict_leaves_the_endpoint_as_it_was(clock):
    pool = pool_of(clock, "a", "b")
    pool.release(pool.take(), "APIConnectionError: x")
    clock.now += endpoints.FIRST_REST
    trial = pool.take()
    pool.release(trial, "APIConnectionError: stopped", done=False)
    a = pool.endpoints[0]
    assert a.rest == 15 and a.in_flight == 0 and not a.trying
    assert pool.take().endpoint is a  # the next call tries it


def test_endpoints_preflight_found_unusable_start_rested(clock):
    note_unusable("http://down/v1", "cannot reach the endpoint http://down/v1", clock)
    pool = pool_of(clock, "up", "down")
    assert [e.name for e in pool.usable()] == ["http://up/v1"]
    clock.now += endpoints.FIRST_REST
    assert len(pool.usable()) == 2
    # Alone, it is not rested: the run has nothing else.
    clock.now -= endpoints.FIRST_REST
    assert len(pool_of(clock, "down").usable()) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://user:secret@gpu3.lab:8443/v1?api-key=sk-1#x", "https://gpu3.lab:8443/v1"),
        ("https://api.example.com/openai/v1/", "https://api.example.com/openai/v1/"),
        ("http://[::1]:9000/v1", "http://[::1]:9000/v1"),
    ],
)
def test_the_recorded_endpoint_has_no_credentials_or_query(url, shown):
    assert display_url(url) == shown


# -- over HTTP: two simulated endpoints -----------------------------------------------------


def two(make_settings, a, b, images, **overrides):
    return make_settings(a, images, base_url=[a.base_url, b.base_url], **overrides)


def by_endpoint(settings) -> dict[str, dict]:
    return {r["endpoint"]: r for r in run_summary(settings.results_db)["endpoints"]}


class Events:
    """Collect a run's events; call ``then`` when a chosen one comes."""

    def __init__(self, when=None, then=None):
        self.seen: list = []
        self.when, self.then = when, then

    def __call__(self, event) -> None:
        self.seen.append(event)
        if self.when is not None and self.when(event, self.seen):
            self.when = None
            self.then()

    @property
    def notices(self) -> list[str]:
        return [e.text for e in self.seen if isinstance(e, Notice)]


@pytest.mark.parametrize("outage", ["status", "drop"])
def test_a_run_completes_when_one_of_two_endpoints_fails_half_way(
    outage, sim_factory, seed16, make_settings
):
    seed_path, images = seed16
    a, b = sim_factory(seed=0, latency_ms=10), sim_factory(seed=1, latency_ms=10)
    settings = two(make_settings, a, b, images)
    kw = {"status": 503} if outage == "status" else {}
    events = Events(
        when=lambda e, seen: sum(getattr(x, "kind", "") == "done" for x in seen) == 8,
        then=lambda: a.set_behaviour(outage, **kw),
    )
    report = runner.run(settings, seed_path, listener=events)
    assert (report.done, report.failed, report.interrupted, report.stop) == (16, 0, 0, None)
    counts = by_endpoint(settings)
    assert set(counts) == {a.base_url, b.base_url}
    assert counts[a.base_url]["errors"] > 0 and counts[a.base_url]["answered"] > 0
    assert counts[b.base_url]["errors"] == 0 and counts[b.base_url]["answered"] > 0
    assert counts[a.base_url]["calls"] + counts[b.base_url]["calls"] == len(calls_of(settings))
    assert any(f"endpoint {a.base_url} failed a call" in n for n in events.notices)
    # What each endpoint answered is what the run recorded as answered there.
    assert counts[b.base_url]["answered"] == b.stats()["answered"]


def calls_of(settings) -> list[dict]:
    with Store(settings.results_db) as store:
        return store.rows("calls")


def test_calls_spread_over_two_healthy_endpoints_by_calls_in_flight(
    sim_factory, seed16, make_settings
):
    seed_path, images = seed16
    # One endpoint answers three times slower: it holds its calls longer, so it gets fewer.
    a, b = sim_factory(seed=0, latency_ms=10), sim_factory(seed=1, latency_ms=30)
    settings = two(make_settings, a, b, images, concurrency=8)
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (16, 0)
    counts = by_endpoint(settings)
    fast, slow = counts[a.base_url]["calls"], counts[b.base_url]["calls"]
    assert fast == a.stats()["requests"] and slow == b.stats()["requests"]
    total = fast + slow
    assert slow >= 0.2 * total, (fast, slow)  # both carry a fair share
    assert fast > slow, (fast, slow)  # and the quicker one more


def test_two_equal_endpoints_share_the_calls(sim_factory, seed16, make_settings):
    seed_path, images = seed16
    a, b = sim_factory(seed=0, latency_ms=10), sim_factory(seed=1, latency_ms=10)
    settings = two(make_settings, a, b, images, concurrency=8)
    assert runner.run(settings, seed_path).done == 16
    counts = by_endpoint(settings)
    shares = [counts[s.base_url]["calls"] for s in (a, b)]
    assert min(shares) >= 0.35 * sum(shares), shares


def test_a_rested_endpoint_gets_calls_again_once_it_recovers(
    sim_factory, seed16, make_settings, monkeypatch
):
    monkeypatch.setattr(endpoints, "FIRST_REST", 0.2)
    monkeypatch.setattr(endpoints, "LONGEST_REST", 0.2)
    seed_path, images = seed16
    a, b = sim_factory(seed=0, latency_ms=10), sim_factory(seed=1, latency_ms=10)
    a.set_behaviour("status", status=503)  # down from the first call (not /models)
    settings = two(make_settings, a, b, images)
    # It comes back as soon as the pool has rested it.
    events = Events(
        when=lambda e, seen: isinstance(e, Notice) and "resting it" in e.text,
        then=lambda: a.set_behaviour(None),
    )
    report = runner.run(settings, seed_path, listener=events)
    assert (report.done, report.failed, report.interrupted) == (16, 0, 0)
    assert f"endpoint {a.base_url} answers again: calls go to it again" in events.notices
    counts = by_endpoint(settings)
    assert counts[a.base_url]["errors"] >= 1
    assert counts[a.base_url]["answered"] >= 1
    assert counts[a.base_url]["answered"] == a.stats()["answered"]


def test_preflight_with_one_of_two_endpoints_down_warns_and_runs(
    sim_factory, demo_seed, make_settings
):
    seed_path, images = demo_seed
    up, down = sim_factory(seed=0), sim_factory(seed=0)
    down.stop()  # nothing listens there any more
    settings = two(make_settings, up, down, images, limit=4)
    events = Events()
    report = runner.run(settings, seed_path, listener=events)
    assert report.done == 4 and report.interrupted == 0
    warning = next(n for n in events.notices if down.base_url in n)
    assert warning.startswith(f"cannot reach the endpoint {down.base_url}")
    assert warning.endswith("the run goes on with the other endpoints and tries it again later")
    # It started rested: no call went there (its rest outlasts this short run).
    assert set(by_endpoint(settings)) == {up.base_url}


def test_preflight_with_every_endpoint_down_refuses_in_one_line(
    sim_factory, demo_seed, make_settings
):
    seed_path, images = demo_seed
    a, b = sim_factory(seed=0), sim_factory(seed=0)
    a.stop()
    b.stop()
    settings = two(make_settings, a, b, images)
    with pytest.raises(EndpointProblem) as caught:
        runner.run(settings, seed_path)
    message = str(caught.value)
    assert message.startswith("none of the 2 endpoints is usable: cannot reach the endpoint")
    assert a.base_url in message and b.base_url in message and "\n" not in message
    assert not settings.run_dir.exists()


def ask_once(settings, key=None, text="<items>\n1. Q: What is red? A: The box.\n</items>"):
    settings.run_dir.mkdir(parents=True, exist_ok=True)

    async def go():
        with Store(settings.results_db) as store:
            async with ModelClient(settings, store) as client:
                return await client.ask(key or CallKey("0_a.jpg", 1, "score", 0), text)

    return asyncio.run(go())


def test_a_call_an_endpoint_fails_goes_on_on_the_other_at_once(
    sim_factory, make_settings, tmp_path
):
    a, b = sim_factory(seed=0), sim_factory(seed=0)
    a.enqueue("status", status=503)
    answer = ask_once(two(make_settings, a, b, tmp_path, max_retries=5))
    assert answer.text and a.stats()["requests"] == 1 and b.stats()["requests"] == 1
    settings = two(make_settings, a, b, tmp_path)
    rows = calls_of(settings)
    assert [(r["endpoint"], r["error"] is None) for r in rows] == [
        (a.base_url, False),
        (b.base_url, True),
    ]


def test_a_sample_fault_is_not_sent_to_another_endpoint(sim_factory, make_settings, tmp_path):
    a, b = sim_factory(seed=0), sim_factory(seed=0)
    a.enqueue("status", status=400)
    with pytest.raises(openai.BadRequestError):
        ask_once(two(make_settings, a, b, tmp_path))
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 0)


def test_a_call_every_endpoint_fails_interrupts_its_sample(sim_factory, make_settings, tmp_path):
    a, b = sim_factory(seed=0), sim_factory(seed=0)
    for server in (a, b):
        server.set_behaviour("status", status=503)
    with pytest.raises(EndpointFailed, match="InternalServerError"):
        ask_once(two(make_settings, a, b, tmp_path, max_retries=1))
    # Once on the first (at once elsewhere), then the last one with its retry.
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 2)
