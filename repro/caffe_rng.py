"""Caffe's CPU random streams: boost::mt19937 and the boost distributions Caffe draws through it.

A Caffe run seeded with ``random_seed: S`` draws every random number on the CPU from one generator per thread,
``Caffe::RNG`` over ``boost::mt19937`` (include/caffe/common.hpp, src/caffe/common.cpp); ``Caffe::set_random_seed``
replaces the calling thread's generator with a fresh one seeded by S. The wrappers of
src/caffe/util/math_functions.cpp turn its 32-bit outputs into numbers with boost 1.74's distributions:

* ``caffe_rng_rand()``: one raw output (seeds of child generators: data transformers, prefetch threads);
* ``caffe_rng_uniform(n, a, b)``: ``boost::uniform_real<float>(a, nextafter(b))`` (generate_uniform_real);
* ``caffe_rng_gaussian(n, mu, sigma)``: ``boost::normal_distribution<float>`` -- the ziggurat of
  boost/random/normal_distribution.hpp (since boost 1.56), with exponential_distribution's ziggurat in the tail;
* ``caffe_rng_bernoulli(n, p)``: ``boost::bernoulli_distribution<RealType>`` (RealType float or double as Caffe's
  caller instantiates it: Dropout passes ``1. - ratio``, a double; the sparse gaussian filler a float).

The float arithmetic of the C++ is reproduced step by step in float32 (numpy), comparisons against the
double-precision ziggurat tables in double, so the draws are boost's bit for bit. The ziggurat tables are
computed here from their definition (layers of equal area under exp(-x^2/2) or exp(-x)); in double precision
they agree with boost's 20-digit literals to ~1e-13 relative, far below float32 resolution, so they select the
same float results (tests/test_caffe_rng.py checks draws against Caffe's own filled weights).

The engine itself is numpy's MT19937 (the reference Mersenne twister) loaded with boost's seeding of the state,
so long blocks are generated in C; :class:`Stream` buffers its outputs so the rejection steps of the ziggurat can
consume a variable number of them in order.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

_N = 624
_F32 = np.float32


def mt19937_state(seed: int) -> np.ndarray:
    """boost::mt19937::seed(value) (= the reference init_genrand): the 624-word state for a 32-bit seed."""
    key = np.empty(_N, dtype=np.uint32)
    x = int(seed) & 0xFFFFFFFF
    key[0] = x
    for j in range(1, _N):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


class Stream:
    """One ``boost::mt19937`` (a ``Caffe::RNG``) seeded as boost seeds it; ``rand()`` is ``(*rng)()``."""

    _BLOCK = 1 << 16

    def __init__(self, seed: int):
        self.seed = int(seed) & 0xFFFFFFFF
        self._bg = np.random.MT19937()
        # pos 624: the first call regenerates the whole state, as boost's freshly seeded engine does (i = n).
        self._bg.state = {"bit_generator": "MT19937", "state": {"key": mt19937_state(self.seed), "pos": _N}}
        self._buf = np.empty(0, dtype=np.uint32)
        self._pos = 0
        self._produced = 0

    def _ensure(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if have < n:
            more = self._bg.random_raw(max(n - have, self._BLOCK)).astype(np.uint32)
            self._produced += len(more)
            self._buf = np.concatenate([self._buf[self._pos:], more])
            self._pos = 0

    def peek(self, n: int) -> np.ndarray:
        """The next n outputs without consuming them."""
        self._ensure(n)
        return self._buf[self._pos:self._pos + n]

    def take(self, n: int) -> np.ndarray:
        """The next n outputs (uint32)."""
        out = self.peek(n).copy()
        self._pos += n
        return out

    def rand(self) -> int:
        """One output: Caffe's ``caffe_rng_rand()`` on this generator."""
        self._ensure(1)
        v = int(self._buf[self._pos])
        self._pos += 1
        return v

    @property
    def consumed(self) -> int:
        """How many 32-bit outputs have been drawn since seeding."""
        return self._produced - (len(self._buf) - self._pos)

    def state_dict(self) -> dict:
        """The stream's exact position: the engine's 624 words and index, the outputs drawn but not yet used."""
        st = self._bg.state["state"]
        return {"seed": self.seed, "key": np.asarray(st["key"], dtype=np.int64), "pos": int(st["pos"]),
                "buffer": self._buf[self._pos:].astype(np.int64), "produced": self._produced}

    def load_state_dict(self, d: dict) -> None:
        self.seed = int(d["seed"])
        self._bg.state = {"bit_generator": "MT19937",
                          "state": {"key": np.asarray(d["key"]).astype(np.uint32), "pos": int(d["pos"])}}
        self._buf, self._pos = np.asarray(d["buffer"]).astype(np.uint32), 0
        self._produced = int(d["produced"])

    def skip(self, n: int) -> None:
        """Consume n outputs (resume a stream at a known position)."""
        while n > 0:
            k = min(n, self._BLOCK)
            self.take(k)
            n -= k

    # ------------------------------------------------------------------ distributions (Caffe's wrappers)

    def uniform(self, n: int, a: float, b: float) -> np.ndarray:
        """Caffe's ``caffe_rng_uniform<float>(n, a, b)``: boost ``uniform_real<float>(a, nextafter(b))``."""
        return boost_uniform_real(self, n, _F32(a), np.nextafter(_F32(b), _F32(np.inf)))

    def gaussian(self, n: int, mu: float, sigma: float) -> np.ndarray:
        """Caffe's ``caffe_rng_gaussian<float>(n, mu, sigma)``: boost ``normal_distribution<float>``."""
        return boost_unit_normal(self, n) * _F32(sigma) + _F32(mu)

    def bernoulli(self, n: int, p: float, real=np.float64) -> np.ndarray:
        """Caffe's ``caffe_rng_bernoulli<RealType>(n, p)`` as 0/1 int32 (``real``: the RealType instantiated)."""
        return boost_bernoulli(self, n, real(p), real)


