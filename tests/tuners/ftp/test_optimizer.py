"""FTPOptimizer: one step against an independent reference, projection invariants, state, errors.

The reference computations here are written from the update in shared/specs/methods.md section 4
(Adam / SGD candidate, per-row L1 norms, the radius's Adam step with the global step t, clipping),
not by calling the optimizer's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_lowdata.tuners.ftp import FTPOptimizer

EPS = 1e-8  # the norm epsilon and the radius floor of the spec / authors' code


def _grads(steps: int, shape, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(steps)]


class ReferenceRadius:
    """One tensor's radius per the spec: 1e-8 at the first update, then Adam (lr mu) on h, clipped."""

    def __init__(self, mu: float, kappa: float = 1.0) -> None:
        self.mu, self.kappa = mu, kappa
        self.t, self.gamma, self.gm, self.gv = 0, None, 0.0, 0.0
        self.c_prev = self.r_prev = self.h = None

    def ratio(self, g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """clip(gamma / r_i, 0, 1) per row for gradient ``g`` and candidate offset ``c``."""
        self.t += 1
        t = self.t
        r = c.abs().sum(dim=1) + EPS
        if self.gamma is None:
            self.gamma, self.h = EPS, None
        else:
            h = sum(float((g[i] * self.c_prev[i]).sum()) / float(self.r_prev[i]) for i in range(g.shape[0]))
            self.h = h * self.kappa if h > 0 else h
            self.gm = 0.9 * self.gm + 0.1 * self.h
            self.gv = 0.999 * self.gv + 0.001 * self.h * self.h
            gm_hat, gv_hat = self.gm / (1 - 0.9**t), self.gv / (1 - 0.999**t)
            gamma = self.gamma - self.mu * gm_hat / (math.sqrt(gv_hat) + 1e-8)
            self.gamma = min(max(gamma, EPS), float(r.max()))
        self.c_prev, self.r_prev = c, r
        return torch.clamp(self.gamma / r, 0, 1)


class ReferenceFTP:
    """FTP (AdamP) for one tensor, straight from the spec's pseudo-code, in float64 Python."""

    def __init__(self, w0: torch.Tensor, lr: float, mu: float, kappa: float, wd: float = 0.0,
                 start: torch.Tensor | None = None) -> None:
        self.w0 = w0.clone()
        self.w = w0.clone() if start is None else start.clone()
        self.lr, self.wd = lr, wd
        self.m = torch.zeros_like(w0)
        self.v = torch.zeros_like(w0)
        self.radius = ReferenceRadius(mu, kappa)
        self.log: list[dict] = []

    def step(self, g: torch.Tensor) -> torch.Tensor:
        t = self.radius.t + 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9**t), self.v / (1 - 0.999**t)
        d = self.lr * m_hat / (v_hat.sqrt() + 1e-8) + self.lr * self.wd * self.w
        c = (self.w - d) - self.w0
        ratio = self.radius.ratio(g, c)
        self.w = self.w0 + ratio[:, None] * c
        self.log.append({"gamma": self.radius.gamma, "h": self.radius.h, "inside": ratio == 1})
        return self.w

    @property
    def gamma(self) -> float:
        return self.radius.gamma


