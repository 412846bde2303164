"""Generator and discriminator networks of a conditional GAN, for images (``B,C,H,W``, 16-64 px)
and videos (``B,F,C,H,W``), in the SNGAN/BigGAN mould:

- generators map a latent ``z: B,latent_dim`` and a condition embedding ``B,condition_dim`` to
  samples in [-1, 1]; residual up-sampling blocks whose normalisations are modulated by
  ``[z, condition]`` (FiLM on GroupNorm: conditional normalisation as in de Vries et al. 2017 and
  BigGAN, without batch statistics, so a sample never depends on the rest of its batch and the
  EMA copy needs no recomputed statistics);
- discriminators are residual down-sampling stacks with spectral norm (Miyato et al. 2018) and a
  projection head (Miyato & Koyama 2018): ``D(x, y) = w . phi(x) + <embed(y), phi(x)>``, split
  into :meth:`features`, :meth:`embed` and :meth:`score` so one feature pass serves matched and
  mismatched conditions.

Every network owns its condition embedder (any module mapping the conditions dict to
``B,condition_dim``; ``None`` for unconditional models), so each player's optimizer trains its
own copy and the two players never share a parameter. Videos use (2+1)-D convolutions
(a spatial ``1x3x3`` then a temporal ``3x1x1``, Tran et al. 2018), a fraction of a full 3-D
convolution's cost at the same receptive field.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from mmgen_lightning.models.layers.token_encoders import crop, glimpse_corners

SIZES = (16, 32, 64)


def _levels(size: int, what: str) -> int:
    if size not in SIZES:
        raise ValueError(f"{what} must be one of {', '.join(map(str, SIZES))}, got {size}")
    return int(math.log2(size // 4))  # blocks between the 4x4 grid and full size


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def conv(dims: int, in_channels: int, out_channels: int, kernel: int = 3, spectral_norm: bool = False,
         bias: bool = True) -> nn.Module:
    """A ``kernel``-wide convolution over 2 (images) or 3 (time + space) dims; 3-D is factorised (2+1)-D.

    ``bias=False`` where a normalisation follows, which would cancel the bias (and Adam would then
    amplify its rounding-noise gradient into full-size steps)."""
    if dims == 2:
        return _maybe_sn(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias), spectral_norm)
    if kernel == 1:
        return _maybe_sn(nn.Conv3d(in_channels, out_channels, 1, bias=bias), spectral_norm)
    return nn.Sequential(
        _maybe_sn(nn.Conv3d(in_channels, out_channels, (1, kernel, kernel), padding=(0, kernel // 2, kernel // 2),
                            bias=False), spectral_norm),
        _maybe_sn(nn.Conv3d(out_channels, out_channels, (kernel, 1, 1), padding=(kernel // 2, 0, 0), bias=bias),
                  spectral_norm),
    )


def _groups(channels: int) -> int:
    """Up to 8 groups of at least 2 channels (one channel per group would cancel every per-channel bias)."""
    return math.gcd(8, max(1, channels // 2))


class ConditionalNorm(nn.Module):
    """GroupNorm without affine parameters, then a FiLM ``(1 + gamma(c)) * x + beta(c)`` from a code ``B,D``.

    The FiLM layer starts at zero, so a fresh network normalises plainly and learns how far to bend."""

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.film = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        gamma, beta = self.film(code).view(code.shape[0], 2, -1, *([1] * (x.ndim - 2))).unbind(1)
        return self.norm(x) * (1 + gamma) + beta


class GeneratorBlock(nn.Module):
    """Residual up-block (BigGAN): ``norm, relu, upsample, conv, norm, relu, conv`` + ``conv1x1(upsample(x))``.

    ``dims == 3`` up-samples space only (``B,C,F,H,W``); time is laid out before the first block."""

    def __init__(self, in_channels: int, out_channels: int, code_dim: int, dims: int = 2) -> None:
        super().__init__()
        self.scale = (2.0, 2.0) if dims == 2 else (1.0, 2.0, 2.0)
        self.norm1 = ConditionalNorm(in_channels, code_dim)
        self.conv1 = conv(dims, in_channels, out_channels, bias=False)
        self.norm2 = ConditionalNorm(out_channels, code_dim)
        self.conv2 = conv(dims, out_channels, out_channels)
        self.skip = conv(dims, in_channels, out_channels, kernel=1)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.norm1(x, code)), scale_factor=self.scale, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), code)))
        return h + self.skip(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class DiscriminatorBlock(nn.Module):
    """Residual down-block (SNGAN): ``[relu], conv, relu, conv, avgpool`` + ``avgpool(conv1x1(x))``.

    The first block skips the leading relu (its input is the image). ``pool`` is the average-pool
    window: ``(2, 2)`` for images, ``(t, 2, 2)`` for videos (``t = 1`` keeps the frames), ``None``
    for no down-sampling."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, pool: tuple[int, ...] | None,
                 first: bool = False, spectral_norm: bool = True) -> None:
        super().__init__()
        self.first, self.pool = first, pool
        self.conv1 = conv(dims, in_channels, out_channels, spectral_norm=spectral_norm)
        self.conv2 = conv(dims, out_channels, out_channels, spectral_norm=spectral_norm)
        self.skip = conv(dims, in_channels, out_channels, kernel=1, spectral_norm=spectral_norm)

    def _pool(self, x: Tensor) -> Tensor:
        if self.pool is None:
            return x
        return F.avg_pool2d(x, self.pool) if x.ndim == 4 else F.avg_pool3d(x, self.pool)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        skip = self.skip(self._pool(x)) if self.first else self._pool(self.skip(x))
        return h + skip


