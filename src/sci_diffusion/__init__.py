"""sci-diffusion: a shared diffusion core for scientific data (molecules, medical images)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sci-diffusion")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
