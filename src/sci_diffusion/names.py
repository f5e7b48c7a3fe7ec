"""The sampler, time-grid and schedule names the CLI offers, importable without torch (the CLI's flags are
declared before any heavy import). ``samplers.SAMPLERS``, ``time_grids`` and ``schedules`` use these names."""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m", "dpmpp2m_sde", "heun", "pc")
# Samplers of distilled students only (``samplers.DISTILLED_SAMPLERS``): a CLI that loads students offers them beside
# SAMPLER_NAMES, and ``distillation.distilled_times`` refuses them for any other model in one sentence.
DISTILLED_SAMPLER_NAMES = ("consistency",)
SPACINGS = ("uniform", "quadratic", "cubic", "logsnr")
SCHEDULE_NAMES = ("linear", "cosine", "polynomial_2", "sigmoid")
