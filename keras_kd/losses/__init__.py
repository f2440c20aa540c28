"""Distillation losses: pure functions over `keras.ops`, each with a `keras.losses.Loss` wrapper."""

from keras_kd.losses.logits import SoftTargetLoss, soft_target_kl, soft_target_loss

__all__ = ["SoftTargetLoss", "soft_target_kl", "soft_target_loss"]
