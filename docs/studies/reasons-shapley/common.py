"""Shared pieces of the study: data, groups, references, Shapley weight matrix, explainer export."""
import itertools, json, math, os, sys
import numpy as np
sys.path[:0] = ["/work/main", "/work/main/shared"]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL_DIR = "/work/main/artifacts/model"
SEQ = "weekly_activity"


def data():
    return np.load("/tmp/reasons_study/cdnow.npz")


def spec_groups(model_dir=MODEL_DIR):
    spec = json.load(open(f"{model_dir}/feature_spec.json"))
    static_groups = spec["model_inputs"]["static_groups"]
    groups = [*dict.fromkeys(static_groups), SEQ]
    return groups, np.asarray(static_groups, dtype=object)


def masks(groups, static_groups):
    """Coalition k (bit g = group g present) -> static feature mask [K,S] and sequence mask [K]."""
    G = len(groups)
    K = 1 << G
    bits = ((np.arange(K)[:, None] >> np.arange(G)[None, :]) & 1).astype(bool)  # [K,G]
    col_group = np.array([groups.index(g) for g in static_groups])
    m_static = bits[:, col_group].astype(np.float32)  # [K,S]
    m_seq = bits[:, groups.index(SEQ)].astype(np.float32)  # [K]
    return bits, m_static, m_seq


def shapley_matrix(G):
    """Phi [K,G]: phi = p[K] @ Phi gives exact Shapley values of the coalition values p."""
    K = 1 << G
    bits = ((np.arange(K)[:, None] >> np.arange(G)[None, :]) & 1).astype(bool)
    size = bits.sum(1)
    w = np.array([math.factorial(s) * math.factorial(G - s - 1) / math.factorial(G) for s in range(G)])
    Phi = np.zeros((K, G))
    for g in range(G):
        has = bits[:, g]
        Phi[has, g] += w[size[has] - 1]
        Phi[~has, g] -= w[size[~has]]
    return Phi


# ------------------------------------------------------------------ references
def ref_median_all(d):
    return np.median(d["train_seq"], 0), np.median(d["train_static"], 0)


def ref_median_retained(d):
    keep = d["train_y"] == 0
    return np.median(d["train_seq"][keep], 0), np.median(d["train_static"][keep], 0)


def ref_medoid_retained(d, with_sequence=True):
    """The retained training customer nearest (L2, standardized inputs) to the retained medians;
    the sequence part of the distance uses per-week totals of the standardized channels."""
    keep = np.flatnonzero(d["train_y"] == 0)
    S, Q = d["train_static"][keep], d["train_seq"][keep]
    dist = ((S - np.median(S, 0)) ** 2).sum(1)
    if with_sequence:
        dist = dist + ((Q - np.median(Q, 0)) ** 2).sum((1, 2)) / Q.shape[2]
    i = keep[int(np.argmin(dist))]
    return d["train_seq"][i], d["train_static"][i], int(i)


# ------------------------------------------------------------------ explainer model
def load_keras(model_dir=MODEL_DIR):
    import keras
    return keras.saving.load_model(f"{model_dir}/model.keras")


def encoder_fn(model):
    layers = [model.get_layer(n) for n in ("conv", "pool", "lstm_1", "lstm_2")]
    def enc(x):
        for l in layers:
            x = l(x, training=False) if "lstm" in l.name else l(x)
        return x
    return enc


def head_fn(model):
    sd, head, logit, cal = (model.get_layer(n) for n in ("static_dense", "head", "logit", "calibrated_probability"))
    import tensorflow as tf
    def h(e, s):
        return cal(logit(head(tf.concat([e, sd(s)], -1))))
    return h


