"""The Gaussian diffusion process: schedules, respacing, losses, timestep samplers, and the flag factory."""
