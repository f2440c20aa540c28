"""`Distiller(..., soft_loss=None)`: feature-only (general) distillation, and the arguments it leaves no room for.

With `soft_loss=None` the loss is the layer pairs' terms alone (plus the student's regularization
losses): no soft term between logits and no hard term on labels, so the models need no logits
(KerasHub backbones, sentence-embedding models) and the data no labels. Arguments that configure
the missing terms are refused, each naming the fix, rather than ignored.
"""

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.1


def resolve_defaults(soft_loss, pairs, temperature, alpha, chunk_size, on_policy):
    """`(temperature, alpha, chunk_size)` for the distiller; raises for what `soft_loss=None` cannot use.

    `temperature` and `alpha` default (None) to 4.0 and 0.1 with a soft loss; without one, `alpha` is 0
    and the temperature (unused) keeps its default.
    """
    if soft_loss is not None:
        return (
            DEFAULT_TEMPERATURE if temperature is None else temperature,
            DEFAULT_ALPHA if alpha is None else alpha,
            chunk_size,
        )
    if isinstance(pairs, (list, tuple)) and not pairs:  # other types get BoundPairs' own error
        raise ValueError(
            "soft_loss=None (feature-only distillation) trains on the layer pairs' terms alone, but pairs is "
            f"{pairs!r}, so there would be nothing to train on. Give pairs, e.g. "
            "pairs=[keras_kd.CosineEmbedding('sequence_output', 'sequence_output', pooling='mean')] for a KerasHub "
            "backbone, or keep a soft loss (soft_loss='kl') for models that output logits."
        )
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != 0):
        raise ValueError(
            f"alpha={alpha!r} with soft_loss=None: alpha mixes the hard-label term with the soft term, and "
            "feature-only distillation has neither. Leave alpha out (or 0); to learn from labels, distil or fine-tune "
            "the task afterwards with a soft loss (see docs/general-distillation.md)."
        )
    if temperature is not None:
        raise ValueError(
            f"temperature={temperature!r} with soft_loss=None: the temperature softens the soft term's "
            "distributions, and feature-only distillation has no soft term. Leave temperature out, or give a "
            "soft_loss."
        )
    if isinstance(chunk_size, int) and not isinstance(chunk_size, bool):
        raise ValueError(
            f"chunk_size={chunk_size} with soft_loss=None: chunking computes the token-level soft and hard terms a "
            "chunk of positions at a time, and feature-only distillation has neither. Leave chunk_size out."
        )
    if on_policy is not None:
        raise ValueError(
            "on_policy with soft_loss=None: on-policy distillation compares the two models' next-token "
            "distributions on the student's completions, which needs a soft loss (e.g. soft_loss='reverse_kl')."
        )
    return DEFAULT_TEMPERATURE, 0.0, None


def refuse_compile(loss, metrics):
    """`compile()` of a feature-only distiller: a hard-label loss or metrics would need labels it refuses."""
    if loss is not None:
        raise ValueError(
            f"compile(loss={loss!r}) on a distiller with soft_loss=None: feature-only distillation trains on its pair "
            "terms alone and takes no labels, so the loss would never be used. Compile without a loss; fine-tune "
            "or distil the task afterwards to use labels."
        )
    if metrics:
        raise ValueError(
            f"compile(metrics={metrics!r}) on a distiller with soft_loss=None: metrics compare outputs with labels, "
            "and feature-only distillation takes none. Compile without metrics (the logs hold every pair term)."
        )


def refuse_assignment(name, value):
    raise ValueError(
        f"distiller.{name} = {value!r}: this distiller has soft_loss=None (feature-only distillation), which has no "
        f"soft or hard term for {name} to act on."
    )
