"""Layer pairs end to end: the pair kinds, binding them to models, capturing layer outputs, paths, regressors."""
