"""Shared test set-up: one intra-op thread (fastest on a shared 2-core machine), CPU only."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

torch.set_num_threads(1)
