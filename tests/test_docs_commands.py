"""Every command the docs show works as written, from the repository root.

The fenced ```bash and ```python blocks of the docs run in order in one bash session, as a reader
pastes them into one terminal (``source .venv/bin/activate`` in an early block holds for the later
ones; a python block is fed to that session's ``python`` on stdin, as if pasted, so the current
folder is on ``sys.path``). They run in a copy of the working tree, so relative paths resolve as in
a clone and ``runs/`` stays out of the checkout, with the test's virtual environment as ``.venv``,
``curl``/``wget`` replaced by stubs that log and fail (CI has no network: a block that would
download must not), and the files the docs ask the reader to bring (their INPUTS) written first:
for README.md and docs/usage.md, a tiny corpus binarized where the quickstart leaves PTB
(``runs/quickstart/data-bin``), so their commands run in seconds. A run fails on a non-zero exit
and on any traceback or ``...: error:`` line in the output (a background process, e.g. one rank of
a multi-process run, cannot fail silently).

Directives, in an HTML comment right before a block:

* ``<!-- docs-test: append ARGS -->`` runs each of its commands with ARGS appended: how a command
  that would download or train for hours is checked cheaply (``--dry-run`` for the recipes,
  Hydra's ``--cfg job``);
* ``<!-- docs-test: parse REASON -->``: each command (fairseq-train, fairseq-eval-lm,
  fairseq-preprocess) is parsed by fairseq's own parser, not run: every flag, choice and the
  architecture are checked (for GPU-sized commands, or data the tiny corpus cannot stand in for);
* ``<!-- docs-test: same-as DOC -->``: each command must be one that DOC shows and this test runs;
* ``<!-- docs-test: skip REASON -->`` leaves a block out (say why).

Everything else runs exactly as written, so docs should show cheap commands (the recipes'
``--size smoke``): recipes/README.md costs about two minutes, README.md and docs/usage.md together
about a minute of CPU (five fairseq-train commands on the tiny corpus, one of them two ranks; an
eval-lm, the hub, Hydra's ``--cfg job`` and one python process for the parse blocks).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, train_inner
from test_hub import write_raw_text

RECIPES_INPUTS = {"my_raw_text.txt": lambda path, tiny_data: write_raw_text(path, 600, seed=4)}  # "your raw text"
# README.md and docs/usage.md start "after the quickstart": its binarized PTB, stood in for by the tiny corpus
QUICKSTART_INPUTS = {"runs/quickstart/data-bin": lambda path, tiny_data: shutil.copytree(tiny_data, path)}

BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*([\w-]+)\s*(.*?)\s*-->\s*\n)?^```(bash|python)\n(.*?)^```", re.S | re.M)
FAILED = re.compile(r"^Traceback \(most recent call last\)|^[\w.-]+: error: ", re.M)
PARSE = """import json, sys
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

PARSERS = {"fairseq-train": options.get_training_parser, "fairseq-eval-lm": options.get_eval_lm_parser,
           "fairseq-preprocess": options.get_preprocessing_parser}
for where, words in json.load(open(sys.argv[1])):
    print(f"### {where} (parsed): {' '.join(words[:2])} ...", flush=True)
    if words[0] not in PARSERS:
        sys.exit(f"{where}: a parse block holds {', '.join(PARSERS)} commands only, not {words[0]}")
    parser = PARSERS[words[0]]()
    if words[0] == "fairseq-preprocess":
        parser.parse_args(words[1:])
    else:
        convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=words[1:]))
"""
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


def commands(code):
    """The commands of a bash block as word lists (continuation lines joined, comments dropped)."""
    return [words for words in (shlex.split(line, comments=True) for line in code.replace("\\\n", " ").splitlines())
            if words]


def with_appended(code, args):
    """Each command of a bash block plus ``args``."""
    return "".join(shlex.join(words + shlex.split(args)) + "\n" for words in commands(code))


def run_commands(doc):
    """The commands of ``doc``'s blocks that the test runs (as words), for ``same-as``."""
    return [words for _, directive, _, language, code in blocks(doc)
            if language == "bash" and directive in (None, "append") for words in commands(code)]


def session_script(docs, scratch):
    """One bash script running the docs' blocks in order, each announced by a '### doc:line' marker;
    the commands of ``parse`` blocks are parsed at the end, in one python process."""
    parts, parse = ["set -euo pipefail"], []
    for doc in docs:
        for line, directive, argument, language, code in blocks(doc):
            parts.append(f"echo '### {doc}:{line}'")
            if directive == "skip":
                continue
            if directive == "same-as":
                shown = run_commands(argument)
                for words in commands(code):
                    assert words in shown, f"{doc}:{line}: {shlex.join(words)!r} is not run as written in {argument}"
                continue
            if directive == "parse":
                parse += [(f"{doc}:{line}", words) for words in commands(code)]
                continue
            if directive == "append":
                code = with_appended(code, argument)
            elif directive is not None:
                raise ValueError(f"{doc}:{line}: unknown docs-test directive {directive!r}")
            if language == "python":
                script = scratch / f"block{len(parts)}.py"
                script.write_text(code)
                code = f"python - < {script}\n"  # as pasted: the current folder, not the script's, is on sys.path
            parts.append(code)
    if parse:
        (scratch / "parse.json").write_text(json.dumps(parse))
        (scratch / "parse.py").write_text(PARSE)
        parts.append(f"python {scratch / 'parse.py'} {scratch / 'parse.json'}")
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


