"""Docstrings: every public name has an example that runs.

The examples themselves run as doctests (`make test`, `make doctest`:
`pytest -p transfer_doctests --doctest-modules transfer`); these tests check
that they exist and use only public backbones.
"""

import ast
import inspect
import pathlib
import types

import pytest

import transfer
import transfer.callbacks
import transfer.text

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

PACKAGE_DIR = pathlib.Path(transfer.__file__).parent
# Documented module functions, besides the `__all__` lists.
MODULE_FUNCTIONS = (
    "workflow.train_run",
    "workflow.load_run",
    "prediction.predict_files",
    "prediction.iter_predictions",
    "prediction.skipped_files",
    "evaluation_data.load_labelled_data",
    "evaluation_data.labelled_dataset",
    "run_config.resolve_config",
    "run_report.write_run_report",
    "export.export_model",
    "export.read_metadata",
)


def public_names():
    """`(qualified name, object)` of every public function and class."""
    names = []
    for module in (transfer, transfer.callbacks, transfer.text):
        for name in module.__all__:
            obj = getattr(module, name)
            if not isinstance(obj, types.ModuleType):
                names.append((f"{module.__name__}.{name}", obj))
    for dotted in MODULE_FUNCTIONS:
        module_name, name = dotted.split(".")
        obj = getattr(getattr(transfer, module_name), name)
        names.append((f"transfer.{dotted}", obj))
    return names


def example_lines(docstring):
    """The `>>>` lines after the `Example:` heading of a docstring."""
    lines = inspect.cleandoc(docstring or "").splitlines()
    headings = [i for i, line in enumerate(lines) if line == "Example:"]
    if not headings:
        return []
    return [
        line for line in lines[headings[0] + 1:]
        if line.lstrip().startswith(">>>")
    ]


def missing_examples(names):
    """Why each of `names` lacks an example that runs, by name."""
    problems = {}
    for name, obj in names:
        # A class documents its example in the class docstring: `__doc__`,
        # not `inspect.getdoc`, which would inherit a base class's.
        lines = example_lines(obj.__doc__)
        if not lines:
            problems[name] = "no `Example:` section with a `>>>` line"
        elif all("doctest: +SKIP" in line for line in lines):
            problems[name] = "every `>>>` line is skipped"
    return problems


def test_public_names_found():
    # The lists above resolve: a renamed export fails here, not silently.
    names = [name for name, _ in public_names()]
    assert len(names) > 60
    assert len(set(names)) == len(names)
    assert "transfer.build_classifier" in names
    assert "transfer.callbacks.StageLogger" in names
    assert "transfer.workflow.train_run" in names


def test_every_public_name_has_a_runnable_example():
    problems = missing_examples(public_names())
    assert not problems, "Public names without a runnable example:\n" + (
        "\n".join(f"  {name}: {why}" for name, why in problems.items())
    )


def test_example_lines():
    doc = """Summary.

    Example:

    >>> 1 + 1
    2
    """
    assert example_lines(doc) == [">>> 1 + 1"]
    assert example_lines("Summary.\n\n>>> 1 + 1\n2\n") == []
    assert example_lines(None) == []


def test_missing_examples_are_reported():
    def documented():
        """Summary.

        Example:

        >>> documented()
        """

    def skipped():
        """Summary.

        Example:

        >>> skipped()  # doctest: +SKIP
        """

    def undocumented():
        """Summary, no example."""

    problems = missing_examples([
        ("documented", documented), ("skipped", skipped),
        ("undocumented", undocumented), ("bare", lambda: None),
    ])
    assert sorted(problems) == ["bare", "skipped", "undocumented"]


def docstrings(path):
    """`(line, docstring)` of the module, classes and functions in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node)
            if doc:
                yield getattr(node, "lineno", 1), doc


def test_no_docstring_uses_the_test_backbone():
    # `tiny_cnn` is registered by tests/conftest.py only: users do not have
    # it, so an example using it fails for them. Use `small_cnn`.
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert files
    found = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
        for path in files
        for line, doc in docstrings(path)
        if "tiny_cnn" in doc
    ]
    assert not found, f"docstrings mention tiny_cnn: {found}"