@pytest.mark.parametrize("projection, dtype", [("anchor", torch.float64), ("zero", torch.float64), ("zero", torch.float32)])
def test_steps_match_the_spec_reference(projection, dtype):
    """Drop-in use (anchor = the starting weight) and a delta projected towards zero (anchor 0, any start)."""
    torch.manual_seed(0)
    start = torch.randn(4, 5, dtype=torch.float64)
    w0 = start if projection == "anchor" else torch.zeros_like(start)
    grads = _grads(6, (4, 5))
    grads[0][0, 1:] = 0  # a row with a tiny candidate: it must fall inside the radius at some point
    for g in grads[1:]:
        g[0, 1:] = 0
    grads[3] = -grads[3]  # a reversal gives a positive hyper-gradient, damped by kappa
    if projection == "zero":
        start = start * 1e-3  # a delta that does not start at its anchor (e.g. a reloaded adapter)
    ref = ReferenceFTP(w0, lr=2e-3, mu=1e-2, kappa=0.5, start=start)
    p = torch.nn.Parameter(start.clone().to(dtype))
    opt = FTPOptimizer([p], lr=2e-3, mu=1e-2, kappa=0.5, projection=projection)
    rtol = 1e-6 if dtype == torch.float64 else 1e-4
    for t, g in enumerate(grads, start=1):
        expected = ref.step(g)
        p.grad = g.clone().to(dtype)
        opt.step()
        torch.testing.assert_close(p.detach().double(), expected, atol=1e-9, rtol=rtol, msg=f"step {t}")
        assert opt.state[p]["gamma"].item() == pytest.approx(ref.gamma, rel=rtol, abs=1e-12)
    assert opt.global_step == len(grads)
    # The scenario exercised every branch: the discard, rows inside and outside, a damped positive h.
    assert ref.log[0]["gamma"] == EPS
    assert any(e["inside"].any() and not e["inside"].all() for e in ref.log[1:])
    assert any(e["h"] is not None and e["h"] > 0 for e in ref.log)
    assert any(e["h"] is not None and e["h"] < 0 for e in ref.log)


def test_first_step_is_discarded():
    w0 = torch.randn(3, 4)
    p = torch.nn.Parameter(w0.clone())
    opt = FTPOptimizer([p], lr=0.1)
    p.grad = torch.randn(3, 4)
    opt.step()
    assert (p.detach() - w0).abs().sum(dim=1).max() <= 1.01e-8


def _plain_adam_deltas(grads, shape, lr):
    """The base update D_t of plain Adam for the same gradients (it does not depend on the weights)."""
    q = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    adam = torch.optim.Adam([q], lr=lr, foreach=False)
    deltas = []
    for g in grads:
        before = q.detach().clone()
        q.grad = g.clone()
        adam.step()
        deltas.append(before - q.detach())
    return deltas


@pytest.mark.parametrize("norm, projection", [("mars", "anchor"), ("l2", "anchor"), ("mars", "zero")])
def test_projection_invariants(norm, projection):
    """Rows inside the radius are the unprojected candidate; every row ends within gamma; gamma >= floor."""
    shape = (6, 8)
    torch.manual_seed(1)
    w0 = torch.randn(shape, dtype=torch.float64) if projection == "anchor" else torch.zeros(shape, dtype=torch.float64)
    grads = _grads(25, shape, seed=2)
    for g in grads:
        g[:2] *= 0.01  # small rows, likely inside the radius
    deltas = _plain_adam_deltas(grads, shape, lr=1e-2)
    p = torch.nn.Parameter(w0.clone())
    opt = FTPOptimizer([p], lr=1e-2, norm=norm, mu=5e-2, projection=projection)
    inside_seen = outside_seen = 0
    for g, d in zip(grads, deltas):
        candidate = p.detach() - d  # W_{t-1} - D_t, computed without the optimizer
        p.grad = g.clone()
        opt.step()
        gamma = opt.state[p]["gamma"].item()
        assert gamma >= EPS
        offset = p.detach() - w0
        cand_offset = candidate - w0
        if norm == "mars":
            dist, cand_dist = offset.abs().sum(dim=1), cand_offset.abs().sum(dim=1)
        else:
            dist, cand_dist = offset.norm().reshape(1), cand_offset.norm().reshape(1)
        assert (dist <= gamma * (1 + 1e-6) + 1e-12).all()
        inside = cand_dist + EPS <= gamma
        for i in range(len(dist)):
            rows = slice(i, i + 1) if norm == "mars" else slice(None)
            if inside[i]:
                torch.testing.assert_close(p.detach()[rows], candidate[rows], atol=1e-12, rtol=0)
                inside_seen += 1
            else:
                outside_seen += 1
                assert dist[i] == pytest.approx(gamma, rel=1e-6)
    assert inside_seen and outside_seen