# ------------------------------------------------------------------------------------------------ uniform


def boost_uniform_real(eng: Stream, n: int, lo: np.float32, hi: np.float32) -> np.ndarray:
    """boost::random::detail::generate_uniform_real for an integral 32-bit engine, in float:
    ``float(u) / (float(2^32 - 1) + 1) * (hi - lo) + lo``, redrawn while the result is not < hi."""
    lo, hi = _F32(lo), _F32(hi)
    if float(hi) / 2 - float(lo) / 2 > float(np.finfo(np.float32).max) / 2:
        return _F32(2) * boost_uniform_real(eng, n, _F32(lo / _F32(2)), _F32(hi / _F32(2)))
    divisor = _F32(4294967295.0) + _F32(1)   # float(max - min) + 1, in float: 2^32
    span = _F32(hi - lo)
    out = np.empty(n, dtype=np.float32)
    done = 0
    while done < n:
        u = eng.peek(n - done)
        vals = (u.astype(np.float32) / divisor) * span + lo
        bad = np.flatnonzero(~(vals < hi))
        k = len(vals) if len(bad) == 0 else int(bad[0])
        out[done:done + k] = vals[:k]
        eng.take(k + (1 if k < len(vals) else 0))   # a rejected output is consumed and the value redrawn
        done += k
    return out


def boost_uniform_01(eng: Stream) -> np.float32:
    """boost::random::uniform_01<float> on a 32-bit engine: ``float(u) * (1 / (float(2^32 - 1) + 1))`` < 1."""
    factor = _F32(1) / (_F32(4294967295.0) + _F32(1))
    while True:
        r = _F32(_F32(eng.rand()) * factor)
        if r < _F32(1):
            return r


# ------------------------------------------------------------------------------------------------ bernoulli


def boost_bernoulli(eng: Stream, n: int, p, real=np.float64) -> np.ndarray:
    """boost::bernoulli_distribution<real>: ``real(u) <= p * real(2^32 - 1)`` (false when p == 0)."""
    if p == 0:
        eng.take(0)
        return np.zeros(n, dtype=np.int32)
    bound = real(p) * real(4294967295.0)
    return (eng.take(n).astype(real) <= bound).astype(np.int32)


