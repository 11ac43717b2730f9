"""The float64 dense oracle for the tests lives in the package (graphattn.nn.reference)."""

from graphattn.nn.reference import dense_attention, dense_bias, dense_mask  # noqa: F401


def influence_matrix(layer, x):
    """[i, j]: size of the gradient of a random projection of output i with respect to input j."""
    import torch

    x = x.clone().requires_grad_()
    out = layer(x)
    w = torch.randn_like(out)
    rows = [torch.autograd.grad((out[i] * w[i]).sum(), x, retain_graph=True)[0].abs().sum(1)
            for i in range(out.shape[0])]
    return torch.stack(rows)


def head_graph(g, h: int):
    """Head ``h``'s graph of a per-head layout (edges, labels)."""
    from graphattn import AttentionGraph

    sel = g.head_mask[:, h]
    return AttentionGraph.from_edge_index(g.edge_index[:, sel], g.num_nodes, edge_label=g.edge_label[sel])
