"""The sharded plan: what one rank computes, receives and sends.

A rank owns the nodes ``[start, stop)`` (:func:`~graphattn.distributed.local_range`) and their
query rows. Each of its edges ``(j, i)`` whose key ``j`` lives on another rank ``s`` is
computed one of two ways, decided per query row and rank ``s`` at planning
(:func:`~graphattn.distributed.move_thresholds`: a row moves to ``s`` when it names at least
``thresholds[s]`` keys of ``s``):

- **the key moves** (the halo exchange): the key/value rows of ``s`` that the staying rows name
  come to this rank. Its *extended* rows are the sorted node ids it holds during the step: its
  own rows plus those remote keys. Relabelling keys into them is monotone, so the halo edges
  keep their order.
- **the query moves** (rows naming many keys of ``s``, such as global rows, which would
  otherwise pull about ``n`` key/value rows to their owner): the row goes to ``s`` (with its
  edges' bias), ``s`` computes its partial attention over its own keys and sends back the
  partial output and log-sum-exp, which the owner merges with the row's other parts by the
  log-sum-exp rule of :func:`graphattn.nn.merge_attention`
  (:func:`~graphattn.distributed.merge.merge_rows`): exact, in the forward and, with the
  matching gradients, in the backward.

Building the plan is a collective (every rank of the group calls :func:`shard_plan`): an
all-gather of the graph's fingerprint (ranks holding different graphs are named, not computed),
the halo requests (an all-to-all of counts, one of ids, broadcasts of rows every rank needs),
and, when any rank moves queries, the moved queries and their edges (all-to-alls of ids; ids
travel once, at planning). The plan is then reused by every attention step (and is cached on an
:class:`AttentionGraph` by :func:`graphattn.distributed.graph_attention`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from graphattn._validate import check_int
from graphattn.distributed._comm import all_gather_vectors, all_to_all_ints, group_info
from graphattn.distributed.faults import collective, records_failures
from graphattn.distributed.partition import NEVER, key_demand, local_range, move_thresholds, owner_of
from graphattn.distributed.route import Route, plan_broadcasts
from graphattn.graph import AttentionGraph
from graphattn.nn.functional import _trust_edge_index

__all__ = ["ShardPlan", "ScatterPlan", "shard_plan", "graph_fingerprint"]


def _moved(value, device):
    if isinstance(value, (torch.Tensor, AttentionGraph, Route, ScatterPlan)):
        return value.to(device)
    return value


@dataclass(frozen=True, eq=False)
class ScatterPlan:
    """The moved-queries part of a :class:`ShardPlan` (this rank's side of it).

    As the owner of query rows:
        edges: ``[E_s]`` this rank's edges whose queries move (positions in ``plan.graph``'s edge
            order), grouped by the rank owning their key, then by (query, key).
        queries: :class:`Route` of the query rows to the ranks owning their keys.
        edge_route: :class:`Route` of per-edge values (the bias) of ``edges`` to those ranks.
        partials: :class:`Route` that brings the partial results (``[P]`` rows, grouped by the
            rank that computed them, then by query) back to this rank: the adjoint of the query
            route's all-to-all. The rows the query route broadcasts (sent to every rank, such as
            global rows) come back instead as one sum per row, by a ``reduce`` (see
            :mod:`graphattn.distributed.attention`): ``queries.bcast_index`` on their owner,
            ``queries.bcast_pos`` on the others.
        rows: ``[M]`` local rows that receive partials by the all-to-all (sorted); partial_row:
            ``[P]`` index into ``rows`` of each received partial.
    As the owner of keys:
        query_ids: ``[num_queries]`` sorted global ids of the queries computed here for others.
        index: ``[2, E_in]`` their edges: (local key row, position in ``query_ids``), sorted.
        head_mask: ``[E_in, H]`` per-head layout of those edges, or None.
        relative: ``[E_in]`` relative-position ids of those edges, or None.
    """

    edges: torch.Tensor
    queries: Route
    edge_route: Route
    partials: Route
    rows: torch.Tensor
    partial_row: torch.Tensor
    query_ids: torch.Tensor
    index: torch.Tensor
    head_mask: torch.Tensor | None
    relative: torch.Tensor | None

    @property
    def num_queries(self) -> int:
        return self.query_ids.numel()

    def to(self, device) -> "ScatterPlan":
        return ScatterPlan(**{f.name: _moved(getattr(self, f.name), device) for f in fields(self)})


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """One rank's share of a sharded attention step.

    Attributes:
        num_nodes, rank, world_size, start, stop: the sharding (``[start, stop)`` local nodes).
        global_ranks: the group's ranks as global ranks (collectives address sources by them).
        graph: this rank's edges, ``query_slice(start, stop)`` of the whole graph (over the
            ``num_nodes`` global ids): the order of an edge ``bias`` and of attention weights.
        thresholds: int64 ``[world_size]``: a local row is sent to rank ``s`` when it names at
            least ``thresholds[s]`` keys of ``s`` (:func:`~graphattn.distributed.move_thresholds`;
            :data:`~graphattn.distributed.partition.NEVER` where only keys move).
        halo: :class:`Route` of key/value rows into the extended rows.
        extended_ids: ``[num_extended]`` sorted global node ids of the extended rows.
        halo_edges: ``[E_h]`` positions (in ``graph``'s order) of the edges computed here.
        halo_index: ``[2, E_h]`` those edges as (extended row, local query row).
        halo_head_mask, halo_relative: their per-head layout and relative ids (or None).
        scatter: the moved queries (:class:`ScatterPlan`), or None when no rank of the group
            moves queries.
    """

    num_nodes: int
    rank: int
    world_size: int
    start: int
    stop: int
    global_ranks: tuple
    graph: AttentionGraph
    thresholds: torch.Tensor
    halo: Route
    extended_ids: torch.Tensor
    halo_edges: torch.Tensor
    halo_index: torch.Tensor
    halo_head_mask: torch.Tensor | None
    halo_relative: torch.Tensor | None
    scatter: ScatterPlan | None

    @property
    def num_local(self) -> int:
        return self.stop - self.start

    @property
    def moves_queries(self) -> torch.Tensor:
        """bool ``[world_size]``: the ranks this rank sends some of its query rows to."""
        return self.thresholds < NEVER

    @property
    def num_extended(self) -> int:
        return self.extended_ids.numel()

    @property
    def offset(self) -> int:
        """Position of the first local row in the extended rows."""
        return int(torch.searchsorted(self.extended_ids.cpu(), torch.tensor(self.start)))

    @property
    def num_received(self) -> int:
        """Key/value rows this rank receives per step (the halo: all-to-all plus broadcasts)."""
        return self.halo.num_received

    @property
    def num_received_queries(self) -> int:
        """Query rows of other ranks this rank receives per step (to attend its keys)."""
        return 0 if self.scatter is None else self.scatter.queries.num_received

    @property
    def num_received_partials(self) -> int:
        """Partial results (output and log-sum-exp rows) this rank receives per step: one per
        (query row, rank) of its all-to-all rows, one sum per broadcast row."""
        if self.scatter is None:
            return 0
        return self.scatter.partials.num_received + self.scatter.queries.bcast_index.numel()

    @property
    def num_received_edges(self) -> int:
        """Per-edge values (bias) this rank receives per step when a bias is given."""
        return 0 if self.scatter is None else self.scatter.edge_route.num_received

    @property
    def num_sent(self) -> int:
        """Key/value rows this rank puts on the wire per step (all-to-all copies plus broadcast rows)."""
        return self.halo.num_sent

    @property
    def num_received_maxima(self) -> int:
        """Row maxima of the log-sum-exps this rank receives per step: one per head and
        broadcast query row of the group (the all-reduce that scales their partial sums)."""
        return 0 if self.scatter is None else sum(self.scatter.queries.bcast_counts)

    def received_bytes(self, heads: int, head_dim: int, value_dim: int | None = None, *,
                       itemsize: int = 4, bias: bool = False) -> tuple[int, int]:
        """Bytes this rank receives per step, ``(forward, backward)``.

        Forward: key/value rows (``head_dim + value_dim`` values a head), query rows
        (``head_dim``), partial results (``value_dim + 1``: output and log-sum-exp; a broadcast
        row's partials as one sum), the maxima of the broadcast rows and, with ``bias``, one
        value a head per moved edge. Backward: the gradients of what this rank sent, which come
        back the same way. Every collective counts as one copy of its result for each rank it
        reaches (a broadcast row's gradients come back summed by a reduce: one copy to its
        owner), the volume of ring and pipelined-tree algorithms. ``itemsize``: 4 for fp32.
        """
        D, Dv, H = head_dim, head_dim if value_dim is None else value_dim, heads
        fwd = (self.num_received * (D + Dv) + self.num_received_queries * D
               + self.num_received_partials * (Dv + 1) + self.num_received_maxima)
        bwd = self.halo.num_returned * (D + Dv)
        if self.scatter is not None:
            sc = self.scatter
            bwd += sc.queries.num_returned * D + self.num_received_queries * (Dv + 1)
            if bias:
                fwd += sc.edge_route.num_received
                bwd += sc.edge_route.num_returned
        return fwd * H * itemsize, bwd * H * itemsize

    @property
    def device(self) -> torch.device:
        return self.halo_index.device

    def to(self, device) -> "ShardPlan":
        """A copy whose index tensors and graphs live on ``device``."""
        return ShardPlan(**{f.name: _moved(getattr(self, f.name), device) for f in fields(self)})

    def __repr__(self) -> str:
        moved = self.moves_queries.nonzero().flatten().tolist()
        return (f"ShardPlan(rank={self.rank}/{self.world_size}, nodes=[{self.start}, {self.stop}) of "
                f"{self.num_nodes}, edges={self.graph.num_edges}, received={self.num_received}, "
                f"sent={self.num_sent}, broadcast={self.halo.bcast_index.numel()}, "
                f"queries to ranks {moved}, received queries={self.num_received_queries}, "
                f"received partials={self.num_received_partials})")


def _local_rows(graph, start: int, stop: int, num_nodes: int) -> AttentionGraph:
    if isinstance(graph, AttentionGraph):
        return graph.query_slice(start, stop)
    local = graph(queries=range(start, stop))
    if not isinstance(local, AttentionGraph):
        raise TypeError(f"expected graph(queries=...) to return an AttentionGraph, got {type(local).__name__}")
    if local.num_nodes != num_nodes:
        raise ValueError(f"expected graph(queries=range({start}, {stop})) over num_nodes = {num_nodes} "
                         f"nodes, got {local.num_nodes}")
    q = local.edge_index[1]
    if q.numel() and (int(q.min()) < start or int(q.max()) >= stop):
        raise ValueError(f"expected graph(queries=range({start}, {stop})) to hold only the queries "
                         f"in [{start}, {stop}), got queries in [{int(q.min())}, {int(q.max())}]")
    return local


def _describe_callable(rule) -> str:
    if isinstance(rule, functools.partial):
        args = [repr(a) for a in rule.args] + [f"{k}={v!r}" for k, v in sorted(rule.keywords.items())]
        return f"{_describe_callable(rule.func)}({', '.join(args)})"
    name = getattr(rule, "__qualname__", None) or type(rule).__qualname__
    return f"{getattr(rule, '__module__', '?')}.{name}"


def graph_fingerprint(graph, num_nodes: int) -> tuple[int, str]:
    """``(hash, description)`` of the graph a rank plans: ranks of one group must agree.

    An AttentionGraph hashes its node count, edges, node types, relative ids and per-head layout
    (all of it: every rank holds it whole); a rule callable hashes its description, the
    function's qualified name and arguments (``functools.partial`` of a rule: every argument,
    seeds included) with ``num_nodes``, since no rank holds the whole graph.
    """
    h = hashlib.blake2b(digest_size=8)
    if isinstance(graph, AttentionGraph):
        for t in (graph.edge_index, graph.node_type, graph.relative, graph.head_mask):
            h.update(b"none" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
            h.update(b"|")
        desc = f"an AttentionGraph over {graph.num_nodes} nodes with {graph.num_edges} edges"
    else:
        desc = f"{_describe_callable(graph)} over {num_nodes} nodes"
    h.update(f"{num_nodes}|{desc}".encode())
    value = int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)
    return value, f"{desc} (fingerprint {value:016x})"


def _check_same_graph(graph, num_nodes: int, world: int, group) -> None:
    """All-gather the fingerprints; on a mismatch every rank raises the same ValueError, which
    says which ranks hold which graph."""
    value, desc = graph_fingerprint(graph, num_nodes)
    prints = all_gather_vectors([value], world, group, "graph fingerprint")[:, 0].tolist()
    if len(set(prints)) == 1:
        return
    descs = [None] * world
    with collective("graph fingerprint: all_gather_object", group):
        dist.all_gather_object(descs, desc, group=group)
    groups: dict[str, list[int]] = {}
    for r, d in enumerate(descs):
        groups.setdefault(d, []).append(r)
    parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {d}"
                      for d, rs in groups.items())
    raise ValueError(f"expected the same graph on every rank of the group, got {len(groups)} different "
                     f"ones: {parts}")


def _runs(codes: torch.Tensor) -> torch.Tensor:
    """Bool mask of the first element of each run of equal values."""
    first = torch.ones(codes.numel(), dtype=torch.bool)
    if codes.numel() > 1:
        first[1:] = codes[1:] != codes[:-1]
    return first


@records_failures
def shard_plan(graph, *, num_nodes: int | None = None, group=None, device=None,
               move_queries=True) -> ShardPlan:
    """Build this rank's :class:`ShardPlan` (a collective: every rank of ``group`` calls it).

    Args:
        graph: an :class:`~graphattn.AttentionGraph` known on every rank (each rank keeps
            ``graph.query_slice(start, stop)``), or a rule callable that builds only this rank's
            rows, ``graph(queries=range(start, stop))`` (e.g.
            ``functools.partial(rules.band, n, radius=r)``), so no rank holds the whole graph.
        num_nodes: the node count ``n`` the rule builds (required for a callable; every node,
            extra nodes included).
        group: a ``torch.distributed`` process group (default the world group; without an
            initialised process group the plan is the single-process one).
        device: where the plan's index tensors and local graphs live (default the graph's
            device; CPU for a callable).
        move_queries: True: send query rows to the keys' owners where that moves fewer rows
            (:func:`~graphattn.distributed.move_thresholds`); False: the halo exchange for
            every edge; ``"all"``: every row to every other rank whose keys it names (the
            moved-query path everywhere; for testing and measuring it). Each rank decides for
            its own query rows, so ranks may differ.

    Raises ValueError on every rank when the ranks do not hold the same graph (node count,
    rule and arguments, or the edges of an AttentionGraph): see :func:`graph_fingerprint`.
    Rows needed by every other rank (``world_size >= 3``) are broadcast by their owner instead
    of sent in an all-to-all.
    """
    rank, world, granks = group_info(group)
    if not (isinstance(move_queries, bool) or move_queries == "all"):
        raise ValueError(f"expected move_queries True, False or 'all', got {move_queries!r}")
    if isinstance(graph, AttentionGraph):
        n = graph.num_nodes
        if num_nodes is not None and check_int("num_nodes", num_nodes, minimum=0) != n:
            raise ValueError(f"expected num_nodes = graph.num_nodes = {n}, got {num_nodes}")
    elif callable(graph):
        if num_nodes is None:
            raise TypeError("expected num_nodes (the graph's node count) with a rule callable, got None")
        n = check_int("num_nodes", num_nodes, minimum=0)
    else:
        raise TypeError(f"expected graph to be an AttentionGraph or a rule callable taking "
                        f"queries=range(a, b), got {type(graph).__name__}")
    if world > 1:
        _check_same_graph(graph, n, world, group)
    span = local_range(n, rank, world)
    start, stop = span.start, span.stop
    num_local = stop - start
    local = _local_rows(graph, start, stop, n)
    device = local.device if device is None else torch.device(device)
    local = local.to("cpu")  # planning runs on CPU index tensors; results move to `device`
    key, query = local.edge_index
    owner = owner_of(key, n, world)
    thresholds = torch.full((world,), NEVER, dtype=torch.int64)
    scattered = torch.zeros(key.numel(), dtype=torch.bool)
    if move_queries is not False and world > 1:
        d = key_demand(local, n, world)
        if move_queries == "all":
            thresholds = torch.where(torch.bincount(d["key_rank"], minlength=world) > 0, 1, NEVER)
            thresholds[rank] = NEVER
        else:
            thresholds = move_thresholds(d["row_rank"], d["row_count"], d["key_rank"], d["key_min"], world, rank)
        scattered = d["edge_count"] >= thresholds[owner]
    any_scatter = bool(scattered.any())
    if world > 1:
        any_scatter = bool(all_gather_vectors([int(scattered.sum())], world, group, "planning")[:, 0].any())

    halo_edges = torch.nonzero(~scattered).flatten()
    halo, ext = _plan_halo(key[halo_edges], start, stop, n, rank, world, granks, group)
    halo_index = torch.stack([torch.searchsorted(ext, key[halo_edges]), query[halo_edges] - start])
    pick = lambda t: None if t is None else t[halo_edges]  # noqa: E731
    scatter = None
    if any_scatter:
        scatter = _plan_scatter(local, owner, scattered, start, stop, n, rank, world, granks, group)
    _trust(halo_index, num_local, ext.numel())
    plan = ShardPlan(
        num_nodes=n, rank=rank, world_size=world, start=start, stop=stop, global_ranks=tuple(granks),
        graph=local, thresholds=thresholds, halo=halo, extended_ids=ext, halo_edges=halo_edges,
        halo_index=halo_index, halo_head_mask=pick(local.head_mask), halo_relative=pick(local.relative),
        scatter=scatter,
    )
    return plan if device == torch.device("cpu") else plan.to(device)


def _trust(index: torch.Tensor, num_queries: int, num_keys: int) -> None:
    """Tell graph_attention that a plan-built edge_index is checked (unique, in range, sorted
    by (query, key)): no O(E) validation on the first step."""
    _trust_edge_index(index, num_queries, num_keys)


def _plan_halo(keys, start, stop, n, rank, world, granks, group) -> tuple[Route, torch.Tensor]:
    """The key/value route: every remote key the halo edges name, requested from its owner."""
    num_local = stop - start
    needed = torch.unique(keys)
    remote = needed[(needed < start) | (needed >= stop)]
    empty = torch.empty(0, dtype=torch.int64)
    if world == 1:
        ext = torch.arange(start, stop)
        return Route.local(num_local, num_local, torch.arange(num_local), torch.arange(num_local)), ext
    recv_counts = torch.bincount(owner_of(remote, n, world), minlength=world)
    # Round 1: how many rows each rank asks of me; round 2: which ones.
    send_counts = all_to_all_ints(recv_counts, [1] * world, [1] * world, group, "halo planning")
    asked = all_to_all_ints(remote, recv_counts.tolist(), send_counts.tolist(), group, "halo planning")
    send_local = asked - start
    dest = torch.repeat_interleave(torch.arange(world), send_counts)
    send_local, dest, bcast_index, bcast_counts, received = plan_broadcasts(
        send_local, dest, lambda rows: rows + start, rank, world, granks, group)
    send_counts = torch.bincount(dest, minlength=world)
    bcast_in = torch.cat([ids for ids in received if ids is not None] or [empty])
    if bcast_in.numel():
        remote = remote[~torch.isin(remote, bcast_in)]
        recv_counts = torch.bincount(owner_of(remote, n, world), minlength=world)
    ext = torch.cat([torch.arange(start, stop), remote, bcast_in]).sort().values
    offset = int(torch.searchsorted(ext, torch.tensor(start)))
    moved = all_gather_vectors([int(send_counts.sum()) + bcast_index.numel()], world, group, "halo planning")
    route = Route(
        rank=rank, world_size=world, global_ranks=tuple(granks), num_in=num_local, num_out=ext.numel(),
        keep_index=torch.arange(num_local), keep_pos=torch.arange(offset, offset + num_local),
        send_index=send_local, send_counts=tuple(send_counts.tolist()), recv_counts=tuple(recv_counts.tolist()),
        recv_pos=torch.searchsorted(ext, remote), bcast_counts=tuple(bcast_counts), bcast_index=bcast_index,
        bcast_pos=torch.searchsorted(ext, bcast_in), active=bool(moved.sum() > 0),
    )
    return route, ext


def _plan_scatter(local, owner, scattered, start, stop, n, rank, world, granks, group) -> ScatterPlan:
    """The moved queries: this rank's queries to the owners of their keys (and their edges),
    other ranks' queries to this rank, and the partial results' way back."""
    key, query = local.edge_index
    num_local = stop - start
    ones = [1] * world
    # My moved edges, grouped by key owner (a stable sort keeps (query, key) order inside).
    edges = torch.nonzero(scattered).flatten()
    order = torch.sort(owner[edges], stable=True).indices
    edges = edges[order]
    e_owner, e_key, e_query = owner[edges], key[edges], query[edges]
    first = _runs(e_owner * (num_local + 1) + (e_query - start))
    p_rows, p_dest = e_query[first] - start, e_owner[first]  # queries sent, by destination

    # Query rows: those every other rank needs go by broadcast.
    q_send, q_dest, qb_index, qb_counts, qb_in = plan_broadcasts(
        p_rows, p_dest, lambda r: r + start, rank, world, granks, group)
    q_counts = torch.bincount(q_dest, minlength=world)
    q_recv = all_to_all_ints(q_counts, ones, ones, group, "query planning")
    q_in = all_to_all_ints(q_send + start, q_counts.tolist(), q_recv.tolist(), group, "query planning")
    qb_all = torch.cat([ids for ids in qb_in if ids is not None] or [torch.empty(0, dtype=torch.int64)])
    query_ids = torch.cat([q_in, qb_all]).sort().values
    queries = Route(
        rank=rank, world_size=world, global_ranks=tuple(granks), num_in=num_local, num_out=query_ids.numel(),
        keep_index=torch.empty(0, dtype=torch.int64), keep_pos=torch.empty(0, dtype=torch.int64),
        send_index=q_send, send_counts=tuple(q_counts.tolist()), recv_counts=tuple(q_recv.tolist()),
        recv_pos=torch.searchsorted(query_ids, q_in), bcast_counts=tuple(qb_counts), bcast_index=qb_index,
        bcast_pos=torch.searchsorted(query_ids, qb_all), active=True,
    )

    # The moved edges themselves (ids at planning; per-edge values every step).
    e_counts = torch.bincount(e_owner, minlength=world)
    e_recv = all_to_all_ints(e_counts, ones, ones, group, "edge planning")
    got = all_to_all_ints(torch.stack([e_key, e_query], 1).flatten(), (2 * e_counts).tolist(),
                          (2 * e_recv).tolist(), group, "edge planning").view(-1, 2)
    num_in = got.shape[0]
    head_mask = relative = None
    if local.head_mask is not None:
        H = local.head_mask.shape[1]
        head_mask = all_to_all_ints(local.head_mask[edges].to(torch.int64).flatten(), (H * e_counts).tolist(),
                                    (H * e_recv).tolist(), group, "edge planning").view(-1, H).bool()
    if local.relative is not None:
        relative = all_to_all_ints(local.relative[edges], e_counts.tolist(), e_recv.tolist(), group,
                                   "edge planning")
    # Sources own ascending id ranges and send sorted edges, so the arrivals are sorted by
    # (query, key): the partial attention's edge_index needs no sort.
    index = torch.stack([got[:, 0] - start, torch.searchsorted(query_ids, got[:, 1].contiguous())])
    _trust(index, query_ids.numel(), num_local)
    edge_route = Route(
        rank=rank, world_size=world, global_ranks=tuple(granks), num_in=local.num_edges, num_out=num_in,
        keep_index=torch.empty(0, dtype=torch.int64), keep_pos=torch.empty(0, dtype=torch.int64),
        send_index=edges, send_counts=tuple(e_counts.tolist()), recv_counts=tuple(e_recv.tolist()),
        recv_pos=torch.arange(num_in), bcast_counts=(0,) * world, bcast_index=torch.empty(0, dtype=torch.int64),
        bcast_pos=torch.empty(0, dtype=torch.int64), active=True,
    )
    # Partial results of the all-to-all rows go back the way their queries came; a broadcast
    # row's partials are summed on the way back (a reduce), not sent one by one.
    rows = torch.unique(q_send)
    partials = Route(
        rank=rank, world_size=world, global_ranks=tuple(granks), num_in=query_ids.numel(),
        num_out=q_send.numel(), keep_index=torch.empty(0, dtype=torch.int64),
        keep_pos=torch.empty(0, dtype=torch.int64), send_index=queries.recv_pos,
        send_counts=queries.recv_counts, recv_counts=queries.send_counts, recv_pos=torch.arange(q_send.numel()),
        bcast_counts=(0,) * world, bcast_index=torch.empty(0, dtype=torch.int64),
        bcast_pos=torch.empty(0, dtype=torch.int64), active=True,
    )
    return ScatterPlan(edges=edges, queries=queries, edge_route=edge_route, partials=partials, rows=rows,
                       partial_row=torch.searchsorted(rows, q_send), query_ids=query_ids, index=index,
                       head_mask=head_mask, relative=relative)
