"""The sampler, time-grid and schedule names the CLI offers, importable without torch (the CLI's flags are
declared before any heavy import). ``samplers.SAMPLERS``, ``time_grids`` and ``schedules`` use these names."""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m", "dpmpp2m_sde", "heun", "pc")
SPACINGS = ("uniform", "quadratic", "logsnr")
SCHEDULE_NAMES = ("linear", "cosine", "polynomial_2", "sigmoid")
