"""JAX's persistent compilation cache: on by default, off by flag.

Each case runs in a fresh JAX process (the cache is configured once, when
`transfer` is imported), so the file is backend-independent.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Reports the cache settings after `import transfer` on JAX ("import"), or
# after calling `configure_compilation_cache` from `transfer/_backend.py`
# loaded alone ("call": Keras only, seconds sooner than the whole package);
# then compiles one small function (written when small programs are cached).
PROBE = """
import importlib.util, json, os, sys
if sys.argv[1] == "import":
    import transfer
    from transfer import _backend
else:
    spec = importlib.util.spec_from_file_location(
        "backend", os.path.join(sys.argv[2], "transfer", "_backend.py"))
    _backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_backend)
    _backend.configure_compilation_cache()
import jax, jax.numpy as jnp
chosen = _backend.compilation_cache()
min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
max_bytes = jax.config.jax_compilation_cache_max_size
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"dir": chosen, "min_seconds": min_seconds,
                  "max_bytes": max_bytes,
                  "config": jax.config.jax_compilation_cache_dir}))
"""


def _probe(tmp_path, how="call", **env):
    environment = dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
        TRANSFER_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    environment.pop("TRANSFER_COMPILATION_CACHE", None)
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE, how, ROOT],
                          env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_by_default_in_the_user_cache_directory(tmp_path):
    expected = str(tmp_path / "cache" / "jax-compilation-cache")
    result = _probe(tmp_path, how="import")
    assert result["dir"] == result["config"] == expected
    # Small programs (weight initializers, ~0.1 s each) are cached too, so
    # the small function compiled above was written there.
    assert result["min_seconds"] == 0.0
    assert result["max_bytes"] == 2 * 1024**3  # bounded, least recent out
    assert os.listdir(expected)


def test_a_directory_in_the_environment_flag(tmp_path):
    there = tmp_path / "there"
    result = _probe(tmp_path, TRANSFER_COMPILATION_CACHE=str(there))
    assert result["dir"] == result["config"] == str(there)
    assert os.listdir(there)


def test_off_with_the_environment_flag(tmp_path):
    result = _probe(tmp_path, TRANSFER_COMPILATION_CACHE="0")
    assert result["dir"] is None and result["config"] is None
    assert not (tmp_path / "cache" / "jax-compilation-cache").exists()


def test_a_directory_the_user_chose_is_kept(tmp_path):
    mine = tmp_path / "mine"
    result = _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine))
    assert result["dir"] == result["config"] == str(mine)
    assert not (tmp_path / "cache" / "jax-compilation-cache").exists()
    assert result["min_seconds"] == 1.0  # JAX's own default, untouched


def test_the_command_line_flag_turns_it_off(monkeypatch, tmp_path, capsys):
    from transfer.cli import main

    # setenv (not delenv) so that monkeypatch restores the variable after.
    monkeypatch.setenv("TRANSFER_COMPILATION_CACHE", "1")
    # Set before anything else runs: here the command then fails at once.
    code = main(["report", str(tmp_path / "missing"),
                 "--no-compilation-cache"])
    assert code == 2
    assert os.environ["TRANSFER_COMPILATION_CACHE"] == "0"
    assert "missing" in capsys.readouterr().err