# ------------------------------------------------------------------------------------------------ ziggurats


def _ziggurat(layers: int, f, finv, tail, lo: float, hi: float):
    """Tables of a ziggurat with ``layers`` layers of equal area under the decreasing f on [0, inf):
    x[0] = V / f(r) (the base layer's width), x[1] = r, y[i] = f(x[i]), x[layers] = 0, y[layers] = 1, each layer
    of area V = r f(r) + tail(r). r is the root (by bisection) that makes the layers close exactly at y = 1."""

    def build(r):
        v = r * f(r) + tail(r)
        xs, ys = [v / f(r), r], [0.0, f(r)]
        for _ in range(1, layers - 1):
            y = ys[-1] + v / xs[-1]
            if not y < 1:
                return None, None, 2.0
            ys.append(y)
            xs.append(finv(y))
        return xs + [0.0], ys + [1.0], ys[-1] + v / xs[-1]

    for _ in range(200):
        mid = (lo + hi) / 2
        end = build(mid)[2]
        lo, hi = (mid, hi) if end > 1 else (lo, mid)
    xs, ys, _ = build((lo + hi) / 2)
    return np.array(xs), np.array(ys)


_NX, _NY = _ziggurat(128, lambda x: math.exp(-x * x / 2), lambda y: math.sqrt(-2 * math.log(y)),
                     lambda r: math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2)), 3.0, 4.0)
_EX, _EY = _ziggurat(256, lambda x: math.exp(-x), lambda y: -math.log(y), lambda r: math.exp(-r), 6.0, 9.0)
_NX32 = _NX.astype(np.float32)


def _int_float_pair(u: int):
    """boost::random::detail::generate_int_float_pair<float, 8> on a 32-bit engine: one output u gives the
    float (u >> 8) * 2^-24 and the 8-bit int u & 255."""
    return _F32(u >> 8) * _F32(2.0 ** -24), u & 255


def _exponential(eng: Stream, lam: np.float32) -> np.float32:
    """boost::random::exponential_distribution<float>(lam): the 256-layer ziggurat, divided by lam."""
    shift = _F32(0)
    while True:
        r, i = _int_float_pair(eng.rand())
        x = _F32(r * _F32(_EX[i]))
        if x < _F32(_EX[i + 1]):
            return _F32(_F32(shift + x) / lam)
        if i == 0:
            shift = _F32(shift + _F32(_EX[1]))
        else:
            y01 = boost_uniform_01(eng)
            y = _F32(_F32(_EY[i]) + _F32(y01 * _F32(_EY[i + 1] - _EY[i])))
            above_u = _F32(_F32(_F32(_EX[i] - _EX[i + 1]) * y01) - _F32(_F32(_EX[i]) - x))
            above_l = _F32(y - _F32(_F32(_EY[i + 1]) + _F32(_F32(_F32(_EX[i + 1]) - x) * _F32(_EY[i + 1]))))
            if above_u < 0 and (above_l < 0 or y < _f32_exp(-x)):
                return _F32(_F32(x + shift) / lam)


def _f32_exp(x: np.float32) -> np.float32:
    # std::exp(float) (glibc expf, < 1 ulp); evaluated in double and rounded. It decides only a draw whose y lies
    # within an ulp of the curve, vanishingly rare.
    return _F32(math.exp(float(x)))


def _normal_tail(eng: Stream) -> np.float32:
    """unit_normal_distribution::generate_tail: exponential(x1) + x1, by rejection on 2y > x^2."""
    start = _F32(_NX[1])
    while True:
        x = _exponential(eng, start)
        y = _exponential(eng, _F32(1))
        if _F32(2) * y > _F32(x * x):
            return _F32(x + start)


