"""The simulator against exact Erlang-A values, the Erlang-A values against closed forms, the profile against
its calibration, and the calibration against the data."""

import math
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.calibration import calibrate, kaplan_meier_quantiles
from streams.erlang import erlang_a as exact
from streams.sessions import BucketState, SessionConfig
from streams.simulator import ErlangAConfig, ProfileSimulator, erlang_a, load_profile, sample_quantiles
from streams.validation import ValidationConfig, validate_event

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "anonymous-bank-1999-02" / "calls.tsv"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday


def measure(events):
    """P(abandon), P(wait > 0), mean wait (s) and the number of calls, counted from the events."""
    enq, waits, abandons = {}, [], 0
    for e in events:
        t = round(e["ts"] * 1000)
        if e["type"] == "queue":
            enq[e["call_id"]] = t
        elif e["type"] in ("answer", "abandon"):
            waits.append(t - enq[e["call_id"]])
            abandons += e["type"] == "abandon"
    n = len(enq)
    assert len(waits) == n  # every call left the queue
    return abandons / n, sum(1 for w in waits if w > 0) / n, sum(waits) / n / 1000, n, waits


def test_the_simulator_matches_exact_erlang_a_and_the_control_with_one_agent_less_does_not():
    # 180 calls/h, 10 agents, AHT 180 s, mean patience 120 s, 500 h of arrivals: about 90,000 calls.
    cfg = ErlangAConfig(calls_per_hour=180, agents=10, aht_s=180, patience_s=120, hours=500)
    p_ab, p_wait, mean_wait, n, waits = measure(erlang_a(cfg, random.Random(7), START_MS, 7))
    assert 85_000 < n < 95_000  # Poisson(90,000): 16 standard deviations either way
    want = exact(180, 10, 180, 120)
    # Tolerances from the run length: the standard error of a proportion p over n calls is sqrt(p(1-p)/n);
    # successive calls are correlated through the queue, which we allow for with a factor 3 on the standard
    # error, and we accept 5 such errors. The mean wait's standard error uses the sample deviation of waits.
    sd_wait = math.sqrt(sum((w / 1000 - mean_wait) ** 2 for w in waits) / n)
    tol_ab = 5 * 3 * math.sqrt(want.p_abandon * (1 - want.p_abandon) / n)  # about 0.015
    tol_wait = 5 * 3 * math.sqrt(want.p_wait * (1 - want.p_wait) / n)  # about 0.024
    tol_mean = 5 * 3 * sd_wait / math.sqrt(n)  # about 1.3 s
    assert abs(p_ab - want.p_abandon) < tol_ab, (p_ab, want.p_abandon, tol_ab)
    assert abs(p_wait - want.p_wait) < tol_wait, (p_wait, want.p_wait, tol_wait)
    assert abs(mean_wait - want.mean_wait_s) < tol_mean, (mean_wait, want.mean_wait_s, tol_mean)
    # the control: the same run against the values for 9 agents must fail every comparison
    control = exact(180, 9, 180, 120)
    assert abs(p_ab - control.p_abandon) > tol_ab
    assert abs(p_wait - control.p_wait) > tol_wait
    assert abs(mean_wait - control.mean_wait_s) > tol_mean


def test_erlang_a_with_patience_equal_to_aht_is_an_infinite_server_queue():
    # With theta = mu every caller, waiting or served, leaves at rate mu: the number in the system is
    # Poisson(a), a = lambda / mu = 0.05 * 180 = 9, so P(wait > 0) = P(Poisson(9) >= 10) and
    # P(abandon) = E[(n - 10)+] * theta / lambda.
    a, agents = 9.0, 10
    pois = [math.exp(-a)]
    for k in range(1, 200):
        pois.append(pois[-1] * a / k)
    p_wait = sum(pois[agents:])
    queue = sum((k - agents) * p for k, p in enumerate(pois) if k > agents)
    got = exact(180, agents, 180, 180)
    assert got.p_wait == pytest.approx(p_wait, rel=1e-9)
    assert got.p_abandon == pytest.approx(queue * (1 / 180) / 0.05, rel=1e-9)
    assert got.mean_wait_s == pytest.approx(queue / 0.05, rel=1e-9)


def test_erlang_a_with_almost_endless_patience_tends_to_erlang_c():
    # Erlang C, a = 9 erlangs on 10 agents: P(wait) = (a^N/N! * N/(N-a)) / (sum_{k<N} a^k/k! + a^N/N! * N/(N-a))
    a, n = 9.0, 10
    top = a**n / math.factorial(n) * n / (n - a)
    erlang_c = top / (sum(a**k / math.factorial(k) for k in range(n)) + top)
    got = exact(180, n, 180, 1e9)
    assert got.p_wait == pytest.approx(erlang_c, rel=1e-4)
    assert got.mean_wait_s == pytest.approx(erlang_c * 180 / (n - a), rel=1e-4)  # E[W] = C / (N mu - lambda)


