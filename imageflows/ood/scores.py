"""Out-of-distribution scores from bits/dim, and their AUROC and AUPR.

Every score reads "higher is more OOD", so that one `auroc_aupr` rates them all.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from imageflows.images import to_pixels

PNG_COMPRESS_LEVEL = 9  # Pillow's strongest zlib setting, as Serrà et al.'s PNG compressor


def png_bits_per_dim(images: Tensor, num_levels: int) -> Tensor:
    """L(x) = 8 · len(PNG(x)) / D for each image, `[N]` float64 (Serrà et al., ICLR 2020, §3).

    Each uint8 image `[C, H, W]` (C = 1 or 3) of `num_levels` levels becomes a 256-level
    picture by DESIGN §4's rule round(x · 255 / (N − 1)) and is encoded losslessly by Pillow at
    compression level 9; D = C · H · W.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got {list(images.shape)}")
    pixels = to_pixels(images, num_levels).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    dims = images[0].numel()
    return torch.tensor([8 * _png_length(p) / dims for p in pixels], dtype=torch.float64)


def _png_length(picture: np.ndarray) -> int:
    buffer = io.BytesIO()
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.tell()


def complexity_corrected(bpd: Tensor, png_bpd: Tensor) -> Tensor:
    """S(x) = bits/dim(x) − L(x) (Serrà et al., ICLR 2020, Eq. 2 in bits/dim): the model's
    code length less a generic compressor's, high where the model does worse than PNG."""
    return bpd - png_bpd


def likelihood_ratio(bpd: Tensor, background_bpd: Tensor) -> Tensor:
    """bits/dim(x) − bits/dim_background(x) = −LLR(x) / (D ln 2) (Ren et al., NeurIPS 2019,
    Eq. 5), the background model trained on perturbed inputs; high where the model's likelihood
    gains little over the background's."""
    return bpd - background_bpd


def typicality_scores(bpd: Tensor, train_bpd: float, batch_size: int) -> Tensor:
    """|mean bits/dim of a batch − mean bits/dim of the training data| for consecutive batches
    of `batch_size` images, `[len(bpd) // batch_size]` (Nalisnick et al. 2019,
    arXiv:1906.02994, §3: the test of typicality, in bits/dim); an incomplete last batch is
    dropped."""
    if batch_size < 1:
        raise ValueError(f"typicality batch size must be at least 1, got {batch_size}")
    batches = len(bpd) // batch_size
    means = bpd[: batches * batch_size].double().reshape(batches, batch_size).mean(1)
    return (means - train_bpd).abs()


def auroc_aupr(in_scores: Tensor, ood_scores: Tensor) -> tuple[float, float]:
    """`(AUROC, AUPR)` of telling `ood_scores` (the positive class) from `in_scores`, a higher
    score meaning more OOD, by scikit-learn's `roc_auc_score` and `average_precision_score`.

    A non-finite score (a likelihood that under- or overflowed) counts as the most OOD.
    """
    if len(in_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("AUROC needs scores of both in-distribution and OOD inputs")
    scores = torch.cat([in_scores, ood_scores]).double().numpy()
    top = np.finfo(np.float64).max
    scores = np.nan_to_num(scores, nan=top, posinf=top, neginf=-top)
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))
