"""Recipe and config files: JSON or YAML mappings.

`read_mapping` is the one reader behind `transfer.load_recipe` and the
`transfer train` config files (`transfer.run_config`).
"""

import json
import os

from transfer._io import DuplicateKeyError
from transfer._io import atomic_write
from transfer._io import loads_json_strict
from transfer.training.recipe import Recipe

SUFFIXES = (".json", ".yaml", ".yml")


def _format(path, what):
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{what} files end in one of {SUFFIXES}. Received: {path}"
        )
    return "json" if suffix == ".json" else "yaml"


def _strict_yaml_loader():
    """A `yaml.SafeLoader` that refuses a mapping naming one key twice
    (PyYAML keeps the last silently)."""
    import yaml  # optional dependency: config files only

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML's own error
                    break
                if first is not None:
                    error = DuplicateKeyError(key)
                    error.line, error.lines = line, [first, line]
                    raise error
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_mapping(path, what="Recipe"):
    """Reads a JSON or YAML file that must hold a mapping (empty: `{}`).

    A key given twice in one mapping is an error naming it and its lines
    (YAML and JSON parsers would keep the last one silently).

    Args:
        path: a `.json`, `.yaml` or `.yml` file.
        what: what the file is, for the messages (`"Recipe"`, `"Config"`).

    Raises:
        ValueError: another suffix, a missing file, a parse error, a
            duplicate key, or not a mapping; the message names the file.
    """
    fmt = _format(path, what)
    if not os.path.isfile(path):
        raise ValueError(f"{what} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if fmt == "json":
            config = loads_json_strict(text)
        else:
            import yaml  # optional dependency: config files only

            config = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as e:
        lines = " and ".join(str(n) for n in getattr(e, "lines", []) or [])
        where = f" on lines {lines}" if lines else ""
        raise ValueError(
            f"{what} file {path} gives the key {e.args[0]!r} twice{where}; "
            "only one value can hold. Keep one of them. Received: "
            f"duplicate key {e.args[0]!r}" + (
                f" at line {e.line}" if getattr(e, "line", None) else "")
        ) from None
    except Exception as e:
        raise ValueError(
            f"Cannot parse {what.lower()} file {path}: {e}"
        ) from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(
            f"{what} file {path} must hold a mapping. "
            f"Received: {type(config).__name__}"
        )
    return config


def load_recipe(path):
    """Reads a `Recipe` from a JSON or YAML file.

    The file holds `Recipe.get_config()`: a mapping with a `stages` list,
    each stage a mapping of `Stage` fields. Unknown keys are refused with
    the allowed ones named.

    Example file (`recipe.yaml`):

    ```yaml
    stages:
      - {name: head, epochs: 3, learning_rate: 1.0e-3}
      - {name: finetune, epochs: 15, learning_rate: 3.0e-4,
         trainable_blocks: all, schedule: cosine}
    ```

    Args:
        path: a `.json`, `.yaml` or `.yml` file.

    Returns:
        A `Recipe`.

    Raises:
        ValueError: the file is missing, unreadable, or not a valid recipe;
            the message names the file.

    Example:

    >>> lines = [
    ...     "stages:",
    ...     "  - {name: head, epochs: 3, learning_rate: 1.0e-3}",
    ...     "  - {name: finetune, epochs: 15, learning_rate: 3.0e-4,",
    ...     "     trainable_blocks: all, schedule: cosine}",
    ... ]
    >>> with open("recipe.yaml", "w") as f:
    ...     _ = f.write("\\n".join(lines))
    >>> recipe = transfer.load_recipe("recipe.yaml")
    >>> [(stage.name, stage.epochs) for stage in recipe]
    [('head', 3), ('finetune', 15)]
    >>> import json
    >>> with open("typo.json", "w") as f:
    ...     json.dump({"stages": [{"name": "head", "epochs": 3,
    ...                            "lr": 1e-3}]}, f)
    >>> transfer.load_recipe("typo.json")
    Traceback (most recent call last):
        ...
    ValueError: Recipe file typo.json: Unknown Stage option(s) ['lr']. ...
    """
    config = read_mapping(path, "Recipe")
    if "stages" not in config:
        raise ValueError(
            f"Recipe file {path} must hold a mapping with a `stages` list. "
            f"Received: {config!r}"
        )
    if not isinstance(config["stages"], list) or not all(
        isinstance(s, dict) for s in config["stages"]
    ):
        raise ValueError(
            f"Recipe file {path}: `stages` must be a list of mappings. "
            f"Received: {config['stages']!r}"
        )
    try:
        return Recipe.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Recipe file {path}: {e}") from None


def save_recipe(recipe, path):
    """Writes `recipe` to a JSON or YAML file that `load_recipe` reads.

    Args:
        recipe: a `Recipe` or a list of `Stage`s.
        path: a `.json`, `.yaml` or `.yml` file, written atomically.

    Example:

    >>> recipe = transfer.two_stage_recipe(head_epochs=2, finetune_epochs=5)
    >>> transfer.save_recipe(recipe, "recipe.yaml")
    >>> for line in open("recipe.yaml").read().splitlines()[:4]:
    ...     print(line)
    stages:
    - name: head
      epochs: 2
      learning_rate: 0.001
    >>> transfer.load_recipe("recipe.yaml") == recipe
    True
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe(tuple(recipe))
    fmt = _format(path, "Recipe")
    config = recipe.get_config()
    if fmt == "json":
        text = json.dumps(config, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text), mode="w")
