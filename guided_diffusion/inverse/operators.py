"""Linear degradation operators A for inverse problems, y = A x + sigma_y * n, with exact adjoints A^T.

Every operator works on image batches [B, C, H, W] in the model's range ([-1, 1]) and offers

- `forward(x)`: the measurement A x (without noise);
- `adjoint(y)`: A^T y, exact, so <A x, y> = <x, A^T y> holds to rounding for any x and y;
- `measure(x, sigma_y, generator=None, noise=None)`: A x plus Gaussian noise of standard deviation
  `sigma_y` (in the same units as x, so DPS's 0.05 is 2.5 % of the [-1, 1] range);
- `to_image(y)`: an image-shaped view of a measurement for display and for the "degraded input"
  baseline (the masked image, the blurred image, the low-resolution image upsampled by pixel repetition);
- `measurement_shape(x_shape)` and `name`.

Masks and kernels are fixed when the operator is built (masks drawn from `seed`), and the same for every
image of a batch. `create_operator(name, image_size, **params)` builds one by name:

    inpaint_box       mask_size (side of the missing square), box_position ("center" or "random")
    inpaint_random    mask_ratio (fraction of pixels removed, the same for all channels)
    gaussian_blur     kernel_size, blur_sigma, padding
    uniform_blur      kernel_size, padding (a box average, no motion)
    super_resolution  scale_factor (average pooling over scale_factor x scale_factor blocks)
    identity          (denoising only)

Blurs are cross-correlations with the padding `reflect` (default, as DPS's blur), `circular`,
`replicate` or `zeros`. Padding is applied as an index map (each padded pixel copies one input pixel), so
its adjoint scatters the padded border back with `index_add_`, and the adjoint of the valid
cross-correlation is the transposed convolution: together the adjoint is exact for every padding.
"""

import math

import torch
import torch.nn.functional as F

PADDINGS = ("reflect", "circular", "replicate", "zeros")


class LinearOperator:
    """Base class: subclasses define `forward`, `adjoint` and `measurement_shape`."""

    name = "linear"

    def forward(self, x):
        raise NotImplementedError

    def adjoint(self, y):
        raise NotImplementedError

    def measurement_shape(self, x_shape):
        return tuple(x_shape)

    def __call__(self, x):
        return self.forward(x)

    def measure(self, x, sigma_y=0.0, generator=None, noise=None):
        """A x + sigma_y * n with n ~ N(0, I) from `generator`, or the given standard-normal `noise`."""
        clean = self.forward(x)
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        if not sigma_y:
            return clean
        if noise is None:
            noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype,
                                device="cpu" if generator is None else generator.device).to(clean.device)
        elif tuple(noise.shape) != tuple(clean.shape):
            raise ValueError(f"measurement noise of shape {tuple(noise.shape)} for measurements of shape "
                             f"{tuple(clean.shape)}")
        return clean + sigma_y * self.restrict_noise(noise.to(device=clean.device, dtype=clean.dtype))

    def restrict_noise(self, noise):
        """Noise on the measured entries only (operators whose measurement has unmeasured zeros override)."""
        return noise

    def to_image(self, y):
        """The measurement as an image of the input's shape (for display and the degraded baseline)."""
        return y

    def describe(self):
        """A JSON-friendly description of the operator."""
        return {"name": self.name}

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({fields})"


class Identity(LinearOperator):
    """A = I: denoising."""

    name = "identity"

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y


# --------------------------------------------------------------------------------------------------
# Inpainting


