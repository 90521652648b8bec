"""Prototype: TwinTurbo with the unlabelled pool's class prior estimated by EM (Saerens et al. 2002)."""
import sys, importlib.util
import numpy as np, torch
from sklearn.linear_model import LogisticRegression
import hf_lowdata.methods.twin_turbo as tt
import hf_lowdata.tuners.twin_turbo.objectives as obj

def pooled(states):
    x = np.stack([s.float().mean(0).numpy() for s in states])
    return x / np.linalg.norm(x, axis=1, keepdims=True)

def em_prior(xl, yl, xu, k, iters=int(__import__("os").environ.get("EM_ITERS", "200"))):
    p = LogisticRegression(C=1.0, max_iter=2000).fit(xl, yl).predict_proba(xu)
    if iters == 0:  # hard classify-and-count
        return np.bincount(p.argmax(1), minlength=k) / len(p)
    pt = np.bincount(yl, minlength=k) / len(yl)
    q = pt.copy()
    for _ in range(iters):
        a = p * (q / pt); a /= a.sum(1, keepdims=True)
        q_new = a.mean(0)
        if np.abs(q_new - q).max() < 1e-6: break
        q = q_new
    return q

orig = tt.train_projector
def wrapped(model, labelled, unlabelled, *a, **kw):
    if unlabelled is not None:
        k = int(max(labelled.labels)) + 1
        q = em_prior(pooled(labelled.states), np.array(labelled.labels), pooled(unlabelled.states), k)
        print("EM prior", np.round(q, 3), file=sys.stderr, flush=True)
        prior = torch.tensor(q, dtype=torch.float32).clamp(min=1e-3); prior /= prior.sum()
        obj.label_prior = lambda kind, labels, n: prior.clone()
    return orig(model, labelled, unlabelled, *a, **kw)
tt.train_projector = wrapped

spec = importlib.util.spec_from_file_location("dev_sweep", str(__import__("pathlib").Path(__file__).resolve().parents[3] / "scripts" / "dev_sweep.py"))
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
mod.main()
