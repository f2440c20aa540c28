"""What the user gives as data: the keys of a batch, in-memory arrays, the KerasHub raw-string pipeline."""