class Inpainting(LinearOperator):
    """y = m * x for a fixed 0/1 mask m [H, W] (1 = observed), the same for all channels.

    The measurement keeps the image's shape with zeros where pixels are missing (they get no measurement
    noise either); A is then a diagonal projection, so A^T = A.
    """

    name = "inpaint"

    def __init__(self, mask, **description):
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise ValueError(f"an inpainting mask is [H, W], got shape {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("an inpainting mask must hold only 0 (missing) and 1 (observed)")
        self.mask = mask.float()
        self._description = description

    def _mask_for(self, x):
        if tuple(x.shape[-2:]) != tuple(self.mask.shape):
            raise ValueError(f"the mask is {tuple(self.mask.shape)} but the images are {tuple(x.shape[-2:])}")
        return self.mask.to(device=x.device, dtype=x.dtype)

    def forward(self, x):
        return x * self._mask_for(x)

    def adjoint(self, y):
        return y * self._mask_for(y)

    def restrict_noise(self, noise):
        return noise * self._mask_for(noise)  # missing pixels are not measured, so they get no noise

    @property
    def observed_fraction(self):
        return float(self.mask.mean())

    def describe(self):
        return {"name": self.name, **self._description, "observed_fraction": self.observed_fraction}


def box_mask(image_size, mask_size, position="center", seed=0):
    """A mask with a missing `mask_size` square: centred, or at a position drawn from `seed`."""
    if not 0 < mask_size <= image_size:
        raise ValueError(f"mask_size must be in 1..{image_size}, got {mask_size}")
    spare = image_size - mask_size
    if position == "center":
        top = left = spare // 2
    elif position == "random":
        g = torch.Generator().manual_seed(int(seed))
        top, left = (int(v) for v in torch.randint(0, spare + 1, (2,), generator=g))
    else:
        raise ValueError(f"box_position must be 'center' or 'random', got {position!r}")
    mask = torch.ones(image_size, image_size)
    mask[top:top + mask_size, left:left + mask_size] = 0
    return mask


def random_mask(image_size, mask_ratio, seed=0):
    """A mask missing exactly round(mask_ratio * H * W) pixels, chosen by a permutation drawn from `seed`."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio (the fraction of pixels removed) must be in [0, 1), got {mask_ratio}")
    count = image_size * image_size
    missing = int(round(mask_ratio * count))
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(count, generator=g)
    mask = torch.ones(count)
    mask[order[:missing]] = 0
    return mask.reshape(image_size, image_size)


# --------------------------------------------------------------------------------------------------
# Blur


def _pad_index(size, pad, mode):
    """For each padded position, the input position it copies (1-D)."""
    positions = torch.arange(-pad, size + pad)
    if mode == "circular":
        return positions % size
    if mode == "replicate":
        return positions.clamp(0, size - 1)
    if mode == "reflect":  # mirror without repeating the edge pixel, as F.pad(mode="reflect")
        if pad >= size:
            raise ValueError(f"reflect padding of {pad} needs images larger than {pad} pixels, got {size}: "
                             "use a smaller kernel or --padding circular/replicate/zeros")
        period = 2 * (size - 1) if size > 1 else 1
        folded = positions.abs() % period
        return torch.where(folded >= size, period - folded, folded)
    raise ValueError(f"unknown padding {mode!r}: use one of {', '.join(PADDINGS)}")


class Blur(LinearOperator):
    """Per-channel cross-correlation with an odd [K, K] kernel and same-size output."""

    name = "blur"

    def __init__(self, kernel, padding="reflect", **description):
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 != 1:
            raise ValueError(f"a blur kernel must be square with an odd side, got shape {tuple(kernel.shape)}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}: use one of {', '.join(PADDINGS)}")
        self.kernel = kernel
        self.padding = padding
        self.pad = kernel.shape[0] // 2
        self._description = description
        self._index_cache = {}

    def _weight(self, x):
        channels = x.shape[1]
        k = self.kernel.to(device=x.device, dtype=x.dtype)
        return k.expand(channels, 1, *k.shape)

    def _indices(self, height, width, device):
        key = (height, width, str(device))
        if key not in self._index_cache:
            self._index_cache[key] = (_pad_index(height, self.pad, self.padding).to(device),
                                      _pad_index(width, self.pad, self.padding).to(device))
        return self._index_cache[key]

    def _pad(self, x):
        if self.padding == "zeros":
            return F.pad(x, [self.pad] * 4)
        rows, cols = self._indices(x.shape[-2], x.shape[-1], x.device)
        return x.index_select(-2, rows).index_select(-1, cols)

    def _unpad(self, z, height, width):
        """The adjoint of `_pad`: padded-size [.., H + 2p, W + 2p] -> [.., H, W]."""
        p = self.pad
        if self.padding == "zeros":
            return z[..., p:p + height, p:p + width]
        rows, cols = self._indices(height, width, z.device)
        z = torch.zeros(*z.shape[:-1], width, dtype=z.dtype, device=z.device).index_add_(-1, cols, z)
        return torch.zeros(*z.shape[:-2], height, width, dtype=z.dtype, device=z.device).index_add_(-2, rows, z)

    def forward(self, x):
        return F.conv2d(self._pad(x), self._weight(x), groups=x.shape[1])

    def adjoint(self, y):
        full = F.conv_transpose2d(y, self._weight(y), groups=y.shape[1])
        return self._unpad(full, y.shape[-2], y.shape[-1])

    def describe(self):
        return {"name": self.name, **self._description, "padding": self.padding,
                "kernel_size": int(self.kernel.shape[0])}


def gaussian_kernel(kernel_size, sigma):
    """A normalised, sampled 2-D Gaussian of standard deviation `sigma` pixels."""
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    half = kernel_size // 2
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return k / k.sum()


def uniform_kernel(kernel_size):
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    return torch.full((kernel_size, kernel_size), 1.0 / kernel_size**2, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Super-resolution


class AveragePoolDownsample(LinearOperator):
    """y = the mean over each scale_factor x scale_factor block: [B, C, H, W] -> [B, C, H/s, W/s].

    A^T spreads each low-resolution value over its block divided by s^2 (A A^T = I / s^2), so the
    pseudo-inverse is s^2 A^T: pixel repetition, which `to_image` shows.
    """

    name = "super_resolution"

    def __init__(self, scale_factor):
        if int(scale_factor) != scale_factor or scale_factor < 1:
            raise ValueError(f"scale_factor must be a positive integer, got {scale_factor}")
        self.scale_factor = int(scale_factor)

    def _check(self, x):
        s = self.scale_factor
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by scale_factor {s}")

    def forward(self, x):
        self._check(x)
        return F.avg_pool2d(x, self.scale_factor)

    def adjoint(self, y):
        s = self.scale_factor
        return y.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1) / (s * s)

    def to_image(self, y):
        return self.adjoint(y) * self.scale_factor**2

    def measurement_shape(self, x_shape):
        *lead, h, w = x_shape
        s = self.scale_factor
        if h % s or w % s:
            raise ValueError(f"image size {(h, w)} is not divisible by scale_factor {s}")
        return (*lead, h // s, w // s)

    def describe(self):
        return {"name": self.name, "scale_factor": self.scale_factor}


# --------------------------------------------------------------------------------------------------
# Factory

OPERATOR_NAMES = ("inpaint_box", "inpaint_random", "gaussian_blur", "uniform_blur", "super_resolution", "identity")

def default_params(image_size):
    """Operator parameters for `image_size`.

    At 256 pixels these are DPS's settings (a 128-pixel box, a 61-pixel Gaussian kernel of sigma 3,
    4x super-resolution); other sizes scale the box and the kernel with the image, keeping the blur sigma
    at least 1 pixel and the kernel at least 2 sigma wide on each side. Random inpainting removes 70 % of
    the pixels (the upper end of the 30-70 % range DPS's configuration draws from).
    """
    ratio = image_size / 256
    sigma = max(1.0, 3.0 * ratio)
    kernel = max(int(round(61 * ratio)) | 1, 2 * math.ceil(2 * sigma) + 1)
    return dict(mask_size=max(1, image_size // 2), mask_ratio=0.7, kernel_size=kernel, blur_sigma=sigma,
                scale_factor=4 if image_size >= 16 else 2)


def create_operator(name, image_size, mask_size=None, mask_ratio=None, box_position="center", blur_sigma=None,
                    kernel_size=None, scale_factor=None, padding="reflect", seed=0):
    """Build operator `name` for square images of side `image_size`; unset parameters get `default_params`."""
    defaults = default_params(image_size)
    mask_size = defaults["mask_size"] if mask_size is None else int(mask_size)
    mask_ratio = defaults["mask_ratio"] if mask_ratio is None else float(mask_ratio)
    kernel_size = defaults["kernel_size"] if kernel_size is None else int(kernel_size)
    blur_sigma = defaults["blur_sigma"] if blur_sigma is None else float(blur_sigma)
    scale_factor = defaults["scale_factor"] if scale_factor is None else int(scale_factor)
    if name == "inpaint_box":
        op = Inpainting(box_mask(image_size, mask_size, box_position, seed), mask_size=mask_size,
                        box_position=box_position, seed=seed)
    elif name == "inpaint_random":
        op = Inpainting(random_mask(image_size, mask_ratio, seed), mask_ratio=mask_ratio, seed=seed)
    elif name == "gaussian_blur":
        op = Blur(gaussian_kernel(kernel_size, blur_sigma), padding, blur_sigma=blur_sigma)
    elif name == "uniform_blur":
        op = Blur(uniform_kernel(kernel_size), padding)
    elif name == "super_resolution":
        op = AveragePoolDownsample(scale_factor)
        op.measurement_shape((1, 3, image_size, image_size))  # divisibility check now, not mid-run
    elif name == "identity":
        op = Identity()
    else:
        raise ValueError(f"unknown operator {name!r}: use one of {', '.join(OPERATOR_NAMES)}")
    if isinstance(op, Blur):
        if op.padding == "reflect" and op.pad >= image_size:
            _pad_index(image_size, op.pad, "reflect")  # raises with the explanation
    op.name = name
    return op
