"""Test settings: tiny tensors run faster on one thread than split across two busy cores."""

import torch

torch.set_num_threads(1)
