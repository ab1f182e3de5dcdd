"""Per-request draft length K for one step, maximising expected tokens per millisecond.

Every candidate draft token (request r, position i) carries the calibrated
probability that the first i+1 drafts of r are all accepted. Verifying it adds
that probability to the expected output of the step; verifying n candidates
in total makes the step cost L(B, base + n) from the measured latency model.
Because a prefix probability never increases along a request's drafts,
taking the n most probable candidates always takes each request's drafts in
order, so the best plan for a total n is simply the top n of one ranking.
The selector evaluates *every* feasible total n (not only multiples of a
common K) and keeps the one with the highest

    (B + extra outputs + expected accepted) / (L(B + extra_seqs, extra_tokens + B + n) + drafter cost)

so when the latency table has a jump (a cuBLAS tile or wave boundary) it
stops on the cheap side of it, and requests whose drafts are unlikely to be
accepted get K=0 while confident ones get long drafts in the same step.

Uniform against ragged: with CUDA graphs, vLLM replays a FULL graph only for a
*uniform* decode batch, every request verifying exactly K_max drafts (its
``uniform_decode_query_len`` is 1 + K_max); any other shape, K=0 for every
request included, runs PIECEWISE (attention outside the graph). The latency
model then describes the PIECEWISE steps, and ``set_uniform_steps`` adds the
measured time of a uniform K_max step per batch size. Each plan is weighed
against "K_max for everyone" at that cheaper price, and the better of the two
is taken. Without that table (CPU, eager mode) nothing changes.

What is maximised over time is the long-run rate (all tokens / all time),
and a per-step ratio is not that: given the rate the engine sustains at this
batch size (:class:`RateTracker`), each step maximises
``E[tokens] - rate * time`` instead (Dinkelbach), which spends more on steps
whose drafts are unusually promising and less on the others.

Cost: one stable argsort of B*K_max values and a few vector ops; the whole
policy's cost per engine step is measured by ``benchmarks/policy_cost.py``.
"""

from __future__ import annotations

import array
import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .latency_model import LatencyModel


@dataclass(frozen=True)
class Selection:
    k: np.ndarray                 # int64 [B]: draft tokens to verify per request
    num_tokens: int               # tokens in the verify forward (extra + B + sum(k))
    expected_tokens: float        # expected output tokens of the step (B + expected accepted)
    predicted_ms: float           # predicted step time (verify + drafter)
    goodput: float                # expected tokens per ms with this plan
    baseline_goodput: float       # expected tokens per ms with K=0 for every request

    @property
    def gain(self) -> float:
        """Predicted goodput of this plan relative to no speculation (1.0 = equal)."""
        return self.goodput / self.baseline_goodput if self.baseline_goodput > 0 else 1.0


ONE_BITS = 0x3F800000   # IEEE-754 bits of float32 1.0
RANK_SHIFT = 14          # keep 9 mantissa bits: probabilities within ~0.2% rank by request order
# Up to this many draft slots (requests x K) a plan runs in plain Python (``KSelector._select_small``), where
# no call releases the GIL. NumPy releases it inside sorts, argmax, bincount and fancy indexing even for a
# handful of elements; in vLLM's engine-core process the thread that sends each step's outputs to the API
# server is waiting for it right when the next plan starts, so each release handed it the GIL in the middle of
# the step's critical path (measured in ``vllm serve``, 1 request: the plan took 0.55-0.97 ms of wall time for
# 0.13-0.19 ms of its thread's CPU; SPECDEC_PHASE_TIMER). Held through the plan, the GIL passes to that thread
# while the engine waits for the forward, where its work overlaps. One hand-over costs what that thread then
# does with the GIL, which grows with the batch: in ``vllm serve`` at 16 requests (code_edit, 69M target) the
# first GIL-releasing call of a plan took 0.3-1.8 ms of wall time for 0.01-0.1 ms of CPU, wherever it was
# (moving one call to Python moved the wait to the next). Pure Python costs more CPU than NumPy at this size
# (``benchmarks/policy_cost.py``, ngram plans: 16 x K=8 181 us against 65 us, 32 x K=8 323 us against 77 us),
# less than the hand-over; above it NumPy is the better bet.
SMALL_PLAN = 256


