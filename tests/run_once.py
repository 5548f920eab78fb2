"""`once_per_run`: a costly fixture result made once for the whole test run, across pytest-xdist
workers (a uniquely named module: several test folders have a conftest.py)."""

from __future__ import annotations

import json
import os
import shutil

from filelock import FileLock


def once_per_run(tmp_path_factory, name: str, make):
    """`make(folder)` run once for the whole test run, even across pytest-xdist workers (a file
    lock in the workers' shared temporary root): the first worker to ask runs it and writes its
    JSON result; the others wait for it and read it. Returns (result, folder). A `make` that
    raises leaves no result, so the next worker to ask runs it again (and sees the error itself).
    The folder is shared: tests must treat it as read-only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-USER/pytest-N/, above each worker's popen-gwK/
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = make(folder)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(done)
    return json.loads(done.read_text()), folder
