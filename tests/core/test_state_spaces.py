"""Zero centre of mass per graph, masked Euclidean noise, and product spaces."""
import pytest
import torch

from sci_diffusion.samplers import SAMPLERS, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, ProductSpace, ZeroCoMSpace

SIZES = [3, 11, 29, 7, 18]


def graph_batch():
    return torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))


def per_graph_mean(x, batch):
    return torch.stack([x[batch == g].mean(0) for g in range(len(SIZES))])


def test_zero_com_noise_has_zero_mean_per_graph_of_different_sizes():
    batch = graph_batch()
    space = ZeroCoMSpace(batch, len(SIZES))
    z = space.noise(torch.zeros(len(batch), 3, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert per_graph_mean(z, batch).abs().max() < 1e-12
    assert z.std() > 0.5  # it is still noise


def test_zero_com_noise_is_isotropic_in_the_subspace():
    # n points with zero CoM: each coordinate has variance (n - 1) / n
    batch = torch.zeros(4, dtype=torch.long)
    space = ZeroCoMSpace(batch, 1)
    z = torch.stack([space.noise(torch.zeros(4, 3, dtype=torch.float64), torch.Generator().manual_seed(i)) for i in range(4000)])
    assert float(z.var(0).mean()) == pytest.approx(3 / 4, rel=0.05)


class ShrinkingDenoiser:
    """A denoiser that is not CoM-preserving on its own (it adds an offset), to prove the
    samplers' projection keeps every state in the subspace."""

    def __call__(self, x, t, cond=None):
        return 0.5 * x + 0.3


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_keeps_zero_com_per_graph(name):
    batch = graph_batch()
    space = ProductSpace([(ZeroCoMSpace(batch, len(SIZES)), 3), (EuclideanSpace(batch=batch, num_samples=len(SIZES)), 2)])
    g = torch.Generator().manual_seed(0)
    x_T = space.noise(torch.zeros(len(batch), 5, dtype=torch.float64), g)
    states = []
    schedule = NoiseSchedule.from_name("polynomial_2")
    x = SAMPLERS[name](ShrinkingDenoiser(), x_T, schedule, sampler_times(name, schedule, 10), space, generator=g,
                       callback=lambda i, t, xt, x0: states.append(xt))
    assert per_graph_mean(x[:, :3], batch).abs().max() < 1e-6
    assert max(per_graph_mean(s[:, :3], batch).abs().max() for s in states) < 1e-6
    assert per_graph_mean(x[:, 3:], batch).abs().max() > 1e-3  # the feature block is not centred


def test_masked_euclidean_noise_is_zero_outside_the_mask():
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    z = EuclideanSpace(mask=mask).noise(torch.zeros(2, 1, 4, 4), torch.Generator().manual_seed(0))
    assert torch.all(z[mask == 0] == 0) and torch.all(z[mask == 1] != 0)


def test_product_space_rejects_the_wrong_width():
    space = ProductSpace([(EuclideanSpace(), 2), (EuclideanSpace(), 1)])
    with pytest.raises(ValueError, match="columns"):
        space.project(torch.zeros(4, 5))


def test_expand_broadcasts_per_graph_values_to_nodes():
    batch = graph_batch()
    space = ZeroCoMSpace(batch, len(SIZES))
    out = space.expand(torch.arange(len(SIZES)).double(), torch.zeros(len(batch), 3))
    assert out.shape == (len(batch), 1) and torch.equal(out[:, 0], batch.float())


def test_per_sample_generators_give_a_sample_the_same_noise_in_any_batch():
    from sci_diffusion.generators import PerSampleGenerator
    from sci_diffusion.state_spaces import EuclideanSpace, ProductSpace, ZeroCoMSpace

    seeds = [11, 22, 33]
    sizes = torch.tensor([3, 5, 2])

    def molecule_noise(which):
        batch = torch.repeat_interleave(torch.arange(len(which)), sizes[which])
        space = ProductSpace([(ZeroCoMSpace(batch, len(which)), 3), (EuclideanSpace(batch=batch, num_samples=len(which)), 2)])
        x = space.noise(torch.zeros(int(sizes[which].sum()), 5), PerSampleGenerator([seeds[i] for i in which]))
        return torch.split(x, sizes[which].tolist())

    together = molecule_noise([0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(molecule_noise([i])[0], together[i], rtol=0, atol=0)
    images = EuclideanSpace().noise(torch.zeros(3, 1, 4, 4), PerSampleGenerator(seeds))
    torch.testing.assert_close(EuclideanSpace().noise(torch.zeros(1, 1, 4, 4), PerSampleGenerator(seeds[2:]))[0],
                               images[2], rtol=0, atol=0)


def test_per_sample_noise_follows_the_batch_vector_when_rows_are_interleaved():
    from sci_diffusion.generators import PerSampleGenerator
    from sci_diffusion.state_spaces import EuclideanSpace

    interleaved = EuclideanSpace(batch=torch.tensor([1, 0, 1, 0]), num_samples=2)
    z = interleaved.noise(torch.zeros(4, 3), PerSampleGenerator([5, 6]))
    alone = [EuclideanSpace(batch=torch.zeros(2, dtype=torch.long), num_samples=1).noise(torch.zeros(2, 3),
                                                                                          PerSampleGenerator([s]))
             for s in (5, 6)]
    torch.testing.assert_close(z[[1, 3]], alone[0], rtol=0, atol=0)
    torch.testing.assert_close(z[[0, 2]], alone[1], rtol=0, atol=0)
