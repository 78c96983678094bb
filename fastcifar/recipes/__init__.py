"""Named training recipes: the seeds (``seeds``: docs/SEEDS.md), the speed runs
(``speedrun``) and the model zoo (``zoo``), each registered into ``RECIPES`` by its own
module (``recipe.register``). Torch-free: a recipe names its model, augmentation and
optimizer; the modules that build them check the names when a run starts.

Adding a recipe: a ``register(Recipe(...), doc)`` call in the module of its family (or a
new module imported below), and its line in tests/recipes/test_recipes.py's expectations.
"""

from fastcifar.recipes import seeds, speedrun, zoo  # noqa: F401  (each registers its recipes)
from fastcifar.recipes.recipe import (
    DEFAULT_RECIPE,
    RECIPE_DOCS,
    RECIPES,
    Recipe,
    get_recipe,
    overridable_fields,
    parse_resolutions,
    register,
)

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "RECIPE_DOCS",
    "Recipe",
    "get_recipe",
    "overridable_fields",
    "parse_resolutions",
    "register",
]
