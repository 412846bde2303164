"""Flow matching's sampling maths, apart from any network: the ODE samplers, classifier-free guidance and
the likelihood through the probability-flow ODE (the straight path and the time densities training draws
from are the objective's, ``objectives/flow.py``; the loss is ``losses.flow_matching_loss``).

Conventions (rectified flow, Liu et al. 2022; conditional flow matching, Lipman et al. 2023):
``x0 ~ N(0, I)`` is noise at ``t = 0``, ``x1`` is data at ``t = 1``, the path is the straight line
``x_t = (1 - t) x0 + t x1`` and its velocity ``dx_t/dt = x1 - x0``. A network ``v(x, t)`` trained
to regress that velocity defines the ODE ``dx/dt = v(x, t)``; integrating it from noise at ``t = 0``
to ``t = 1`` samples the data. A sampler only sees a function ``velocity(x, t: B) -> v``, so
guidance, conditions and networks stay outside it (as diffusers keeps schedulers apart from models).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]


def time_grid(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """``steps + 1`` times from 0 to 1, evenly spaced."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


@torch.no_grad()
def euler(velocity: Velocity, x0: Tensor, steps: int) -> Tensor:
    """Integrate ``dx/dt = v`` from ``x0`` at ``t = 0`` to ``t = 1`` in ``steps`` Euler steps
    (``steps`` network evaluations)."""
    times, x = time_grid(steps, x0.device), x0
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, t.expand(x.shape[0]))
    return x


@torch.no_grad()
def heun(velocity: Velocity, x0: Tensor, steps: int) -> Tensor:
    """Heun's second-order method (the explicit trapezoid rule) in ``steps`` steps of two network
    evaluations each: Euler to a trial point, then the mean of the two slopes."""
    times, x = time_grid(steps, x0.device), x0
    for t, t_next in zip(times[:-1], times[1:]):
        h = t_next - t
        slope = velocity(x, t.expand(x.shape[0]))
        trial = x + h * slope
        x = x + h / 2 * (slope + velocity(trial, t_next.expand(x.shape[0])))
    return x


SAMPLERS: dict[str, Callable[[Velocity, Tensor, int], Tensor]] = {"euler": euler, "heun": heun}


def guided(velocity: Callable[[Tensor, Tensor, Tensor | None], Tensor], guidance_scale: float,
           interval: tuple[float, float] = (0.0, 1.0)) -> Velocity:
    """Classifier-free guidance (Ho & Salimans 2022) on velocities:
    ``v = v(x, t, null) + w (v(x, t, c) - v(x, t, null))``, from ``velocity(x, t, force_drop)`` where
    ``force_drop: bool B`` asks for the null condition. ``w = 1`` is the plain conditional velocity
    (one evaluation), ``w = 0`` the unconditional one; both halves run as one batch otherwise.

    ``interval = (start, stop)`` applies the guidance only for ``start <= t <= stop`` (``t = 0`` is
    noise, ``1`` data) and the plain conditional velocity elsewhere (Kynkäänniemi et al. 2024, "Applying
    guidance in a limited interval"). Which interval suits depends on the model and the data: that paper
    leaves out the noise end, where guidance pulls every sample of a condition toward one mode, and the
    data end, where it adds little; the flow recipes (``guidance_stop: 0.5``) keep it on the noisy half,
    where what the condition names is decided, and leave the data half to the conditional velocity."""
    start, stop = interval
    if not 0.0 <= start <= stop <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= start <= stop <= 1, got ({start}, {stop})")
    if guidance_scale == 1.0:
        return lambda x, t: velocity(x, t, None)

    def combined(x: Tensor, t: Tensor) -> Tensor:
        now = float(t.reshape(-1)[0])  # the solvers step every sample at the same time
        if not start <= now <= stop:
            return velocity(x, t, None)
        batch = x.shape[0]
        drop = torch.arange(2 * batch, device=x.device) >= batch
        conditional, unconditional = velocity(torch.cat([x, x]), torch.cat([t, t]), drop).chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    return combined


def standard_normal_log_density(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` summed over all but the first dimension: ``B`` (float64)."""
    x = x.double().flatten(1)
    return -0.5 * (x.pow(2).sum(1) + x.shape[1] * math.log(2 * math.pi))


def ode_log_likelihood(velocity: Velocity, x1: Tensor, steps: int = 32, hutchinson_samples: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """Exact log-density ``log p_1(x1)`` (``B``, float64 nats) of the model's ODE
    (Chen et al. 2018, Grathwohl et al. 2019): by the instantaneous change of variables
    ``d log p_t(x_t)/dt = -div v(x_t, t)``, so

        ``log p_1(x1) = log N(x0; 0, I) - int_0^1 div v(x_t, t) dt``,

    with ``x_t`` the ODE's path through ``x1``, integrated backwards from ``t = 1`` to ``0`` with Heun
    steps. The divergence is Hutchinson's estimate ``E_e[e^T (dv/dx) e]`` with Rademacher ``e``
    (exact when the Jacobian is diagonal), one vector-Jacobian product per probe; the probes are
    drawn once and kept along the path (FFJORD), which makes the integrand a smooth function of ``t``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if hutchinson_samples < 1:
        raise ValueError(f"hutchinson_samples must be >= 1, got {hutchinson_samples}")
    probes = [torch.randint(0, 2, x1.shape, device=x1.device, generator=generator).to(x1.dtype) * 2 - 1
              for _ in range(hutchinson_samples)]

    def slopes(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = velocity(x, t.expand(x.shape[0]))
            divergence = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for index, probe in enumerate(probes):
                (vjp,) = torch.autograd.grad(v, x, probe, retain_graph=index < len(probes) - 1)
                divergence += (vjp * probe).flatten(1).sum(1).double()
        return v.detach(), divergence / len(probes)

    times = time_grid(steps, x1.device).flip(0)  # 1 -> 0
    x, integral = x1, torch.zeros(x1.shape[0], dtype=torch.float64, device=x1.device)
    for t, t_next in zip(times[:-1], times[1:]):
        h = t_next - t  # negative
        v, divergence = slopes(x, t)
        trial = x + h * v
        v_trial, divergence_trial = slopes(trial, t_next)
        x = x + h / 2 * (v + v_trial)
        integral = integral - float(h) / 2 * (divergence + divergence_trial)  # int_0^1, walked from 1 down
    return standard_normal_log_density(x) - integral
