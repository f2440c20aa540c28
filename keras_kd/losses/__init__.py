"""Distillation losses: pure functions over `keras.ops`, each with a `keras.losses.Loss` wrapper."""

from keras_kd.losses.attention import AttentionTransferLoss, attention_map, attention_transfer_loss
from keras_kd.losses.features import CosineEmbeddingLoss, HintLoss, cosine_embedding_loss, hint_loss
from keras_kd.losses.logits import SoftTargetLoss, soft_target_kl, soft_target_loss
from keras_kd.losses.relational import RKDAngleLoss, RKDDistanceLoss, rkd_angle_loss, rkd_distance_loss

__all__ = [
    "AttentionTransferLoss",
    "CosineEmbeddingLoss",
    "HintLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "SoftTargetLoss",
    "attention_map",
    "attention_transfer_loss",
    "cosine_embedding_loss",
    "hint_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "soft_target_kl",
    "soft_target_loss",
]
