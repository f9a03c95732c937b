"""Sampling with fewer steps than the model was trained with (timestep respacing)."""

import numpy as np

from guided_diffusion.diffusion.process import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The base-process timesteps to keep.

    `section_counts` is a list of counts, or a comma-separated string of them, one per equal section of
    the process (`"10,15,20"`: 10 steps from the first third, ...); a single count spreads the steps over
    the whole process (`"250"`). `"ddimN"` takes the integer stride that gives exactly N steps, as DDIM does.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired_count} steps of {num_timesteps} with an integer stride")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"bad timestep_respacing {section_counts!r}: use e.g. '250', 'ddim25' or "
                             "'10,15,20'") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only `use_timesteps` of a base process, with betas recomputed to match."""

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base_diffusion = GaussianDiffusion(**kwargs)
        self._original_num_steps = base_diffusion.num_timesteps
        last_alpha_cumprod = 1.0
        new_betas, timestep_map = [], []
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        self._timestep_map = np.array(timestep_map, dtype=np.int64)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    @property
    def timestep_map(self):
        return self._timestep_map

    @property
    def original_num_steps(self):
        return self._original_num_steps
