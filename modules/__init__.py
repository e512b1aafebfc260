"""Codecs (LightningModules), their networks, entropy coding, diffusion parts and metrics."""

import warnings

# CompressAI imports torch_geometric for its point-cloud datasets, which calls the deprecated
# torch.jit.script at import time; the warning is about a library we do not use.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)
