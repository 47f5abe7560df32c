import math

import torch

from headstart.readouts.frozen_features import knn_votes
from headstart.readouts.label_propagation import neighbour_graph, propagate_labels


def two_chains(n: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """Two parallel arcs on the sphere, one per class, with neighbours 0.01 rad apart along an arc
    and 0.6 rad between the arcs: only the arcs' shapes tell the classes apart far from a label."""
    angle = torch.linspace(0.0, 1.5, n)
    arcs = [torch.stack([angle.cos(), angle.sin(), torch.full((n,), z)], 1) for z in (0.3, -0.3)]
    return torch.cat(arcs), torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])


def test_neighbour_graph_keeps_the_k_nearest_others_and_no_self_loops():
    features, _ = two_chains(20)
    graph = neighbour_graph(features, k=4, chunk=7)  # chunks that do not divide the rows
    assert graph.index.shape == graph.weight.shape == (40, 4)
    assert not (graph.index == torch.arange(40)[:, None]).any()
    similarity = torch.nn.functional.normalize(features, dim=1) @ torch.nn.functional.normalize(features, dim=1).T
    similarity.fill_diagonal_(-2.0)
    assert torch.equal(graph.index[5].sort().values, similarity[5].topk(4).indices.sort().values)
    assert torch.allclose(graph.weight, similarity.topk(4, dim=1).values.clamp(min=0) ** 3)
    assert graph.flops(3) == 2.0 * 40 * 40 * 3


def test_labels_follow_their_cluster_where_nearest_labels_mislead():
    features, truth = two_chains()
    labelled = torch.tensor([0, 299])  # class 0 labelled at one end of its arc, class 1 at the other end
    knn = knn_votes(features[labelled], truth[labelled], features, 2, k=1).argmax(1)
    assert (knn == truth).float().mean() < 0.8  # far from its own label, a point is nearer the other class's
    probabilities = propagate_labels(neighbour_graph(features, k=5), labelled, truth[labelled], 2, iterations=400)
    assert torch.allclose(probabilities.sum(1), torch.ones(300))
    assert (probabilities.argmax(1) == truth).float().mean() == 1.0
    assert probabilities[0, 0] > 0.5 and probabilities[299, 1] > 0.5


def test_class_balancing_keeps_a_class_with_more_labels_from_flooding():
    features, truth = two_chains()
    labelled = torch.tensor([0, 10, 20, 30, 40, 299])  # five labels for class 0, one for class 1
    probabilities = propagate_labels(neighbour_graph(features, k=5), labelled, truth[labelled], 2, iterations=400)
    assert (probabilities.argmax(1) == truth).float().mean() == 1.0
    assert math.isclose(float(probabilities.sum()), 300.0, rel_tol=1e-5)
