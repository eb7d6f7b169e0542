"""(4) Efficiency of the proposed method over 10k CDNOW customers and 'ignored group -> 0'.
Efficiency is measured against what serving would report: p(customer) and p(reference) from
model.tflite (not only from the explainer graph itself)."""
import sys, json; sys.path.insert(0, "/tmp/reasons_study")
from common import *
import keras

d = data()
groups, static_groups = spec_groups()
G = len(groups); Phi = shapley_matrix(G)
r = np.load("/tmp/reasons_study/refs.npz"); rs, rt = r["proposed_seq"], r["proposed_static"]
base = Interp(open(f"{MODEL_DIR}/model.tflite", "rb").read())
seq = np.concatenate([d["train_seq"], d["validation_seq"], d["test_seq"]])[:10000]
sta = np.concatenate([d["train_static"], d["validation_static"], d["test_static"]])[:10000]
p_model = base(seq, sta).reshape(-1).astype(np.float64)
p_ref_model = float(base(rs[None], rt[None])[0, 0])
P = Interp(open("/tmp/reasons_study/explainer_proposed.tflite", "rb").read())(seq, sta).astype(np.float64)
out_phi = Interp(open("/tmp/reasons_study/explainer_proposed_phi.tflite", "rb").read())(seq, sta).astype(np.float64)
pairs_content = explainer_tflite(load_keras(), groups, static_groups, rs, rt, in_graph_phi="pairs")
open("/tmp/reasons_study/explainer_proposed_pairs.tflite", "wb").write(pairs_content)
pairs_it = Interp(pairs_content); print("in-graph pairs ops:", pairs_it.ops())
out_pairs = pairs_it(seq, sta).astype(np.float64)
phi_diff = shapley_from_P(P, G)
phi_mm = P @ Phi
print(f"p_ref: model.tflite {p_ref_model:.7f}  explainer {P[0,0]:.7f}")
print("max |p_expl - p_model|", np.abs(P[:, -1] - p_model).max())
for name, phi, pc, pr in (("numpy diff-form (P float32 -> float64)", phi_diff, P[:, -1], P[0, 0]),
                          ("numpy diff-form vs model.tflite p", phi_diff, p_model, p_ref_model),
                          ("in-graph float32 phi vs model.tflite p", out_phi[:, 1:], p_model, p_ref_model),
                          ("in-graph float32 pairs vs model.tflite p", out_pairs[:, 1:], p_model, p_ref_model),
                          ("in-graph float32 pairs vs its own p", out_pairs[:, 1:], out_pairs[:, 0], P[0, 0])):
    print(f"efficiency {name}: max|sum(phi) - (p - p_ref)| = {np.abs(phi.sum(1) - (pc - pr)).max():.2e}")
print("max |diff-form - matmul| =", np.abs(phi_diff - phi_mm).max(), " max |in-graph - numpy| =", np.abs(out_phi[:, 1:] - phi_diff).max())

# ---- ignored groups: zero a group's weights in a copy of the Keras model
def ignored(kind):
    m = load_keras()
    if kind == SEQ:  # the head never sees the sequence embedding (fuse = [lstm_2 (8), static_dense (16)])
        k, b = m.get_layer("head").get_weights(); E = m.get_layer("lstm_2").units
        k[:E] = 0; m.get_layer("head").set_weights([k, b])
    else:  # static_dense ignores the group's columns
        k, b = m.get_layer("static_dense").get_weights(); k[static_groups == kind] = 0
        m.get_layer("static_dense").set_weights([k, b])
    return m
from methods import Antithetic
for kind in ("tenure", "recent_trend", SEQ):
    m = ignored(kind)
    g = groups.index(kind)
    Pz = Interp(explainer_tflite(m, groups, static_groups, rs, rt))(seq, sta)
    outz = Interp(explainer_tflite(m, groups, static_groups, rs, rt, in_graph_phi=True))(seq, sta)
    outp = Interp(explainer_tflite(m, groups, static_groups, rs, rt, in_graph_phi="pairs"))(seq, sta)
    pd_ = shapley_from_P(Pz, G); pm = Pz.astype(np.float64) @ Phi
    print(f"ignored {kind:14s}: diff-form max|phi|={np.abs(pd_[:, g]).max():.1e} (exactly 0: {bool((pd_[:, g] == 0).all())}); "
          f"matmul {np.abs(pm[:, g]).max():.1e}; in-graph f32 matmul {np.abs(outz[:, 1 + g]).max():.1e}; in-graph f32 pairs {np.abs(outp[:, 1 + g]).max():.1e}; "
          f"antithetic {np.abs(antithetic_from_P(Pz, G)[:, g]).max():.1e}; others mean|phi| {np.abs(np.delete(pd_, g, 1)).mean():.3f}")
# ---- the demo customer 1
ids = np.concatenate([d["train_ids"], d["validation_ids"], d["test_ids"]])
allseq = np.concatenate([d["train_seq"], d["validation_seq"], d["test_seq"]]); allsta = np.concatenate([d["train_static"], d["validation_static"], d["test_static"]])
i = int(np.flatnonzero(ids == "1")[0])
P1 = Interp(open("/tmp/reasons_study/explainer_proposed.tflite", "rb").read())(allseq[i:i+1], allsta[i:i+1])
phi1 = shapley_from_P(P1, G)[0]
print("customer 1: p =", round(float(P1[0, -1]), 4), "p_ref =", round(float(P1[0, 0]), 4), "phi:", {g: round(float(v), 4) for g, v in zip(groups, phi1)}, "sum", round(float(phi1.sum()), 4))
