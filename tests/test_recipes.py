"""The corpus recipes and their Hydra twins, on tiny local data (no download).

* every recipe smoke-runs end to end (--data-dir, --cpu, --size smoke): binarize, train with
  alternation (the mode switches at the 10-update restarts), fairseq-eval-lm prints a perplexity;
* every recipe's fairseq-train command and its YAML give the same fairseq configuration;
* fairseq-hydra-train runs a YAML.
The custom-corpus recipe and the hub interface it feeds: tests/test_hub.py.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO, fairseq, train_inner, write_corpus

RECIPES = {  # recipe -> the file names its local data folder uses in this test
    "ptb": "ptb.{split}.txt",
    "wikitext2": "wiki.{split}.tokens",
    "wikitext103": "{split}.txt",
}


@pytest.fixture(scope="module")
def local_corpora(tmp_path_factory):
    """One local data folder per recipe, each spelling its file names differently."""
    folders = {}
    for name, pattern in RECIPES.items():
        plain = tmp_path_factory.mktemp(f"{name}-plain")
        write_corpus(str(plain), seed=3, sizes=(("train", 400), ("valid", 40), ("test", 40)), vocab=60)
        folder = tmp_path_factory.mktemp(f"{name}-text")
        for split in ("train", "valid", "test"):
            os.rename(plain / f"{split}.txt", folder / pattern.format(split=split))
        folders[name] = str(folder)
    return folders


def run_recipe(name, *args):
    env = dict(os.environ, DNI_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", f"{name}.sh"), *args], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_smoke_runs_on_a_local_data_directory(name, local_corpora, tmp_path):
    out = run_recipe(name, "--data-dir", local_corpora[name], "--cpu", "--size", "smoke", "--out", str(tmp_path))
    rows = train_inner(out)
    assert [int(r["num_updates"]) for r in rows] == [10, 20, 30, 40]
    # alternation: 10-update cycles, synthetic first (interval means of the 0/1 mode flag)
    assert [float(r["dni_synthetic"]) for r in rows] == [1.0, 0.0, 1.0, 0.0]
    ppl = float(re.search(rf"{name} test perplexity \(fairseq-eval-lm, smoke\): ([0-9.]+)", out).group(1))
    assert math.isfinite(ppl) and 1 < ppl < 200
    assert os.path.exists(tmp_path / "checkpoints-smoke" / "checkpoint_last.pt")


def test_recipe_without_data_refuses_a_missing_folder(tmp_path):
    env = dict(os.environ, DNI_PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", "wikitext2.sh"), "--data-dir", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "data directory" in proc.stderr and "not found" in proc.stderr


def recipe_config(name, data_dir, out):
    """The fairseq config of a recipe's (full-size) fairseq-train command, via fairseq's own parser."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    command = run_recipe(name, "--data-dir", data_dir, "--out", out, "--dry-run").strip().splitlines()[-1]
    argv = command.split()[1:]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    return convert_namespace_to_omegaconf(args), argv


def leaves(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_hydra_config_is_the_recipe(name, local_corpora, tmp_path):
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig

    cfg, argv = recipe_config(name, local_corpora[name], str(tmp_path))
    yaml = OmegaConf.load(os.path.join(REPO, "recipes", "config", f"{name}.yaml"))
    skip = {("common", "user_dir"), ("task", "data"), ("model", "_name")}
    # every YAML value is the recipe's
    for path, value in leaves(OmegaConf.to_container(yaml)):
        if path in skip:
            continue
        got = OmegaConf.select(cfg, ".".join(path))
        assert got == value, f"{name}: {'.'.join(path)} = {got!r} in the recipe, {value!r} in the YAML"
    # every flag of the recipe is in the YAML (save-dir and the data folder aside)
    sections = [k for k in cfg if OmegaConf.is_dict(cfg[k])]
    for flag in (a for a in argv if a.startswith("--")):
        key = flag[2:].replace("-", "_")
        if key in {"save_dir", "user_dir", "arch"}:
            continue
        if key in {"task", "criterion", "optimizer", "lr_scheduler"}:  # registry choices: the section's _name
            assert yaml[key]._name == argv[argv.index(flag) + 1], f"{name}: {flag}"
            continue
        where = [s for s in sections if key in cfg[s]]
        assert any(key in yaml.get(s, {}) for s in where), f"{name}: {flag} not in the YAML"
    # the architecture: every model field equals the YAML's (or the dataclass default it leaves)
    defaults = OmegaConf.structured(DNILSTMLMConfig)
    for field in (f for f in DNILSTMLMConfig.__dataclass_fields__ if f != "_name"):
        want = yaml.model.get(field, defaults[field])
        assert cfg.model[field] == want, f"{name}: model.{field} = {cfg.model[field]!r}, YAML {want!r}"


def test_hydra_train_runs_a_recipe_config(local_corpora, tmp_path):
    from conftest import binarize

    data = str(tmp_path / "bin")
    text = tmp_path / "text"
    text.mkdir()
    for split in ("train", "valid", "test"):
        os.symlink(os.path.join(local_corpora["ptb"], f"ptb.{split}.txt"), text / f"{split}.txt")
    binarize(str(text), data)
    out = fairseq("fairseq-hydra-train", "--config-dir", os.path.join(REPO, "recipes", "config"),
                  "--config-name", "ptb", f"task.data={data}", f"checkpoint.save_dir={tmp_path / 'ck'}",
                  f"hydra.run.dir={tmp_path / 'hydra'}", "common.cpu=true", "common.log_interval=5",
                  "model.decoder_layers=1", "model.decoder_hidden_size=32", "model.decoder_embed_dim=32",
                  "dataset.batch_size=4", "dataset.num_workers=0", "lr_scheduler.lr_period_updates=5",
                  "optimization.max_update=15")
    rows = [json.loads(r) for r in re.findall(r"\[train_inner\]\[INFO\] - (\{.*\})", out)]
    assert [int(r["num_updates"]) for r in rows] == [5, 10, 15]
    # 5-update cycles with t_mult 2 from the YAML: 5 synthetic, then 10 real
    assert [float(r["dni_synthetic"]) for r in rows] == [1.0, 0.0, 0.0]
    assert os.path.exists(tmp_path / "ck" / "checkpoint_last.pt")


def test_recipes_never_write_into_the_local_corpus(local_corpora, tmp_path):
    """Full runs link the user's files, smoke runs copy their heads: switching between the two in
    one output folder must leave the user's corpus byte for byte as it was."""
    folder = local_corpora["ptb"]
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    for size in ("full", "smoke", "full", "smoke"):
        run_recipe("ptb", "--data-dir", folder, "--out", str(tmp_path), "--size", size, "--dry-run")
    assert {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)} == before