def explainer_tflite(model, groups, static_groups, ref_seq, ref_static, *, in_graph_phi=False):
    """TFLite model: (sequence [n,W,C], static [n,S]) -> probabilities of all K=2^G coalitions [n,K]
    (coalition K-1 = the customer, 0 = the reference). The sequence encoder runs once per customer;
    the reference's embedding is a constant; only the cheap static branch + head run K times."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    G = len(groups)
    K = 1 << G
    _, m_static, m_seq = masks(groups, static_groups)
    enc, head = encoder_fn(model), head_fn(model)
    e_ref = np.asarray(enc(tf.constant(ref_seq[None], tf.float32)))[0]
    W, C = ref_seq.shape
    S = len(ref_static)
    Phi = shapley_matrix(G).astype(np.float32)
    sig = [tf.TensorSpec([None, W, C], tf.float32, name="sequence"), tf.TensorSpec([None, S], tf.float32, name="static")]

    @tf.function(input_signature=sig)
    def explain(sequence, static):
        n = tf.shape(sequence)[0]
        e_c = enc(sequence)  # [n,E]
        E = e_c.shape[-1]
        e_k = e_ref + m_seq[None, :, None] * (e_c - e_ref)[:, None, :]  # [n,K,E]
        s_k = ref_static + m_static[None] * (static - ref_static)[:, None, :]  # [n,K,S]
        p = head(tf.reshape(e_k, [-1, E]), tf.reshape(s_k, [-1, S]))
        p = tf.reshape(p, [n, K])
        if in_graph_phi == "pairs":  # sum of weighted paired differences: an ignored group gets exactly 0
            sp = ShapleyPairs(G)
            diff = tf.gather(p, sp.with_.reshape(-1), axis=1) - tf.gather(p, sp.without.reshape(-1), axis=1)
            phi = tf.reduce_sum(tf.reshape(diff, [n, G, K // 2]) * sp.w.astype(np.float32), axis=2)
            return tf.concat([p[:, K - 1:], phi], 1)
        if in_graph_phi:
            return tf.concat([p[:, K - 1:], tf.matmul(p, Phi)], 1)
        return p

    frozen = convert_variables_to_constants_v2(explain.get_concrete_function())
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


class Interp:
    """Minimal TFLite wrapper for any output shape, inputs matched by rank (like TFLiteScorer)."""
    def __init__(self, content, max_batch=1024):
        from ai_edge_litert.interpreter import Interpreter
        self.it = Interpreter(model_content=content, num_threads=1)
        ins = self.it.get_input_details()
        r = {len(d["shape"]): d["index"] for d in ins}
        self.iseq, self.ista = r[3], r[2]
        self.iout = self.it.get_output_details()[0]["index"]
        self.alloc = -1
        self.max_batch = max_batch
        self.W, self.C = ins[[d["index"] for d in ins].index(self.iseq)]["shape"][1:]
        self.S = ins[[d["index"] for d in ins].index(self.ista)]["shape"][1]

    def __call__(self, seq, sta):
        outs = []
        for a in range(0, len(seq), self.max_batch):
            b = min(a + self.max_batch, len(seq))
            if b - a != self.alloc:
                self.it.resize_tensor_input(self.iseq, [b - a, self.W, self.C])
                self.it.resize_tensor_input(self.ista, [b - a, self.S])
                self.it.allocate_tensors()
                self.alloc = b - a
            self.it.set_tensor(self.iseq, np.ascontiguousarray(seq[a:b], np.float32))
            self.it.set_tensor(self.ista, np.ascontiguousarray(sta[a:b], np.float32))
            self.it.invoke()
            outs.append(self.it.get_tensor(self.iout).copy())
        return np.concatenate(outs)

    def ops(self):
        return sorted({d["op_name"] for d in self.it._get_ops_details()} - {"DELEGATE"})


def ref_medoid_static(d, keep=None):
    """A real retained training customer: nearest (L2 over the standardized static inputs) to the
    per-feature medians of the retained training customers; its own sequence goes with it."""
    keep = np.flatnonzero(d["train_y"] == 0) if keep is None else keep
    S = d["train_static"][keep]
    i = keep[int(np.argmin(((S - np.median(S, 0)) ** 2).sum(1)))]
    return d["train_seq"][i], d["train_static"][i], int(i)


def ref_medoid_median_p(d, p_train, band=0.05):
    """Like ref_medoid_static, among retained customers whose probability lies within +-band
    quantile of the retained customers' median probability."""
    keep = np.flatnonzero(d["train_y"] == 0)
    q = np.quantile(p_train[keep], [0.5 - band, 0.5 + band])
    keep = keep[(p_train[keep] >= q[0]) & (p_train[keep] <= q[1])]
    return ref_medoid_static(d, keep)


def antithetic_from_P(P, G):
    """Forward + reverse path (group order 0..G-1 and G-1..0), averaged, from coalition values P [n,K]."""
    phi = np.zeros((len(P), G))
    for order in (range(G), range(G - 1, -1, -1)):
        k = 0
        for g in order:
            phi[:, g] += 0.5 * (P[:, k | (1 << g)] - P[:, k])
            k |= 1 << g
    return phi


def occlusion_from_P(P, G):
    """Today's method: f(all) - f(all but g at the reference)."""
    full = (1 << G) - 1
    return np.stack([P[:, full] - P[:, full & ~(1 << g)] for g in range(G)], 1)


def shapley_weights(G):
    return np.array([math.factorial(s) * math.factorial(G - s - 1) / math.factorial(G) for s in range(G)])


def shapley_from_P(P, G):
    """Exact Shapley as weighted sums of paired differences P(S+g) - P(S): a group whose presence never
    changes the output gets exactly 0.0 (the matmul form P @ Phi only gets ~1e-17)."""
    P = np.asarray(P, dtype=np.float64)
    K = 1 << G
    ks = np.arange(K)
    size = np.array([bin(k).count("1") for k in ks])
    w = shapley_weights(G)
    phi = np.empty((len(P), G))
    for g in range(G):
        without = ks[(ks >> g) & 1 == 0]
        phi[:, g] = (P[:, without | (1 << g)] - P[:, without]) @ w[size[without]]
    return phi


class ShapleyPairs:
    """shapley_from_P with the index arrays precomputed: phi = sum_j w[g,j] (P[:, with[g,j]] - P[:, without[g,j]])."""
    def __init__(self, G):
        K = 1 << G
        ks = np.arange(K)
        size = np.array([bin(k).count("1") for k in ks])
        w = shapley_weights(G)
        self.without = np.stack([ks[(ks >> g) & 1 == 0] for g in range(G)])  # [G, K/2]
        self.with_ = self.without | (1 << np.arange(G))[:, None]
        self.w = w[size[self.without]]  # [G, K/2]
    def __call__(self, P):
        P = np.asarray(P, dtype=np.float64)
        return np.einsum("ngj,gj->ng", P[:, self.with_] - P[:, self.without], self.w)
