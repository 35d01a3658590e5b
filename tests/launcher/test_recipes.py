"""launcher/recipes.py: a recipe is a directory; whether it is a search recipe is known in one place."""

from __future__ import annotations

import pytest

from launcher import recipes
from launcher.errors import ConfigRejected, RecipeNotFound
from tests.conftest import REPO


def test_a_search_recipe_is_known_by_its_entry_point():
    assert [r.name for r in recipes.all_recipes() if r.is_search] == ["optuna"]
    optuna, sft = recipes.load("optuna"), recipes.load("recipes/sft")
    assert optuna.entry.name == "search.py" and optuna.entry_in_workdir == "recipes/optuna/search.py"
    assert not sft.is_search and sft.entry_in_workdir == "recipes/sft/train.py"


def test_the_command_line_of_a_recipe():
    sft = recipes.load("sft")
    assert sft.args() == [str(sft.entry), "--config", str(sft.config)]
    assert sft.args("my.yaml", ("a=-1", "b=2")) == [str(sft.entry), "--config", "my.yaml", "--set=a=-1", "--set=b=2"]


def test_a_directory_without_an_entry_point_or_config_is_no_recipe(tmp_path):
    with pytest.raises(RecipeNotFound, match="no recipe at 'nope'; choose one of: .*sft"):
        recipes.load("nope")
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RecipeNotFound, match="is not a recipe: it needs config.yaml and one of train.py, search.py"):
        recipes.load(str(tmp_path))


def test_a_config_the_recipe_refuses_comes_back_with_its_own_words():
    with pytest.raises(ConfigRejected) as caught:
        recipes.resolve_config(recipes.load("sft"), None, ("learning_rate=oops",))
    assert caught.value.exit_code == 2 and "learning_rate" in caught.value.report
    assert "learning_rate" in str(caught.value) and "\n" not in str(caught.value)


def test_the_resolved_config_names_paths_in_this_checkout_relative_to_it():
    text = recipes.resolve_config(recipes.load("sft-zero2"), None, ())
    assert "zero_config: recipes/sft-zero2/zero2.json" in text and str(REPO) not in text
