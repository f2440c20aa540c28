"""Layer pairs end to end: the pair kinds, binding them to models, capturing layer outputs, paths, regressors.

`pool(features, padding_mask, mode)` is the masked pooling that pairs with `pooling=` apply, public
so that a distilled backbone's sentence embeddings are computed the same way.
"""

from keras_kd.features.pooling import pool

__all__ = ["pool"]
