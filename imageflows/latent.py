"""Operations on the standardised latent eps (DESIGN §1): one tensor holds every level's latents,
so sampling, interpolation and attribute arithmetic are plain tensor algebra on it.

Everything here needs only `model.encode`, `model.decode`, `model.image_shape` and
`model.num_classes`, so it works for Glow and Flow++ alike. Images are uint8 `[B, C, H, W]`;
latents are float `[B, C, H, W]`.

Class-conditional models (`model.num_classes` > 0) encode and decode given labels; every function
here takes the images' dataset labels and lets `class_labels` decide which ones condition the
model, so the same call serves conditional and unconditional runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .models import FlowModel

Labels = Tensor | int | None  # int64 `[B]`, one class for all, or none


def class_labels(
    model: FlowModel,
    labels: Labels,
    n: int,
    override: int | None = None,
    source: str = "the input",
) -> Tensor | None:
    """The labels that condition `model` on `n` images or latents: the one place that decides.

    An unconditional model takes none (dataset `labels` are then data only, and dropped); a
    class-conditional one takes class `override` for all `n` if given, else `labels`, int64 `[n]`.

    Raises:
        ValueError: `override` for an unconditional model or outside 0..K−1, or a conditional
            model with neither (`source` names where the labels were looked for).
        TypeError, ValueError: `labels` not int64 `[n]` in 0..K−1 (`model.class_cond`).
    """
    k = model.num_classes
    if override is not None:
        if not k:
            raise ValueError(
                f"--class {override} needs a class-conditional run; this model is "
                "unconditional (model.num_classes=0)"
            )
        if isinstance(override, bool) or not isinstance(override, int) or not 0 <= override < k:
            raise ValueError(f"--class {override}: the run's model has classes 0..{k - 1}")
        return torch.full((n,), override, dtype=torch.long)
    if not k:
        return None
    if labels is None:
        raise ValueError(
            f"the run's model is class-conditional ({k} classes) but {source} has no labels; "
            f"pass --class C (0..{k - 1}) to use class C for all"
        )
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.long)
    model.class_cond(labels, n)  # TypeError/ValueError naming a bad dtype, length or class
    return labels


def nearer_endpoint_labels(labels_a: Tensor, labels_b: Tensor, steps: int) -> Tensor:
    """The label of each frame of `interpolation_path`: the nearer endpoint's, A's up to and
    including t = ½, B's after it. Shapes: `[B]` each, returns `[B, steps]`."""
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    return torch.where(t > 0.5, labels_b[:, None], labels_a[:, None])


@torch.no_grad()
def temperature_rows(model, temperatures: Sequence[float], n: int, seed: int = 0) -> Tensor:
    """Samples decode(T · eps) for each T, every row from the same base noise eps ~ N(0, I).

    Rows then differ by temperature alone (Glow section 5, Figure 8). Shapes: uint8
    `[len(temperatures) · n, C, H, W]`, row-major.
    """
    if n < 1 or not temperatures:
        raise ValueError(f"need n ≥ 1 and at least one temperature, got n={n}, {temperatures}")
    for t in temperatures:
        if not 0 <= t < float("inf"):
            raise ValueError(f"temperature must be finite and ≥ 0, got {t}")
    param = next(model.parameters())
    generator = torch.Generator(param.device).manual_seed(seed)
    eps = torch.randn(
        (n, *model.image_shape), generator=generator, dtype=param.dtype, device=param.device
    )
    return torch.cat([model.decode(t * eps) for t in temperatures])


@torch.no_grad()
def reconstruct(model: FlowModel, images: Tensor, labels: Labels = None) -> Tensor:
    """decode(encode(x)) with the images' `labels` (see `class_labels`): equal to `images` for
    an invertible model (DESIGN §3), uint8."""
    cond = class_labels(model, labels, len(images))
    return model.decode(model.encode(images, cond), cond)


