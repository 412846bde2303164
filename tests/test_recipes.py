"""Every recipe under configs/ parses against the classes it names: a misspelt or removed option, a
renamed config key or a wrong type fails here, not minutes into someone's run."""

from pathlib import Path

import pytest
import yaml

from mmgen_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.glob("configs/**/*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 20


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
