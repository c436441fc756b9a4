"""Out-of-distribution detection with a flow's likelihood: raw bits/dim, the input-complexity
correction (Serrà et al., ICLR 2020), the likelihood ratio to a background model (Ren et al.,
NeurIPS 2019) and the typicality test (Nalisnick et al. 2019), rated by AUROC and AUPR."""

from .experiment import load_set, run_ood, score_run
from .perturb import perturb, write_image_folder
from .report import write_ood_outputs
from .scores import (
    auroc_aupr,
    complexity_corrected,
    likelihood_ratio,
    png_bits_per_dim,
    typicality_scores,
)
from .synthetic import SYNTHETIC, constant_set, inverted_set, noise_set, synthetic_set

__all__ = [
    "SYNTHETIC",
    "auroc_aupr",
    "complexity_corrected",
    "constant_set",
    "inverted_set",
    "likelihood_ratio",
    "load_set",
    "noise_set",
    "perturb",
    "png_bits_per_dim",
    "run_ood",
    "score_run",
    "synthetic_set",
    "typicality_scores",
    "write_image_folder",
    "write_ood_outputs",
]
