"""StepWeight: a weight applied at every step, its gradient formed once, equals autograd's."""

import torch
import torch.nn.functional as F

from pipeline.decoder.step_weight import StepWeight

IN, OUT, STEPS = 6, 5, 4


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(OUT, IN, generator=generator, requires_grad=True)
    bias = torch.randn(OUT, generator=generator, requires_grad=True)
    recurrent = torch.randn(IN, OUT, generator=generator, requires_grad=True)
    xs = [torch.randn(8 - t, IN, generator=generator) for t in range(STEPS)]  # shrinking rows
    return weight, bias, recurrent, xs


def run(product, recurrent, xs):
    """A recurrence over steps of shrinking batch: h = tanh(product(x_t + h @ R.T))."""
    h, total = torch.zeros(xs[0].shape[0], OUT), 0.0
    for x in xs:
        h = torch.tanh(product(x + F.linear(h[: x.shape[0]], recurrent)))  # (n, OUT)
        total = total + (h**2).sum()
    return total


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def test_deferred_gradients_equal_autograds():
    weight, bias, recurrent, xs = make_inputs()
    expected = grads(
        run(lambda x: F.linear(x, weight, bias), recurrent, xs), weight, bias, recurrent
    )
    step = StepWeight(weight, bias)
    assert step.deferred
    got = grads(run(step, recurrent, xs), weight, bias, recurrent)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert step.weight_grad() is None  # nothing kept after the backward


def test_a_weight_also_used_outside_the_steps_gets_both_gradients():
    weight, bias, recurrent, xs = make_inputs()

    def loss(product, used_weight):
        return run(product, recurrent, xs) + (used_weight**3).sum()

    expected = grads(loss(lambda x: F.linear(x, weight), weight), weight)[0]
    step = StepWeight(weight)
    got = grads(loss(step, step.weight), weight)[0]
    torch.testing.assert_close(got, expected)


def test_a_retained_graph_gives_the_same_gradient_twice():
    weight, _, recurrent, xs = make_inputs()
    loss = run(StepWeight(weight), recurrent, xs)
    first = torch.autograd.grad(loss, weight, retain_graph=True)[0]
    second = torch.autograd.grad(loss, weight)[0]
    torch.testing.assert_close(first, second)


def test_without_gradients_it_is_a_plain_linear():
    weight, bias, _, xs = make_inputs()
    with torch.no_grad():
        step = StepWeight(weight, bias)
        assert not step.deferred
        torch.testing.assert_close(step(xs[0]), F.linear(xs[0], weight, bias))
    assert not StepWeight(weight, deferred=False).deferred


def test_under_autocast_it_computes_in_bf16_with_float32_gradients():
    weight, bias, recurrent, xs = make_inputs()
    with torch.no_grad():  # small weights: a recurrence bf16 rounding cannot blow up
        weight *= 0.2
        recurrent *= 0.2
    expected = grads(run(lambda x: F.linear(x, weight, bias), recurrent, xs), weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = StepWeight(weight, bias)
        assert step(xs[0]).dtype == torch.bfloat16
        got = grads(run(step, recurrent, xs), weight, bias)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        assert float((g - e).norm() / e.norm()) < 0.02


def test_float16_steps_sum_their_gradient_in_float32():
    """Each step's share of the weight's gradient fits in float16 (65,504 at most), their sum
    does not: 8 steps of 256 rows of 0.5 with output gradient 100 give 12,800 each."""
    weight = torch.zeros(OUT, IN, requires_grad=True)
    xs = [torch.full((256, IN), 0.5) for _ in range(8)]
    with torch.autocast("cpu", dtype=torch.float16):
        step = StepWeight(weight)
        loss = sum((step(x) * 100.0).sum() for x in xs)
        got = grads(loss, weight)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.full((OUT, IN), 8 * 12_800.0))
