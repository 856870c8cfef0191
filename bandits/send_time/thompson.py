"""Per-hour Thompson sampling for send-time optimisation.

Actions are local hours (24 hours of day or 168 hours of week). The population keeps one
Beta(α_h, β_h) posterior per hour, learned online from open/click rewards in [0, 1]. A
recipient's score for hour h multiplies the population's open rate by their own *hour lift*,
read from their open/click-hour histogram c (shape (H,)):

    c̃   = circular smoothing of c with kernel [s, 1 − 2s, s]        (s = `smoothing`)
    q̂_h = (c̃_h + τ/H) / (Σ c̃ + τ)                                   (τ = `history_prior`)
    L_h = (H · q̂_h) ** history_weight
    θ_h ~ Beta(κ α_h, κ β_h) · L_h,   κ = min(1, population_cap / (α_h + β_h))

q̂ is the posterior mean of the recipient's opening-hour distribution under a Dirichlet prior of
τ pseudo-opens spread evenly, so L ≡ 1 without history (the recipient gets the population
posterior: its best hours, explored) and a few opens at 19h lift 18–20h several-fold. Pseudo-
counts added to the Beta instead would be swamped as soon as the population has seen a few
hundred sends per hour; the multiplicative lift keeps history relevant at any population size.
`population_cap` bounds how sure a recipient's prior may be of the population (useful when
behaviour drifts). θ is a ranking score, not a probability: it may exceed 1.

Choice. For each recipient, `mc_draws` Thompson draws of θ are taken from a moment-matched
normal approximation of each Beta (mean μ = α/(α+β), variance μ(1−μ)/(κ(α+β)+1)), scaled by L,
over the feasible hours only; p̂_h is the share of draws that hour h wins. The action
distribution is

    π_h = (1 − min_share) p̂_h + min_share / n_feasible   for feasible h, 0 otherwise,

and the hour is drawn from π with the caller's Generator, so the logged propensity π_chosen is
exactly the probability with which that hour was drawn given π (valid for IPS: the Monte Carlo
noise in π is independent of the reward). Every feasible hour keeps at least
min_share / n_feasible.

Cost. The bulk path works in chunks of `_ROWS_PER_CHUNK` recipients (no (n, H) temporaries).
Its standard normals come from one pool of `_POOL_ROWS` fresh vectors per call, of which each
recipient uses `mc_draws` rows picked at random — a gather instead of n·k·H normal draws;
calls needing at most `_POOL_ROWS` draws (the single-recipient path) draw independently. With
168 hours of week only each recipient's `_MAX_CONTENDERS` hours of highest upper bound
μL + 3σL (ties broken at random) enter the Monte Carlo; the others get p̂ = 0 and keep the floor.

Caveat for the profile owner: an open-hour histogram also reflects when mails were sent (a
campaign always sent at 10h makes everyone look like a 10h opener); the floor and the policy's
own spread of send hours wash this out over time, faster if opens are counted per send hour.

Mapping onto `bandits.base`: `HourChoice.hour` is `Choice.index`, `str(hour)` its key,
`propensity`, `policy` and `model_version` carry over; the context of an `Example` is the
recipient's (history, feasible) pair, and learning uses only (chosen hour, reward).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from tailor_contract.policies import SEND_TIME_POLICY_NAME as POLICY_NAME
from tailor_contract.policies import SendTimeThompsonConfig

_SNAPSHOT_FORMAT: Final = 1
_POOL_ROWS: Final = 2048
_CHUNK_ELEMENTS: Final = 1 << 20  # draws per chunk: bounds memory (~4 MB float32)
_ROWS_PER_CHUNK: Final = 2048  # recipients per chunk of the bulk path
_MAX_CONTENDERS: Final = 32  # hours per recipient that enter the Monte Carlo (hour of week)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class HourChoice(msgspec.Struct, frozen=True):
    """One recipient's chosen hour (-1 when no hour is feasible) and its exact propensity."""

    hour: int
    propensity: float
    policy: str
    model_version: str


class _Snapshot(msgspec.Struct, frozen=True):
    format: int
    config: SendTimeThompsonConfig
    alpha: list[float]
    beta: list[float]
    updates: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Snapshot)