def test_gamma_never_drops_below_its_floor():
    """Gradients that keep reversing push the radius down; it stops at 1e-8."""
    p = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    opt = FTPOptimizer([p], lr=1e-2, mu=1.0, projection="zero")
    gammas = []
    for t in range(30):
        p.grad = torch.ones(2, 3, dtype=torch.float64) * (1 if t % 2 else -1) + 0.1
        opt.step()
        gammas.append(opt.state[p]["gamma"].item())
    assert min(gammas) >= EPS
    assert min(gammas[1:]) == pytest.approx(EPS)
    assert max(gammas) > 10 * EPS


def test_sgd_base_step_matches_reference():
    """SGDP: Nesterov momentum, decoupled weight decay; the radius as for Adam."""
    w0 = torch.randn(3, 4, dtype=torch.float64)
    grads = _grads(3, (3, 4), seed=3)
    lr, mom, wd = 0.1, 0.9, 0.01
    p = torch.nn.Parameter(w0.clone())
    opt = FTPOptimizer([p], lr=lr, base="sgd", momentum=mom, weight_decay=wd, mu=1.0)
    w, buf, radius = w0.clone(), None, ReferenceRadius(mu=1.0)
    for t, g in enumerate(grads, start=1):
        buf = g.clone() if buf is None else mom * buf + g
        c = w - lr * (g + mom * buf) - lr * wd * w - w0
        w = w0 + radius.ratio(g, c)[:, None] * c
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), w, atol=1e-9, rtol=1e-6, msg=f"step {t}")


def test_unprojected_group_is_plain_adamw():
    """Tensors without a pretrained value (projection 'none') get exactly AdamW's update."""
    torch.manual_seed(4)
    start = torch.randn(5, 3)
    ours, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt = FTPOptimizer([{"params": [ours], "projection": "none"}], lr=1e-2, weight_decay=0.1)
    adamw = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, foreach=False)
    for g in _grads(5, (5, 3), seed=5):
        ours.grad, ref.grad = g.float(), g.float()
        opt.step()
        adamw.step()
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=0)
    assert "gamma" not in opt.state[ours]


def test_state_is_keyed_by_parameter_not_call_order():
    """A tensor without a gradient at some step changes nothing for the others."""
    torch.manual_seed(6)
    a0, b0 = torch.randn(3, 4), torch.randn(2, 4)
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    b_alone = torch.nn.Parameter(b0.clone())
    both = FTPOptimizer([a, b], lr=1e-2, mu=0.1)
    alone = FTPOptimizer([b_alone], lr=1e-2, mu=0.1)
    for t, g in enumerate(_grads(6, (2, 4), seed=7)):
        a.grad = None if t in (1, 2) else torch.randn(3, 4)
        b.grad, b_alone.grad = g.float(), g.float()
        both.step()
        alone.step()
    torch.testing.assert_close(b, b_alone, atol=0, rtol=0)
    assert both.state[a]["step"] == 4 and both.global_step == 6


