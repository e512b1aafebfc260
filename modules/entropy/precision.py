"""Numeric precision policy for the entropy-parameter path."""

import torch


def entropy_fp32(device_type: str) -> torch.autocast:
    """Return a context manager that disables autocast on ``device_type``.

    Everything that produces entropy parameters (hyper decoder, channel and spatial
    context models, parameter aggregation, i.e. anything yielding scales or means) must
    run inside it, identically at the encoder and at the decoder: the decoder has to
    reproduce the encoder's CDF indexes and means bit for bit, and CompressAI's
    likelihood lower bound (1e-9) underflows in float16. Disabling autocast does not
    convert tensors, so inputs must still be cast to float32 by the caller.
    """
    return torch.autocast(device_type, enabled=False)