def interpolation_path(
    eps_a: Tensor, eps_b: Tensor, steps: int, spherical: bool = False
) -> Tensor:
    """`steps` latents from `eps_a` to `eps_b`, at t = 0, 1/(steps−1), ..., 1.

    Linear: (1 − t)·a + t·b. Spherical (slerp, White 2016, "Sampling generative networks"):
    sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b with cos Ω = a·b/(|a||b|), on each example's
    flattened latent; it falls back to linear where a and b are (anti)parallel. The endpoints are
    `eps_a` and `eps_b` themselves, bit for bit.

    Args:
        eps_a, eps_b: latents `[B, C, H, W]` (or `[C, H, W]`) of one shape.
        steps: number of frames, at least 2.

    Returns:
        `[B, steps, C, H, W]` (`[steps, C, H, W]` for unbatched input).
    """
    if eps_a.shape != eps_b.shape:
        raise ValueError(f"latents differ in shape: {list(eps_a.shape)} and {list(eps_b.shape)}")
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (its endpoints), got {steps}")
    if eps_a.dim() == 3:
        return interpolation_path(eps_a[None], eps_b[None], steps, spherical)[0]
    a, b = eps_a.double().flatten(1), eps_b.double().flatten(1)  # (B, D)
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[None, :, None]  # (1, steps, 1)
    wa, wb = 1 - t, t
    if spherical:
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
        omega = torch.arccos(cos.clamp(-1, 1))[:, None, None]  # (B, 1, 1)
        sin = torch.sin(omega)
        curved = sin > 1e-6  # slerp's weights are 0/0 for (anti)parallel latents
        wa = torch.where(curved, torch.sin(wa * omega) / sin, wa)
        wb = torch.where(curved, torch.sin(wb * omega) / sin, wb)
    path = (wa * a[:, None] + wb * b[:, None]).to(eps_a.dtype)  # (B, steps, D)
    path[:, 0], path[:, -1] = eps_a.flatten(1), eps_b.flatten(1)
    return path.view(len(a), steps, *eps_a.shape[1:])


@torch.no_grad()
def interpolate(
    model: FlowModel,
    x_a: Tensor,
    x_b: Tensor,
    steps: int,
    spherical: bool = False,
    labels_a: Labels = None,
    labels_b: Labels = None,
    decode_class: int | None = None,
) -> Tensor:
    """Decoded frames between the latents of two real images (Glow section 5, Figure 5).

    A class-conditional model encodes each endpoint with its own label and decodes every frame
    with `decode_class` if given, else with the nearer endpoint's label (`nearer_endpoint_labels`:
    A's for t ≤ ½, B's after; one label throughout when A and B share it). Without
    `decode_class`, frame 0 is decode(encode(x_a)) == x_a and the last frame is x_b.

    Args:
        x_a, x_b: uint8 images `[B, C, H, W]` (or one image `[C, H, W]` each).
        steps: frames per interpolation, at least 2.
        spherical: slerp instead of a straight line (see `interpolation_path`).
        labels_a, labels_b: the images' labels, int64 `[B]` or one int (see `class_labels`).
        decode_class: decode every frame as this class (class-conditional models only).

    Returns:
        uint8 `[B, steps, C, H, W]` (`[steps, C, H, W]` for unbatched input).
    """
    if x_a.dim() == 3 and x_b.dim() == 3:
        one = [_as_batch(labels) for labels in (labels_a, labels_b)]
        return interpolate(model, x_a[None], x_b[None], steps, spherical, *one, decode_class)[0]
    if x_a.shape != x_b.shape:
        raise ValueError(f"images differ in shape: {list(x_a.shape)} and {list(x_b.shape)}")
    n = len(x_a)
    cond_a, cond_b = class_labels(model, labels_a, n), class_labels(model, labels_b, n)
    frame_labels = None
    if cond_a is not None and cond_b is not None:
        frame_labels = nearer_endpoint_labels(cond_a, cond_b, steps).flatten()
    frame_labels = class_labels(model, frame_labels, n * steps, decode_class)
    eps_a, eps_b = model.encode(x_a, cond_a), model.encode(x_b, cond_b)
    path = interpolation_path(eps_a, eps_b, steps, spherical)
    frames = model.decode(path.flatten(0, 1), frame_labels)  # (B·steps, C, H, W)
    return frames.view(n, steps, *frames.shape[1:])


def _as_batch(labels: Labels) -> Labels:
    """One image's label as a batch of one (an int already serves any batch)."""
    return labels.reshape(1) if isinstance(labels, Tensor) else labels