def run_docs(docs, tmp_path, inputs, tiny_data):
    repo, stubs, scratch = tmp_path / "repo", tmp_path / "stubs", tmp_path / "scratch"
    for folder in (stubs, scratch):
        folder.mkdir()
    copy_of_the_working_tree(repo)
    for tool in ("curl", "wget"):
        (stubs / tool).write_text(STUB)
        (stubs / tool).chmod(0o755)
    for name, write in inputs.items():
        write(repo / name, tiny_data)
    network_log = tmp_path / "network.log"
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", DOCS_TEST_NETWORK_LOG=str(network_log),
               OMP_NUM_THREADS="1")
    env.pop("DNI_PYTHON", None)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(["bash", "-c", session_script(docs, scratch)], cwd=repo, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    shown = " and ".join(docs)
    assert proc.returncode == 0, f"a command of {shown} failed as written:\n{proc.stdout[-5000:]}"
    failed = FAILED.search(proc.stdout)
    assert not failed, f"a command of {shown} failed as written:\n{proc.stdout[max(0, failed.start() - 3000):][:5000]}"
    assert not network_log.exists(), f"{shown}: a command tried to download:\n{network_log.read_text()}"
    return proc.stdout


def test_every_command_in_the_recipes_readme_works_as_written(tmp_path, tiny_data):
    out = run_docs(["recipes/README.md"], tmp_path, RECIPES_INPUTS, tiny_data)
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


def test_every_command_in_the_readme_and_the_usage_page_works_as_written(tmp_path, tiny_data):
    """README.md, then docs/usage.md, in one session (the README's ``source .venv/bin/activate`` holds
    for both), on the tiny corpus where the quickstart leaves PTB."""
    out = run_docs(["README.md", "docs/usage.md"], tmp_path, QUICKSTART_INPUTS, tiny_data)
    # the README's alternation: cycles of 1 and 2 epochs, synthetic then real; eval-lm and the hub scored
    assert re.findall(r"\| train \| epoch 00(\d) \|.*? dni_synthetic ([\d.]+) \|", out)[:3] == [
        ("1", "1"), ("2", "0"), ("3", "0")]
    assert re.search(r"Loss \(base 2\): [0-9.]+, Perplexity: [0-9.]+", out)
    # every parse block was parsed (each command announced); the multi-process run had two ranks
    parsed = re.findall(r"^### docs/usage.md:\d+ \(parsed\)", out, re.M)
    assert len(parsed) == sum(len(commands(code)) for _, d, _, _, code in blocks("docs/usage.md") if d == "parse") >= 3
    assert "train: rank 0/2 reads streams [0, 10) of 20" in out


def test_the_readme_quotes_the_quickstart_output_as_logged():
    """The block after <!-- quickstart-result --> in README.md is studies/quickstart/quickstart_output.txt's
    (its temporary folder shortened to '...')."""
    with open(os.path.join(REPO, "README.md")) as f:
        quoted = re.search(r"<!-- quickstart-result -->\s*\n```\n(.*?)^```", f.read(), re.S | re.M).group(1)
    with open(os.path.join(REPO, "studies", "quickstart", "quickstart_output.txt")) as f:
        logged = f.read().splitlines()
    assert "PTB test perplexity (fairseq-eval-lm):" in quoted
    for line in quoted.splitlines():
        head, dots, tail = line.partition("...")
        assert (any(l.startswith(head) and l.endswith(tail) for l in logged) if dots else line in logged), line


def test_the_readme_headline_figures_stand_on_the_study_pages_it_links():
    """Every figure the README's "Measured" section quotes (a decimal number, with its ± spread) stands
    on one of the pages the same bullet links: the study pages are the figures' one home."""
    with open(os.path.join(REPO, "README.md")) as f:
        measured = f.read().split("## Measured", 1)[1].split("\n## ", 1)[0]
    quoted = 0
    for bullet in measured.split("\n* ")[1:]:
        pages = [os.path.join(REPO, link) for link in re.findall(r"\]\(([^)#\s]+)\)", bullet)]
        pages = [os.path.join(p, "README.md") if os.path.isdir(p) else p for p in pages]
        text = "".join(open(p).read() for p in pages if p.endswith(".md"))
        for mean, spread in re.findall(r"(\d+\.\d+)(?: ± (\d+\.\d+))?", bullet.replace("\n  ", " ")):
            # a table may print the mean in bold: **132.66** ± 0.31
            shown = rf"(?<![\d.]){re.escape(mean)}" + (rf"(?:\*\*)? ± {re.escape(spread)}" if spread else r"(?![\d])")
            assert re.search(shown, text), f"README.md quotes {mean} ± {spread or '-'}, which no page its bullet links has"
            quoted += 1
    assert quoted >= 6   # the figures are found at all


def test_every_link_in_the_docs_resolves_to_a_tracked_file():
    """Each relative link of README.md, docs/*.md and studies/**/*.md names a tracked file, or a folder
    holding one (anchors aside)."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True,
                                 text=True).stdout.split())
    pages = [p for p in tracked if p == "README.md" or re.fullmatch(r"docs/[^/]+\.md|studies/.+\.md", p)]
    broken = []
    for page in sorted(pages):
        with open(os.path.join(REPO, page)) as f:
            text = f.read()
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            target = link.split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            if path not in tracked and not any(p.startswith(path + "/") for p in tracked):
                broken.append(f"{page}: {link}")
    assert broken == []


@pytest.mark.parametrize("code,args,want", [
    ("bash recipes/x.sh --cpu   # a comment\n", "--dry-run", "bash recipes/x.sh --cpu --dry-run\n"),
    ("tool a \\\n    b=c\n\n", "--cfg job", "tool a b=c --cfg job\n"),
])
def test_append_directive_adds_the_arguments_to_each_command(code, args, want):
    assert with_appended(code, args) == want
