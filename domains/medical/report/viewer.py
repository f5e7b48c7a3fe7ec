"""The linked volume views of a medical report: one NiiVue canvas per volume (MR, synthetic CT, CT, error,
uncertainty, labels), whose crosshairs move together, each marked SYNTHETIC where its data are."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sci_diffusion.report.page import ReportPage, VendoredScript, escape

from .volumes import PageVolume

HERE = Path(__file__).parent
NIIVUE = VendoredScript("@niivue/niivue", "0.69.0", HERE / "vendor" / "niivue.umd.js", HERE / "vendor" / "niivue-LICENSE.txt",
                        "BSD-2-Clause", "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af")
SLICE_TYPES = ("axial", "coronal", "sagittal", "multiplanar")


@dataclass
class VolumeView:
    """One canvas of the viewer.

    Attributes:
        title: what it shows, with its unit (``synthetic CT (HU)``).
        volume: the volume as the page holds it.
        colormap: a NiiVue colour map (``gray``, ``magma``, ``viridis``, ``turbo``).
        window: the values mapped to the ends of the colour map, in the volume's units.
        synthetic: whether the volume is synthetic data (its canvas then carries the SYNTHETIC mark).
    """

    title: str
    volume: PageVolume
    colormap: str
    window: tuple[float, float]
    synthetic: bool = True


def add_volume_viewer(page: ReportPage, views: list[VolumeView], note: str = "") -> int:
    """A section of linked volume views on ``page``; returns the bytes its volumes add to the page."""
    added, specs, cells = 0, [], []
    for k, view in enumerate(views):
        block = f"volume-{k}"
        added += page.add_bytes(block, view.volume.data)
        specs.append({"canvas": f"canvas-{k}", "block": block, "name": f"volume-{k}.nii.gz", "title": view.title,
                      "colormap": view.colormap, "window": list(view.window)})
        mark = '<div class="synthetic-mark">SYNTHETIC</div>' if view.synthetic else ""
        cells.append(f'<figure class="volume"><div class="volume-canvas">{mark}<canvas id="canvas-{k}"></canvas></div>'
                     f'<figcaption>{escape(view.title)} <span class="value" id="canvas-{k}-value"></span></figcaption>'
                     "</figure>")
    page.add_json("volume-views", {"views": specs})
    choices = "".join(f'<option value="{s}">{s}</option>' for s in SLICE_TYPES)
    factor = max(view.volume.factor for view in views)
    resolution = (f" The volumes are shown at 1/{factor} of their resolution per axis (block means), to keep the page "
                  "small." if factor > 1 else "")
    tools = (f'<p class="note">Click or drag in any view: every view follows (the crosshair is one point in '
             f"millimetres), and the value under it is given in each caption. View: <select id=\"slice-type\">{choices}"
             f"</select>{escape(resolution)} {escape(note)}</p>")
    page.add_section("Volumes", tools + f'<div class="volume-grid">{"".join(cells)}</div>', "volumes")
    page.use(NIIVUE)
    page.add_page_script(HERE / "viewer.js")
    return added