@torch.no_grad()
def attribute_directions(
    model: FlowModel,
    images: Tensor,
    signs: Tensor,
    batch_size: int = 256,
    names: Sequence[str] | None = None,
    labels: Labels = None,
) -> tuple[Tensor, Tensor]:
    """Attribute directions of Glow section 5 (Figure 6): for each attribute, the mean latent of
    the examples that have it minus the mean latent of those that do not.

    One pass of batched encoding serves every attribute; sums are kept in float64.

    Args:
        images: uint8 `[N, C, H, W]`.
        signs: `[N, A]` (or `[N]` for one attribute): +1 has the attribute, −1 lacks it, 0 is
            unknown (left out of both means).
        batch_size: images per `model.encode` call.
        names: the attributes' names, for error messages.
        labels: the images' labels, int64 `[N]`: a class-conditional model encodes each image
            with its own (see `class_labels`).

    Returns:
        `(directions, counts)`: float32 `[A, C, H, W]` (`[C, H, W]` for 1-D `signs`) and int64
        `[A, 2]` counts of the positive and negative examples.
    """
    if signs.dim() == 1:
        directions, counts = attribute_directions(
            model, images, signs[:, None], batch_size, names, labels
        )
        return directions[0], counts[0]
    if signs.dim() != 2 or len(signs) != len(images):
        raise ValueError(
            f"signs must be [N, A] with N = {len(images)} images, got {list(signs.shape)}"
        )
    if not torch.isin(signs, torch.tensor([-1, 0, 1], dtype=signs.dtype)).all():
        raise ValueError("signs must hold +1 (has the attribute), -1 (lacks it) or 0 (unknown)")
    positive, negative = (signs == 1).double(), (signs == -1).double()  # (N, A)
    counts = torch.stack([positive.sum(0), negative.sum(0)], dim=1).long()  # (A, 2)
    for column, (n_pos, n_neg) in enumerate(counts.tolist()):
        if n_pos == 0 or n_neg == 0:
            name = repr(names[column]) if names is not None else f"column {column}"
            side = "positive (+1)" if n_pos == 0 else "negative (-1)"
            raise ValueError(f"attribute {name} has no {side} examples among {len(images)}")
    cond = class_labels(model, labels, len(images))
    sums = torch.zeros(2, signs.shape[1], math.prod(images.shape[1:]), dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        eps = model.encode(images[rows], None if cond is None else cond[rows])
        eps = eps.cpu().double().flatten(1)  # (b, D)
        sums[0] += positive[rows].T @ eps  # (A, D)
        sums[1] += negative[rows].T @ eps
    means = sums / counts.T[:, :, None].double()
    directions = (means[0] - means[1]).float().view(-1, *images.shape[1:])
    return directions, counts


def check_alphas(alphas: Sequence[float]) -> None:
    """A `ValueError` unless `alphas` holds at least one number, all finite."""
    if not alphas:
        raise ValueError("need at least one alpha")
    if not all(math.isfinite(a) for a in alphas):
        raise ValueError(f"alphas must be finite numbers, got {list(alphas)}")


@torch.no_grad()
def edit(
    model: FlowModel,
    images: Tensor,
    direction: Tensor,
    alphas: Sequence[float],
    labels: Labels = None,
) -> Tensor:
    """decode(encode(x) + α · direction) for each α (Glow section 5, Figure 6).

    α = 0 reproduces the input exactly. A class-conditional model encodes and decodes each image
    with its own label.

    Args:
        images: uint8 `[B, C, H, W]`.
        direction: float `[C, H, W]`, e.g. from `attribute_directions`.
        alphas: the step sizes, any finite numbers.
        labels: the images' labels, int64 `[B]` or one int (see `class_labels`).

    Returns:
        uint8 `[len(alphas), B, C, H, W]`: one row of edited images per α.
    """
    check_alphas(alphas)
    cond = class_labels(model, labels, len(images))
    eps = model.encode(images, cond)
    if direction.shape != eps.shape[1:]:
        raise ValueError(
            f"direction of shape {list(direction.shape)} does not fit latents "
            f"{list(eps.shape[1:])}"
        )
    step = direction.to(eps.device, eps.dtype)
    return torch.stack([model.decode(eps + alpha * step, cond) for alpha in alphas])
