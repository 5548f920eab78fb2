"""Helpers for in-process CLI tests (tests/ is on sys.path through its conftest.py)."""

from loftup.cli import main

QUICK_DEMO_ARGS = ("demo", "--quick", "--no-progress")  # the shared quick demo (tests/conftest.py), + --out; test_readme.py holds the README to it


def run(args, capsys):
    """Run `loftup ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles, only_line=True):
    """A non-zero exit whose stderr ends in one `error: ...` line naming every needle, no traceback.

    only_line=False allows warnings printed before the error line.
    """
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert not only_line or len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
