"""Bounded-memory quantiles and histograms for token counts (the profiler's streaming state).

A traffic log can have billions of lines; ``specdec profile`` must not keep one number per line. A
:class:`QuantileSketch` holds a fixed array of counters whatever the number of values added:

- values ``0..EXACT_MAX`` (1,024) are counted exactly, one counter per integer;
- larger values fall into logarithmic buckets ``(gamma**(i-1), gamma**i]`` with
  ``gamma = (1 + alpha) / (1 - alpha)`` (the DDSketch buckets: Masson, Rim and Lee, VLDB 2019); each
  bucket keeps its count and the sum of its values, and answers with their mean.

Guarantee: ``quantile(q)`` returns a value within relative error ``gamma - 1`` (0.499% for the default
``alpha = 0.00249``) of the exact order statistic ``x[floor(q * (n - 1))]`` of the values added
(numpy's ``method="lower"``): the answer and that value lie in the same bucket. It is exact when that
value is at most 1,024, or when its bucket holds a single distinct value (a fixed benchmark shape).
Values above ``MAX_VALUE`` (2**31) are clamped there (and counted in ``clamped``). Mean, min and max
are exact. Two sketches with the same ``alpha`` merge exactly (the profiler merges per-class and
per-chunk sketches).

Memory: ``EXACT_MAX + 1`` counters plus two per log bucket (``ceil(log(MAX_VALUE) / log(gamma))``
buckets above 1,024), about 7,000 integers for the default, allocated once, whatever is added.
"""

from __future__ import annotations

import math

EXACT_MAX = 1024
MAX_VALUE = 2 ** 31
DEFAULT_ALPHA = 0.00249  # gamma - 1 = 2 alpha / (1 - alpha) = 0.4992%


class QuantileSketch:
    """Quantiles of non-negative integers with relative error ``gamma - 1`` in fixed memory (see module doc).

    Hot loops may count a value ``0 <= v <= EXACT_MAX`` as ``sketch.exact[v] += 1`` and call
    :meth:`add_large` for the others (what :meth:`add` does, without a method call per value):
    count, total, min and max are derived from the counters, so nothing else needs updating.
    """

    __slots__ = ("alpha", "gamma", "_inv_log_gamma", "_log_offset", "exact", "log_counts", "log_sums",
                 "big_min", "big_max", "clamped")

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.alpha = alpha
        self.gamma = (1.0 + alpha) / (1.0 - alpha)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        # Log bucket indices start just above EXACT_MAX; the offset keeps the list dense.
        self._log_offset = math.ceil(math.log(EXACT_MAX + 1) * self._inv_log_gamma)
        n_log = math.ceil(math.log(MAX_VALUE) * self._inv_log_gamma) - self._log_offset + 1
        self.exact = [0] * (EXACT_MAX + 1)
        self.log_counts = [0] * n_log
        self.log_sums = [0] * n_log
        self.big_min: int | None = None  # exact min/max of the values above EXACT_MAX
        self.big_max: int | None = None
        self.clamped = 0

    def add(self, v: int) -> None:
        """Add one non-negative integer (negative values are a caller bug: ValueError)."""
        if 0 <= v <= EXACT_MAX:
            self.exact[v] += 1
        elif v < 0:
            raise ValueError(f"negative value {v}")
        else:
            self.add_large(v)

    def add_large(self, v: int) -> None:
        """Add a value above ``EXACT_MAX``."""
        if v > MAX_VALUE:
            self.clamped += 1
            v = MAX_VALUE
        i = math.ceil(math.log(v) * self._inv_log_gamma) - self._log_offset
        self.log_counts[i] += 1
        self.log_sums[i] += v
        if self.big_max is None or v > self.big_max:
            self.big_max = v
        if self.big_min is None or v < self.big_min:
            self.big_min = v

    def merge(self, other: "QuantileSketch") -> None:
        """Add ``other``'s values into this sketch (exact: both use the same buckets)."""
        if other.alpha != self.alpha:
            raise ValueError("cannot merge sketches with different alpha")
        self.exact = [a + b for a, b in zip(self.exact, other.exact)]
        if other.big_max is not None:
            self.log_counts = [a + b for a, b in zip(self.log_counts, other.log_counts)]
            self.log_sums = [a + b for a, b in zip(self.log_sums, other.log_sums)]
            self.big_max = other.big_max if self.big_max is None else max(self.big_max, other.big_max)
            self.big_min = other.big_min if self.big_min is None else min(self.big_min, other.big_min)
        self.clamped += other.clamped

    @property
    def count(self) -> int:
        return sum(self.exact) + sum(self.log_counts)

    @property
    def total(self) -> int:
        """Sum of the values added (exact, clamped values counted as MAX_VALUE)."""
        return sum(v * c for v, c in enumerate(self.exact) if c) + sum(self.log_sums)

    @property
    def mean(self) -> float:
        n = self.count
        return self.total / n if n else 0.0

    @property
    def min(self) -> int | None:
        for v, c in enumerate(self.exact):
            if c:
                return v
        return self.big_min

    @property
    def max(self) -> int | None:
        if self.big_max is not None:
            return self.big_max
        for v in range(EXACT_MAX, -1, -1):
            if self.exact[v]:
                return v
        return None

    @property
    def relative_error(self) -> float:
        """The quantile guarantee: ``gamma - 1``."""
        return self.gamma - 1.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), within ``gamma - 1`` of ``sorted(values)[floor(q * (n - 1))]``."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        n = self.count
        if n == 0:
            return 0.0
        rank = math.floor(q * (n - 1))  # 0-based index into the sorted values
        seen = 0
        for v, c in enumerate(self.exact):
            seen += c
            if seen > rank:
                return float(v)
        for i, c in enumerate(self.log_counts):
            seen += c
            if seen > rank:
                return self.log_sums[i] / c  # the bucket's mean: in the bucket, like the true value
        return float(self.big_max or 0)

    def quantiles(self, qs) -> list[float]:
        return [self.quantile(q) for q in qs]
