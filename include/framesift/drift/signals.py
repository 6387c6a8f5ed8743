"""Drift signals: is production video still like the video the model knows?

A *reference* set of frames (the frames of ``drift.reference_prefix``, or the earliest
inferred videos) is compared with a *window* of the most recently inferred frames. Each
signal family gives one or two statistics, each with its threshold from ``drift:`` in the
config, computed over the last ``window_frames`` frames of the window (per signal, or
``drift.window_frames``):

* ``uncertainty``: the rise (window minus reference) in the fraction of low-confidence
  boxes (score below ``low_confidence``) and in the mean of a Lightly uncertainty score
  per frame (``uncertainty_entropy`` by default), the quantities uncertainty sampling
  ranks by. A rise alarms only when it is also significant (one-sided z-test, ``p_value``).
* ``embedding``: MMD² (Gaussian kernel, median-heuristic bandwidth from the reference)
  between reference and window embeddings reduced by a PCA fit on the reference, with a
  permutation p-value. Alarms when ``p < p_value`` and MMD² >= ``mmd2_threshold`` (an
  effect size: with thousands of frames tiny differences are "significant").
* ``class_distribution``: PSI and Jensen-Shannon distance (base 2, in [0, 1]) between the
  predicted class distributions; bins are the schema's classes plus "(none)", one count
  per frame without any box (a model that stops seeing anything has drifted too).
* ``outliers``: the fraction of window frames whose nearest reference frame (PCA space)
  is farther than the reference's own 99th percentile of that distance. A reference
  frame's own distance is measured to frames of *other* videos, since consecutive frames
  of one video are near-duplicates and would make the percentile meaninglessly small.
* ``committee``: when other prediction tasks (models) exist for the same frames
  (``committee.tasks``), the rise in their mean disagreement (KL to the consensus of the
  models' per-frame class distributions).

A statistic's level is ``normal``, ``warning`` (crossed its threshold) or ``critical``
(at least ``alerts.critical_factor`` times it); ``insufficient`` when there is too little
data to say (e.g. no boxes). Everything here is plain numpy over plain data; reading the
frames from the registry and S3 is :mod:`framesift.drift.monitor`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framesift.config.schema import DriftConfig
from framesift.selection.scores import compute_scores, kl_to_consensus

log = logging.getLogger("framesift.drift")


NORMAL, WARNING, CRITICAL, INSUFFICIENT = "normal", "warning", "critical", "insufficient"


LEVELS = (NORMAL, WARNING, CRITICAL)  # ordered: re-alert only when an incident climbs this


FAMILIES = ("uncertainty", "embedding", "class_distribution", "outliers", "committee")


NONE_BIN = "(none)"


@dataclass
class FrameSet:
    """Frames with what inference wrote for them, in time order per video.

    ``frame_ids``: ``<video_id>/<frame name>``; ``predictions``: Lightly lists per frame;
    ``categories``: the task schema ``[{"id", "name"}]``; ``committee``: other tasks'
    per-frame predictions for the same frames (task name -> lists).
    """

    frame_ids: list[str]
    video_ids: list[str]
    video_keys: list[str]
    embeddings: np.ndarray
    predictions: list[list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    committee: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frame_ids)
        emb = np.asarray(self.embeddings, dtype=np.float32)
        # an empty set keeps its width (reshape(0, -1) cannot infer it)
        self.embeddings = emb.reshape(n, -1) if n or emb.ndim != 2 else emb
        for name, values in (
            ("video_ids", self.video_ids),
            ("video_keys", self.video_keys),
            ("predictions", self.predictions),
            *((f"committee[{t}]", v) for t, v in self.committee.items()),
        ):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} frames")

    @property
    def n(self) -> int:
        return len(self.frame_ids)

    def take(self, idx) -> FrameSet:
        idx = [int(i) for i in idx]
        return FrameSet(
            [self.frame_ids[i] for i in idx],
            [self.video_ids[i] for i in idx],
            [self.video_keys[i] for i in idx],
            self.embeddings[idx],
            [self.predictions[i] for i in idx],
            self.categories,
            {t: [v[i] for i in idx] for t, v in self.committee.items()},
        )

    def tail(self, n: int) -> FrameSet:
        return self if n >= self.n else self.take(range(self.n - n, self.n))

    @classmethod
    def concat(cls, parts: list[FrameSet]) -> FrameSet:
        parts = [p for p in parts if p.n]
        if not parts:
            return cls([], [], [], np.zeros((0, 1), np.float32), [], [])
        tasks = set.intersection(*(set(p.committee) for p in parts))
        return cls(
            [f for p in parts for f in p.frame_ids],
            [v for p in parts for v in p.video_ids],
            [k for p in parts for k in p.video_keys],
            np.concatenate([p.embeddings for p in parts]),
            [x for p in parts for x in p.predictions],
            next((p.categories for p in parts if p.categories), []),
            {t: [x for p in parts for x in p.committee[t]] for t in sorted(tasks)},
        )

    def window_id(self) -> str:
        """Stable id of exactly these frames (re-evaluating the same window changes nothing)."""
        return hashlib.sha1("\n".join(self.frame_ids).encode()).hexdigest()[:16]


@dataclass
class Statistic:
    """One drift statistic of one window: value vs threshold, and what it concludes."""

    family: str
    name: str
    value: float | None
    threshold: float
    level: str
    window_frames: int
    reference_frames: int
    reference_value: float | None = None
    window_value: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def alarm(self) -> bool:
        return self.level in (WARNING, CRITICAL)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alarm": self.alarm}


def level_of(value: float | None, threshold: float, critical_factor: float, significant: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return INSUFFICIENT
    if value < threshold or not significant:
        return NORMAL
    return CRITICAL if value >= critical_factor * threshold else WARNING


def worst(levels) -> str:
    """The highest of ``levels`` in LEVELS order (insufficient counts as normal)."""
    ranks = [LEVELS.index(lv) for lv in levels if lv in LEVELS]
    return LEVELS[max(ranks)] if ranks else NORMAL


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _one_sided_p(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def uncertainty_signal(ref: FrameSet, win: FrameSet, dc: DriftConfig) -> list[Statistic]:

    sc = dc.uncertainty
    cf = dc.alerts.critical_factor
    out = []

    def box_scores(fs: FrameSet) -> np.ndarray:
        return np.array([float(b.get("score", 1.0)) for p in fs.predictions for b in p], dtype=np.float64)

    rb, wb = box_scores(ref), box_scores(win)
    common = {"family": "uncertainty", "window_frames": win.n, "reference_frames": ref.n}
    if len(rb) < sc.min_boxes or len(wb) < sc.min_boxes:
        out.append(
            Statistic(
                name="low_confidence_fraction_rise",
                value=None,
                threshold=sc.low_confidence_rise,
                level=INSUFFICIENT,
                note=f"fewer than {sc.min_boxes} boxes (reference {len(rb)}, window {len(wb)})",
                **common,
            )
        )
    else:
        pr, pw = float((rb < sc.low_confidence).mean()), float((wb < sc.low_confidence).mean())
        pooled = ((rb < sc.low_confidence).sum() + (wb < sc.low_confidence).sum()) / (len(rb) + len(wb))
        se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(rb) + 1 / len(wb)))
        p = _one_sided_p((pw - pr) / se)
        out.append(
            Statistic(
                name="low_confidence_fraction_rise",
                value=_r(pw - pr),
                threshold=sc.low_confidence_rise,
                level=level_of(pw - pr, sc.low_confidence_rise, cf, p < sc.p_value),
                reference_value=_r(pr),
                window_value=_r(pw),
                p_value=_r(p),
                **common,
            )
        )
    if not ref.categories:
        out.append(
            Statistic(
                name="mean_uncertainty_rise",
                value=None,
                threshold=sc.uncertainty_rise,
                level=INSUFFICIENT,
                note="no prediction schema",
                **common,
            )
        )
        return out
    ur = compute_scores(ref.predictions, ref.categories)[sc.score]
    uw = compute_scores(win.predictions, win.categories or ref.categories)[sc.score]
    rise = float(uw.mean() - ur.mean())
    se = math.sqrt(ur.var(ddof=1) / len(ur) + uw.var(ddof=1) / len(uw)) if min(len(ur), len(uw)) > 1 else 0.0
    p = _one_sided_p(rise / se) if se > 0 else (0.0 if rise > 0 else 1.0)
    out.append(
        Statistic(
            name="mean_uncertainty_rise",
            value=_r(rise),
            threshold=sc.uncertainty_rise,
            level=level_of(rise, sc.uncertainty_rise, cf, p < sc.p_value),
            reference_value=_r(float(ur.mean())),
            window_value=_r(float(uw.mean())),
            p_value=_r(p),
            note=f"score {sc.score}",
            **common,
        )
    )
    return out


@dataclass
class Projection:
    """A PCA fit on the reference embeddings (numpy SVD), and the kernel bandwidth."""

    mean: np.ndarray
    components: np.ndarray  # (k, D)
    bandwidth: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components.T

    @classmethod
    def fit(cls, ref: np.ndarray, n_components: int, seed: int = 0) -> Projection:
        x = np.asarray(ref, np.float64)
        mean = x.mean(axis=0)
        k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        proj = cls(mean, vt[:k], 1.0)
        z = proj(x)
        rng = np.random.default_rng(seed)
        sample = z[rng.choice(len(z), min(len(z), 1000), replace=False)]
        d2 = _sq_dists(sample, sample)
        med = float(np.median(d2[np.triu_indices(len(sample), 1)])) if len(sample) > 1 else 1.0
        proj.bandwidth = med if med > 0 else 1.0
        return proj


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def mmd2_permutation(
    x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int, seed: int = 0
) -> tuple[float, float]:
    """(MMD² (unbiased U-statistic), permutation p-value) with k(a, b) = exp(-|a-b|² / bw).

    Unbiased, so its null expectation is 0 whatever the window size and one threshold fits
    every window. All permutations at once: with indicator columns A (n x P), the kernel
    sums of each split are quadratic forms of K, so one K @ A product does every permutation.
    """
    z = np.concatenate([x, y])
    n, m = len(x), len(y)
    k = np.exp(-_sq_dists(z, z) / bandwidth)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n + m, permutations + 1))
    labels[:n, 0] = 1.0
    for j in range(1, permutations + 1):
        labels[rng.permutation(n + m)[:n], j] = 1.0
    other = 1.0 - labels
    ka = k @ labels
    # the diagonal (k(a, a) = 1) left out of the within-sample means
    kxx = ((labels * ka).sum(0) - n) / (n * (n - 1))
    kxy = (other * ka).sum(0) / (n * m)
    kyy = ((other * (k @ other)).sum(0) - m) / (m * (m - 1))
    stats = kxx + kyy - 2.0 * kxy
    p = (1.0 + float((stats[1:] >= stats[0]).sum())) / (permutations + 1.0)
    return float(stats[0]), p


def embedding_signal(ref: FrameSet, win: FrameSet, dc: DriftConfig, proj: Projection) -> list[Statistic]:
    ec = dc.embedding
    rng = np.random.default_rng(dc.seed)
    zr = proj(ref.embeddings)
    if len(zr) > ec.max_reference_frames:
        zr = zr[np.sort(rng.choice(len(zr), ec.max_reference_frames, replace=False))]
    mmd2, p = mmd2_permutation(zr, proj(win.embeddings), proj.bandwidth, ec.permutations, dc.seed)
    return [
        Statistic(
            family="embedding",
            name="mmd2",
            value=_r(mmd2),
            threshold=ec.mmd2_threshold,
            level=level_of(mmd2, ec.mmd2_threshold, dc.alerts.critical_factor, p < ec.p_value),
            window_frames=win.n,
            reference_frames=len(zr),
            p_value=_r(p),
            note=f"PCA {proj.components.shape[0]} components, {ec.permutations} permutations",
        )
    ]


def class_histogram(fs: FrameSet, categories: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Counts per class (one per box) plus "(none)" (one per frame without a box)."""
    ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories] + [NONE_BIN]
    index = {cid: i for i, cid in enumerate(ids)}
    counts = np.zeros(len(names))
    for preds in fs.predictions:
        if not preds:
            counts[-1] += 1
        for box in preds:
            i = index.get(int(box["category_id"]))
            if i is not None:
                counts[i] += 1
    return names, counts


