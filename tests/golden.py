"""The golden-file test of a set of rendered examples (slurm/examples/, k8s/examples/).

Every file must equal a fresh render and none may belong to no recipe. After changing a recipe's
config, a template or launcher.yaml, regenerate them with `launcher examples` and review the diff.
"""

from __future__ import annotations

import difflib

from launcher import examples


def assert_current(backend: str) -> None:
    example_set = examples.SETS[backend]
    expected = examples.expected(example_set)
    problems = []
    for path, text in expected.items():
        if not path.is_file():
            problems.append(f"missing {path.name}")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "in git", "rendered now", lineterm="")
            problems.append(f"{path.name} differs:\n" + "\n".join(list(diff)[:40]))
    problems += [f"{path.name} belongs to no recipe" for path in example_set.files() if path not in expected]
    assert not problems, (f"{example_set.directory.parent.name}/examples/ is stale; run "
                          f"`launcher examples --backend {backend}`:\n" + "\n".join(problems))
