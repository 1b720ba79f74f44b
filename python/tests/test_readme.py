"""The README's Python example runs unchanged."""

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def python_example():
    text = open(README).read()
    section = text.split("\n### Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_unchanged(tmp_path):
    program = tmp_path / "example.py"
    program.write_text(python_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLYONE_")}
    run = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first.startswith("fencing token ")
    assert int(second.split()[-1]) == int(first.split()[-1]) + 1
