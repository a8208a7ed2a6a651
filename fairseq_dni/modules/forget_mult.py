"""The QRNN's forget-mult recurrence as a vectorised scan: no Python loop over time steps.

torch only, CPU and CUDA. Quasi-recurrent networks (Bradbury, Merity, Xiong & Socher 2017,
arXiv 1611.01576, eq. 3 "f-pooling", as ``salesforce/pytorch-qrnn``'s ``torchqrnn/forget_mult.py``
computes it) mix their candidate ``z`` into a cell state ``c`` with a forget gate ``f``::

    c_t = f_t * z_t + (1 - f_t) * c_{t-1}                      (t = 0 .. T-1, c_{-1} = c0)

a first-order linear recurrence ``c_t = a_t * c_{t-1} + b_t`` with ``a = 1 - f``, ``b = f * z``.
Its pairs compose associatively, ``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``, so
:func:`linear_scan` evaluates it in ``ceil(log2 T)`` vectorised levels (odd-even reduction, the
work-efficient form of Blelloch's scan: about 3T multiplies and multiply-adds in all, each level a few
elementwise tensor ops on strided views). It only multiplies and adds values of the recurrence; it never divides
(no ``cumprod``-ratio or log-space trick that breaks when some ``1 - f`` is 0 or underflows), so
it is safe in float32, bfloat16 and float16; its rounding differs from the sequential loop's only
by the order of the sums.

:func:`forget_mult` is what a QRNN layer calls (the scan synthesizer over one sequence of B x D
scalars, the QRNN language model over (T, B, H)). Its gradient is exact: a hand-written backward
(:class:`ForgetMult`) runs the adjoint recurrence ``g~_t = g_t + a_{t+1} g~_{t+1}`` as the same
scan in reverse, then ``dz = f g~``, ``df = (z - c_{t-1}) g~``, ``dc0 = a_0 g~_0`` (torchqrnn's
CUDA backward kernel computes the same), keeping only ``f``, ``z``, ``c0`` and the output ``c``
for the backward. ``benchmarks/scan_synthesizer.py`` measures it against autograd through
:func:`linear_scan` (:func:`forget_mult_autograd`).
"""
from typing import Optional

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor, c0: Optional[torch.Tensor] = None, *,
                reverse: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``c_t = a_t * c_{t-1} + b_t`` for every ``t`` along dim 0, ``c_{-1} = c0``; with ``reverse``
    ``c_t = a_t * c_{t+1} + b_t``, ``c_T = c0`` (the adjoint's direction).

    Shapes: ``a`` and ``b`` (T, *batch) (time-major; any further dims are independent channels),
    ``c0`` (*batch) or None (zeros); ``out`` (T, *batch) to write ``c`` into (it may be a strided
    view; it must not overlap ``a`` or ``b``). Returns ``c`` (T, *batch). Without ``out`` it is
    differentiable by autograd (every level is ordinary tensor ops); with ``out`` (no autograd) it
    uses one scratch buffer (2, T, *batch) for the pairs' products. Raises ValueError on mismatched
    shapes."""
    if a.shape != b.shape:
        raise ValueError(f"linear_scan: a {tuple(a.shape)} and b {tuple(b.shape)} differ in shape")
    if a.dim() == 0:
        raise ValueError("linear_scan: a and b need a time dimension (dim 0)")
    if c0 is not None and c0.shape != b.shape[1:]:
        raise ValueError(f"linear_scan: c0 {tuple(c0.shape)} does not match one step {tuple(b.shape[1:])}")
    if out is None:
        if b.size(0) == 0:
            return b.clone()
        return _scan(a, b, c0, reverse)
    if out.shape != b.shape:
        raise ValueError(f"linear_scan: out {tuple(out.shape)} does not match {tuple(b.shape)}")
    if b.size(0):   # level k's pair products use T / 2^(k+1) steps of the scratch buffer
        _scan_into(a, b, c0, reverse, out, b.new_empty(2, *b.shape))
    return out


def _odd_even(steps: int, reverse: bool):
    """How one level pairs steps: (first, second, leftover) index slices, where ``first`` is the
    earlier step of each pair in the recurrence's direction and ``leftover`` the unpaired step
    (processed last) or None. Forward: pairs (0, 1), (2, 3), ..., leftover T-1 when T is odd;
    reverse: pairs (T-1, T-2), ..., leftover 0 when T is odd."""
    pairs, odd = divmod(steps, 2)
    if not reverse:
        return slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2), (slice(steps - 1, steps) if odd else None)
    return slice(odd + 1, steps, 2), slice(odd, steps, 2), (slice(0, 1) if odd else None)


def _scan(a, b, c0, reverse):
    """Functional (autograd) form: c for the pairs' second steps from the half-length recurrence,
    then each first step from the second step of the pair before it."""
    steps = b.size(0)
    if steps == 1:
        return b if c0 is None else torch.addcmul(b, a, c0.unsqueeze(0))
    first, second, leftover = _odd_even(steps, reverse)
    a1, a2, b1, b2 = a[first], a[second], b[first], b[second]
    c2 = _scan(a2 * a1, torch.addcmul(b2, a2, b1), c0, reverse)   # (a2, b2) o (a1, b1)
    start = (torch.zeros_like(c2[:1]) if c0 is None else c0.unsqueeze(0).to(c2.dtype))
    before = torch.cat([start, c2[:-1]]) if not reverse else torch.cat([c2[1:], start])
    c1 = torch.addcmul(b1, a1, before)
    pair = torch.stack([c1, c2], dim=1) if not reverse else torch.stack([c2, c1], dim=1)
    c = pair.reshape(-1, *b.shape[1:])
    if leftover is not None:
        if not reverse:
            c = torch.cat([c, torch.addcmul(b[-1:], a[-1:], c[-1:])])
        else:
            c = torch.cat([torch.addcmul(b[:1], a[:1], c[:1]), c])
    return c


def _scan_into(a, b, c0, reverse, out, scratch):
    """:func:`_scan` without autograd, writing into ``out``; the pair products go to ``scratch``
    (2, >= T / 2, ...), whose tail the next level reuses."""
    steps = b.size(0)
    if steps == 1:
        if c0 is None:
            out.copy_(b)
        else:
            torch.addcmul(b, a, c0.unsqueeze(0), out=out)
        return
    first, second, leftover = _odd_even(steps, reverse)
    a1, a2, b1, b2 = a[first], a[second], b[first], b[second]
    half = a1.size(0)
    pair_a, pair_b = scratch[0, :half], scratch[1, :half]
    torch.mul(a2, a1, out=pair_a)
    torch.addcmul(b2, a2, b1, out=pair_b)
    c1, c2 = out[first], out[second]
    _scan_into(pair_a, pair_b, c0, reverse, c2, scratch[:, half:])
    # the first step of pair i follows the second step of pair i - 1 (pair 0: c0)
    if not reverse:
        torch.addcmul(b1[1:], a1[1:], c2[:-1], out=c1[1:])
        head_a, head_b, head_out = a1[:1], b1[:1], c1[:1]
    else:
        torch.addcmul(b1[:-1], a1[:-1], c2[1:], out=c1[:-1])
        head_a, head_b, head_out = a1[-1:], b1[-1:], c1[-1:]
    if c0 is None:
        head_out.copy_(head_b)
    else:
        torch.addcmul(head_b, head_a, c0.unsqueeze(0), out=head_out)
    if leftover is not None:
        neighbour = slice(steps - 2, steps - 1) if not reverse else slice(1, 2)
        torch.addcmul(b[leftover], a[leftover], out[neighbour], out=out[leftover])


class ForgetMult(torch.autograd.Function):
    """``c = forget_mult(f, z, c0)`` with the adjoint scan as its backward (see the module docstring).

    ``c0`` may be None (zeros). Not twice differentiable."""

    @staticmethod
    def forward(ctx, f, z, c0):
        c = _forget_mult_no_grad(f, z, c0)
        ctx.save_for_backward(f, z, c0, c)
        return c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_c):
        f, z, c0, c = ctx.saved_tensors
        a = 1 - f
        # the adjoint g~_t = grad_c_t + a_{t+1} g~_{t+1}, g~_{T-1} = grad_c_{T-1}: a reverse scan
        adjoint = torch.empty_like(grad_c)
        adjoint[-1] = grad_c[-1]
        if grad_c.size(0) > 1:
            linear_scan(a[1:], grad_c[:-1], grad_c[-1], reverse=True, out=adjoint[:-1])
        grad_f = grad_z = grad_c0 = None
        if ctx.needs_input_grad[0]:   # (z_t - c_{t-1}) g~_t
            grad_f = torch.empty_like(adjoint)
            torch.sub(z[1:], c[:-1], out=grad_f[1:])
            if c0 is None:
                grad_f[0] = z[0]
            else:
                torch.sub(z[0], c0, out=grad_f[0])
            grad_f.mul_(adjoint)
        if ctx.needs_input_grad[1]:
            grad_z = f * adjoint
        if c0 is not None and ctx.needs_input_grad[2]:
            grad_c0 = a[0] * adjoint[0]
        return grad_f, grad_z, grad_c0


def _forget_mult_no_grad(f, z, c0):
    with torch.no_grad():
        a = 1 - f
        b = f * z
        return linear_scan(a, b, c0, out=torch.empty_like(b))


def forget_mult(f: torch.Tensor, z: torch.Tensor, c0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The QRNN cell states ``c_t = f_t * z_t + (1 - f_t) * c_{t-1}`` (Bradbury et al. 2017, eq. 3).

    Shapes: ``f`` (forget gate, in [0, 1]) and ``z`` (candidate) (T, *batch), time-major as
    torchqrnn's ``ForgetMult`` (e.g. (T, B, H) for a QRNN layer); ``c0`` (*batch), the cell state
    before step 0, or None for zeros. Returns ``c`` (T, *batch); ``c[-1]`` is the state a stateful
    QRNN carries to its next call. Exact gradients for ``f``, ``z`` and ``c0`` (a reverse scan).
    Raises ValueError on mismatched shapes."""
    if f.shape != z.shape:
        raise ValueError(f"forget_mult: f {tuple(f.shape)} and z {tuple(z.shape)} differ in shape")
    if c0 is not None and c0.shape != z.shape[1:]:
        raise ValueError(f"forget_mult: c0 {tuple(c0.shape)} does not match one step {tuple(z.shape[1:])}")
    if z.size(0) == 0:
        return z.clone()
    if torch.is_grad_enabled() and (f.requires_grad or z.requires_grad or (c0 is not None and c0.requires_grad)):
        return ForgetMult.apply(f, z, c0)
    return _forget_mult_no_grad(f, z, c0)


def forget_mult_autograd(f: torch.Tensor, z: torch.Tensor, c0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`forget_mult` differentiated by autograd through every level of :func:`linear_scan`
    (the same values; kept to measure against the hand-written backward)."""
    return linear_scan(1 - f, f * z, c0)
