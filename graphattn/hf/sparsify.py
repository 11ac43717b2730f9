"""Point a transformers model's self-attention layers at attention graphs, and back."""

from __future__ import annotations

from graphattn.graph import AttentionGraph
from graphattn.hf.attention import IMPLEMENTATION, LAYER_ATTRIBUTE, register
from graphattn.hf.graphs import LayerGraphs, check_source

__all__ = ["sparsify", "unsparsify", "attention_layers", "is_sparsified"]

# The model attribute that remembers the attention implementation sparsify replaced.
_PREVIOUS = "_graphattn_previous_attn_implementation"


def _check_model(model):
    try:
        from transformers import PreTrainedModel
    except ImportError as err:  # pragma: no cover - the hf extra is missing
        raise ImportError("graphattn.hf needs transformers: pip install 'graphattn[hf]'") from err
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected model to be a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"unsupported architecture {type(model).__name__}: encoder-decoder models are not supported "
                         f"(encoder-only and decoder-only models are)")
    if not type(model)._can_set_attn_implementation():
        raise ValueError(f"unsupported architecture {type(model).__name__}: its attention does not dispatch through "
                         f"transformers' AttentionInterface, so it cannot run another attention function")
    return model


def _matches(name: str, module, spec) -> bool:
    """transformers' output-recording rule: ``spec`` is a class, a class-name suffix or an OutputRecorder."""
    from transformers.utils.output_capturing import OutputRecorder

    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, str):
        return name.endswith(spec)
    if isinstance(spec, OutputRecorder):
        hit = (spec.target_class is not None and isinstance(module, spec.target_class)) or (
            spec.class_name is not None and name.endswith(spec.class_name))
        if hit and spec.layer_name is not None:
            hit = "." + spec.layer_name.strip(".") + "." in "." + name + "."
        return hit
    return False


def attention_layers(model) -> list:
    """The self-attention modules of ``model`` in layer order: the modules transformers records
    as the model's ``attentions`` (its ``_can_record_outputs``), which excludes cross-attention."""
    _check_model(model)
    specs = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    if specs is None:
        raise ValueError(f"unsupported architecture {type(model).__name__}: it declares no self-attention layers "
                         f"(no 'attentions' in its _can_record_outputs)")
    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    found = [m for name, m in model.named_modules() if any(_matches(name, m, s) for s in specs)]
    if not found:
        raise ValueError(f"unsupported architecture {type(model).__name__}: no self-attention layer found")
    return found


def is_sparsified(model) -> bool:
    """Whether :func:`sparsify` pointed ``model`` at graphattn (and :func:`unsparsify` has not undone it)."""
    return hasattr(model, _PREVIOUS)


def _layer_indices(layers, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"expected layers to be None or a sequence of layer indices, got {type(layers).__name__}")
    layers = list(layers)
    out = []
    for p, i in enumerate(layers):
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"expected layers[{p}] to be an int, got {type(i).__name__} {i!r}")
        if not -count <= i < count:
            raise ValueError(f"expected layers[{p}] in [0, {count}) (the model has {count} attention layers), got {i}")
        out.append(i % count)
    if len(set(out)) != len(out):
        raise ValueError(f"expected distinct layer indices, got {list(layers)}")
    if not out:
        raise ValueError("expected at least one layer index, got none")
    return sorted(out)


def sparsify(model, graph, *, layers=None):
    """Run ``model``'s self-attention layers over attention graphs; returns the same model.

    Args:
        model: a transformers ``PreTrainedModel`` whose attention dispatches through transformers'
            ``AttentionInterface`` (BERT-family encoders, decoder-only models such as Llama or
            GPT-2); encoder-decoder models are refused.
        graph: what each layer attends over:

            * a rule, i.e. a callable ``n -> AttentionGraph`` (``functools.partial(rules.band,
              radius=128)``, a :class:`~graphattn.models.GraphRule`), built for each input length
              and cached per length and device;
            * an :class:`~graphattn.AttentionGraph`: inputs must then have exactly its node count;
            * a per-layer schedule: a list with one of the above per sparsified layer (e.g. a band
              in the low layers and a dilated band higher, as Longformer does).

            Graphs are over the tokens only (extra global, relay or span nodes are refused: a
            pretrained model has no states for them; use global tokens). Relative-position ids a
            graph carries are not used (the model has no bias for them). On a causal model every
            graph must be causal. A graph with a head layout (``head_mask``) needs the model's
            head count.
        layers: indices of the self-attention layers to sparsify (default all); the others keep
            dense attention (transformers' SDPA), as does cross-attention.

    The model's ``attention_mask`` is honoured exactly: a sample of a padded batch runs on the
    graph built for its own number of real tokens (node ``i`` is its ``i``-th real token) and gives
    what it gives alone; padded positions output zeros from attention. Decoding with a dynamic
    cache runs the rows of the new tokens. :func:`unsparsify` restores the previous attention.

    Raises:
        TypeError: ``model`` is not a PreTrainedModel; a graph is neither a graph nor a callable.
        ValueError: an unsupported architecture; a schedule of the wrong length; a bad layer index;
            a graph with extra nodes, of the wrong size, or not causal on a causal model.
    """
    _check_model(model)
    modules = attention_layers(model)
    chosen = _layer_indices(layers, len(modules))
    if isinstance(graph, (list, tuple)):
        if len(graph) != len(chosen):
            raise ValueError(f"expected a schedule of {len(chosen)} graphs (one per sparsified layer), "
                             f"got {len(graph)}")
        sources = [check_source(g, f"graph[{p}]") for p, g in enumerate(graph)]
    else:
        sources = [check_source(graph, "graph")] * len(chosen)
    # Build the graph holders first, so a bad graph leaves the model untouched; layers that share a
    # source (and causality) share one holder, so a rule is built once per length for all of them.
    groups: dict = {}
    for i, source in zip(chosen, sources):
        causal = bool(getattr(modules[i], "is_causal", True))
        groups.setdefault((id(source), causal), (source, causal, []))[2].append(i)
    holders = {}
    for source, causal, members in groups.values():
        holder = LayerGraphs(source, layers=members, causal=causal)
        holders.update(dict.fromkeys(members, holder))
    heads = getattr(model.config, "num_attention_heads", None)
    for holder in set(holders.values()):
        per_head = isinstance(holder.source, AttentionGraph) and holder.source.num_heads is not None
        if per_head and heads is not None and holder.source.num_heads != heads:
            raise ValueError(f"{holder.where}: expected a per-head graph for the model's {heads} heads, "
                             f"got {holder.source.num_heads}")
    register()
    previous = getattr(model, _PREVIOUS, model.config._attn_implementation)
    for i, module in enumerate(modules):
        if i in holders:
            setattr(module, LAYER_ATTRIBUTE, holders[i])
        elif hasattr(module, LAYER_ATTRIBUTE):
            delattr(module, LAYER_ATTRIBUTE)
    if model.config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(IMPLEMENTATION)
    setattr(model, _PREVIOUS, previous)
    return model


def unsparsify(model):
    """Undo :func:`sparsify`: the model's previous attention implementation, no graphs; returns the model."""
    _check_model(model)
    if not is_sparsified(model):
        raise ValueError(f"expected a model prepared by graphattn.hf.sparsify, got a {type(model).__name__} "
                         f"that is not")
    previous = getattr(model, _PREVIOUS)
    for module in model.modules():
        if hasattr(module, LAYER_ATTRIBUTE):
            delattr(module, LAYER_ATTRIBUTE)
    model.set_attn_implementation(previous)
    delattr(model, _PREVIOUS)
    return model