def _normal_slow(eng: Stream) -> np.float32:
    """One unit_normal_distribution<float> draw, step by step (the rejection and tail paths)."""
    while True:
        r, i = _int_float_pair(eng.rand())
        sign = _F32((i & 1) * 2 - 1)
        i >>= 1
        x = _F32(r * _NX32[i])
        if float(x) < _NX[i + 1]:
            return _F32(x * sign)
        if i == 0:
            return _F32(_normal_tail(eng) * sign)
        y01 = boost_uniform_01(eng)
        y = _F32(_F32(_NY[i]) + _F32(y01 * _F32(_NY[i + 1] - _NY[i])))
        xi, yi = _F32(_NX[i]), _F32(_NY[i])
        chord = _F32(_F32(_F32(_NX[i] - _NX[i + 1]) * y01) - _F32(xi - x))
        tangent = _F32(y - _F32(yi + _F32(_F32(_F32(xi - x) * yi) * xi)))
        if _NX[i] >= 1:   # convex layer (and the inflection layer)
            above_u, above_l = chord, tangent
        else:
            above_l, above_u = chord, tangent
        if above_u < 0 and (above_l < 0 or y < _f32_exp(-_F32(_F32(x * x) / _F32(2)))):
            return _F32(x * sign)


def boost_unit_normal(eng: Stream, n: int) -> np.ndarray:
    """n draws of boost::random::detail::unit_normal_distribution<float> (the ziggurat, boost >= 1.56).
    Most draws take one output and pass the first test: that test is a function of the output alone, so it is
    evaluated for a whole block at once; the draws that fail it (about 1 in 80) run one by one, consuming as many
    outputs as they need, and the walk through the block resumes after them."""
    out = np.empty(n, dtype=np.float32)
    done = 0
    while done < n:
        u = eng.peek(min(n - done, 1 << 16))
        i = (u & 255).astype(np.int64)
        sign = ((i & 1) * 2 - 1).astype(np.float32)
        i >>= 1
        x = (u >> 8).astype(np.float32) * _F32(2.0 ** -24) * _NX32[i]
        vals = x * sign
        bad = np.flatnonzero(~(x.astype(np.float64) < _NX[i + 1]))
        c, m = 0, len(u)
        while c < m and done < n:
            j = int(np.searchsorted(bad, c))
            b = int(bad[j]) if j < len(bad) else m
            k = min(b - c, n - done)
            out[done:done + k] = vals[c:c + k]
            eng.take(k)
            c += k
            done += k
            if done < n and c == b < m:
                before = eng.consumed
                out[done] = _normal_slow(eng)
                done += 1
                c += eng.consumed - before
    return out


# ------------------------------------------------------------------------------------------------ Caffe's generator


class CaffeRNG:
    """The calling thread's ``Caffe::RNG`` (``caffe_rng()``), set by ``Caffe::set_random_seed``.

    One object per seeded run: fillers, Dropout and the data layers' ``InitRand`` / ``StartInternalThread`` draw
    from ``main`` in Caffe's order; ``child()`` is ``new Caffe::RNG(caffe_rng_rand())``."""

    def __init__(self, seed: int):
        self.main = Stream(int(seed) & 0xFFFFFFFF)

    def rand(self) -> int:
        return self.main.rand()

    def child(self) -> Stream:
        """A generator seeded by one draw of this one (DataTransformer::InitRand, a prefetch thread's seed)."""
        return Stream(self.rand())


_current: CaffeRNG | None = None


def set_random_seed(seed: int | None) -> CaffeRNG | None:
    """Caffe::set_random_seed for this process's main thread; None goes back to torch's streams (no seed)."""
    global _current
    _current = CaffeRNG(seed) if seed is not None else None
    return _current


def current() -> CaffeRNG | None:
    """The generator of the seeded run in progress, or None when the run has no ``random_seed``."""
    return _current


@contextlib.contextmanager
def active(rng: CaffeRNG | None):
    """Make ``rng`` the current generator inside the block (a Solver's own stream while it builds its nets
    and trains; None: torch's streams), then put back what was current."""
    global _current
    prev, _current = _current, rng
    try:
        yield rng
    finally:
        _current = prev
