"""Every command the README, docs/command_line.md and docs/scaling.md show parses with the real command line: a renamed
flag or command cannot leave the documentation stale."""
import re
import shlex
from pathlib import Path

import pytest

from sci_diffusion.cli import LIGHTNING_VERBS, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "command_line.md", ROOT / "docs" / "scaling.md"]


def documented_commands(page: Path) -> list[str]:
    """The ``sci-diffusion ...`` lines of a page's bash blocks (a trailing backslash joins the next line),
    without their comments and optional ``[...]`` parts."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        lines = iter(block.splitlines())
        for line in lines:
            if not line.startswith("sci-diffusion "):
                continue
            while line.rstrip().endswith("\\"):
                line = line.rstrip()[:-1] + " " + next(lines).strip()
            line = re.sub(r"\s+#.*$", "", line)  # comment
            while re.search(r"\[[^\[\]]*\]", line):
                line = re.sub(r"\[[^\[\]]*\]", "", line)  # optional parts, nested ones first
            commands.append(line.strip())
    return commands


COMMANDS = [(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in documented_commands(page)]


def test_every_page_shows_commands():
    pages = {page for page, _ in COMMANDS}
    assert pages == {"README.md", "docs/command_line.md", "docs/scaling.md"}
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_a_documented_command_parses(page, command):
    argv = shlex.split(command)[1:]
    if argv[0] in LIGHTNING_VERBS:  # LightningCLI reads the config: it must exist
        config = argv[argv.index("--config") + 1]
        assert (ROOT / config).is_file(), f"{page}: {command}"
        return
    if argv == ["--help"]:
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(argv)
        assert stop.value.code == 0
        return
    args = build_parser().parse_args(argv)
    assert getattr(args, "_command", None) is not None, f"{page}: {command}"