def sample_from_pmf(pmf: FloatArray, uniforms: FloatArray) -> tuple[IntArray, FloatArray]:
    """Map one uniform per row of `pmf` to an index drawn with exactly those probabilities.

    Index i is returned when u · Σpmf falls in [cdf[i−1], cdf[i]): zero-mass indices never.

    Args:
        pmf: shape (n, H), non-negative rows summing to 1 (or all zero: no choice).
        uniforms: shape (n,), independent uniforms in [0, 1), e.g. `rng.random(n)`.

    Returns:
        chosen: shape (n,), the index drawn, -1 for all-zero rows.
        propensity: shape (n,), pmf[row, chosen], 0.0 for all-zero rows.
    """
    n, n_actions = pmf.shape
    if uniforms.shape != (n,):
        raise ValueError(f"uniforms shape == {uniforms.shape}, must be ({n},)")
    cumulative = np.cumsum(pmf, axis=1)
    total = cumulative[:, -1]
    u = uniforms * total
    # First index whose cumulative mass exceeds u: never a zero-mass index.
    chosen = (cumulative <= u[:, None]).sum(axis=1).astype(np.int64)
    overflow = chosen == n_actions  # u rounded up to the total: take the last positive index
    if overflow.any():
        chosen[overflow] = n_actions - 1 - np.argmax(pmf[overflow, ::-1] > 0, axis=1)
    propensity = pmf[np.arange(n), chosen]
    empty = total <= 0.0
    chosen[empty] = -1
    propensity[empty] = 0.0
    return chosen, propensity