def rank_keys(flat_cum_p: np.ndarray) -> np.ndarray:
    """Integer sort keys from the float32 bits of p: 1 + ((bits(1.0) - bits(p)) >> 14); 65535 if missing.

    For p in [0, 1] the IEEE bit pattern grows with p, so the key falls as p
    rises, with ~0.2% relative resolution. Ranking on 16-bit keys lets numpy
    use a radix sort (3x faster than a float sort at B*K=2048), and integer
    operations give the GPU selector (``specdec_kernels``) a definition it
    reproduces bit for bit, whatever the compiler fuses. Ties break by flat
    index, i.e. request-major, position-minor, which keeps each request's
    drafts in prefix order. Key 0 is reserved for forced (exploration) drafts.
    """
    p32 = np.minimum(np.maximum(flat_cum_p, 0.0), 1.0).astype(np.float32)
    key = ((ONE_BITS - p32.view(np.int32)) >> RANK_SHIFT) + 1
    key = key.astype(np.uint16)
    key[flat_cum_p < 0] = 65535
    return key


class KSelector:
    """Chooses K per request from calibrated prefix probabilities and a latency model.

    ``draft_cost_ms`` is either one number (the drafter's cost for a step
    that speculates at all) or a sequence of ``k_max + 1`` numbers (the cost
    when the longest draft in the batch is k: a chain drafter such as EAGLE
    runs that many sequential steps). ``token_padding`` lists the token
    counts the engine pads a forward to (CUDA-graph capture sizes); the
    latency is then looked up at the padded count.
    """

    def __init__(self, latency: LatencyModel, k_max: int,
                 draft_cost_ms: float | Sequence[float] = 0.0,
                 token_padding: Sequence[int] | None = None,
                 min_gain: float = 0.0):
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        self.latency = latency
        self.k_max = int(k_max)
        self.set_draft_cost(draft_cost_ms)
        self._padding = None if not token_padding else np.array(sorted(set(int(t) for t in token_padding)))
        self._padding_list = None if self._padding is None else self._padding.tolist()
        self.min_gain = float(min_gain)
        # measured step = profiled forward + overhead + per_draft * drafts, learned online by the policy
        # (TileSpecPolicy.observe_step_time): the overhead is what happens outside the forward (scheduling,
        # sampling, drafting, IPC); per_draft what each verified draft costs beyond its share of the
        # profiled forward (rejection sampling, bookkeeping, a busier host).
        self.overhead_ms = 0.0
        self.per_draft_ms = 0.0
        self._uniform_b: list[int] | None = None   # batch sizes with a measured uniform K_max step
        self._uniform_ms: list[float] | None = None

    def set_uniform_steps(self, batch_sizes: Sequence[int] | None, forward_ms: Sequence[float] | None) -> None:
        """The profiled forward (ms) of a uniform decode batch of B requests each verifying k_max drafts, per B
        (what vLLM runs as a FULL CUDA graph), or None to drop it. Between profiled batch sizes it is
        interpolated linearly; outside them there is no uniform option (the plan is priced as ragged)."""
        if not batch_sizes:
            self._uniform_b = self._uniform_ms = None
            return
        pairs = sorted((int(b), float(ms)) for b, ms in zip(batch_sizes, forward_ms))
        if len(pairs) != len(batch_sizes) or any(b < 1 or not ms > 0 for b, ms in pairs) or \
                len({b for b, _ in pairs}) != len(pairs):
            raise ValueError(f"uniform steps need distinct batch sizes >= 1 with times > 0, got {pairs}")
        self._uniform_b = [b for b, _ in pairs]
        self._uniform_ms = [ms for _, ms in pairs]

    def uniform_forward_ms(self, batch: int) -> float | None:
        """The profiled forward of a uniform K_max step of ``batch`` requests; None outside the profiled range."""
        bs = self._uniform_b
        if bs is None or not bs[0] <= batch <= bs[-1]:
            return None
        i = bisect.bisect_left(bs, batch)
        if bs[i] == batch:
            return self._uniform_ms[i]
        b0, b1, m0, m1 = bs[i - 1], bs[i], self._uniform_ms[i - 1], self._uniform_ms[i]
        return m0 + (m1 - m0) * (batch - b0) / (b1 - b0)

    def set_draft_cost(self, draft_cost_ms: float | Sequence[float]) -> None:
        """The drafter's cost (ms) of a step: one number for any plan with drafts, or k_max+1 numbers indexed by
        the plan's longest draft (a model drafter runs one forward per draft step; entry 0 is ignored)."""
        k_max = self.k_max
        cost = np.atleast_1d(np.asarray(draft_cost_ms, dtype=np.float64))
        if cost.size == 1:
            self._cost_by_k = None
            self._cost = float(cost[0])
        elif cost.size == k_max + 1:
            self._cost_by_k = cost.copy()
            self._cost_by_k[0] = 0.0
            self._cost = 0.0
        else:
            raise ValueError(f"draft_cost_ms must be one number or k_max+1={k_max + 1} numbers, got {cost.size}")
        if (cost < 0).any():
            raise ValueError("draft_cost_ms must be >= 0")

    @property
    def cost_by_longest_draft(self) -> bool:
        return self._cost_by_k is not None

    def longest_draft_cost_ms(self, longest: int) -> float:
        """With a cost by longest draft: the drafter's cost of a plan whose longest draft is ``longest``."""
        return float(self._cost_by_k[int(longest)]) if self._cost_by_k is not None else 0.0

    def _latency(self, seqs: int, tokens: np.ndarray) -> np.ndarray:
        if self._padding is not None:
            idx = np.searchsorted(self._padding, tokens)
            tokens = np.where(idx < len(self._padding), self._padding[np.minimum(idx, len(self._padding) - 1)], tokens)
        cur = self.latency.curve(seqs, int(tokens[-1]) if self._padding is None else int(tokens.max()))
        out = cur[tokens]
        return out + self.overhead_ms if self.overhead_ms else out

    def latency_table(self, seqs: int, max_tokens: int, base: int = 0) -> np.ndarray:
        """Predicted step time (ms) for every token total 0..max_tokens when ``base`` tokens are not drafts
        (what the GPU selector reads: the per-draft cost is folded in above ``base``)."""
        n = np.arange(int(max_tokens) + 1)
        lat = self._latency(max(int(seqs), 1), n)
        if self.per_draft_ms:
            lat = lat + self.per_draft_ms * np.maximum(n - int(base), 0)
        return lat

    def verify_ms(self, seqs: int, tokens: int) -> float:
        """Predicted time of a step of ``tokens`` tokens over ``seqs`` sequences (overhead included); scalar
        indexing only (see SMALL_PLAN)."""
        t = self._padded(max(int(tokens), 1))
        out = float(self.latency.curve(max(int(seqs), 1), t)[t])
        return out + self.overhead_ms if self.overhead_ms else out

    def _padded(self, tokens: int) -> int:
        """The token count the engine pads a forward of ``tokens`` to (itself without padding)."""
        if self._padding is None:
            return tokens
        i = bisect.bisect_left(self._padding_list, tokens)
        return self._padding_list[i] if i < len(self._padding_list) else tokens

    def select(self, cum_p: np.ndarray, n_avail: np.ndarray | None = None,
               extra_tokens: int = 0, extra_seqs: int = 0, force_rows: np.ndarray | None = None,
               rate: float | None = None, extra_outputs: int = 0,
               cost_by_longest_draft: np.ndarray | None = None) -> Selection:
        """Choose K for each of the B decode requests in ``cum_p`` [B, k_max].

        ``cum_p[r, i]``: calibrated P(drafts 0..i of request r all accepted);
        NaN or negative marks a draft that does not exist. ``n_avail[r]``
        caps request r's drafts (e.g. near its max_tokens). ``extra_tokens``
        and ``extra_seqs`` are the other sequences sharing the forward (prefill
        chunks, decode requests without drafts); ``extra_outputs`` the tokens
        those produce anyway (one per decode request without drafts): they
        count in every plan's expected output, so that gains are relative to
        the whole step, not to the requests that happen to have drafts.
        ``force_rows`` (bool [B]) forces the first draft of those requests
        where it exists (exploration while the fallback probes).

        ``rate`` (tokens per ms): the goodput this engine sustains at this
        batch size over time. Given it, the plan maximises
        ``E[tokens] - rate * time`` instead of the step's own ratio: the
        long-run rate (sum of tokens / sum of time) is maximised by the
        Dinkelbach objective, not by maximising each step's ratio. It spends
        more on steps whose drafts are unusually promising and less on the
        others. Without it, the step's own goodput is maximised.

        ``cost_by_longest_draft`` (k_max + 1 numbers): for this call only, a drafter cost by the plan's longest
        draft instead of the selector's own (a what-if about how deep to draft).

        With uniform steps (:meth:`set_uniform_steps`), the plan is then weighed against every request verifying
        all k_max drafts at the uniform price (see the module docstring).
        """
        sel = self._select(cum_p, n_avail, extra_tokens, extra_seqs, force_rows, rate, extra_outputs,
                           cost_by_longest_draft)
        if self._uniform_b is not None and not extra_tokens and not extra_seqs:
            sel = self._prefer_uniform(sel, cum_p, n_avail, rate, int(extra_outputs), cost_by_longest_draft)
        return sel

    def _prefer_uniform(self, sel: Selection, cum_p, n_avail, rate, extra_outputs: int,
                        cost_by_longest_draft) -> Selection:
        """``sel``, or K=k_max for every request if that scores higher at the uniform (FULL graph) price."""
        c = np.asarray(cum_p, dtype=np.float64)
        B, K = c.shape
        if B == 0 or K != self.k_max:
            return sel
        if n_avail is not None and min(np.asarray(n_avail).tolist()) < K:
            return sel
        fwd = self.uniform_forward_ms(B)
        if fwd is None:
            return sel
        if B * K > SMALL_PLAN:
            if not (c >= 0).all():  # NaN (no draft) or negative: not a uniform K_max batch
                return sel
            accepted = float(np.minimum.accumulate(c, axis=1).sum())
        else:  # every request's prefix probabilities summed, in plain Python (no GIL release: see SMALL_PLAN)
            accepted = 0.0
            for row in c.tolist():
                run = row[0] if row else 0.0
                for p in row:
                    if not p >= 0:
                        return sel
                    run = min(run, p)
                    accepted += run
        n = B * K
        cost_by_k = self._cost_by_k if cost_by_longest_draft is None else cost_by_longest_draft
        total = fwd + self.overhead_ms + self.per_draft_ms * n + \
            (float(cost_by_k[K]) if cost_by_k is not None else self._cost)
        expected = B + extra_outputs + accepted
        goodput = expected / total
        if self.min_gain > 0 and goodput < sel.baseline_goodput * (1.0 + self.min_gain):
            return sel
        if self._score(expected, total, rate) <= self._score(sel.expected_tokens, sel.predicted_ms, rate):
            return sel
        return Selection(np.full(B, K, dtype=np.int64), B + n, expected, total, goodput, sel.baseline_goodput)

    def _select(self, cum_p, n_avail, extra_tokens, extra_seqs, force_rows, rate, extra_outputs,
                cost_by_longest_draft) -> Selection:
        c = np.asarray(cum_p, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] > self.k_max:
            raise ValueError(f"cum_p must be [B, <= k_max={self.k_max}], got shape {c.shape}")
        B, K = c.shape
        base = int(extra_tokens) + B
        seqs = B + int(extra_seqs)
        if B == 0:
            return Selection(np.zeros(0, np.int64), base, 0.0, self.verify_ms(seqs, base), 0.0, 0.0)
        cost_by_k = self._cost_by_k if cost_by_longest_draft is None else cost_by_longest_draft
        if cost_by_k is None and B * K <= SMALL_PLAN:
            return self._select_small(c, n_avail, B, K, base, seqs, force_rows, rate, B + int(extra_outputs))
        c = np.where(np.isnan(c), -1.0, c)
        c = np.minimum.accumulate(c, axis=1)  # prefix probabilities never increase along a request's drafts
        if n_avail is not None:
            c[np.arange(K)[None, :] >= np.asarray(n_avail)[:, None]] = -1.0
        flat = c.ravel()
        key = rank_keys(flat)
        n_forced = 0
        if force_rows is not None and np.any(force_rows):
            forced = np.zeros_like(c, dtype=bool)
            forced[:, 0] = np.asarray(force_rows, dtype=bool) & (c[:, 0] >= 0)
            forced = forced.ravel()
            key[forced] = 0
            n_forced = int(forced.sum())
        m = int((flat >= 0).sum())
        order = np.argsort(key, kind="stable")[:m]
        probs = flat[order]
        out0 = B + int(extra_outputs)
        expected = np.empty(m + 1)
        expected[0] = out0
        np.cumsum(probs, out=expected[1:])
        expected[1:] += out0
        tokens = base + np.arange(m + 1)
        lat = self._latency(seqs, tokens)
        if self.per_draft_ms:
            lat = lat + self.per_draft_ms * np.arange(m + 1)
        if cost_by_k is None:
            total = lat.copy()
            total[1:] += self._cost
            best = n_forced + int(np.argmax(self._score(expected[n_forced:], total[n_forced:], rate)))
            best = self._veto_small_gain(best, n_forced, expected, total)
            k = np.bincount(order[:best] // K, minlength=B).astype(np.int64)
            return Selection(k, int(tokens[best]), float(expected[best]), float(total[best]),
                             float(expected[best] / total[best]), float(expected[0] / total[0]))
        return self._select_by_kmax(order, probs, K, B, tokens, lat, n_forced, rate, out0, cost_by_k)

    def _select_small(self, c: np.ndarray, n_avail, B: int, K: int, base: int, seqs: int, force_rows,
                      rate: float | None, out0: int) -> Selection:
        """:meth:`select` with a scalar drafter cost, in plain Python (see SMALL_PLAN): the same arithmetic in
        the same order as the NumPy path, so the same plan bit for bit (tested on random inputs)."""
        avail = None if n_avail is None else np.asarray(n_avail).tolist()
        forced_rows = None if force_rows is None else np.asarray(force_rows, dtype=bool).tolist()
        cands = []  # (rank key, flat index, prefix probability)
        for r, row in enumerate(c.tolist()):
            lim = K if avail is None else avail[r]
            run = None
            for j, p in enumerate(row):
                if p != p:  # NaN: no draft
                    p = -1.0
                run = p if run is None or p < run else run  # prefix probabilities never increase
                if j < lim and run >= 0:
                    cands.append([0, r * K + j, run])
        if cands:
            clipped = array.array("f", [min(max(p, 0.0), 1.0) for _, _, p in cands])  # float32, as rank_keys
            bits = array.array("i", clipped.tobytes())
            for cand, b in zip(cands, bits):
                cand[0] = ((ONE_BITS - b) >> RANK_SHIFT) + 1
        n_forced = 0
        if forced_rows is not None and any(forced_rows):
            for cand in cands:
                if cand[1] % K == 0 and forced_rows[cand[1] // K]:
                    cand[0] = 0
                    n_forced += 1
        cands.sort(key=lambda x: (x[0], x[1]))  # a stable argsort of the keys
        m = len(cands)
        expected = [float(out0)]
        run = 0.0
        for _, _, p in cands:
            run += p
            expected.append(run + out0)
        padded = [self._padded(base + j) for j in range(m + 1)]
        cur = self.latency.curve(seqs, max(padded))
        lat = [float(cur[t]) for t in padded]
        if self.overhead_ms:
            lat = [x + self.overhead_ms for x in lat]
        if self.per_draft_ms:
            lat = [x + self.per_draft_ms * j for j, x in enumerate(lat)]
        total = lat[:1] + [x + self._cost for x in lat[1:]]
        best, best_score = n_forced, None
        for j in range(n_forced, m + 1):
            sc = expected[j] / total[j] if rate is None else expected[j] - rate * total[j]
            if best_score is None or sc > best_score:
                best, best_score = j, sc
        if self.min_gain > 0 and best > n_forced and \
                expected[best] / total[best] < expected[n_forced] / total[n_forced] * (1.0 + self.min_gain):
            best = n_forced
        k = [0] * B
        for _, idx, _ in cands[:best]:
            k[idx // K] += 1
        return Selection(np.array(k, dtype=np.int64), base + best, expected[best], total[best],
                         expected[best] / total[best], expected[0] / total[0])

    @staticmethod
    def _score(expected: np.ndarray, total_ms: np.ndarray, rate: float | None) -> np.ndarray:
        """Per-step goodput, or with a long-run ``rate`` the Dinkelbach objective E - rate * T."""
        return expected / total_ms if rate is None else expected - rate * total_ms

    def _veto_small_gain(self, best: int, n_forced: int, expected: np.ndarray, total: np.ndarray) -> int:
        if self.min_gain > 0 and best > n_forced and \
                expected[best] / total[best] < expected[n_forced] / total[n_forced] * (1.0 + self.min_gain):
            return n_forced
        return best

    def _select_by_kmax(self, order, probs, K, B, tokens, lat, n_forced, rate, out0, cost_by_k) -> Selection:
        """Drafter cost depends on the longest draft: evaluate every cap on the longest K.

        For a cap kmax only candidates at positions < kmax count; they keep
        the global ranking's order, so each cap is one cumulative sum.
        """
        pos = order % K
        good0 = out0 / float(lat[0])
        # One row per cap kmax = 1..K: row r takes the ranked candidates at positions < r + 1, in ranking order.
        # Candidates outside a cap add exact zeros to its cumulative sums, so each row's values at its own
        # candidates are bit for bit the cumulative sums over that cap's candidates alone. Ties go to the
        # shallowest cap, and within a cap to the fewest candidates.
        caps = np.arange(1, K + 1)
        inside = pos[None, :] < caps[:, None]                            # [K, m]
        taken = np.cumsum(inside, axis=1)                                # candidates taken up to j, per cap
        exp_k = out0 + np.cumsum(np.where(inside, probs[None, :], 0.0), axis=1)
        tot = lat[taken] + cost_by_k[1:K + 1, None]
        score = self._score(exp_k, tot, rate)
        score[~inside | (taken < max(n_forced, 1))] = -np.inf          # forced candidates are always taken
        if score.shape[1]:
            j = np.argmax(score, axis=1)
            row_best = score[caps - 1, j]
        else:  # no candidate at all
            j = row_best = np.zeros(0)
        # (score, kmax, candidates taken from the ranking, ms, expected tokens); kmax 0 = no speculation
        best = None
        if n_forced == 0:
            best = (float(self._score(np.array([float(out0)]), lat[:1], rate)[0]), 0, 0, float(lat[0]), float(out0))
        r = int(np.argmax(row_best)) if row_best.size else 0
        if row_best.size and np.isfinite(row_best[r]) and (best is None or row_best[r] > best[0]):
            jr = int(j[r])
            best = (float(row_best[r]), r + 1, jr + 1, float(tot[r, jr]), float(exp_k[r, jr]))
        _, kmax, upto, ms, exp = best
        if kmax == 0 or (self.min_gain > 0 and n_forced == 0 and exp / ms < good0 * (1.0 + self.min_gain)):
            return Selection(np.zeros(B, np.int64), int(tokens[0]), float(out0), float(lat[0]), good0, good0)
        chosen = order[:upto][pos[:upto] < kmax]
        k = np.bincount(chosen // K, minlength=B).astype(np.int64)
        return Selection(k, int(tokens[0] + len(chosen)), exp, ms, exp / ms, good0)


class RateTracker:
    """The goodput (tokens per ms) the engine sustains per batch size, for the Dinkelbach objective.

    An exponentially weighted ratio of sums over the plans chosen at each
    batch size (predicted expected tokens / predicted time), forgetting with
    ``decay`` per step so that it follows a drifting workload.
    """

    def __init__(self, decay: float = 0.02, max_keys: int = 4096):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.max_keys = max_keys
        self._sums: dict[int, list[float]] = {}

    def rate(self, batch: int) -> float | None:
        s = self._sums.get(int(batch))
        return s[0] / s[1] if s and s[1] > 0 else None

    def update(self, batch: int, sel: Selection) -> None:
        self.add(batch, sel.expected_tokens, sel.predicted_ms)

    def add(self, batch: int, expected_tokens: float, predicted_ms: float) -> None:
        """One plan at ``batch``: its expected tokens and predicted step time."""
        key = int(batch)
        s = self._sums.get(key)
        if s is None:
            if len(self._sums) >= self.max_keys:
                self._sums.pop(next(iter(self._sums)))
            self._sums[key] = [expected_tokens, predicted_ms]
            return
        keep = 1.0 - self.decay
        s[0] = s[0] * keep + expected_tokens
        s[1] = s[1] * keep + predicted_ms