def psi(ref_counts: np.ndarray, win_counts: np.ndarray, eps: float = 0.5) -> float:
    """Population stability index, sum (w - r) ln(w / r), with ``eps`` added to each count."""
    r = (ref_counts + eps) / (ref_counts + eps).sum()
    w = (win_counts + eps) / (win_counts + eps).sum()
    return float(((w - r) * np.log(w / r)).sum())


def js_distance(ref_counts: np.ndarray, win_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (sqrt of the divergence, base 2): 0 equal, 1 disjoint."""
    r = ref_counts / max(ref_counts.sum(), 1e-12)
    w = win_counts / max(win_counts.sum(), 1e-12)
    m = 0.5 * (r + w)

    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return math.sqrt(max(0.0, 0.5 * kl(r) + 0.5 * kl(w)))


def chi2_p_value(ref_counts: np.ndarray, win_counts: np.ndarray) -> float:
    """p-value of the chi-square test that both histograms come from one distribution."""
    from scipy.stats import chi2

    table = np.stack([ref_counts, win_counts])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return 1.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, table.shape[1] - 1))


def _bins_note(names, ref_counts, win_counts, most: int = 8) -> str:
    """``"bins car: 12->3, person: 4->9, ..."`` (reference -> window counts): the bins that
    changed most first, empty ones (0 on both sides) left out, at most ``most`` of them."""
    rows = [(n, int(a), int(b)) for n, a, b in zip(names, ref_counts, win_counts, strict=True) if a or b]
    rows.sort(key=lambda r: -abs(r[1] - r[2]))
    text = ", ".join(f"{n}: {a}->{b}" for n, a, b in rows[:most])
    return "bins " + text + (f" (+{len(rows) - most} more)" if len(rows) > most else "")


def class_signal(ref: FrameSet, win: FrameSet, dc: DriftConfig) -> list[Statistic]:
    cc = dc.class_distribution
    names, rc = class_histogram(ref, ref.categories)
    _, wc = class_histogram(win, ref.categories)
    # a sparse histogram (few boxes) swings by chance: a shift must also be significant
    p = chi2_p_value(rc, wc)
    significant = p < cc.p_value
    common = {
        "family": "class_distribution",
        "window_frames": win.n,
        "reference_frames": ref.n,
        "p_value": _r(p),
    }
    note = _bins_note(names, rc, wc)
    return [
        Statistic(
            name="psi",
            value=_r(psi(rc, wc)),
            threshold=cc.psi_threshold,
            level=level_of(psi(rc, wc), cc.psi_threshold, dc.alerts.critical_factor, significant),
            note=note,
            **common,
        ),
        Statistic(
            name="js_distance",
            value=_r(js_distance(rc, wc)),
            threshold=cc.js_threshold,
            level=level_of(js_distance(rc, wc), cc.js_threshold, dc.alerts.critical_factor, significant),
            **common,
        ),
    ]


def _nn_dist(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each row of ``a`` to its nearest row of ``b`` (and which), in chunks."""
    dist = np.empty(len(a))
    which = np.empty(len(a), dtype=np.int64)
    for s in range(0, len(a), chunk):
        d = _sq_dists(a[s : s + chunk], b)
        which[s : s + chunk] = d.argmin(1)
        dist[s : s + chunk] = np.sqrt(d[np.arange(len(d)), which[s : s + chunk]])
    return dist, which


def reference_nn_threshold(zr: np.ndarray, video_ids: list[str], percentile: float) -> float:
    """The ``percentile`` of each reference frame's distance to the nearest frame of another
    video (to any other frame when the reference holds a single video)."""
    vids = np.asarray(video_ids)
    d = _sq_dists(zr, zr)
    if len(set(video_ids)) > 1:
        d[vids[:, None] == vids[None, :]] = np.inf
    else:
        np.fill_diagonal(d, np.inf)
    return float(np.percentile(np.sqrt(d.min(1)), percentile))


def outlier_signal(
    ref: FrameSet, win: FrameSet, dc: DriftConfig, proj: Projection, nn_threshold: float
) -> tuple[list[Statistic], np.ndarray]:
    """The outlier rate, and each window frame's nearest-reference distance / threshold."""
    oc = dc.outliers
    dist, _ = _nn_dist(proj(win.embeddings), proj(ref.embeddings))
    ratio = dist / max(nn_threshold, 1e-12)
    rate = float((ratio > 1.0).mean()) if len(ratio) else float("nan")
    stat = Statistic(
        family="outliers",
        name="outlier_rate",
        value=_r(rate),
        threshold=oc.rate_threshold,
        level=level_of(rate, oc.rate_threshold, dc.alerts.critical_factor),
        window_frames=win.n,
        reference_frames=ref.n,
        reference_value=round(1.0 - oc.percentile / 100.0, 6),  # the reference's own rate
        note=f"nearest-reference distance > {nn_threshold:.4g} (reference p{oc.percentile:g})",
    )
    return [stat], ratio


def frame_class_vectors(preds: list[list[dict[str, Any]]], categories: list[dict[str, Any]]) -> np.ndarray:
    """(N, C + 1): each frame's share of boxes per class, or all in "(none)" without boxes."""
    ids = {int(c["id"]): i for i, c in enumerate(categories)}
    out = np.zeros((len(preds), len(categories) + 1))
    for f, boxes in enumerate(preds):
        for b in boxes:
            i = ids.get(int(b["category_id"]))
            if i is not None:
                out[f, i] += 1
        if out[f].sum() == 0:
            out[f, -1] = 1.0
    return out / out.sum(1, keepdims=True)


def committee_disagreement(fs: FrameSet, tasks: list[str]) -> np.ndarray:

    members = [fs.predictions] + [fs.committee[t] for t in tasks]
    stack = np.stack([frame_class_vectors(m, fs.categories) for m in members])
    return np.asarray(kl_to_consensus(stack), dtype=np.float64)


def committee_signal(ref: FrameSet, win: FrameSet, dc: DriftConfig) -> list[Statistic]:
    cc = dc.committee
    tasks = [t for t in cc.tasks if t in ref.committee and t in win.committee]
    common = {
        "family": "committee",
        "name": "disagreement_rise",
        "threshold": cc.disagreement_rise,
        "window_frames": win.n,
        "reference_frames": ref.n,
    }
    if not tasks:
        return [Statistic(value=None, level=INSUFFICIENT, note="no other model's predictions", **common)]
    dr, dw = committee_disagreement(ref, tasks), committee_disagreement(win, tasks)
    rise = float(dw.mean() - dr.mean())
    return [
        Statistic(
            value=_r(rise),
            level=level_of(rise, cc.disagreement_rise, dc.alerts.critical_factor),
            reference_value=_r(float(dr.mean())),
            window_value=_r(float(dw.mean())),
            note=f"models: main + {', '.join(tasks)}",
            **common,
        )
    ]


def signal_window(dc: DriftConfig, family: str) -> int:
    return getattr(dc, family).window_frames or dc.window_frames


def evaluate(ref: FrameSet, win: FrameSet, dc: DriftConfig, *, source: str = "all") -> dict[str, Any]:
    """Every enabled signal of ``win`` against ``ref``: a plain-data evaluation.

    Returns ``{source, window_id, n_frames, videos, statistics: [...], families: {family:
    level}, level, frame_scores: {frame id: drift score}, outliers: [frame ids]}``; the
    drift score of a frame is its nearest-reference distance over the outlier threshold
    plus its uncertainty score, what the active response ranks frames by.
    """
    if ref.n < 2:
        raise ValueError(f"the drift reference has {ref.n} frame(s); it needs at least 2")
    stats: list[Statistic] = []
    proj = Projection.fit(ref.embeddings, dc.embedding.pca_components, dc.seed)
    zr = proj(ref.embeddings)
    nn_threshold = reference_nn_threshold(zr, ref.video_ids, dc.outliers.percentile)
    ratio = np.zeros(win.n)
    for family in FAMILIES:
        if not getattr(dc, family).enabled:
            continue
        w = win.tail(signal_window(dc, family))
        if family == "uncertainty":
            stats += uncertainty_signal(ref, w, dc)
        elif family == "embedding":
            stats += embedding_signal(ref, w, dc, proj)
        elif family == "class_distribution":
            stats += class_signal(ref, w, dc)
        elif family == "outliers":
            s, r = outlier_signal(ref, w, dc, proj, nn_threshold)
            stats += s
            ratio[win.n - w.n :] = r
        elif family == "committee":
            stats += committee_signal(ref, w, dc)
    families: dict[str, str] = {}
    for fam in dict.fromkeys(s.family for s in stats):
        levels = [s.level for s in stats if s.family == fam]
        # a family none of whose statistics could be computed says nothing (not even "normal")
        families[fam] = INSUFFICIENT if all(lv == INSUFFICIENT for lv in levels) else worst(levels)
    uncertainty = np.zeros(win.n)
    if win.categories:
        uncertainty = compute_scores(win.predictions, win.categories)[dc.uncertainty.score]
    score = ratio + uncertainty
    order = np.argsort(-score, kind="stable")
    return {
        "source": source,
        "window_id": win.window_id(),
        "n_frames": win.n,
        "reference_frames": ref.n,
        "videos": sorted(set(win.video_keys)),
        "video_ids": sorted(set(win.video_ids)),
        "first_frame": win.frame_ids[0] if win.n else None,
        "last_frame": win.frame_ids[-1] if win.n else None,
        "statistics": [s.to_dict() for s in stats],
        "families": families,
        "level": worst(families.values()),
        "outlier_threshold": _r(nn_threshold),
        "outliers": [win.frame_ids[i] for i in np.flatnonzero(ratio > 1.0)],
        "most_drifted": [win.frame_ids[i] for i in order[: dc.alerts.sample_frames]],
        "frame_scores": {win.frame_ids[i]: round(float(score[i]), 6) for i in range(win.n)},
        "plot": _plot_points(proj, zr, proj(win.embeddings), ratio > 1.0, dc.seed),
        "class_histogram": dict(
            zip(
                ["classes", "reference", "window"],
                [
                    class_histogram(ref, ref.categories)[0],
                    class_histogram(ref, ref.categories)[1].tolist(),
                    class_histogram(win, ref.categories)[1].tolist(),
                ],
                strict=True,
            )
        ),
    }


def _plot_points(proj, zr, zw, outlier, seed, max_points: int = 1500) -> dict[str, list[list[float]]]:
    """The first two PCA components of (a sample of) reference and window frames."""
    rng = np.random.default_rng(seed)

    def sample(z):
        if len(z) > max_points:
            z = z[np.sort(rng.choice(len(z), max_points, replace=False))]
        return np.round(z[:, :2] if z.shape[1] >= 2 else np.c_[z, np.zeros(len(z))], 4).tolist()

    return {
        "reference": sample(zr),
        "window": sample(zw[~outlier]),
        "outliers": sample(zw[outlier]) if outlier.any() else [],
    }
