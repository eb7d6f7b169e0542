"""Reason methods for the study, each explain(sequence, static) -> (p [n] float32, phi [n,G]).
Group order = bundle.explainer.groups (static groups in first-use order, then weekly_activity)."""
import sys
sys.path.insert(0, "/tmp/reasons_study")
from common import *


class Today:
    """The repo's occlusion (G+1 blocks through model.tflite), unchanged."""
    def __init__(self, bundle):
        self.b = bundle
    def explain(self, seq, sta):
        ex, n = self.b.explainer, len(seq)
        stacked = self.b.scorer.predict(*ex.occluded_inputs(seq, sta))
        return stacked[:n], ex.contributions(stacked, n)


class _Coalitions:
    def __init__(self, bundle, ref_seq, ref_static):
        self.b = bundle
        self.groups = list(bundle.explainer.groups)
        self.G = len(self.groups)
        _, self.m_static, self.m_seq = masks(self.groups, np.asarray(bundle.spec.static_groups, dtype=object))
        self.ref_seq = ref_seq.astype(np.float32)
        self.ref_static = ref_static.astype(np.float32)
        self.p_ref = float(bundle.scorer.predict(self.ref_seq[None], self.ref_static[None])[0])

    def rows(self, seq, sta, ks):
        """Inputs of coalitions ks for every customer, block-major: [len(ks)*n, ...]."""
        ks = np.asarray(ks)
        ms = self.m_seq[ks][:, None, None, None].astype(bool)
        s = np.where(ms, seq[None], self.ref_seq[None, None])
        t = self.ref_static + self.m_static[ks][:, None, :] * (sta[None] - self.ref_static)
        return s.reshape(-1, *seq.shape[1:]), t.reshape(-1, sta.shape[1]).astype(np.float32)


class Antithetic(_Coalitions):
    """Forward + reverse group order, averaged: 2G-1 rows per customer (p_ref cached)."""
    def __init__(self, *a):
        super().__init__(*a)
        G = self.G
        fwd = [sum(1 << j for j in range(i)) for i in range(1, G)]            # {0}, {0,1}, ...
        rev = [sum(1 << j for j in range(G - i, G)) for i in range(1, G)]     # {G-1}, {G-2,G-1}, ...
        self.ks = [(1 << G) - 1, *fwd, *rev]
    def explain(self, seq, sta):
        n, G = len(seq), self.G
        out = self.b.scorer.predict(*self.rows(seq, sta, self.ks)).reshape(len(self.ks), n).astype(np.float64)
        P = {k: out[i] for i, k in enumerate(self.ks)}
        P[0] = np.full(n, self.p_ref)
        phi = np.zeros((n, G))
        for order in (range(G), range(G - 1, -1, -1)):
            k = 0
            for g in order:
                phi[:, g] += 0.5 * (P[k | (1 << g)] - P[k])
                k |= 1 << g
        return out[0].astype(np.float32), phi


class NaiveExact(_Coalitions):
    """All 2^G coalitions through model.tflite (one interpreter call per chunk), exact Shapley."""
    chunk = 256
    def __init__(self, *a):
        super().__init__(*a)
        self.Phi = shapley_matrix(self.G)
    def explain(self, seq, sta):
        K = 1 << self.G
        ps = []
        for a in range(0, len(seq), self.chunk):
            s, t = seq[a:a + self.chunk], sta[a:a + self.chunk]
            ps.append(self.b.scorer.predict(*self.rows(s, t, np.arange(K))).reshape(K, len(s)).T)
        P = np.concatenate(ps).astype(np.float64)
        return P[:, -1].astype(np.float32), P @ self.Phi


class Structured:
    """Exact Shapley with the explainer TFLite model: sequence encoder once per customer, the static
    branch + head on all 2^G coalitions inside the graph. phi=True: phi computed in the graph."""
    def __init__(self, bundle, path, in_graph_phi=False, max_batch=1024):
        self.it = Interp(open(path, "rb").read(), max_batch=max_batch)
        self.G = len(bundle.explainer.groups)
        self.Phi = shapley_matrix(self.G).astype(np.float32)
        self.in_graph = in_graph_phi
        self.matmul = False
        self.pairs = ShapleyPairs(self.G)
    def explain(self, seq, sta):
        out = self.it(seq, sta)
        if self.in_graph:
            return out[:, 0], out[:, 1:]
        if self.matmul:
            return out[:, -1], out @ self.Phi
        return out[:, -1], self.pairs(out)


def make(name, bundle):
    r = np.load("/tmp/reasons_study/refs.npz")
    ref = (r["proposed_seq"], r["proposed_static"])
    if name == "today":
        return Today(bundle)
    if name == "antithetic":
        return Antithetic(bundle, *ref)
    if name == "naive":
        return NaiveExact(bundle, *ref)
    if name.startswith("struct_pairs"):
        return Structured(bundle, "/tmp/reasons_study/explainer_proposed_pairs.tflite", in_graph_phi=True)
    if name.startswith("struct"):
        phi = name.endswith("_phi")
        mb = int(name.split("@")[1]) if "@" in name else 1024
        s = Structured(bundle, f"/tmp/reasons_study/explainer_proposed{'_phi' if phi else ''}.tflite",
                       in_graph_phi=phi, max_batch=mb)
        s.matmul = "_mm" in name
        return s
    raise ValueError(name)


def patch_scoring(method):
    """Swap churnguard's score_customers for one whose ReasonsFor.ALL path uses ``method``
    (everything else as in shared/churnguard/scoring.py)."""
    import churnguard.api, churnguard.batch, churnguard.scoring as sc
    from churnguard.features import build_raw_features

    def score_customers(bundle, user_ids, events, as_of_s, *, profile=None, reasons_for=sc.ReasonsFor.ALL, top_k=3):
        n = len(user_ids)
        spec = bundle.spec
        raw = build_raw_features(events, as_of_s, event_types=spec.event_types, config=spec.config, profile=profile)
        sequence, static = spec.transform(raw)
        reasons = [[] for _ in range(n)]
        if reasons_for is sc.ReasonsFor.ALL and n:
            probabilities, phi = method.explain(sequence, static)
            reasons = bundle.explainer.top_reasons(np.asarray(phi), top_k)
        else:
            probabilities = bundle.scorer.predict(sequence, static)
        promoted = probabilities >= bundle.thresholds.promotion
        if reasons_for is sc.ReasonsFor.PROMOTED and promoted.any():
            rows = np.flatnonzero(promoted)
            _, phi = method.explain(sequence[rows], static[rows])
            for row, rr in zip(rows, bundle.explainer.top_reasons(np.asarray(phi), top_k)):
                reasons[row] = rr
        names = list(raw.static_names)
        return sc.ScoredBatch(user_ids=user_ids, churn_probability=probabilities,
                              risk_tier=bundle.thresholds.tier(probabilities), at_or_above_promotion=promoted,
                              reasons=reasons, features={k: raw.static[:, names.index(k)] for k in sc.POLICY_FEATURES},
                              model_version=bundle.version)

    sc.score_customers = churnguard.api.score_customers = churnguard.batch.score_customers = score_customers
