"""What `Distiller(..., on_policy=...)` needs of its models, checked at construction."""

from keras_kd.on_policy.config import OnPolicy


def check_on_policy(on_policy, source, student):
    """`on_policy` when the teacher and student can take it (None passes); else an error naming what to change."""
    if on_policy is None:
        return None
    if not isinstance(on_policy, OnPolicy):
        raise TypeError(f"on_policy must be a keras_kd.OnPolicy (or None), got {on_policy!r}.")
    if getattr(source, "cache", None) is not None:
        raise ValueError(
            "on_policy needs a teacher model, not a TeacherCache: the teacher scores text the student writes during "
            "training, which no cache holds. Pass the teacher CausalLM itself."
        )
    models = list(source.models)
    if len(models) != 1:
        raise ValueError(
            f"on_policy takes one teacher model, got {len(models)}: one teacher scores the completions and writes "
            "those of sequence-level KD. Distil from one teacher."
        )
    check_causal_lm_pair(models[0], student, on_policy.max_new_tokens, "on_policy")
    return on_policy


def check_causal_lm_pair(teacher, student, max_new_tokens, purpose):
    """Raises unless both models are KerasHub CausalLMs and the student's preprocessor leaves room for a prompt."""
    for role, model in (("teacher", teacher), ("student", student)):
        if not _is_causal_lm(model):
            raise ValueError(
                f"{purpose} takes KerasHub CausalLM models; the {role} {model.name!r} is a {type(model).__name__}. "
                "Pass keras_hub.models.*CausalLM tasks (e.g. Llama3CausalLM)."
            )
    preprocessor = getattr(student, "preprocessor", None)
    if preprocessor is None or getattr(preprocessor, "sequence_length", None) is None:
        raise ValueError(
            f"{purpose} tokenizes the prompts with the student's preprocessor, but the student {student.name!r} has "
            f"{'none' if preprocessor is None else 'one without a sequence_length'}. Give it the teacher's "
            "preprocessor (student.preprocessor = teacher.preprocessor; keras_kd.hub.student_from_teacher copies it)."
        )
    if max_new_tokens >= preprocessor.sequence_length:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the student preprocessor's "
            f"sequence_length={preprocessor.sequence_length}. Lower max_new_tokens or raise the sequence_length."
        )


def _is_causal_lm(model):
    return any(cls.__name__ == "CausalLM" and cls.__module__.startswith("keras_hub") for cls in type(model).__mro__)
