"""Training recipes built from `keras_kd.Distiller`: whole procedures, one function each.

- `progressive(teacher, students, data, epochs_per_stage, ...)`: distillation through teacher
  assistants (Mirzadeh et al. 2020), stage by stage down a chain of smaller models.
- `pseudo_label(teacher, unlabeled, threshold=None, soft=True, ...)`: the teacher labels
  unlabelled inputs once (soft probabilities or hard class ids), optionally keeping only the
  examples it is confident about.
"""

from keras_kd.recipes.progressive import StageReport, progressive
from keras_kd.recipes.pseudo_label import PseudoLabels, pseudo_label

__all__ = ["progressive", "StageReport", "pseudo_label", "PseudoLabels"]
