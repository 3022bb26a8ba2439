"""Fuzzing the serving boundary: ``Selector.select`` and ``select_batch`` never raise, and every
answer is a model of the served pool, for tens of thousands of malformed requests.

The issue's requirement: "Fuzzing (hypothesis or atheris) of ``select`` with >= 10,000 malformed
requests: no exception, every answer a valid model id of the pool". The requests are mappings and
:class:`~modi.runtime.Request` objects whose fields are missing, ``None``, NaN, +-inf, negative,
zero, huge, integers beyond the float range, bools, strings, bytes, containers or arbitrary
objects (with unknown extra keys and unhashable or very long client ids), and non-mapping garbage.
Each is fed to selectors with a learned model (LinUCB on two pools, under the calibrated shield,
and an always-most-accurate one that the earlier budget shield has to correct) and to one
without a model (ModiPick only). The expected
reason of each answer is derived from :func:`~modi.runtime.requests.parse_request`, called here.

Field values come from pools of interesting values (one ``sampled_from`` draw per field, so ten
thousand examples take seconds, not minutes), the corrupted field also from ``st.floats`` and
``st.text``; batch rows come from a corpus of requests built from the same pools with a seeded
RNG.

Bugs it found, fixed, each pinned by a regression test at the end: numbers beyond the float
range (``10**400``) made ``parse_request`` raise ``OverflowError`` instead of
:class:`InvalidRequest` (and one such row turned a whole batch into internal-error fallbacks);
the scalar ModiPick rule divided by an empty ``M_E`` at absurd budgets (~1e15 ms, from an
invalid request's ``sla - elapsed - upload``); a client id whose ``__hash__`` raises something
else than ``TypeError``, or a field whose ``__float__`` raises, gave an internal error.
"""

from __future__ import annotations

import math
import random
import types
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modi.envs.catalog import load_preset
from modi.runtime import Decision, Decisions, PoolProfile, Request, RequestBatch, Selector
from modi.runtime.modipick import modipick_select, modipick_select_one
from modi.runtime.requests import InvalidRequest, RequestLimits, parse_request

TABLE2 = PoolProfile.from_pool(load_preset("pool", "modipick_table2"))
P2 = PoolProfile.from_pool(load_preset("pool", "mdinference_p2"))
LIMITS = RequestLimits()
NUMERIC = ("sla_ms", "elapsed_ms", "upload_ms", "payload_bytes", "queue_len", "slowdown",
           "srtt_ms", "rttvar_ms", "client_dl_ms", "client_dlvar_ms")  # fmt: skip
REQUIRED = NUMERIC[:4]
OPTIONAL = NUMERIC[4:]
FIELDS = (*NUMERIC, "client_id")
UPPER = {
    "sla_ms": LIMITS.max_sla_ms,
    "elapsed_ms": LIMITS.max_elapsed_ms,
    "upload_ms": LIMITS.max_upload_ms,
    "payload_bytes": LIMITS.max_payload_bytes,
    "queue_len": LIMITS.max_queue_len,
    "slowdown": LIMITS.max_slowdown,
    "srtt_ms": LIMITS.max_rtt_ms,
    "rttvar_ms": LIMITS.max_rtt_ms,
    "client_dl_ms": LIMITS.max_download_ms,
    "client_dlvar_ms": LIMITS.max_download_ms,
}
#: Fields that must be > 0 (the others >= 0).
POSITIVE = ("sla_ms", "slowdown")

SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(bandit_selector_files: dict[str, Path]) -> dict[str, Path]:
    """A trained LinUCB and an 'always the most accurate model' selector (which the budget
    shield has to correct for tight budgets), both pool-agnostic."""
    return bandit_selector_files


def _selectors(files: dict[str, Path]) -> dict[str, Selector]:
    """Fresh selectors (their counts start at zero): three learned, one ModiPick-only."""
    sels = {
        "linucb": Selector.load(files["linucb"], TABLE2, strict=True, seed=0),
        "greedy": Selector.load(files["greedy"], TABLE2, strict=True, seed=1, shield="budget"),
        "linucb_p2": Selector.load(files["linucb"], P2, strict=True, seed=2),
        "no_model": Selector(TABLE2, seed=3),
    }
    assert [s.learned for s in sels.values()] == [True, True, True, False]
    return sels