def _channels(width: int, levels: int) -> list[int]:
    """Channels from the 4x4 grid up to full size: ``width * 2^k``, at most ``8 * width``, halving per level."""
    return [width * 2 ** min(levels - i, 3) for i in range(levels + 1)]


def _code(z: Tensor, embedder: nn.Module | None, conditions: dict[str, Tensor] | None) -> Tensor:
    if embedder is None:
        return z
    return torch.cat([z, embedder(conditions).to(z.dtype)], dim=1)


class ImageGenerator(nn.Module):
    """``z: B,latent_dim`` + conditions -> ``image: B,C,H,W`` in [-1, 1].

    Args:
        latent_dim: size of ``z``.
        channels: image channels ``C``.
        image_size: ``H == W``: 16, 32 or 64.
        width: channels at full resolution; doubling per level down to the 4x4 grid (at most 8x).
        embedder: conditions dict -> ``B,condition_dim`` (``None``: unconditional).
        condition_dim: output size of ``embedder``.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 32,
                 embedder: nn.Module | None = None, condition_dim: int = 0) -> None:
        super().__init__()
        levels = _levels(image_size, "image_size")
        self.embedder = embedder
        self.widths = _channels(width, levels)
        code_dim = latent_dim + (condition_dim if embedder is not None else 0)
        self.project = nn.Linear(code_dim, self.widths[0] * 16)
        self.blocks = nn.ModuleList(GeneratorBlock(self.widths[i], self.widths[i + 1], code_dim)
                                    for i in range(levels))
        self.out = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())

    def forward(self, z: Tensor, conditions: dict[str, Tensor] | None = None) -> Tensor:
        return self.render(_code(z, self.embedder, conditions))

    def render(self, code: Tensor) -> Tensor:
        """The image of a code ``[z, condition embedding]``: ``B,code_dim -> B,C,H,W``."""
        h = self.project(code).view(code.shape[0], self.widths[0], 4, 4)
        for block in self.blocks:
            h = block(h, code)
        return self.out(h)


class VideoGenerator(nn.Module):
    """``z: B,latent_dim`` + conditions -> ``video: B,F,C,H,W`` in [-1, 1].

    An MLP of ``[z, condition, frame embedding]`` lays out each frame's 4x4 grid, so *where* the
    content is may depend on the condition and the time jointly (a caption's motion); (2+1)-D
    residual blocks then up-sample space to half size, their temporal convolutions keeping frames
    consistent, and a light output stage (up-sample, one 3x3 convolution) reaches full size: on a
    clip of ``F`` frames the full-size layers dominate the cost, so they are kept to one.

    Args:
        latent_dim: as :class:`ImageGenerator`.
        channels: as :class:`ImageGenerator`.
        width: as :class:`ImageGenerator`.
        embedder: as :class:`ImageGenerator`.
        condition_dim: as :class:`ImageGenerator`.
        num_frames: frames ``F``.
        size: frame side ``H == W``: 16, 32 or 64.
        hidden: width of the per-frame layout MLP.
    """

    def __init__(self, latent_dim: int, channels: int, num_frames: int, size: int, width: int = 16,
                 embedder: nn.Module | None = None, condition_dim: int = 0, hidden: int = 256) -> None:
        super().__init__()
        levels = _levels(size, "video frame size") - 1
        self.embedder, self.num_frames = embedder, num_frames
        self.widths = _channels(width, levels)
        code_dim = latent_dim + (condition_dim if embedder is not None else 0)
        self.frame_embedding = nn.Parameter(torch.randn(num_frames, 32))
        self.layout = nn.Sequential(nn.Linear(code_dim + 32, hidden), nn.ReLU(),
                                    nn.Linear(hidden, self.widths[0] * 16))
        self.blocks = nn.ModuleList(GeneratorBlock(self.widths[i], self.widths[i + 1], code_dim, dims=3)
                                    for i in range(levels))
        self.out = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.ReLU(),
                                 nn.Upsample(scale_factor=(1.0, 2.0, 2.0), mode="nearest"),
                                 nn.Conv3d(width, channels, (1, 3, 3), padding=(0, 1, 1)), nn.Tanh())

    def forward(self, z: Tensor, conditions: dict[str, Tensor] | None = None) -> Tensor:
        code = _code(z, self.embedder, conditions)
        batch, frames = z.shape[0], self.num_frames
        per_frame = torch.cat([code.unsqueeze(1).expand(-1, frames, -1),
                               self.frame_embedding.to(code.dtype).expand(batch, -1, -1)], dim=2)
        h = self.layout(per_frame).view(batch, frames, self.widths[0], 4, 4).transpose(1, 2)  # B,C,F,4,4
        for block in self.blocks:
            h = block(h, code)
        return self.out(h).transpose(1, 2)  # B,F,C,H,W


class WarpVideoGenerator(nn.Module):
    """``z: B,latent_dim`` + conditions -> ``video: B,F,C,H,W`` in [-1, 1], as 2-D content and motion
    in time: an :class:`ImageGenerator` draws one frame-sized content image, an MLP of
    ``[z, condition]`` gives it a smooth trajectory (a quadratic in time per axis, squashed to stay
    within the frame), and each frame is the content shifted along it (bilinear ``grid_sample``;
    what enters from outside is background, -1). The content/motion split of MoCoGAN (Tulyakov et
    al. 2018) with the motion made explicit: scenes whose objects move rigidly (moving digits, the
    Shapes source) need one 2-D image and 6 numbers per clip instead of ``F`` images, a fraction of
    the cost of :class:`VideoGenerator`, and motion cannot smear the content. Scenes that deform
    need :class:`VideoGenerator`.

    Content and motion read the condition through embedders of their own: with one shared embedder
    the motion's strong, early gradient shapes the embedding around the caption's motion words, and
    the content, modulated by that embedding, ends up varying with the direction instead of the digit.

    Args:
        latent_dim: as :class:`ImageGenerator`.
        channels: as :class:`ImageGenerator`.
        width: as :class:`ImageGenerator`.
        condition_dim: as :class:`ImageGenerator`.
        num_frames: frames ``F``.
        size: frame side ``H == W``: 16, 32 or 64.
        embedder: conditions dict -> ``B,condition_dim`` for the content (``None``: unconditional).
        motion_embedder: the same for the trajectory (given exactly when ``embedder`` is).
        hidden: width of the motion MLP.
    """

    def __init__(self, latent_dim: int, channels: int, num_frames: int, size: int, width: int = 16,
                 embedder: nn.Module | None = None, condition_dim: int = 0, hidden: int = 128,
                 motion_embedder: nn.Module | None = None) -> None:
        super().__init__()
        if (embedder is None) != (motion_embedder is None):
            raise ValueError("WarpVideoGenerator needs both embedder and motion_embedder, or neither (unconditional)")
        self.content = ImageGenerator(latent_dim, channels, size, width, embedder, condition_dim)
        self.motion_embedder = motion_embedder
        code_dim = latent_dim + (condition_dim if embedder is not None else 0)
        self.motion = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 6))
        nn.init.zeros_(self.motion[-1].weight)  # every frame starts as the content itself
        nn.init.zeros_(self.motion[-1].bias)
        time = torch.linspace(-1.0, 1.0, num_frames)
        self.register_buffer("powers", torch.stack([torch.ones_like(time), time, time.pow(2)]), persistent=False)

    def forward(self, z: Tensor, conditions: dict[str, Tensor] | None = None) -> Tensor:
        rendered = self.content(z, conditions)  # B,C,H,W
        content = rendered.float()
        batch, frames = z.shape[0], self.powers.shape[1]
        # per axis: offset, velocity, acceleration
        coefficients = self.motion(_code(z, self.motion_embedder, conditions)).float().view(batch, 2, 3)
        shift = torch.tanh(coefficients @ self.powers).transpose(1, 2)  # B,F,2 in units of half the frame
        # whole pixels forward, the continuous shift's gradient backward (straight-through): a sub-pixel
        # shift blurs the content a little differently in every frame, a cue that tells fakes from clips
        # whose objects move by whole pixels without reading what the object is
        pixel = 2.0 / content.shape[-1]
        shift = shift + (torch.round(shift / pixel) * pixel - shift).detach()
        theta = torch.zeros(batch * frames, 2, 3, device=z.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = -shift.flatten(0, 1)  # sampling at x - shift moves the content by +shift
        content = content.unsqueeze(1).expand(-1, frames, -1, -1, -1).flatten(0, 1)
        grid = F.affine_grid(theta, list(content.shape), align_corners=False)
        moved = F.grid_sample(content + 1, grid, align_corners=False, padding_mode="zeros") - 1
        return moved.unflatten(0, (batch, frames)).to(rendered.dtype)


def image_trunk(channels: int, size: int, width: int = 32, spectral_norm: bool = True) -> tuple[nn.Module, int]:
    """SNGAN residual down-blocks ``B,C,H,W -> B,width_last,4,4`` and ``width_last``: ``width``
    channels after the first block (full size -> half size), doubling per level (at most 8x)."""
    levels = _levels(size, "image_size")
    widths = list(reversed(_channels(width, levels - 1)))
    blocks, in_channels = [], channels
    for level, out_channels in enumerate(widths):
        blocks.append(DiscriminatorBlock(in_channels, out_channels, 2, (2, 2), level == 0, spectral_norm))
        in_channels = out_channels
    blocks.append(DiscriminatorBlock(in_channels, in_channels, 2, None, spectral_norm=spectral_norm))
    return nn.Sequential(*blocks), in_channels


def video_trunk(channels: int, num_frames: int, size: int, width: int = 16,
                spectral_norm: bool = True) -> tuple[nn.Module, int]:
    """``B,F,C,H,W -> B,width_last,F',4,4`` and ``width_last``: a strided ``1x4x4`` entry convolution to
    half size (DCGAN-style, cheap at full size), then (2+1)-D residual down-blocks that halve time
    with space while at least 2 frames are left."""
    levels = _levels(size, "video frame size") - 1
    widths = list(reversed(_channels(width, levels)))
    layers: list[nn.Module] = [
        _maybe_sn(nn.Conv3d(channels, widths[0], (1, 4, 4), (1, 2, 2), (0, 1, 1)), spectral_norm)]
    frames, in_channels = num_frames, widths[0]
    for out_channels in widths[1:]:
        t = 2 if frames >= 4 else 1
        frames //= t
        layers.append(DiscriminatorBlock(in_channels, out_channels, 3, (t, 2, 2), spectral_norm=spectral_norm))
        in_channels = out_channels
    layers.append(DiscriminatorBlock(in_channels, in_channels, 3, None, spectral_norm=spectral_norm))
    return nn.Sequential(_FramesToChannelsFirst(), *layers), in_channels


class ClipAndFramesTrunk(nn.Module):
    """``B,F,C,H,W -> B,sum(branch_features),1``: the video trunk on the whole clip (motion) beside image
    trunks on single frames drawn at random each call, their features averaged over those frames:
    MoCoGAN's video and image discriminators (Tulyakov et al. 2018) as branches of one discriminator;
    ``branch_features`` lets :class:`ProjectionDiscriminator` score them apart, each with its own loss
    as in MoCoGAN. Frames larger than 16 px reach the clip branch average-pooled to half size: the clip
    branch's (2+1)-D convolutions over every frame would otherwise cost the most.

    Two kinds of frame branch, either or both:

    - ``frames``: whole frames at full size: what is drawn *and where*; in a clip whose object crosses
      the canvas, where it is in a frame tells a real clip from one that barely moves, a signal the
      half-size clip branch alone gives too weakly;
    - ``glimpses``: a ``glimpse_size`` window centred on each frame's centre of brightness (the glimpses
      of the captioner's video encoder): the object itself, at its own size, wherever it is. When the
      object is small on a large canvas (a 16 px digit on 32 px), this is what teaches its strokes, at a
      quarter of a whole frame's cost.

    Args:
        channels: as :func:`video_trunk`.
        num_frames: as :func:`video_trunk`.
        size: as :func:`video_trunk`.
        width: as :func:`video_trunk` (image branches use ``2 * width``).
        spectral_norm: as :func:`video_trunk`.
        frames: whole frames per clip the frame branch judges (0: no such branch).
        glimpses: frames per clip the glimpse branch judges (0: no such branch).
        glimpse_size: side of the glimpse window (16, 32 or 64, at most ``size``).
    """

    def __init__(self, channels: int, num_frames: int, size: int, width: int = 16, frames: int = 2,
                 spectral_norm: bool = True, glimpses: int = 0, glimpse_size: int = 16) -> None:
        super().__init__()
        for name, count in (("discriminator_frames", frames), ("discriminator_glimpses", glimpses)):
            if not 0 <= count <= num_frames:
                raise ValueError(f"{name} must be in [0, {num_frames}] (0: no such branch), got {count}")
        if not frames and not glimpses:
            raise ValueError("ClipAndFramesTrunk needs frames or glimpses; use video_trunk for the clip alone")
        if glimpses and (glimpse_size not in SIZES or glimpse_size > size):
            raise ValueError(f"glimpse_size must be one of {', '.join(map(str, SIZES))} and at most the "
                             f"frame size {size}, got {glimpse_size}")
        self.clip_pool = 2 if size > SIZES[0] else 1
        self.clip, clip_features = video_trunk(channels, num_frames, size // self.clip_pool, width, spectral_norm)
        self.frames, self.glimpses, self.glimpse_size = frames, glimpses, glimpse_size
        self.image = self.glimpse = None
        features = [clip_features]
        if frames:
            self.image, image_features = image_trunk(channels, size, 2 * width, spectral_norm)
            features.append(image_features)
        if glimpses:
            self.glimpse, glimpse_features = image_trunk(channels, glimpse_size, 2 * width, spectral_norm)
            features.append(glimpse_features)
        self.branch_features = tuple(features)
        self.num_features = sum(features)

    @staticmethod
    def _judge(trunk: nn.Module, frames: Tensor) -> Tensor:
        """``B,K,C,h,w -> B,features``: the trunk's features per frame, averaged over the ``K`` frames."""
        features = F.relu(trunk(frames.flatten(0, 1))).flatten(2).sum(2)
        return features.unflatten(0, frames.shape[:2]).mean(1)

    def forward(self, video: Tensor) -> Tensor:
        small = F.avg_pool3d(video, (1, self.clip_pool, self.clip_pool)) if self.clip_pool > 1 else video
        branches = [F.relu(self.clip(small)).flatten(2).sum(2)]
        if self.frames:
            chosen = torch.randperm(video.shape[1], device=video.device)[: self.frames]
            branches.append(self._judge(self.image, video[:, chosen]))
        if self.glimpses:  # the window is placed without gradient; its pixels carry one
            chosen = video[:, torch.randperm(video.shape[1], device=video.device)[: self.glimpses]]
            margin = self.glimpse_size
            corners = glimpse_corners(chosen, self.glimpse_size) + margin
            branches.append(self._judge(self.glimpse, crop(F.pad(chosen, (margin,) * 4, value=-1.0), corners,
                                                          self.glimpse_size)))
        return torch.cat(branches, dim=1).unsqueeze(-1)


class _FramesToChannelsFirst(nn.Module):
    def forward(self, video: Tensor) -> Tensor:
        return video.transpose(1, 2)  # B,F,C,H,W -> B,C,F,H,W for Conv3d


class ProjectionDiscriminator(nn.Module):
    """A trunk with a projection head (Miyato & Koyama 2018), for images or videos:
    ``D(x, y) = w . phi(x) + b + <V embed(y), phi(x)>``, ``phi(x)`` the trunk's relu'd features summed
    over positions. Logits are raw scores (no sigmoid).

    Args:
        trunk: ``x -> B,features,...`` (:func:`image_trunk`, :func:`video_trunk`).
        features: channels of the trunk's output.
        embedder: conditions dict -> ``B,condition_dim`` (``None``: unconditional, no projection); with
            ``branches``, a list of one embedder per branch, each with its own projection onto its
            branch's features: a shared embedding would be shaped by whichever branch learns first
            (the clip branch, by the caption's motion words) and leave the other too little to read.
        condition_dim: output size of each embedder.
        spectral_norm: spectral normalisation on the head (the trunk has its own switch).
        contrastive_dim: with ``> 0``, two heads map ``phi(x)`` and the condition's projection vector into one
            L2-normalised space of this size (:meth:`contrast`), for an image-condition InfoNCE term inside the
            discriminator (XMC-GAN, Zhang et al. 2021); 0: no such heads.
        branches: sizes of consecutive feature groups scored apart (a trunk's branches): logits are then
            ``B,K``, one column per group, and every loss is their mean, so each branch must tell real from
            fake on its own. MoCoGAN's separate image and video discriminators: with one summed score the
            clip branch rejects fakes and mismatched captions by their motion alone, and the frame branch,
            which cannot see motion, is never made to learn what a caption says about the content.
    """

    def __init__(self, trunk: nn.Module, features: int, embedder: nn.Module | None = None, condition_dim: int = 0,
                 spectral_norm: bool = True, branches: tuple[int, ...] | None = None, contrastive_dim: int = 0) -> None:
        super().__init__()
        if branches is not None and sum(branches) != features:
            raise ValueError(f"branches {branches} must add up to the trunk's {features} features")
        self.trunk, self.branches = trunk, branches
        self.linear = _maybe_sn(nn.Linear(features, 1), spectral_norm)
        if isinstance(embedder, (list, tuple, nn.ModuleList)):
            if branches is None or len(embedder) != len(branches):
                raise ValueError(f"one embedder per branch: got {len(embedder)} embedders for branches {branches}")
            self.embedder = nn.ModuleList(embedder)
            self.projection = nn.ModuleList(_maybe_sn(nn.Linear(condition_dim, size, bias=False), spectral_norm)
                                            for size in branches)
        else:
            self.embedder = embedder
            self.projection = (_maybe_sn(nn.Linear(condition_dim, features, bias=False), spectral_norm)
                               if embedder is not None else None)
        self.contrast_sample = self.contrast_condition = None
        if contrastive_dim:
            if embedder is None:
                raise ValueError("contrastive_dim needs a condition embedder (an unconditional model has no condition)")
            self.contrast_sample = nn.Linear(features, contrastive_dim)
            self.contrast_condition = nn.Linear(features, contrastive_dim)

    def features(self, x: Tensor) -> Tensor:
        """``phi(x)``: ``B,features``."""
        return F.relu(self.trunk(x)).flatten(2).sum(2)

    def embed(self, conditions: dict[str, Tensor] | None) -> Tensor | None:
        """The condition's projection vector ``V embed(y)``: ``B,features`` (``None`` if unconditional)."""
        if self.embedder is None:
            return None
        if isinstance(self.embedder, nn.ModuleList):
            return torch.cat([projection(embedder(conditions))
                              for embedder, projection in zip(self.embedder, self.projection)], dim=1)
        return self.projection(self.embedder(conditions))

    def score(self, features: Tensor, embedding: Tensor | None) -> Tensor:
        """Logits ``B`` (``B,K`` with ``branches``) of features ``phi(x)`` under condition embeddings (rows paired)."""
        if self.branches is None:
            logits = self.linear(features).squeeze(1)
            if embedding is not None:
                logits = logits + (features * embedding.to(features.dtype)).sum(1)
            return logits
        terms = features * self.linear.weight[0].to(features.dtype)
        if embedding is not None:
            terms = terms + features * embedding.to(features.dtype)
        return torch.stack([part.sum(1) for part in terms.split(list(self.branches), dim=1)], dim=1) + self.linear.bias

    def contrast(self, features: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Unit vectors ``B,contrastive_dim`` of the samples (from ``phi(x)``) and of their conditions (from
        ``V embed(y)``), rows paired, for an InfoNCE term: the features must then tell *which* caption
        fits, not only whether an image looks real."""
        if self.contrast_sample is None:
            raise ValueError("this discriminator was built without contrastive heads (contrastive_dim=0)")
        return (F.normalize(self.contrast_sample(features).float(), dim=-1),
                F.normalize(self.contrast_condition(embedding.to(features.dtype)).float(), dim=-1))

    def forward(self, x: Tensor, conditions: dict[str, Tensor] | None = None) -> Tensor:
        return self.score(self.features(x), self.embed(conditions))
