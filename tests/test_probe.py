import torch

from headstart.readouts.probe import fit_logistic


def test_logistic_probe_separates_shifted_classes_and_folds_the_scaling():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 100.0], [4.0, 0.0, 100.0], [0.0, 4.0, 100.0]])  # a constant, offset feature

    def sample(n):
        labels = torch.arange(n) % 3
        return centres[labels] + torch.randn(n, 3, generator=generator), labels

    (x, y), (vx, vy), (tx, ty) = sample(90), sample(30), sample(300)
    probe = fit_logistic(x, y, vx, vy, n_classes=3)
    assert probe.val_accuracy >= 0.9
    assert (probe.predict(tx) == ty).float().mean() >= 0.9
    layer = probe.as_linear()  # the same classifier as a head on raw features
    assert torch.equal(layer(tx).argmax(-1), probe.predict(tx))


def test_logistic_probe_l2_shrinks_weights_and_ties_go_to_the_stronger():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 50, generator=generator)
    y = torch.arange(20) % 2
    strong = fit_logistic(x, y, x, y, n_classes=2, grid=(100.0,))
    weak = fit_logistic(x, y, x, y, n_classes=2, grid=(0.001,))
    assert strong.weight.norm() < 0.2 * weak.weight.norm()
    constant = torch.zeros(20, 3)  # nothing to learn: every strength scores the same, the first (strongest) wins
    assert fit_logistic(constant, y, constant, y, n_classes=2, grid=(10.0, 0.1)).l2 == 10.0
