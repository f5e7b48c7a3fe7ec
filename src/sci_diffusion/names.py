"""The sampler and time-grid names the CLI offers, importable without torch (the CLI's flags are
declared before any heavy import). ``samplers.SAMPLERS`` and ``time_grids`` use these names."""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m", "dpmpp2m_sde", "heun", "pc")
SPACINGS = ("uniform", "quadratic", "logsnr")
