"""A diagnosis, not a method: does contact that *persists* between frame intervals remove the marginal model's low radius?

The marginal model's chain switches OFF→ON in interval t with probability 1 − exp(−k_on·Δt·ḡ_t), independently from
interval to interval given the observed vectors (ḡ_t: the bridged mean contact fraction). The simulator activates in
continuous time while the true distance is within r_c, and a contact lasts. This prototype adds a hidden binary contact
state per interval: a two-state Markov chain whose marginals are ḡ_t and whose lag-1 correlation is ρ (the bivariate
Bernoulli with marginals ḡ_{t−1}, ḡ_t), with OFF→ON only in contact, with probability 1 − exp(−k_on·Δt); the emission,
the compound states and the initial window are `xai_hsg.marginal`'s. It fits the fast-switching cell at one-minute
frames (the library's fit first, then this model from it; ρ fitted, or held with `--rho`), σ_loc given. One JSON line.

    python bench/marginal_contact_chain.py --seed 1 --n 2000            # ρ fitted
    python bench/marginal_contact_chain.py --seed 1 --n 2000 --rho 0.9  # ρ held
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from marginal_bias_diagnosis import cell_params

from xai_hsg.marginal import MarginalRadius, _state_frame_logpdf, _step_logp, _transition_tables, interval_gate
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import simulate


def _contact_transition(g: torch.Tensor, t: int, rho: torch.Tensor) -> torch.Tensor:
    "log P(x_t | x_{t−1}) [B, 2, 2] of the contact chain over interval t (its marginal alone for the first interval)."
    q = g[:, t - 1]
    if t < 2:
        m = torch.stack([torch.log1p(-q), torch.log(q)], -1)
        return m[:, None, :].expand(len(q), 2, 2)
    p = g[:, t - 2]
    p11 = p * q + rho * torch.sqrt(p * (1 - p) * q * (1 - q))
    p11 = torch.minimum(torch.minimum(p11, p), q).clamp_min((p + q - 1).clamp_min(0) + 1e-12)
    t11 = (p11 / p).clamp(1e-12, 1 - 1e-12)
    t01 = ((q - p11) / (1 - p)).clamp(1e-12, 1 - 1e-12)
    row0 = torch.stack([torch.log1p(-t01), torch.log(t01)], -1)
    row1 = torch.stack([torch.log1p(-t11), torch.log(t11)], -1)
    return torch.stack([row0, row1], 1)


def contact_loglik(data, theta: torch.Tensor, rho_logit: torch.Tensor) -> torch.Tensor:
    "log p(MS2 | distances) per trace [B] with the persistent contact chain (see the module docstring)."
    cs = data.states
    g = interval_gate(data, theta[0]).clamp(1e-9, 1 - 1e-9)
    logp, init, _ = _step_logp(theta, g, data.dt_s)
    log_pi = torch.stack([torch.nn.functional.logsigmoid(-theta[7]), torch.nn.functional.logsigmoid(theta[7])])
    bits = torch.as_tensor(cs.bits)
    alpha = log_pi[bits[:, -1].long()] + init @ torch.as_tensor(cs.step_counts).T
    alpha = alpha + torch.where(data.y_obs[:, :1], _state_frame_logpdf(data, theta, data.y[:, :1]), 0.0)
    coef, _, target = _transition_tables(data, theta, logp)
    coef_emission = coef[0, : data.features.shape[-1]]
    N = cs.n_states
    step = (2 * bits[:, :1].long() + torch.arange(2)).reshape(-1)  # [2N]: 2·s_{t−1} + s_t
    kdt, odt = theta[1].exp() * data.dt_s, theta[2].exp() * data.dt_s
    never = torch.tensor(-1e30, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    off_contact = torch.stack([zero, never, torch.log(-torch.expm1(-odt)), -odt])  # no switch ON out of contact
    in_contact = torch.stack([-kdt, torch.log(-torch.expm1(-kdt)), torch.log(-torch.expm1(-odt)), -odt])
    step_logp = torch.stack([off_contact[step], in_contact[step]], -1)  # [2N, x_t]
    rho = torch.sigmoid(rho_logit)
    B = alpha.shape[0]
    source = torch.arange(N).repeat_interleave(2)
    a_state = alpha[:, :, None] + math.log(0.5)  # [B, N, x_{t−1}]
    for t in range(1, data.y.shape[1]):
        emission = data.features[:, t - 1] @ coef_emission  # [B, 2N]
        a = (
            a_state.index_select(1, source)[:, :, :, None]
            + _contact_transition(g, t, rho)[:, None]
            + (emission[:, :, None] + step_logp[None])[:, :, None, :]
        )
        a = torch.logsumexp(a, 2)  # over x_{t−1}: [B, 2N, x_t]
        index = target[None, :, None].expand(B, -1, 2)
        top = a.new_full((B, N, 2), -math.inf).scatter_reduce(1, index, a, "amax").detach()
        top = torch.where(torch.isfinite(top), top, 0.0)
        a_state = top + torch.log(a.new_zeros(B, N, 2).index_add(1, target, torch.exp(a - top[:, target])))
    return torch.logsumexp(a_state.reshape(B, -1), -1)


def fit_contact(data, theta0: torch.Tensor, free: torch.Tensor, rho_logit: float, fit_rho: bool, max_iter: int = 60):
    "L-BFGS over θ[free] (and ρ when `fit_rho`) from θ0; returns θ, ρ and log L."
    x = theta0[free].clone().requires_grad_()
    r = torch.tensor(rho_logit, dtype=torch.float64, requires_grad=fit_rho)
    n_obs = int(data.y_obs.sum())
    opt = torch.optim.LBFGS(
        [x, r] if fit_rho else [x], max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = -contact_loglik(data, theta0.masked_scatter(free, x), r).sum() / n_obs
        loss.backward()
        return loss

    opt.step(closure)
    theta = theta0.masked_scatter(free, x.detach())
    with torch.no_grad():
        ll = float(contact_loglik(data, theta, r.detach()).sum())
    return theta, float(torch.sigmoid(r.detach())), ll


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--rho", type=float, default=None, help="hold ρ here (default: fitted from 0.5)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = cell_params("simulator", 150.0).replace(dt_s=60.0, n_frames=args.frames)
    arrays = simulate(args.n, p, seed=args.seed).to_arrays()
    row = dict(n_traces=args.n, seed=args.seed, dt_s=p.dt_s, r_c_true=p.r_c_nm)
    row["truth_state_mle"] = RadiusMLE(sigma_loc_nm=p.sigma_loc_nm, n_boot=0).fit(arrays).r_c_nm_
    est = MarginalRadius(sigma_loc_nm=p.sigma_loc_nm).fit(arrays)
    row.update(marginal=est.r_c_nm_, marginal_k_on=est.k_on_per_s_)
    rho_logit = 0.0 if args.rho is None else math.log(args.rho / (1 - args.rho))
    t0 = time.perf_counter()
    theta, rho, ll = fit_contact(est._data(arrays), est.params_.to_log(), est._free(), rho_logit, args.rho is None)
    row.update(
        contact_r_c=float(theta[0].exp()), contact_k_on=float(theta[1].exp()), rho=rho, rho_fitted=args.rho is None
    )
    row.update(contact_loglik=ll, contact_seconds=time.perf_counter() - t0)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
