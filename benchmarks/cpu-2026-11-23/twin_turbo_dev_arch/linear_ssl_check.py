"""Throwaway experiment: is a semi-supervised linear head on frozen normalized embeddings much better than the probe?"""
import sys, numpy as np, torch, torch.nn.functional as F, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from hf_lowdata.data import load_data, make_few_shot_task
from hf_lowdata.methods import SharedCache
cache = SharedCache()
def emb(t): return cache.embeddings(None, list(t), 128)
res = {}
for ds in ["sst2", "sst5"]:
    sp = load_data(Path("/work/shared/data")/ds, empty_text="drop")
    Xd = torch.tensor(emb(sp.dev.texts)); yd = np.array(sp.dev.labels)
    for seed in range(5):
        task = make_few_shot_task(sp, seed=seed, k=8, unlabelled=2000, warn_on_overlap=False)
        X = emb(task.labelled.texts); y = np.array(task.labelled.labels)
        U = torch.tensor(emb(task.unlabelled.texts))
        C = len(sp.train.label_names)
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(X, y)
        res.setdefault((ds, "probe"), []).append((lr.predict(Xd.numpy()) == yd).mean())
        Xt, yt = torch.tensor(X), torch.tensor(y)
        prior = torch.bincount(yt, minlength=C).float(); prior /= prior.sum()
        for name, wm, we, scale in [("ce", 0, 0, 10), ("ce+marg+ent", 1, 1, 10), ("ce+marg+ent0.3", 1, 0.3, 10), ("ce+marg+ent s20", 1, 1, 20)]:
            torch.manual_seed(seed)
            W = torch.zeros(X.shape[1], C, requires_grad=True); b = torch.zeros(C, requires_grad=True)
            opt = torch.optim.Adam([W, b], lr=1e-2)
            for step in range(300):
                logits = scale * (Xt @ W) + b
                loss = F.cross_entropy(logits, yt) + 1e-2 * (W ** 2).sum()
                if wm or we:
                    idx = torch.randint(len(U), (256,))
                    q = F.softmax(scale * (U[idx] @ W) + b, -1)
                    qbar = q.mean(0)
                    loss = loss + wm * -(prior * qbar.clamp_min(1e-8).log()).sum() + we * -(q * q.clamp_min(1e-8).log()).sum(-1).mean()
                opt.zero_grad(); loss.backward(); opt.step()
            pred = (scale * (Xd @ W) + b).argmax(-1).numpy()
            res.setdefault((ds, name), []).append((pred == yd).mean())
for k, v in res.items(): print(k, round(100*np.mean(v),1), round(100*np.std(v, ddof=1),1))