@pytest.mark.parametrize("projection", ["zero", "anchor"])
def test_a_group_of_tensors_steps_like_each_tensor_alone(projection):
    """The radius update runs on a whole group at once: every tensor (2-D, 1-D, conv; one joining late)
    must end exactly where an optimizer holding only that tensor takes it."""
    torch.manual_seed(10)
    shapes = [(5, 3), (7,), (4, 2, 3, 3), (2, 6)]
    starts = [torch.randn(s) * 1e-2 for s in shapes]
    grouped = [torch.nn.Parameter(w.clone()) for w in starts]
    alone = [torch.nn.Parameter(w.clone()) for w in starts]
    opt = FTPOptimizer(grouped, lr=1e-2, mu=0.05, kappa=0.5, projection=projection)
    singles = [FTPOptimizer([p], lr=1e-2, mu=0.05, kappa=0.5, projection=projection) for p in alone]
    gen = torch.Generator().manual_seed(11)
    for t in range(7):
        for i, (p, q) in enumerate(zip(grouped, alone)):
            late = i == 3 and t < 3  # no gradient yet: its first (discarded) update comes at step 4
            g = None if late else torch.randn(p.shape, generator=gen) * (-1) ** (t // 2)
            p.grad, q.grad = g, None if g is None else g.clone()
        opt.step()
        for single in singles:
            single.step()
    for p, q, single in zip(grouped, alone, singles):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
        assert opt.state[p]["gamma"].item() == single.state[q]["gamma"].item()
    assert opt.state[grouped[3]]["gamma"].item() > EPS  # the late tensor's radius has grown since its discard


def test_state_dict_resume_reproduces_the_trajectory():
    torch.manual_seed(8)
    w0 = torch.randn(4, 6)
    grads = [g.float() for g in _grads(8, (4, 6), seed=9)]
    p_full = torch.nn.Parameter(w0.clone())
    full = FTPOptimizer([p_full], lr=1e-2, mu=0.1)
    for g in grads:
        p_full.grad = g
        full.step()
    p_half = torch.nn.Parameter(w0.clone())
    half = FTPOptimizer([p_half], lr=1e-2, mu=0.1)
    for g in grads[:3]:
        p_half.grad = g
        half.step()
    saved = half.state_dict()
    for group in saved["param_groups"]:
        del group["row_dim"]  # a checkpoint written before the option existed: resuming crashed with KeyError
    p_resumed = torch.nn.Parameter(p_half.detach().clone())
    resumed = FTPOptimizer([p_resumed], lr=1e-2, mu=0.1)  # its fresh anchor (the current weight) is wrong...
    resumed.load_state_dict(saved)  # ...until the saved one is restored
    for g in grads[3:]:
        p_resumed.grad = g
        resumed.step()
    torch.testing.assert_close(p_resumed, p_full, atol=0, rtol=0)
    assert resumed.global_step == 8


def test_loading_a_foreign_state_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    adam_state = torch.optim.Adam([p]).state_dict()
    with pytest.raises(ValueError, match="not written by FTPOptimizer"):
        FTPOptimizer([p]).load_state_dict(adam_state)


def test_lora_pair_matches_the_dense_delta_reference():
    """A [A, B] group projects delta = s B A exactly as the spec projects a dense delta (anchor 0).

    The reference takes dL/d(delta) from autograd and the candidate delta s B' A' of the previous step;
    the optimizer only sees dL/dA, dL/dB.
    """
    torch.manual_seed(10)
    out_f, in_f, rank, s, lr, mu = 5, 6, 2, 2.0, 5e-2, 0.2
    a = torch.nn.Parameter(torch.randn(rank, in_f, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(out_f, rank, dtype=torch.float64))
    opt = FTPOptimizer([{"params": [a, b], "projection": "lora", "lora_scale": s}], lr=lr, mu=mu)
    shadow = [torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())]
    adam = torch.optim.Adam(shadow, lr=lr, foreach=False)  # base updates only depend on the gradients
    x = torch.randn(16, in_f, dtype=torch.float64)
    target = torch.randn(16, out_f, dtype=torch.float64)
    target[:, :2] *= 0.01  # two output rows barely move: they fall inside the radius
    radius = ReferenceRadius(mu)
    inside_seen = False
    for t in range(1, 13):
        delta = s * b @ a
        delta.retain_grad()
        loss = ((x @ delta.T - target) ** 2).mean()
        loss.backward()
        g_delta = delta.grad.detach()
        # Reference candidate: plain Adam steps of A and B from their current values.
        d_a = shadow[0].detach().clone()
        d_b = shadow[1].detach().clone()
        shadow[0].grad, shadow[1].grad = a.grad.clone(), b.grad.clone()
        adam.step()
        a_new = a.detach() - (d_a - shadow[0].detach())
        b_cand = b.detach() - (d_b - shadow[1].detach())
        c = s * b_cand @ a_new
        ratio = radius.ratio(g_delta, c)  # the dense-delta reference: dL/d(delta) and c = s B' A'
        inside_seen |= bool((ratio == 1).any() and (ratio < 1).any())
        expected_delta = ratio[:, None] * c
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(a.detach(), a_new, atol=1e-12, rtol=1e-9, msg=f"A, step {t}")
        torch.testing.assert_close(s * b.detach() @ a.detach(), expected_delta, atol=1e-9, rtol=1e-5, msg=f"delta, step {t}")
    assert inside_seen


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"projection": "sideways"}, "projection must be one of"),
        ({"norm": "linf"}, "norm must be one of"),
        ({"base": "lion"}, "base must be one of"),
        ({"mu": 0.0}, "mu .* must be > 0"),
        ({"kappa": 1.5}, r"kappa must lie in \[0, 1\]"),
        ({"lr": -1.0}, "must be >= 0"),
        ({"base": "sgd", "momentum": 0.0}, "Nesterov SGD needs momentum > 0"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FTPOptimizer([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_malformed_lora_group_is_a_clear_error():
    a, b = torch.nn.Parameter(torch.zeros(2, 4)), torch.nn.Parameter(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"exactly \[A, B\]"):
        FTPOptimizer([{"params": [a, b], "projection": "lora", "lora_scale": 1.0}])


def test_state_memory_per_projection_kind():
    """A zero-anchored delta keeps one number per row beyond Adam's moments; an anchored tensor its W0 and c / r."""
    delta, weight = torch.nn.Parameter(torch.zeros(6, 4)), torch.nn.Parameter(torch.randn(6, 4))
    opt = FTPOptimizer([{"params": [delta], "projection": "zero"}, {"params": [weight], "projection": "anchor"}], lr=1e-2)
    for _ in range(2):
        delta.grad, weight.grad = torch.randn(6, 4), torch.randn(6, 4)
        opt.step()
    full_size = {k for k, v in opt.state[delta].items() if torch.is_tensor(v) and v.shape == delta.shape}
    assert full_size == {"exp_avg", "exp_avg_sq"} and opt.state[delta]["kept"].shape == (6,)
    assert {"anchor", "c_over_r"} <= set(opt.state[weight])


@pytest.mark.parametrize("projection", ["anchor", "zero"])
def test_fp16_weights_with_a_row_that_does_not_move_stay_finite(projection):
    """1 / r of a row that did not move (r = 1e-8) overflowed fp16 to inf: 0 * inf made the stored c / r NaN, the
    next step's gamma NaN, and every weight of the tensor NaN within two steps. fp16 now follows fp32."""
    torch.manual_seed(0)
    start = torch.randn(4, 8) if projection == "anchor" else torch.zeros(4, 8)
    grads = [torch.randn(4, 8) for _ in range(4)]
    for g in grads:
        g[0] = 0  # row 0 never moves
    runs = {}
    for dtype in (torch.float32, torch.float16):
        weights = torch.nn.Parameter(start.to(dtype))
        optimizer = FTPOptimizer([{"params": [weights], "projection": projection}], lr=1e-2)
        gammas = []
        for g in grads:
            weights.grad = g.to(dtype)
            optimizer.step()
            assert torch.isfinite(weights).all()
            gammas.append(float(optimizer.state[weights]["gamma"]))
        runs[dtype] = gammas, weights.detach().float()
    assert torch.isfinite(optimizer.state[weights]["c_over_r"]).all()  # (kept in fp16 for fp16 weights)
    assert max(runs[torch.float32][0]) > 1e-3  # a step where the radius opened: the fp16 NaN came from there
    assert runs[torch.float16][0] == pytest.approx(runs[torch.float32][0], rel=2e-2, abs=1e-6)
    torch.testing.assert_close(runs[torch.float16][1], runs[torch.float32][1], atol=4e-3, rtol=0)
