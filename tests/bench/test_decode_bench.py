import torch

from graphattn import rules
from graphattn.bench import decode
from graphattn.bench.__main__ import main
from graphattn.nn import graph_attention


def test_count_plan_builds_counts_every_engine_path():
    q = torch.randn(6, 1, 4)
    with decode.count_plan_builds() as count:
        g = rules.band(6, radius=1)
        graph_attention(q, q, q, g)
        graph_attention(q, q, q, g)  # cached on the graph
        graph_attention(q, q, q, rules.band(6, radius=2).edge_index)  # an edge_index tensor
    assert count[0] == 2
    from graphattn.nn import functional, plan
    g = rules.band(300, radius=127)  # a structured graph: planned from its structure
    assert plan.structural_plan(g.structure) is not None
    with decode.count_plan_builds() as count:
        graph_attention(torch.randn(300, 1, 4), torch.randn(300, 1, 4), torch.randn(300, 1, 4), g)
        graph_attention(torch.randn(300, 1, 4), torch.randn(300, 1, 4), torch.randn(300, 1, 4), g)
    assert count[0] == 1
    assert functional._build_plan is plan._build_plan and plan.structural_plan.__name__ == "structural_plan"


def test_decode_cell_runs_steps_without_building_plans():
    for graph in decode.GRAPHS:
        r = decode.decode_cell(graph, 40, steps=3, E=16, H=2, layers=1, vocab=11, repeats=1)
        assert r["per_token_s"] > 0 and r["plan_builds"] == 0


def test_decode_cells_take_turns_and_report_medians():
    class Fake:
        def __init__(self, times):
            self.times, self.calls = iter(times), 0

        def steps(self, count):
            self.calls += 1
            return [next(self.times) for _ in range(count)], 1

    a, b = Fake([9, 9, 1, 2, 3, 4]), Fake([9, 9, 5, 6, 7, 8])
    out = decode.decode_cells({"a": a, "b": b}, steps=2, repeats=2)
    assert out == {"a": {"per_token_s": 2.5, "plan_builds": 3}, "b": {"per_token_s": 6.5, "plan_builds": 3}}
    assert a.calls == b.calls == 3


def test_decode_suite_table(monkeypatch, capsys):
    monkeypatch.setattr(decode, "_Cell", lambda graph, t, room, **kw: (graph, t))
    monkeypatch.setattr(decode, "decode_cells", lambda cells, **kw: {
        key: {"per_token_s": (i + 1) * 1e-3, "plan_builds": 0} for i, key in enumerate(cells)})
    monkeypatch.setattr(decode, "generate_plan_builds", lambda graph, **kw: {"first": 1, "second": 0})
    assert main(["decode", "--t", "1024", "65536", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| band    | 65,536    | 2.00      | 500" in out and "| 2.00x" in out
    assert "| full    | 1,024" in out and "plans built, first generate" in out