def test_the_same_seed_gives_the_same_events():
    cfg = ErlangAConfig(calls_per_hour=360, agents=3, aht_s=60, patience_s=30, hours=2)
    one = list(erlang_a(cfg, random.Random(5), START_MS, 5))
    assert one == list(erlang_a(cfg, random.Random(5), START_MS, 5))
    assert one != list(erlang_a(cfg, random.Random(6), START_MS, 6))
    profile = load_profile("bank")
    a = list(ProfileSimulator(profile, random.Random(3), START_MS, hours=3, seed=3).run())
    b = list(ProfileSimulator(load_profile("bank"), random.Random(3), START_MS, hours=3, seed=3).run())
    assert a == b


def test_profile_traffic_is_valid_canonical_events_that_the_sessionizer_accepts():
    start = START_MS + 4 * 86_400_000 + 8 * 3600_000  # Monday 2026-01-05 08:00 UTC
    events = list(ProfileSimulator(load_profile("bank"), random.Random(11), start, hours=6, seed=11).run())
    config = ValidationConfig(max_clock_skew_ms=10**12)
    buckets: dict[str, BucketState] = {}
    statuses = Counter()
    last = 0.0
    for raw in events:
        assert raw["ts"] >= last  # time order
        last = raw["ts"]
        event = validate_event(orjson.loads(orjson.dumps(raw)), config, START_MS)
        bucket = buckets.setdefault(event.key, BucketState(SessionConfig()))
        statuses[bucket.apply(event).status] += 1
    assert statuses == Counter(ok=len(events))
    kinds = Counter(e["type"] for e in events)
    for kind in (
        "ring",
        "queue",
        "answer",
        "hangup",
        "abandon",
        "hold",
        "unhold",
        "transfer",
        "wrapup",
        "survey",
        "agent_missed",
        "agent_state",
        "dial",
    ):
        assert kinds[kind] > 0, kind
    assert {e["queue"] for e in events if e["type"] == "queue"} <= set(load_profile("bank")["queues"])


def test_profile_arrivals_follow_the_calibrated_week():
    # A week of the bank profile starting Monday 00:00 UTC: the expected number of arrivals is the sum of the
    # calibrated rates over the 168 hours; Poisson, so 5 standard deviations is sqrt of it times 5.
    profile = load_profile("bank")
    start = START_MS + 4 * 86_400_000
    rings = sum(
        1
        for e in ProfileSimulator(profile, random.Random(1), start, hours=168, seed=1).run()
        if e["type"] == "ring"
    )
    expected = sum(sum(sum(day) for day in q["arrivals_per_hour"]) for q in profile["queues"].values())
    assert abs(rings - expected) < 5 * math.sqrt(expected), (rings, expected)
    # each weekday occurs 4 times in February 1999, so a week of rates is the month's 33,066 non-phantom calls
    # (33,344 - 278 PHANTOM, awk -F'\t' '$13!="PHANTOM"' calls.tsv | wc -l) divided by 4
    assert expected == pytest.approx(33_066 / 4, abs=0.5)


def test_kaplan_meier_by_hand():
    # waits: 10 (abandoned), 20 (served: censored), 30 (abandoned), 40 (abandoned)
    # S(10) = 3/4; at 20 one leaves censored; S(30) = 3/4 * (1 - 1/2) = 3/8; S(40) = 0
    q = kaplan_meier_quantiles([(10, True), (20, False), (30, True), (40, True)])
    levels = [i / 20 for i in range(21)]
    expected = [0.0] + [10.0 if lv <= 0.25 else 30.0 if lv <= 0.625 else 40.0 for lv in levels[1:]]
    assert q == expected
    # all served: patience longer than every wait, no quantile above 0 can be told
    assert kaplan_meier_quantiles([(5, False), (9, False)])[1:] == [None] * 20


def test_sampling_follows_the_quantiles():
    rng = random.Random(0)
    quantiles = [float(i) for i in range(21)]  # uniform on 0..20
    draws = [sample_quantiles(rng, quantiles) for _ in range(20_000)]
    assert abs(sum(draws) / len(draws) - 10.0) < 0.2  # mean 10, sd 5.8: 0.2 is about 5 standard errors
    assert sample_quantiles(random.Random(1), [0.0] + [None] * 20) == 3600.0


def test_the_committed_bank_profile_is_the_calibration_of_the_data():
    with DATA.open(encoding="utf-8") as f:
        fresh = calibrate(f)
    committed = orjson.loads(
        (Path(__file__).resolve().parents[2] / "streams" / "profiles" / "bank.json").read_bytes()
    )
    assert fresh == committed
    # spot checks against the data, by awk: PS (retail) has 21,269 non-phantom calls; its served calls'
    # median service time is 118 s (awk '$5=="PS" && $13=="AGENT" && $16>0 {print $16}' | sort -n | median)
    assert committed["queues"]["retail"]["calls"] == 21_269
    assert committed["queues"]["retail"]["service_s"][10] == 118.0