def _win_shares(
    mean: npt.NDArray[np.float32],
    sd: npt.NDArray[np.float32],
    k: int,
    pool: npt.NDArray[np.float32] | None,
    rng: np.random.Generator,
) -> FloatArray:
    """Share of k normal draws N(mean, sd²) won by each column, shape (n, C) like `mean`.

    `pool` (shape (P, C)) supplies standard normals resampled by row; None draws fresh ones.
    """
    n, n_cols = mean.shape
    wins = np.empty((n, n_cols), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // (k * n_cols))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        if pool is None:
            rows = rng.standard_normal((hi - lo, k, n_cols), dtype=np.float32)
        else:
            rows = pool[rng.integers(0, pool.shape[0], size=(hi - lo, k))]  # (m, k, C)
        rows *= sd[lo:hi, None, :]
        rows += mean[lo:hi, None, :]
        winner = rows.argmax(axis=2)  # (m, k)
        flat = (np.arange(hi - lo)[:, None] * n_cols + winner).ravel()
        counts = np.bincount(flat, minlength=(hi - lo) * n_cols)
        wins[lo:hi] = counts.reshape(hi - lo, n_cols)
    wins /= k
    return wins


class SendTimeThompson:
    """Per-hour Beta-Bernoulli Thompson sampling personalised by recipients' hour histograms."""

    name: Final = POLICY_NAME

    def __init__(
        self,
        config: SendTimeThompsonConfig | None = None,
        *,
        alpha: npt.ArrayLike | None = None,
        beta: npt.ArrayLike | None = None,
        updates: int = 0,
    ) -> None:
        """Create the policy with its prior, or with a given posterior (alpha, beta: (H,))."""
        self.config = config if config is not None else SendTimeThompsonConfig()
        n = self.config.n_hours
        a = np.full(n, self.config.prior_alpha) if alpha is None else np.array(alpha, float)
        b = np.full(n, self.config.prior_beta) if beta is None else np.array(beta, float)
        for label, arr in (("alpha", a), ("beta", b)):
            if arr.shape != (n,):
                raise ValueError(f"{label} shape == {arr.shape}, must be ({n},)")
            if not np.all(np.isfinite(arr) & (arr > 0)):
                raise ValueError(f"{label} must be finite and > 0 for every hour")
        if updates < 0:
            raise ValueError(f"updates == {updates}, must be >= 0")
        self._alpha, self._beta, self._updates = a, b, updates
        self._version = self._make_version()

    @property
    def updates(self) -> int:
        """How many ``learn`` calls the posterior has absorbed."""
        return self._updates

    @property
    def n_hours(self) -> int:
        """Number of hour actions H."""
        return self.config.n_hours

    @property
    def model_version(self) -> str:
        """Version string: learn-call count and a digest of the posterior."""
        return self._version

    @property
    def version(self) -> str:
        """Alias of `model_version`, the name `bandits.base.Policy` uses."""
        return self._version

    def posterior(self) -> tuple[FloatArray, FloatArray]:
        """Return copies of the population posterior (alpha, beta), each shape (H,)."""
        return self._alpha.copy(), self._beta.copy()

    def _make_version(self) -> str:
        digest = hashlib.blake2b(self._alpha.tobytes() + self._beta.tobytes(), digest_size=4)
        return f"{self._updates}-{digest.hexdigest()}"

    def _histories(self, histories: npt.ArrayLike, n: int | None = None) -> FloatArray:
        hist = np.asarray(histories, dtype=np.float64)
        n_hours = self.n_hours
        if hist.ndim != 2 or (n is not None and hist.shape[0] != n):
            raise ValueError(f"histories shape == {hist.shape}, must be ({n or 'n'}, {n_hours})")
        if hist.shape[1] != n_hours and not (hist.shape[1] == 24 and n_hours == 168):
            raise ValueError(f"histories shape == {hist.shape}, must be (n, {n_hours})")
        if not np.all(np.isfinite(hist) & (hist >= 0)):
            raise ValueError("histories must be finite and >= 0")
        return hist

    def _feasible(self, feasible: npt.ArrayLike) -> BoolArray:
        mask = np.asarray(feasible)
        if mask.dtype != np.bool_:
            raise ValueError(f"feasible dtype == {mask.dtype}, must be bool")
        if mask.ndim != 2 or mask.shape[1] != self.n_hours:
            raise ValueError(f"feasible shape == {mask.shape}, must be (n, {self.n_hours})")
        return mask

    def recipient_scores(self, histories: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Return the mean and standard deviation of each recipient's hour scores θ.

        Args:
            histories: shape (n, H) (or (n, 24) for an hour-of-week policy) counts of past
                opens/clicks per local hour.

        Returns:
            mean, sd: each shape (n, H); mean = μ_h · L_h and sd = σ_h · L_h.
        """
        return self._scores(self._histories(histories))

    def hour_lift(self, histories: npt.ArrayLike) -> FloatArray:
        """Return each recipient's hour lift L, shape (n, H) (all ones without history)."""
        return self._lift(self._histories(histories))

    def _lift(self, hist: FloatArray) -> FloatArray:
        cfg = self.config
        n_hours = self.n_hours
        if hist.shape[1] != n_hours:
            hist = np.tile(hist, (1, n_hours // hist.shape[1]))  # same profile every weekday
        s = cfg.smoothing
        smooth = (1 - 2 * s) * hist + s * (np.roll(hist, 1, axis=1) + np.roll(hist, -1, axis=1))
        total = smooth.sum(axis=1, keepdims=True)
        profile: FloatArray = (smooth + cfg.history_prior / n_hours) / (total + cfg.history_prior)
        lift: FloatArray = profile * n_hours
        if cfg.history_weight != 1.0:
            lift **= cfg.history_weight
        return lift

    def _scores(self, hist: FloatArray) -> tuple[FloatArray, FloatArray]:
        cfg = self.config
        strength = self._alpha + self._beta
        shrunk = np.minimum(strength, cfg.population_cap)
        mu = self._alpha / strength
        sigma = np.sqrt(mu * (1 - mu) / (shrunk + 1))
        lift = self._lift(hist)
        return mu * lift, sigma * lift

    def action_probabilities(
        self, histories: npt.ArrayLike, feasible: npt.ArrayLike, rng: np.random.Generator
    ) -> FloatArray:
        """Return the action distribution π, shape (n, H): rows sum to 1 (0 if none feasible).

        Args:
            histories: shape (n, H) (or (n, 24) for hour of week), past opens per local hour.
            feasible: shape (n, H) bool, hours the send window allows for each recipient.
            rng: randomness of the Monte Carlo win-probability estimate.
        """
        mask = self._feasible(feasible)
        hist = self._histories(histories, mask.shape[0])
        pmf = np.empty(mask.shape)
        for lo, hi, chunk in self._pmf_chunks(hist, mask, rng):
            pmf[lo:hi] = chunk
        return pmf

    def choose_many(
        self, histories: npt.ArrayLike, feasible: npt.ArrayLike, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray]:
        """Choose an hour for each of n recipients.

        Equals `sample_from_pmf(action_probabilities(...), u)` with `u = rng.random(n)` drawn
        first, computed in row chunks so that no (n, H) temporary is ever allocated.

        Args:
            histories: shape (n, H) (or (n, 24) for hour of week), past opens per local hour.
            feasible: shape (n, H) bool, hours the send window allows for each recipient.
            rng: the only source of randomness.

        Returns:
            chosen: shape (n,), hour index, -1 where no hour is feasible.
            propensity: shape (n,), the exact probability of the chosen hour (0.0 for -1).
        """
        mask = self._feasible(feasible)
        hist = self._histories(histories, mask.shape[0])
        n = int(mask.shape[0])
        uniforms: FloatArray = rng.random(size=n)
        chosen = np.empty(n, dtype=np.int64)
        propensity = np.empty(n)
        for lo, hi, chunk in self._pmf_chunks(hist, mask, rng):
            chosen[lo:hi], propensity[lo:hi] = sample_from_pmf(chunk, uniforms[lo:hi])
        return chosen, propensity

    def _pmf_chunks(
        self, hist: FloatArray, mask: BoolArray, rng: np.random.Generator
    ) -> Iterator[tuple[int, int, FloatArray]]:
        # Row chunks keep every temporary a few MB: (n, 168) float64 arrays would be fresh
        # mmaps whose page faults cost more than the arithmetic.
        n, n_hours = mask.shape
        k = self.config.mc_draws
        n_cols = min(n_hours, _MAX_CONTENDERS)
        # Small batches (the single-recipient path) get independent draws; large ones
        # resample rows of one fresh pool, a gather instead of n·k·C normals.
        pool = (
            None if n * k <= _POOL_ROWS else rng.standard_normal((_POOL_ROWS, n_cols), np.float32)
        )
        for lo in range(0, n, _ROWS_PER_CHUNK):
            hi = min(n, lo + _ROWS_PER_CHUNK)
            yield lo, hi, self._pmf(hist[lo:hi], mask[lo:hi], pool, rng)

    def _pmf(
        self,
        hist: FloatArray,
        mask: BoolArray,
        pool: npt.NDArray[np.float32] | None,
        rng: np.random.Generator,
    ) -> FloatArray:
        mean, sd = self._scores(hist)
        mean32 = np.where(mask, mean, -np.inf).astype(np.float32)
        sd32 = np.where(mask, sd, 0.0).astype(np.float32)
        n, n_hours = mask.shape
        k = self.config.mc_draws
        if n_hours <= _MAX_CONTENDERS:
            wins = _win_shares(mean32, sd32, k, pool, rng)
        else:
            # Only the hours with the highest upper bounds (μL + 3σL) can realistically win;
            # random jitter breaks exact ties so that a flat prior does not favour Monday.
            # Bounds are > 0 (μ > 0, L > 0) where feasible and −inf elsewhere.
            jitter = 1 + 1e-5 * rng.random(mean32.shape, dtype=np.float32)
            upper = (mean32 + 3 * sd32) * jitter
            contenders = np.argpartition(-upper, _MAX_CONTENDERS - 1, axis=1)
            contenders = contenders[:, :_MAX_CONTENDERS]
            shares = _win_shares(
                np.take_along_axis(mean32, contenders, axis=1),
                np.take_along_axis(sd32, contenders, axis=1),
                k,
                pool,
                rng,
            )
            wins = np.zeros((n, n_hours))
            np.put_along_axis(wins, contenders, shares, axis=1)
        n_feasible = mask.sum(axis=1, keepdims=True)
        floor = np.where(mask, 1.0 / np.maximum(n_feasible, 1), 0.0)
        eps = self.config.min_share
        pmf = (1 - eps) * wins + eps * floor
        pmf[n_feasible[:, 0] == 0] = 0.0
        return pmf

    def choose(
        self, history: npt.ArrayLike, feasible: npt.ArrayLike, rng: np.random.Generator
    ) -> HourChoice:
        """Choose an hour for one recipient (history and feasible: shape (H,))."""
        chosen, propensity = self.choose_many(
            np.asarray(history, dtype=np.float64)[None, :], np.asarray(feasible)[None, :], rng
        )
        return HourChoice(
            hour=int(chosen[0]),
            propensity=float(propensity[0]),
            policy=self.name,
            model_version=self._version,
        )

    def learn(self, hours: npt.ArrayLike, rewards: npt.ArrayLike) -> None:
        """Update the population posterior: α_h += reward, β_h += 1 − reward per observation.

        Args:
            hours: shape (m,), hour indices in [0, H).
            rewards: shape (m,), rewards in [0, 1] (e.g. 1 for an open, 0 for none).
        """
        h = np.asarray(hours)
        r = np.asarray(rewards, dtype=np.float64)
        if h.ndim != 1 or r.shape != h.shape:
            raise ValueError(f"hours shape == {h.shape} and rewards {r.shape}, must be equal (m,)")
        if h.size and not np.issubdtype(h.dtype, np.integer):
            raise ValueError(f"hours dtype == {h.dtype}, must be integer")
        if h.size and (h.min() < 0 or h.max() >= self.n_hours):
            raise ValueError(f"hours must be in [0, {self.n_hours})")
        if not np.all(np.isfinite(r) & (r >= 0) & (r <= 1)):
            raise ValueError("rewards must be in [0, 1]")
        successes = np.bincount(h, weights=r, minlength=self.n_hours)
        trials = np.bincount(h, minlength=self.n_hours)
        # New arrays, swapped in whole: a concurrent reader never sees half an update.
        self._alpha = self._alpha + successes
        self._beta = self._beta + (trials - successes)
        self._updates += 1
        self._version = self._make_version()

    def snapshot(self) -> bytes:
        """Serialise config and posterior to msgpack bytes (restore with `restore`)."""
        return _encoder.encode(
            _Snapshot(
                format=_SNAPSHOT_FORMAT,
                config=self.config,
                alpha=self._alpha.tolist(),
                beta=self._beta.tolist(),
                updates=self._updates,
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> SendTimeThompson:
        """Rebuild a policy from `snapshot()` bytes; ValueError if they are not one."""
        try:
            snap = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a {POLICY_NAME} snapshot: {exc}") from exc
        if snap.format != _SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format == {snap.format}, must be {_SNAPSHOT_FORMAT}")
        return cls(snap.config, alpha=snap.alpha, beta=snap.beta, updates=snap.updates)
