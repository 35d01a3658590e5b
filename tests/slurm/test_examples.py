"""Golden test: slurm/examples/*.sbatch are exactly what the template renders today.

After changing a recipe's config, the template or launcher.yaml, regenerate them with
`launcher examples` and review the diff.
"""

from __future__ import annotations

import difflib
import subprocess

from launcher import recipes, slurm_examples


def test_examples_match_a_fresh_render():
    expected = slurm_examples.expected()
    problems = []
    for path, text in expected.items():
        if not path.is_file():
            problems.append(f"missing {path.name}")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "in git", "rendered now", lineterm="")
            problems.append(f"{path.name} differs:\n" + "\n".join(list(diff)[:40]))
    extra = sorted(p.name for p in slurm_examples.EXAMPLES.glob("*.sbatch") if p not in expected)
    problems += [f"{name} belongs to no recipe" for name in extra]
    assert not problems, "slurm/examples/ is stale; run `launcher examples`:\n" + "\n".join(problems)


def test_every_recipe_has_an_example_that_is_valid_bash():
    for recipe in recipes.all_recipes():
        path = slurm_examples.EXAMPLES / f"{recipe.name}.sbatch"
        assert path.is_file(), f"no example for {recipe.name}; run `launcher examples`"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_examples_are_deterministic_and_independent_of_this_checkout():
    for path in slurm_examples.EXAMPLES.glob("*.sbatch"):
        text = path.read_text(encoding="utf-8")
        assert str(recipes.REPO_ROOT) not in text, f"{path.name} names this checkout's path"
        assert "$(date" not in text.split("set -uo pipefail")[0]
        if "search.py" in text:
            assert "#SBATCH --array=0-3" in text and "#SBATCH --gpus-per-node=1" in text
        else:
            assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=4" in text
