"""Every command the docs show works as written, from the repository root.

The fenced ```bash and ```python blocks of each file in DOCS run in order in one bash session,
as a reader pastes them into one terminal (``source .venv/bin/activate`` in an early block holds
for the later ones; a python block runs with that session's ``python``). They run in a copy of
the working tree, so relative paths resolve as in a clone and ``runs/`` stays out of the checkout,
with the test's virtual environment as ``.venv``, ``curl``/``wget`` replaced by stubs that log
and fail (CI has no network: a block that would download must not), and the files the docs ask
the reader to bring (INPUTS) written first.

A block right after ``<!-- docs-test: append ARGS -->`` runs each of its commands with ARGS
appended: how a command that would download or train for hours is checked cheaply
(``--dry-run`` for the recipes, Hydra's ``--cfg job``). ``<!-- docs-test: skip REASON -->``
leaves a block out (say why). Everything else runs exactly as written, so docs should show
cheap commands (the recipes' ``--size smoke``): recipes/README.md costs about two minutes.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, train_inner
from test_hub import write_raw_text

DOCS = ["recipes/README.md"]
INPUTS = {"my_raw_text.txt": lambda path: write_raw_text(path, 600, seed=4)}  # "your raw text"

BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->\s*\n)?^```(bash|python)\n(.*?)^```", re.S | re.M)
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$DOCS_TEST_NETWORK_LOG"
echo "$(basename "$0"): no network in the docs test" >&2
exit 6
"""


def blocks(doc):
    """(line, directive, argument, language, code) of every fenced bash/python block of ``doc``."""
    with open(os.path.join(REPO, doc)) as f:
        text = f.read()
    for m in BLOCK.finditer(text):
        yield text.count("\n", 0, m.start(3)) + 1, m.group(1), m.group(2), m.group(3), m.group(4)


def with_appended(code, args):
    """Each command of a bash block (continuation lines joined, comments dropped) plus ``args``."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words + shlex.split(args)))
    return "\n".join(commands) + "\n"


def session_script(doc, scratch):
    """One bash script running the doc's blocks in order, each announced by a '### line N' marker."""
    parts = ["set -euo pipefail"]
    for line, directive, argument, language, code in blocks(doc):
        parts.append(f"echo '### {doc}:{line}'")
        if directive == "skip":
            continue
        if directive == "append":
            code = with_appended(code, argument)
        elif directive is not None:
            raise ValueError(f"{doc}:{line}: unknown docs-test directive {directive!r}")
        if language == "python":
            script = scratch / f"block{line}.py"
            script.write_text(code)
            code = f"python {script}\n"
        parts.append(code)
    return "\n".join(parts) + "\n"


def copy_of_the_working_tree(dest):
    """The tracked and untracked-but-not-ignored files of the checkout, as a clone would have them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = os.path.join(REPO, name)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
            with open(src, "rb") as f, open(os.path.join(dest, name), "wb") as g:
                g.write(f.read())
            os.chmod(os.path.join(dest, name), os.stat(src).st_mode)
    os.symlink(sys.prefix, os.path.join(dest, ".venv"))  # the venv these tests run in


def run_doc(doc, tmp_path):
    repo, stubs, scratch = tmp_path / "repo", tmp_path / "stubs", tmp_path / "scratch"
    for folder in (stubs, scratch):
        folder.mkdir()
    copy_of_the_working_tree(repo)
    for tool in ("curl", "wget"):
        (stubs / tool).write_text(STUB)
        (stubs / tool).chmod(0o755)
    for name, write in INPUTS.items():
        write(repo / name)
    network_log = tmp_path / "network.log"
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", DOCS_TEST_NETWORK_LOG=str(network_log),
               OMP_NUM_THREADS="1")
    env.pop("DNI_PYTHON", None)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(["bash", "-c", session_script(doc, scratch)], cwd=repo, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert proc.returncode == 0, f"a command of {doc} failed as written:\n{proc.stdout[-5000:]}"
    assert not network_log.exists(), f"{doc}: a command tried to download:\n{network_log.read_text()}"
    return proc.stdout


def test_every_command_in_the_recipes_readme_works_as_written(tmp_path):
    out = run_doc("recipes/README.md", tmp_path)
    # the three smoke runs trained with alternation (10-update cycles, synthetic first) and scored
    runs = re.split(r"^### \S+$", out, flags=re.M)
    smoke = [r for r in runs if "test perplexity (fairseq-eval-lm, smoke)" in r]
    assert len(smoke) == 1  # they share the first bash block
    for corpus in ("ptb", "wikitext103", "custom"):
        ppl = float(re.search(rf"^{corpus} test perplexity \(fairseq-eval-lm, smoke\): ([0-9.]+)$", out, re.M).group(1))
        assert 1 < ppl < 10000, corpus
    rows = train_inner(smoke[0])
    assert [int(r["num_updates"]) for r in rows] == [10, 20, 30, 40] * 3
    assert [float(r["dni_synthetic"]) for r in rows] == [1.0, 0.0, 1.0, 0.0] * 3
    # the dry runs printed their plans and a fairseq-train command each
    assert out.count("# dry run: would download") == 2
    assert "task:\n  _name: dni_language_modeling\n  data: runs/recipes/ptb/data-bin-full" in out  # Hydra's --cfg job


@pytest.mark.parametrize("code,args,want", [
    ("bash recipes/x.sh --cpu   # a comment\n", "--dry-run", "bash recipes/x.sh --cpu --dry-run\n"),
    ("tool a \\\n    b=c\n\n", "--cfg job", "tool a b=c --cfg job\n"),
])
def test_append_directive_adds_the_arguments_to_each_command(code, args, want):
    assert with_appended(code, args) == want
