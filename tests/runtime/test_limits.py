import asyncio

from mmevol.runtime.limits import Governor, Outcome, TokenBucket, estimate_prompt_tokens


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_bucket_lets_a_minute_through_then_paces():
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)

    async def take(n):
        for _ in range(n):
            await bucket.take(1)

    asyncio.run(take(60))
    assert clock.sleeps == []  # starts full
    asyncio.run(take(3))
    assert clock.now == 3.0  # then one a second


def test_bucket_lets_an_oversized_call_through_on_empty():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock, sleep=clock.sleep)
    asyncio.run(bucket.take(1000))
    assert clock.now == 0.0
    asyncio.run(bucket.take(50))
    assert clock.now == 30.0


def test_prompt_estimate_counts_low_detail_images():
    assert estimate_prompt_tokens("x" * 400) == 100
    assert estimate_prompt_tokens("x" * 400, images=1) == 185
    assert estimate_prompt_tokens("x" * 400, images=1, detail="high") == 355


def test_governor_halves_on_pushback_and_grows_back():
    gov = Governor(ceiling=16, cooldown=0.0)
    gov.on_status(429)
    assert gov.limit == 8
    gov.on_status(503)
    assert gov.limit == 4
    for _ in range(200):
        gov.on_status(200)
    assert gov.limit == 16
    gov.on_status(400)  # a client error is no pushback
    assert gov.limit == 16 and gov.pushbacks == 2


def test_governor_cuts_once_per_cooldown():
    gov = Governor(ceiling=16, cooldown=60.0)
    for _ in range(5):
        gov.on_status(429)
    assert gov.limit == 8 and gov.pushbacks == 5


def test_breaker_trips_on_sustained_failures_only():
    gov = Governor(ceiling=4, window=20, trip_share=0.5, trip_min=5)
    for _ in range(30):
        assert gov.on_outcome(Outcome(True)) is None
    for _ in range(4):
        assert gov.on_outcome(Outcome(False, "InternalServerError")) is None
    reason = gov.on_outcome(Outcome(False, "InternalServerError: boom"))
    assert reason is None  # 5 of 20 is not half
    for _ in range(5):
        reason = gov.on_outcome(Outcome(False, "InternalServerError: boom")) or reason
    assert reason == "10 of the last 20 model calls failed (last error: InternalServerError: boom)"


def test_governor_limits_calls_in_flight():
    async def scenario():
        gov = Governor(ceiling=2)
        await gov.acquire()
        await gov.acquire()
        third = asyncio.create_task(gov.acquire())
        await asyncio.sleep(0.01)
        assert not third.done()
        await gov.release()
        await asyncio.wait_for(third, 1)
        assert gov.in_flight == 2

    asyncio.run(scenario())


def test_a_waiter_gets_in_when_the_limit_grows_back():
    async def scenario():
        gov = Governor(ceiling=4, cooldown=0.0)
        for _ in range(3):
            gov.on_status(429)  # 4 -> 2 -> 1 -> 1
        assert gov.limit == 1
        await gov.acquire()
        waiter = asyncio.create_task(gov.acquire())
        await asyncio.sleep(0.01)
        assert not waiter.done() and gov.waiting == 1
        gov.on_status(200)  # 1 -> 2: a whole new place, no release needed
        await asyncio.wait_for(waiter, 1)
        assert gov.in_flight == 2 and gov.waiting == 0

    asyncio.run(scenario())
