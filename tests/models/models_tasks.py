"""A seeded synthetic long-range classification task and a tiny training loop."""

import torch

VOCAB = 16  # 0 padding, 1 and 2 markers, 3.. noise


def marker_task(batch: int, gen: torch.Generator, min_len: int = 24, max_len: int = 40):
    """Noise sequences of random length with one marker (1 or 2) in the first quarter and one in
    the last quarter; the label counts the markers equal to 1 (0, 1 or 2), so it needs both
    far-apart tokens: one marker alone gives at most 50% accuracy (the chance level of the
    majority class 1). Right-padded with 0."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    tokens = torch.randint(3, VOCAB, (batch, max_len), generator=gen)
    pos = torch.arange(max_len)
    tokens[pos[None, :] >= lengths[:, None]] = 0
    first = (torch.rand(batch, generator=gen) * (lengths // 4)).long()
    last = lengths - 1 - (torch.rand(batch, generator=gen) * (lengths // 4)).long()
    marks = torch.randint(1, 3, (batch, 2), generator=gen)
    rows = torch.arange(batch)
    tokens[rows, first] = marks[:, 0]
    tokens[rows, last] = marks[:, 1]
    return tokens, (marks == 1).sum(dim=1)


def train_classifier(model, task, *, steps: int, seed: int, batch: int = 32, lr: float = 3e-3,
                     eval_size: int = 512) -> float:
    """Adam on fresh batches for ``steps`` steps; returns accuracy on held-out samples."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        tokens, labels = task(batch, gen)
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokens, labels = task(eval_size, torch.Generator().manual_seed(seed + 10_000))
    with torch.no_grad():
        return float((model(tokens).argmax(-1) == labels).float().mean())
