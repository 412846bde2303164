"""Every recipe under configs/ parses against the classes it names: a misspelt or removed option, a
renamed config key or a wrong type fails here, not minutes into someone's run."""

from pathlib import Path

import re

import pytest
import yaml

import mmgen_lightning.models
from mmgen_lightning.cli import main
from mmgen_lightning.models.base import GenerativeModule

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.glob("configs/**/*.yaml"))


def test_every_family_has_a_recipe_and_every_recipe_the_docs_name_exists():
    """The recipes below are the families' runnable examples: each family has one, and a recipe the README or
    the Makefile tells a user to run has not been renamed away."""
    families = {name for name in mmgen_lightning.models.__all__
                if isinstance(getattr(mmgen_lightning.models, name), type)
                and issubclass(getattr(mmgen_lightning.models, name), GenerativeModule)
                and getattr(mmgen_lightning.models, name) is not GenerativeModule}
    built = {yaml.safe_load(path.read_text())["model"]["class_path"].rpartition(".")[2] for path in RECIPES}
    assert families and families <= built, f"families without a recipe: {sorted(families - built)}"
    named = {ROOT / match for source in ("README.md", "Makefile")
             for match in re.findall(r"configs/[\w/]+\.yaml", (ROOT / source).read_text())}
    assert named and sorted(map(str, named - set(RECIPES))) == []


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: str(path.relative_to(ROOT / "configs")))
def test_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(recipe.read_text())
    assert printed["model"]["class_path"].endswith(written["model"]["class_path"].rsplit(".", 1)[-1])
    for key, value in written["model"].get("init_args", {}).items():  # every option reaches the model as written
        reached = printed["model"]["init_args"][key]
        if isinstance(value, dict) and isinstance(reached, dict):  # an option group: the block's own entries
            reached = {name: reached.get(name) for name in value}
        assert reached == value, key
