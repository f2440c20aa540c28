"""Distillation losses: pure functions over `keras.ops`, each with a `keras.losses.Loss` wrapper."""

from keras_kd.losses.attention import AttentionTransferLoss, attention_map, attention_transfer_loss
from keras_kd.losses.base import SoftLoss
from keras_kd.losses.dkd import DKD, dkd, dkd_loss, dkd_terms
from keras_kd.losses.features import CosineEmbeddingLoss, HintLoss, cosine_embedding_loss, hint_loss
from keras_kd.losses.logits import (
    GeneralizedJSD,
    ReverseKL,
    SoftTargetLoss,
    binary_soft_target_kl,
    binary_soft_target_loss,
    generalized_jsd,
    generalized_jsd_loss,
    mixture_logits,
    reverse_kl,
    reverse_kl_loss,
    soft_target_kl,
    soft_target_loss,
    two_class_logits,
)
from keras_kd.losses.relational import RKDAngleLoss, RKDDistanceLoss, rkd_angle_loss, rkd_distance_loss
from keras_kd.losses.top_k import top_k_logits, top_k_soft_target_kl, top_k_soft_target_loss

__all__ = [
    "AttentionTransferLoss",
    "CosineEmbeddingLoss",
    "DKD",
    "GeneralizedJSD",
    "HintLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "ReverseKL",
    "SoftLoss",
    "SoftTargetLoss",
    "attention_map",
    "attention_transfer_loss",
    "binary_soft_target_kl",
    "binary_soft_target_loss",
    "cosine_embedding_loss",
    "dkd",
    "dkd_loss",
    "dkd_terms",
    "generalized_jsd",
    "generalized_jsd_loss",
    "hint_loss",
    "mixture_logits",
    "reverse_kl",
    "reverse_kl_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "soft_target_kl",
    "soft_target_loss",
    "top_k_logits",
    "top_k_soft_target_kl",
    "top_k_soft_target_loss",
    "two_class_logits",
]
