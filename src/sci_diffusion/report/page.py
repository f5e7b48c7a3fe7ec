"""The HTML shell of a report: one file with everything inlined (CSS, scripts, data, images), which opens
offline with no server.

A page is built from sections of HTML, data blocks (JSON, or gzip + base64 JSON for large ones, which
``assets/report.js`` decodes with the browser's ``DecompressionStream``) and scripts: the core's
``report.js``, vendored libraries (:class:`VendoredScript`, inlined once each with their licence at the foot
of the page) and the domain's own page script.
"""
from __future__ import annotations

import base64
import gzip
import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_path, json_safe
from ..errors import UserError

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class VendoredScript:
    """A JavaScript library copied from the npm registry into a package, pinned, with its licence.

    Attributes:
        package: its npm name (``3dmol``, ``@niivue/niivue``).
        version: the pinned version the file came from.
        path: the (minified, no module loader needed) file in the package.
        licence: the licence file beside it.
        licence_name: its SPDX name.
        sha256: the file's SHA-256 as copied (the tests check it, so an edited or damaged copy is caught).
    """

    package: str
    version: str
    path: Path
    licence: Path
    licence_name: str
    sha256: str

    def text(self) -> str:
        """The script, safe to put between ``<script>`` tags.

        Raises:
            UserError: the file is missing from the installation.
        """
        for path in (self.path, self.licence):
            if not path.is_file():
                raise UserError(f"The vendored {self.package} {self.version} file {path} is missing from this "
                                "installation; reinstall sci-diffusion.")
        return script_safe(self.path.read_text(encoding="utf-8"))


def script_safe(text: str) -> str:
    """``text`` with every ``</script`` written ``<\\/script`` (the same string to JavaScript), so that it
    cannot close the ``<script>`` element it is inlined in."""
    return text.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def json_for_script(obj) -> str:
    """``obj`` as strict JSON (NaN and infinities as null) that can sit inside a ``<script>`` element."""
    return json.dumps(json_safe(obj), allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def gzip_base64(data: bytes) -> str:
    """``data`` gzip-compressed (level 9, no timestamp: the same input gives the same page) and base64-encoded."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")


def png_data_uri(path: str | os.PathLike) -> str:
    """A PNG file as a ``data:`` URI for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def escape(value) -> str:
    """A value as HTML text (``&``, ``<``, ``>`` and quotes escaped); None as an empty string."""
    return "" if value is None else html.escape(str(value))


def html_table(columns: Sequence[str], rows: Iterable[Sequence], caption: str | None = None,
               highlight: Iterable[int] = ()) -> str:
    """A small static table (cells escaped; numbers as given). Rows whose position is in ``highlight`` are
    marked (the run's own rows beside the published ones)."""
    marked = set(highlight)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(("<tr class=\"ours\">" if i in marked else "<tr>") + "".join(f"<td>{escape(v)}</td>" for v in row)
                   + "</tr>" for i, row in enumerate(rows))
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="static">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass
class ReportPage:
    """One report page, built section by section and written as a single HTML file.

    Args:
        title: the page's title (its ``<title>`` and first heading).
        synthetic: the SYNTHETIC notice shown in the banner at the top (None: no banner).
        subtitle: a line under the title (what run this is).
    """

    title: str
    synthetic: str | None = None
    subtitle: str = ""
    sections: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    scripts: list[VendoredScript] = field(default_factory=list)
    page_scripts: list[str] = field(default_factory=list)

    def add_section(self, heading: str, body: str, section_id: str | None = None) -> None:
        """A titled section; ``body`` is HTML (escape any text in it with :func:`escape`)."""
        attribute = f' id="{escape(section_id)}"' if section_id else ""
        self.sections.append(f"<section{attribute}><h2>{escape(heading)}</h2>\n{body}\n</section>")

    def add_json(self, element_id: str, obj) -> None:
        """``obj`` as a JSON data block, read in the page with ``SciReport.json(element_id)``."""
        self.data.append(f'<script type="application/json" id="{escape(element_id)}">{json_for_script(obj)}</script>')

    def add_compressed_json(self, element_id: str, obj) -> int:
        """``obj`` as gzip + base64 JSON, read with ``await SciReport.json(element_id)``; returns its size in bytes."""
        text = gzip_base64(json_for_script(obj).encode("utf-8"))
        self.data.append(f'<script type="application/gzip+base64" id="{escape(element_id)}">{text}</script>')
        return len(text)

    def add_bytes(self, element_id: str, data: bytes) -> int:
        """Binary data (e.g. a .nii.gz) as base64, read with ``SciReport.bytes(element_id)`` (an ArrayBuffer);
        returns its size in the page, bytes."""
        text = base64.b64encode(data).decode("ascii")
        self.data.append(f'<script type="application/base64" id="{escape(element_id)}">{text}</script>')
        return len(text)

    def use(self, script: VendoredScript) -> None:
        """Inline a vendored library (once, however often it is asked for)."""
        if script not in self.scripts:
            self.scripts.append(script)

    def add_page_script(self, path: str | os.PathLike) -> None:
        """The domain's own script for this page (a ``.js`` file of its package), run after the libraries."""
        self.page_scripts.append(script_safe(Path(path).read_text(encoding="utf-8")))

    def render(self) -> str:
        """The whole page as one HTML string."""
        css = (ASSETS / "report.css").read_text(encoding="utf-8")
        banner = f'<div class="synthetic-banner">{escape(self.synthetic)}</div>' if self.synthetic else ""
        libraries = "\n".join(f"<script>/* {escape(s.package)} {escape(s.version)} from the npm registry, "
                              f"{escape(s.licence_name)} (licence at the foot of the page) */\n{s.text()}\n</script>"
                              for s in self.scripts)
        own = "\n".join(f"<script>\n{text}\n</script>" for text in
                        [script_safe((ASSETS / "report.js").read_text(encoding="utf-8")), *self.page_scripts])
        return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{escape(self.title)}</title>\n<style>\n{css}\n</style>\n</head>\n<body>\n{banner}\n"
                f'<header><h1>{escape(self.title)}</h1><p class="subtitle">{escape(self.subtitle)}</p></header>\n'
                f'<main>\n{chr(10).join(self.sections)}\n</main>\n{self._footer()}\n{chr(10).join(self.data)}\n'
                f"{libraries}\n{own}\n</body>\n</html>\n")

    def _footer(self) -> str:
        """The foot of the page: the software that drew it and the vendored libraries' licences."""
        notices = "".join(f"<details><summary>{escape(s.package)} {escape(s.version)} ({escape(s.licence_name)})"
                          f"</summary><pre>{escape(s.licence.read_text(encoding='utf-8'))}</pre></details>"
                          for s in self.scripts)
        return (f'<footer><p>Written by sci-diffusion. This page is self-contained: it opens offline, with no server.'
                f"</p>{notices}</footer>")

    def write(self, path: str | os.PathLike) -> int:
        """Write the page (atomically) and return its size in bytes."""
        text = self.render()
        with atomic_path(path, suffix=".html") as tmp:
            tmp.write_text(text, encoding="utf-8")
        return len(text.encode("utf-8"))