# --------------------------------------------------------------------------- value pools
class _Missing:
    """Leave a field out of a mapping (``None`` in a Request)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Opaque:
    """An arbitrary object (hashable, not a number)."""

    def __repr__(self) -> str:
        return "_Opaque()"


class _OddMapping(Mapping[Any, Any]):
    """A read-only mapping that is not a dict."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"_OddMapping({self._data!r})"


_RNG = np.random.default_rng(20_240_601)


def _spread(lo: float, hi: float, n: int) -> list[float]:
    """``n`` floats in ``[lo, hi]`` (``lo >= 0``), half uniform, half log-uniform."""
    uni = _RNG.uniform(lo, hi, n - n // 2)
    log = np.exp(_RNG.uniform(math.log(max(lo, 1e-9)), math.log(hi), n // 2))
    return [float(x) for x in np.clip(np.concatenate([uni, log]), lo, hi)]


#: Never a valid number for any field (though ``float()`` of some works: "12", b"12").
NOT_A_NUMBER: tuple[Any, ...] = (
    True,
    False,
    np.bool_(True),
    "12",
    "abc",
    "",
    "nan",
    "-1",
    "1e999",
    "200.0" * 1000,
    b"12",
    b"",
    bytearray(b"1"),
    [],
    [1.0],
    [200.0, 40.0],
    {},
    {"v": 1},
    (1.0,),
    {1.0},
    frozenset(),
    1j,
    complex(200, 0),
    Decimal("1.5"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("-Infinity"),
    np.array(1.0),
    np.array([1.0, 2.0]),
    _Opaque(),
    object(),
    object,
    Request,
    float,
    len,
    Ellipsis,
    NotImplemented,
    range(3),
    ValueError("x"),
)
NON_FINITE: tuple[Any, ...] = (
    float("nan"),
    float("inf"),
    float("-inf"),
    -float("nan"),
    np.float32("nan"),
    np.float64("inf"),
    np.float16("-inf"),
    np.longdouble("inf"),
)
#: Numbers beyond the float range: parse_request raises OverflowError for them (known bug).
OVERFLOWING: tuple[Any, ...] = (
    10**400,
    -(10**400),
    2**1024,
    -(2**1024),
    Fraction(10**400),
    Fraction(-(10**401), 3),
)


def _valid_pool(field: str) -> tuple[Any, ...]:
    """Values inside the field's limits: edges, ints, floats of all magnitudes, numpy numbers."""
    upper = UPPER[field]
    low_ok = field not in POSITIVE
    edges: list[Any] = [upper, math.nextafter(upper, 0.0), upper / 2, 1, 1.0, 7, 100.0]
    edges += [0, 0.0, -0.0, 5e-324] if low_ok else [5e-324, 1e-300, math.nextafter(0.0, 1.0)]
    ints = [int(x) for x in _spread(1.0, upper, 20)]
    numpy = [np.float32(x) for x in _spread(1.0, upper, 4)] + [np.int64(3), np.uint8(200)]
    return (*edges, *_spread(0.0, upper, 60), *ints, *numpy, Fraction(1, 3), Fraction(7, 2))


def _invalid_pool(field: str, overflow: bool) -> tuple[Any, ...]:
    """Values that make any request carrying them invalid (``overflow``: also numbers beyond
    the float range, which hit the known OverflowError bug)."""
    upper = UPPER[field]
    neg = [-x for x in _spread(1e-6, 1e300, 30)] + [-5e-324, -1, -1.0, -0.5, -(10**300)]
    above = [math.nextafter(upper, math.inf), upper * (1 + 1e-12), upper + 1, int(upper) + 1]
    above += [*_spread(upper * 1.01, 1e300, 30), 1e300, 1.7e308, 10**300, np.float64(1e300)]
    values: list[Any] = [*NON_FINITE, *NOT_A_NUMBER, *neg, *above, np.int64(-5), np.float32(-1)]
    if field in POSITIVE:
        values += [0, 0.0, -0.0, np.float32(0.0), Fraction(0)]
    if field in REQUIRED:
        values += [None, MISSING] * 4
    if overflow:
        values += OVERFLOWING
    return tuple(values)


VALID = {f: _valid_pool(f) for f in NUMERIC}
INVALID = {(f, o): _invalid_pool(f, o) for f in NUMERIC for o in (False, True)}
ABSENT: tuple[Any, ...] = (None, MISSING)
#: Realistic values (requests the learned model and the shield see in service).
REALISTIC = {
    "sla_ms": tuple(_spread(1.0, 600.0, 100)),
    "upload_ms": tuple(_spread(0.0, 300.0, 100)),
    "extra_ms": (*_spread(0.0, 30.0, 20), 0.0),
    "payload_bytes": (330e3, 150_528, 1e6, 330_000),
}
HASHABLE_IDS: tuple[Any, ...] = (
    None,
    "phone-17",
    "",
    "\x00",
    "é" * 3,
    0,
    -1,
    2**70,
    10**400,
    1.5,
    float("nan"),
    float("inf"),
    True,
    b"id",
    (1, "a"),
    (),
    frozenset({1, 2}),
    _Opaque(),
    "x" * 100_000,  # very long client ids
    "\U0001f600" * 20_000,
    *(f"client-{i}" for i in range(8)),
    *range(8),
)
UNHASHABLE_IDS: tuple[Any, ...] = (
    [],
    ["x"],
    {},
    {"id": 1},
    {1, 2},
    (1, [2]),
    bytearray(b"id"),
    np.array([1, 2]),
    [["deep"]],
)
EXTRA_KEYS: tuple[dict[Any, Any], ...] = (
    {},
    {},
    {},
    {},
    {"sla": 200.0},
    {"SLA_MS": 1.0},
    {"sla_ms ": "1"},
    {"": None},
    {"payload": b"\x00" * 64},
    {"extra": [1, 2], "more": {"a": 1}},
    {1: 2, (1, 2): 3, None: 4},
    {f"k{i}": i for i in range(50)},
)
MAPPING_TYPES: tuple[Callable[[dict[Any, Any]], Mapping[Any, Any]], ...] = (
    dict,
    dict,
    dict,
    OrderedDict,
    types.MappingProxyType,
    _OddMapping,
)


def _namespace(**attrs: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**attrs)


#: Neither a Request nor a mapping (some with request-like attributes).
GARBAGE: tuple[Any, ...] = (
    None,
    0,
    42,
    -1.5,
    float("nan"),
    "",
    "sla_ms=200",
    b"{}",
    [],
    [{"sla_ms": 200.0, "elapsed_ms": 40.0, "upload_ms": 40.0, "payload_bytes": 330e3}],
    (200.0, 40.0, 40.0, 330e3),
    [200.0, 40.0, 40.0, 330e3, "c1"],
    {"sla_ms", "elapsed_ms", "upload_ms", "payload_bytes"},
    frozenset(),
    np.array([200.0, 40.0, 40.0, 330e3]),
    np.zeros((2, 2)),
    _namespace(sla_ms=200.0, elapsed_ms=40.0, upload_ms=40.0, payload_bytes=330e3),
    _namespace(sla_ms=200.0, elapsed_ms=40.0, upload_ms=40.0),
    _namespace(sla_ms="200", elapsed_ms=b"40", upload_ms=40, payload_bytes=None),
    _namespace(sla_ms=1e300, elapsed_ms=-1e300, upload_ms=0.0),
    _namespace(sla_ms=10**400, elapsed_ms=0.0, upload_ms=0.0),
    _namespace(sla_ms=Fraction(10**400), elapsed_ms=0.0, upload_ms=0.0),
    _namespace(sla_ms=[1.0], elapsed_ms={}, upload_ms=object()),
    _namespace(client_id=[1]),
    Decision("squeezenet", 0, "learned"),
    RequestBatch([200.0, 100.0], [40.0, 10.0], [40.0, 10.0], [330e3, 1e3]),
    Request,
    dict,
    object(),
    _Opaque(),
    len,
    math,
    range(4),
    Ellipsis,
    ValueError("not a request"),
)

#: Where the fuzz corrupts a request (the client id only by an unhashable value).
CORRUPTIBLE = FIELDS
FIELD_POOLS = {
    (f, o): (VALID[f], INVALID[f, o]) + (() if f in REQUIRED else (ABSENT,))
    for f in NUMERIC
    for o in (False, True)
}
ID_POOLS = (HASHABLE_IDS, UNHASHABLE_IDS)
BOOLS = (False, True)
N_BAD = (1, 1, 1, 2, 3)
#: Kinds of request: ``valid``; ``any``: every field drawn valid or invalid; ``malformed``: a
#: valid one with one to three fields corrupted; ``corrupt_any``: an ``any`` one so corrupted;
#: ``garbage``: neither a Request nor a mapping.
MALFORMED_KINDS = ("malformed", "malformed", "corrupt_any", "garbage")
MIXED_KINDS = ("valid", "valid", "any", "any", "malformed", "corrupt_any", "garbage")
#: Request-like, but not a Request (nor a mapping).
RequestTuple = namedtuple(
    "RequestTuple",
    [*NUMERIC, "client_id"],
)
#: How garbage is made: a fixed oddity, or request fields in something that is not a mapping.
GARBAGE_FORMS = ("fixed", "fixed", "namespace", "namedtuple", "tuple", "items")

Choose = Callable[[Sequence[Any]], Any]


def _make_request(
    choose: Choose, kind: str, overflow: bool, bad_value: Callable[[str], Any] | None = None
) -> Any:
    """A request of ``kind`` built from the pools, every choice made by ``choose`` (hypothesis
    draws or a seeded RNG); ``bad_value(field)`` (default: from the pool) corrupts a field."""
    form = choose(GARBAGE_FORMS) if kind == "garbage" else "request"
    if form == "fixed":
        return choose(GARBAGE)
    fields: dict[str, Any] = {}
    if kind in ("valid", "malformed"):
        if choose(BOOLS):
            up = choose(REALISTIC["upload_ms"])
            fields["sla_ms"] = choose(REALISTIC["sla_ms"])
            fields["elapsed_ms"] = up + choose(REALISTIC["extra_ms"])
            fields["upload_ms"] = up
            fields["payload_bytes"] = choose(REALISTIC["payload_bytes"])
        else:
            fields.update((f, choose(VALID[f])) for f in REQUIRED)
        for f in OPTIONAL:
            fields[f] = choose(ABSENT) if choose(BOOLS) else choose(VALID[f])
        fields["client_id"] = choose(HASHABLE_IDS)
    else:
        for f in NUMERIC:
            fields[f] = choose(choose(FIELD_POOLS[f, overflow]))
        fields["client_id"] = choose(choose(ID_POOLS))
    if kind in ("malformed", "corrupt_any"):
        for _ in range(choose(N_BAD)):
            f = choose(CORRUPTIBLE)
            if f == "client_id":
                fields[f] = choose(UNHASHABLE_IDS)
            else:
                fields[f] = bad_value(f) if bad_value else choose(INVALID[f, overflow])
    present = {f: v for f, v in fields.items() if v is not MISSING}
    if form == "namespace":
        return types.SimpleNamespace(**present)
    if form == "namedtuple":
        return RequestTuple(**{f: None if v is MISSING else v for f, v in fields.items()})
    if form == "tuple":
        return tuple(present.values())
    if form == "items":
        return list(present.items())
    if choose(BOOLS):
        kwargs: dict[str, Any] = {f: None if v is MISSING else v for f, v in fields.items()}
        return Request(**kwargs)
    return choose(MAPPING_TYPES)({**choose(EXTRA_KEYS), **present})


_SAMPLERS: dict[int, tuple[Sequence[Any], st.SearchStrategy[Any]]] = {}


def _sampler(seq: Sequence[Any]) -> st.SearchStrategy[Any]:
    """``st.sampled_from(seq)``, built once per pool."""
    hit = _SAMPLERS.get(id(seq))
    if hit is None or hit[0] is not seq:
        hit = _SAMPLERS[id(seq)] = (seq, st.sampled_from(seq))
    return hit[1]


@cache
def _bad_values(field: str, overflow: bool) -> st.SearchStrategy[Any]:
    """A corrupting value: from the pool, or hypothesis' own negative / too large floats,
    integers and text."""
    upper = UPPER[field]
    options = [
        _sampler(INVALID[field, overflow]),
        st.floats(max_value=-5e-324),
        st.floats(min_value=upper, exclude_min=True),
        st.integers(min_value=-(10**300), max_value=-1),
        st.text(max_size=8),
    ]
    if field in POSITIVE:
        options.append(st.floats(max_value=0.0))
    return st.one_of(options)


@st.composite
def requests(draw: Any, kinds: Sequence[str], overflow: bool = True) -> Any:
    """One request of one of ``kinds`` (see :func:`_make_request`)."""

    def choose(seq: Sequence[Any]) -> Any:
        return draw(_sampler(seq))

    return _make_request(choose, choose(kinds), overflow, lambda f: draw(_bad_values(f, overflow)))


@cache
def _corpus(overflow: bool) -> tuple[Any, ...]:
    """3,000 mixed requests from a seeded RNG, for batches."""
    rng = random.Random(7 + overflow)
    reqs = [_make_request(rng.choice, rng.choice(MIXED_KINDS), overflow) for _ in range(3_000)]
    return tuple(reqs)


# --------------------------------------------------------------------------- checks
def _parse_error(request: Any) -> BaseException | None:
    """What parse_request raises for ``request`` (None: the request is valid); it raises
    nothing but InvalidRequest, whatever the request holds."""
    try:
        parse_request(request, LIMITS)
    except InvalidRequest as e:
        return e
    return None


def _check_decision(d: Any, sel: Selector, err: BaseException | None) -> None:
    """``d`` is a valid answer of ``sel`` to a request on which parse_request raised ``err``."""
    ids = sel.pool.ids
    assert isinstance(d, Decision), d
    assert type(d.index) is int and 0 <= d.index < len(ids), d
    assert d.model_id == ids[d.index] and d.model_id in ids, d
    assert d.source in ("learned", "fallback"), d
    assert d.learned == (d.source == "learned"), d
    if err is not None:
        assert d.source == "fallback", d
        assert d.reason == f"invalid request: {err}", (d.reason, str(err))
    elif sel.learned:
        assert d.reason.startswith("shield: ") if d.source == "fallback" else d.reason == "", d
    else:
        assert d.source == "fallback" and d.reason.startswith("no learned model: "), d


def _check_batch(
    ds: Any, sel: Selector, batch: Sequence[Any], errors: Sequence[BaseException | None]
) -> None:
    """``ds`` answers every request of ``batch`` validly, each row with its own reason."""
    assert isinstance(ds, Decisions), ds
    assert len(ds) == len(batch) == len(ds.reasons) == ds.learned.shape[0]
    assert ds.index.dtype == np.intp and ds.learned.dtype == np.bool_
    assert ((ds.index >= 0) & (ds.index < sel.pool.num_models)).all(), ds.index
    assert all(m in sel.pool.ids for m in ds.model_ids)
    for d, err in zip(ds, errors, strict=True):
        _check_decision(d, sel, err)


# --------------------------------------------------------------------------- select
N_MALFORMED = 10_000


def test_select_survives_10k_malformed_requests(files: dict[str, Path]) -> None:
    """The issue's requirement: 10,000 malformed requests, each sent to four selectors (three
    learned, one ModiPick-only): no exception, a valid model of the pool, the reason of
    parse_request's rejection."""
    sels = _selectors(files)
    seen = {"requests": 0, "request_objects": 0, "mappings": 0}

    @settings(max_examples=N_MALFORMED, **SETTINGS)
    @given(requests(MALFORMED_KINDS))
    def fuzz(request: Any) -> None:
        err = _parse_error(request)
        assert err is not None, f"the strategy made a valid request: {request!r}"
        seen["requests"] += 1
        seen["request_objects"] += isinstance(request, Request)
        seen["mappings"] += isinstance(request, Mapping)
        for sel in sels.values():
            _check_decision(sel.select(request), sel, err)

    fuzz()
    n = seen["requests"]
    assert n >= N_MALFORMED
    assert seen["request_objects"] > n / 5 and seen["mappings"] > n / 5, seen
    for name, sel in sels.items():
        c = sel.counts
        assert c["learned"] == c["shield"] == c["no_model"] == c["inference_error"] == 0, c
        assert c["invalid"] == n and c["internal_error"] == 0, (name, c, seen)
        assert sum(c.values()) == n, (name, c, seen)


def test_select_on_a_mix_of_valid_and_malformed_requests(files: dict[str, Path]) -> None:
    """Valid requests get a learned decision (or the shield's, or ModiPick's without a model,
    with the reason), invalid ones ModiPick with parse_request's reason."""
    sels = _selectors(files)
    seen = {"valid": 0, "invalid": 0}

    @settings(max_examples=2_000, **SETTINGS)
    @given(requests(MIXED_KINDS))
    def fuzz(request: Any) -> None:
        err = _parse_error(request)
        seen["valid" if err is None else "invalid"] += 1
        for sel in sels.values():
            _check_decision(sel.select(request), sel, err)

    fuzz()
    assert seen["invalid"] > seen["valid"] > 200, seen
    n = seen["valid"] + seen["invalid"]
    for name, sel in sels.items():
        c = sel.counts
        assert sum(c.values()) == n and c["invalid"] == seen["invalid"], (name, c, seen)
        assert c["internal_error"] == c["inference_error"] == 0, (name, c)
        if sel.learned:
            assert c["learned"] + c["shield"] == seen["valid"] and c["learned"] > 0, (name, c)
        else:
            assert c["no_model"] == seen["valid"] and c["learned"] == 0, (name, c)
    assert sels["greedy"].counts["shield"] > 0, "the budget shield corrected some choices"
    assert sels["linucb"].counts["shield"] > 0, "requests past the training ranges were shielded"


# --------------------------------------------------------------------------- select_batch
def _batches(corpus: Sequence[Any], max_size: int) -> st.SearchStrategy[list[Any]]:
    """Lists of corpus requests, their length uniform in ``[0, max_size]``."""
    item = st.sampled_from(corpus)
    return st.sampled_from(range(max_size + 1)).flatmap(
        lambda n: st.lists(item, min_size=n, max_size=n)
    )


def _fuzz_batches(files: dict[str, Path], overflow: bool, examples: int) -> dict[str, Any]:
    """Batches of up to 64 corpus requests to every selector; returns what was seen."""
    sels = _selectors(files)
    seen: dict[str, Any] = {"rows": 0, "batches": 0}

    @settings(max_examples=examples, **SETTINGS)
    @given(_batches(_corpus(overflow), 64))
    def fuzz(batch: list[Any]) -> None:
        errors = [_parse_error(r) for r in batch]
        seen["rows"] += len(batch)
        seen["batches"] += 1
        for sel in sels.values():
            _check_batch(sel.select_batch(batch), sel, batch, errors)

    fuzz()
    for name, sel in sels.items():
        c = sel.counts
        assert sum(c.values()) == seen["rows"], (name, c, seen)
        assert c["internal_error"] == c["inference_error"] == 0, (name, c)
    seen["selectors"] = sels
    return seen


def test_select_batch_survives_malformed_batches(files: dict[str, Path]) -> None:
    """500 batches of up to 64 mixed requests: one valid decision per row, each row with its
    own reason."""
    seen = _fuzz_batches(files, overflow=False, examples=500)
    assert seen["batches"] >= 500 and seen["rows"] > 500 * 16, seen
    for name, sel in seen["selectors"].items():
        if sel.learned:
            assert sel.counts["learned"] > 0, (name, sel.counts)


def test_select_batch_with_overflowing_numbers_still_answers_every_row(
    files: dict[str, Path],
) -> None:
    """Batches that may hold numbers beyond the float range: one valid decision per row, the
    overflowing rows invalid with their reason, the others unaffected."""
    seen = _fuzz_batches(files, overflow=True, examples=100)
    assert seen["batches"] >= 100


_COLUMN_POOLS = {
    f: tuple(v for v in (*VALID[f], *INVALID[f, False]) if type(v) is float) for f in NUMERIC
}


@st.composite
def request_batches(draw: Any) -> RequestBatch:
    """Columnar batches: each entry realistic with probability ``p``, otherwise any float of
    the field's pools (NaN, inf, negative, absurd included); optional columns may be absent."""
    n = draw(st.integers(0, 64))
    p = draw(st.sampled_from((0.0, 0.5, 0.9, 1.0)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    realistic = {"sla_ms": 200.0, "elapsed_ms": 45.0, "upload_ms": 40.0, "payload_bytes": 33e4}

    def column(f: str) -> list[float]:
        pool = _COLUMN_POOLS[f]
        bad = [pool[i] for i in rng.integers(0, len(pool), n)]
        real = realistic.get(f, 1.0) * rng.uniform(0.2, 2.0, n)
        return np.where(rng.random(n) < p, real, bad).tolist()

    clients = [HASHABLE_IDS[i] for i in rng.integers(0, len(HASHABLE_IDS), n)]
    return RequestBatch(
        column("sla_ms"),
        column("elapsed_ms"),
        column("upload_ms"),
        column("payload_bytes"),
        clients if draw(st.booleans()) else None,
        column("queue_len") if draw(st.booleans()) else None,
        column("slowdown") if draw(st.booleans()) else None,
        column("srtt_ms") if draw(st.booleans()) else None,
        column("rttvar_ms") if draw(st.booleans()) else None,
        column("client_dl_ms") if draw(st.booleans()) else None,
        column("client_dlvar_ms") if draw(st.booleans()) else None,
    )


def test_select_batch_on_columns_with_bad_values(files: dict[str, Path]) -> None:
    sels = _selectors(files)
    rows = [0]

    @settings(max_examples=300, **SETTINGS)
    @given(request_batches())
    def fuzz(batch: RequestBatch) -> None:
        reqs = [batch.row(i) for i in range(len(batch))]
        errors = [_parse_error(r) for r in reqs]
        rows[0] += len(batch)
        for sel in sels.values():
            _check_batch(sel.select_batch(batch), sel, reqs, errors)

    fuzz()
    for name, sel in sels.items():
        c = sel.counts
        assert sum(c.values()) == rows[0], (name, c)
        assert c["internal_error"] == c["inference_error"] == 0, (name, c)


def test_select_batch_of_garbage_containers_never_raises(files: dict[str, Path]) -> None:
    """Not even a list: None, numbers, strings (iterated per character), dicts (their keys),
    generators; the answer has one valid row per item (none when it cannot be iterated)."""
    sels = _selectors(files)
    req = {"sla_ms": 200.0, "elapsed_ms": 40.0, "upload_ms": 40.0, "payload_bytes": 330e3}
    cases: list[tuple[Callable[[], Any], int]] = [
        (lambda: None, 0),
        (lambda: 42, 0),
        (lambda: 3.5, 0),
        (lambda: object(), 0),
        (lambda: "abc", 3),
        (lambda: b"ab", 2),
        (lambda: req, 4),  # a mapping: its keys
        (lambda: (r for r in [req, None]), 2),
        (lambda: (req, None), 2),
        (lambda: np.array([1.0, 2.0]), 2),
        (lambda: range(3), 3),
    ]
    for make, n in cases:
        for sel in sels.values():
            garbage = make()
            ds = sel.select_batch(garbage)
            assert len(ds) == n, (garbage, ds.reasons)
            assert ((ds.index >= 0) & (ds.index < sel.pool.num_models)).all()
            assert all(m in sel.pool.ids for m in ds.model_ids)
            # a reason for every row but the learned ones
            assert [bool(r) for r in ds.reasons] == (~ds.learned).tolist(), ds.reasons


# --------------------------------------------------------------------------- counters
def test_counts_add_up_to_the_number_of_decisions(files: dict[str, Path]) -> None:
    """After a fuzz of single and batch calls, ``counts`` sums to the number of decisions (one
    per select, one per batch row), with each invalid request counted as ``invalid``."""
    sels = _selectors(files)
    expected = {"decisions": 0, "invalid": 0}

    @settings(max_examples=1_000, **SETTINGS)
    @given(st.lists(st.sampled_from(_corpus(True)), min_size=1, max_size=8), st.booleans())
    def fuzz(batch: list[Any], as_batch: bool) -> None:
        expected["decisions"] += len(batch)
        expected["invalid"] += sum(_parse_error(r) is not None for r in batch)
        for sel in sels.values():
            if as_batch:
                sel.select_batch(batch)
            else:
                for r in batch:
                    sel.select(r)

    fuzz()
    for name, sel in sels.items():
        c = sel.counts
        assert set(c) == {
            "learned",
            "shield",
            "invalid",
            "no_model",
            "inference_error",
            "internal_error",
        }
        assert all(type(v) is int and v >= 0 for v in c.values()), c
        assert sum(c.values()) == expected["decisions"], (name, c, expected)
        assert c["invalid"] == expected["invalid"], (name, c, expected)
        assert c["internal_error"] == c["inference_error"] == 0, (name, c)
        valid = expected["decisions"] - expected["invalid"]
        if sel.learned:
            assert c["learned"] + c["shield"] == valid and c["no_model"] == 0, (name, c)
        else:
            assert c["no_model"] == valid and c["learned"] == c["shield"] == 0, (name, c)


# --------------------------------------------------------------------------- regressions
_VALID = {"sla_ms": 200.0, "elapsed_ms": 40.0, "upload_ms": 40.0, "payload_bytes": 330e3}


class _BadHash:
    def __hash__(self) -> int:
        raise ValueError("unhashable in a hostile way")


class _BadMapping(dict):  # type: ignore[type-arg]
    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no reading me")


class _BadFloat:
    def __float__(self) -> float:
        raise RuntimeError("no float")


@pytest.mark.parametrize(
    "request_",
    [
        {**_VALID, "sla_ms": 10**400},
        {**_VALID, "queue_len": 10**400},
        {**_VALID, "payload_bytes": Fraction(10**400)},
        Request(200.0, 10**400, 40.0, 330e3),
    ],
    ids=["sla_int", "queue_int", "payload_fraction", "request_elapsed_int"],
)
def test_numbers_beyond_the_float_range_are_invalid_requests(
    request_: Any, files: dict[str, Path]
) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    d = sel.select(request_)
    assert d.source == "fallback" and d.model_id in TABLE2.ids
    assert d.reason.startswith("invalid request: "), d.reason
    assert sel.counts["invalid"] == 1 and sel.counts["internal_error"] == 0, sel.counts


def test_one_overflowing_row_does_not_spoil_the_batch(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    ds = sel.select_batch([_VALID, {**_VALID, "sla_ms": 10**400}])
    assert len(ds) == 2
    assert ds[0].source == "learned", ds[0]
    assert ds[1].source == "fallback" and ds[1].reason.startswith("invalid request: "), ds[1]


def test_invalid_request_with_a_huge_budget_gets_modipick(files: dict[str, Path]) -> None:
    bad = {**_VALID, "elapsed_ms": -1e18}
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    d = sel.select(bad)
    assert d.source == "fallback" and d.model_id in TABLE2.ids
    assert d.reason.startswith("invalid request: elapsed_ms must be >= 0"), d.reason
    assert sum(sel.counts.values()) == 1, sel.counts
    ds = sel.select_batch([_VALID, bad])
    assert ds[0].source == "learned", ds[0]
    assert ds[1].reason.startswith("invalid request: elapsed_ms must be >= 0"), ds[1]


@pytest.mark.parametrize("budget", [4503600164241408.0, 2e17, 1e18])
def test_scalar_modipick_rule_handles_huge_budgets(budget: float) -> None:
    mu, sd, acc = list(TABLE2.mean_ms), list(TABLE2.std_ms), list(TABLE2.accuracy)
    k = modipick_select_one(budget, mu, sd, acc, 0.5)
    assert 0 <= k < TABLE2.num_models
    want = modipick_select(
        np.array([budget]), np.array(mu), np.array(sd), np.array(acc), np.array([0.5])
    )
    assert k == int(want[0])


@pytest.mark.parametrize(
    "request_",
    [
        {**_VALID, "client_id": _BadHash()},
        {**_VALID, "sla_ms": _BadFloat()},
        _BadMapping(_VALID),
    ],
    ids=["hash_raises", "float_raises", "get_raises"],
)
def test_hostile_objects_are_invalid_requests(request_: Any, files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    d = sel.select(request_)
    assert d.source == "fallback" and d.model_id in TABLE2.ids
    assert sum(sel.counts.values()) == 1, sel.counts
    assert d.reason.startswith("invalid request: "), d.reason
    ds = sel.select_batch([_VALID, request_])
    assert ds[0].source == "learned", ds[0]
    assert ds[1].source == "fallback" and ds[1].reason.startswith("invalid request: "), ds[1]
