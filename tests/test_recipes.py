"""The corpus recipes and their Hydra twins, on tiny local data (no download).

* a recipe smoke-runs end to end (--data-dir, --cpu, --size smoke): binarize, train with
  alternation (the mode switches at the 10-update restarts), fairseq-eval-lm prints a perplexity
  (the other recipes: as recipes/README.md shows them, in test_docs_commands.py);
* downloads (stub curl/wget, no network): --dry-run fetches nothing, a failure is one line saying
  where else to get the corpus, what arrives is checked and a bad mirror falls back to the next;
* every recipe's fairseq-train command and its YAML give the same fairseq configuration;
* fairseq-hydra-train runs a YAML.
The custom-corpus recipe and the hub interface it feeds: tests/test_hub.py.
"""
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from helpers import REPO, binarize, fairseq, train_inner, write_corpus

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


# ptb.sh and wikitext103.sh (on PTB's file names, with --data-dir) and custom_corpus.sh ({split}.txt)
# smoke-run as recipes/README.md shows them, in tests/test_docs_commands.py; here the third spelling
@pytest.mark.parametrize("name", ["wikitext2"])
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


def recipe_config(name, data_dir, out, *flags):
    """The fairseq config of a recipe's (full-size) fairseq-train command, via fairseq's own parser."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    command = run_recipe(name, "--data-dir", data_dir, "--out", out, "--dry-run", *flags).strip().splitlines()[-1]
    argv = shlex.split(command)[1:]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    return convert_namespace_to_omegaconf(args), argv


def leaves(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def assert_yaml_is_the_command(name, cfg, argv, yaml_path):
    """The YAML at ``yaml_path`` and the fairseq config ``cfg`` of the command ``argv`` agree: every YAML
    value is the command's, every flag of the command is in the YAML, the YAML's model is the one the
    command's ``--arch`` belongs to and every field of that model matches."""
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY

    yaml = OmegaConf.load(yaml_path)
    skip = {("common", "user_dir"), ("task", "data"), ("model", "_name")}
    # every YAML value is the recipe's
    for path, value in leaves(OmegaConf.to_container(yaml)):
        if path in skip or path[0] == "hydra":  # hydra.run.dir: Hydra's own setting, not fairseq's
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
    # the architecture: the command's --arch (cfg.model._name) is an architecture of the YAML's model, and
    # every field of that model equals the YAML's (or the dataclass default it leaves)
    assert ARCH_MODEL_NAME_REGISTRY[cfg.model._name] == yaml.model._name, f"{name}: model._name"
    config = MODEL_DATACLASS_REGISTRY[yaml.model._name]
    defaults = OmegaConf.structured(config)
    for field in (f for f in config.__dataclass_fields__ if f != "_name"):
        want = yaml.model.get(field, defaults[field])
        assert cfg.model[field] == want, f"{name}: model.{field} = {cfg.model[field]!r}, YAML {want!r}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_hydra_config_is_the_recipe(name, local_corpora, tmp_path):
    cfg, argv = recipe_config(name, local_corpora[name], str(tmp_path))
    assert_yaml_is_the_command(name, cfg, argv, os.path.join(REPO, "recipes", "config", f"{name}.yaml"))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_ends_at_the_bottom_of_a_cosine_cycle(name, local_corpora, tmp_path):
    """The last update closes a cycle (the warm-up belongs to the first), so the checkpoint scored is
    the one at the schedule's minimum rate, as the recipes' README says."""
    from fairseq_dni.optim.lr_scheduler.cosine_alternating import cycle_of, learning_rate

    cfg, _ = recipe_config(name, local_corpora[name], str(tmp_path))
    sched, last = cfg.lr_scheduler, cfg.optimization.max_update
    shape = (sched.lr_period_updates, sched.t_mult, sched.warmup_updates)
    assert cycle_of(last, *shape)[1] == last, f"{name}: --max-update {last} is inside a cosine cycle"
    assert learning_rate(last - 1, 1.0, 0.0, *shape) < 1e-5  # of the peak


def test_hydra_train_runs_a_recipe_config(local_corpora, tmp_path):
    data = str(tmp_path / "bin")
    text = tmp_path / "text"
    text.mkdir()
    for split in ("train", "valid", "test"):
        os.symlink(os.path.join(local_corpora["ptb"], f"ptb.{split}.txt"), text / f"{split}.txt")
    binarize(str(text), data)
    # launched from another folder with relative paths, as a user would: the YAML's hydra.run.dir "."
    # keeps Hydra from changing into outputs/DATE/TIME, where none of them would resolve
    launch = tmp_path / "launch"
    launch.mkdir()

    def hydra_train(*overrides, check=True):
        return fairseq("fairseq-hydra-train", "--config-dir", os.path.join(REPO, "recipes", "config"),
                       "--config-name", "ptb", "task.data=../bin",
                       f"common.user_dir={os.path.relpath(os.path.join(REPO, 'fairseq_dni'), launch)}",
                       "common.cpu=true", *overrides, cwd=launch, check=check)

    out = hydra_train("checkpoint.save_dir=ck", "common.log_interval=5",
                      "model.decoder_layers=1", "model.decoder_hidden_size=32", "model.decoder_embed_dim=32",
                      "dataset.batch_size=4", "dataset.num_workers=0", "lr_scheduler.lr_period_updates=5",
                      "optimization.max_update=15")
    rows = [json.loads(r) for r in re.findall(r"\[train_inner\]\[INFO\] - (\{.*\})", out)]
    assert [int(r["num_updates"]) for r in rows] == [5, 10, 15]
    # 5-update cycles with t_mult 2 from the YAML: 5 synthetic, then 10 real
    assert [float(r["dni_synthetic"]) for r in rows] == [1.0, 0.0, 0.0]
    assert os.path.exists(launch / "ck" / "checkpoint_last.pt") and os.path.isdir(launch / ".hydra")
    # bad settings are the message alone under Hydra too (after Hydra's "Error executing job" line)
    out = hydra_train("checkpoint.save_dir=ck2", "optimization.max_update=3", check=False)
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-3:] == [
        "the first cosine cycle (1328 updates) is longer than the run (--max-update 3): the learning rate would "
        "never anneal; shorten --lr-period-updates", "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]


def test_recipes_never_write_into_the_local_corpus(local_corpora, tmp_path):
    """Full runs link the user's files, smoke runs copy their heads: switching between the two in
    one output folder must leave the user's corpus byte for byte as it was."""
    folder = local_corpora["ptb"]
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    for size in ("full", "smoke", "full", "smoke"):
        run_recipe("ptb", "--data-dir", folder, "--out", str(tmp_path), "--size", size, "--dry-run")
    assert {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)} == before


# ---------------------------------------------------------------- runs started at once on one folder
def binarized_lines(data_bin, split):
    from fairseq.data import data_utils

    return len(data_utils.load_indexed_dataset(os.path.join(data_bin, split), None))


def test_concurrent_runs_prepare_one_data_bin_and_share_it(local_corpora, tmp_path):
    """Two arms started at once on one output folder (--dry-run binarizes, then stops): one prepares
    the text and the data-bin under the folder's lock, the other waits and reuses them; neither dies
    on the other's half-written files."""
    env = dict(os.environ, DNI_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    procs = [subprocess.Popen(["bash", "recipes/paper/ptb.sh", "--arm", arm, "--size", "smoke", "--cpu", "--dry-run",
                               "--data-dir", local_corpora["ptb"], "--out", str(out)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for arm in ("bptt", "dni-restart5")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, text in zip(procs, outs):
        assert proc.returncode == 0 and "Traceback" not in text, text[-4000:]
        assert shlex.split(text.strip().splitlines()[-1])[1] == str(out / "data-bin-smoke")
    # one finished data-bin, no scratch folder left; every split binarized whole
    assert sorted(p.name for p in out.iterdir() if "data-bin" in p.name) == ["data-bin-smoke"]
    for split in ("train", "valid", "test"):
        with open(os.path.join(local_corpora["ptb"], f"ptb.{split}.txt")) as f:
            lines = sum(1 for _ in f)
        assert binarized_lines(str(out / "data-bin-smoke"), split) == lines
    # the second run said it waited (the first did not have to)
    assert sum("being prepared by another run: waiting" in text for text in outs) <= 1


def test_concurrent_run_without_flock_is_one_line(local_corpora, tmp_path):
    """Where flock is missing, a run that finds the folder being prepared stops with one line."""
    tools = tmp_path / "bin"  # PATH: every command of /usr/bin and /bin but flock
    tools.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for name in os.listdir(folder):
            if name != "flock" and not os.path.lexists(tools / name):
                os.symlink(os.path.join(folder, name), tools / name)
    env = dict(os.environ, DNI_PYTHON=sys.executable, PATH=str(tools))
    out = tmp_path / "out"
    (out / ".preparing").mkdir(parents=True)  # another run is preparing this folder
    proc = subprocess.run(["bash", "recipes/ptb.sh", "--size", "smoke", "--dry-run", "--data-dir", local_corpora["ptb"],
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip() == (f"recipes/ptb.sh: error: {out} is being prepared by another run (without flock this "
                                   f"run cannot wait for it): run again when it has finished, or remove "
                                   f"{out}/.preparing if no other run is")
    assert sorted(os.listdir(out)) == [".preparing"]  # nothing written, the other run's marker kept


# ---------------------------------------------------------------- downloads (no network in tests)
DOWNLOADER = r"""#!/usr/bin/env bash
# Stand-in for curl and wget: logs every call to $STUB_LOG; serves a URL from $STUB_SRV by its
# file name unless the URL contains $STUB_FAIL; otherwise fails like curl on a 403.
echo "$(basename "$0") $*" >> "$STUB_LOG"
dest="" url=""
while [ $# -gt 0 ]; do
  case "$1" in -o|-O) dest="$2"; shift 2 ;; --retry|--connect-timeout|--tries|--timeout) shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac
done
src="$STUB_SRV/$(basename "$url")"
if [ -f "$src" ] && [[ "$url" != *"${STUB_FAIL:-never}"* ]]; then cp "$src" "$dest"; exit 0; fi
echo "curl: (22) The requested URL returned error: 403" >&2
exit 22
"""


@pytest.fixture
def network(tmp_path):
    """PATH with curl and wget stubs (no request leaves the machine); env, call log, served folder."""
    stubs, served = tmp_path / "stubs", tmp_path / "served"
    stubs.mkdir()
    served.mkdir()
    for tool in ("curl", "wget"):
        (stubs / tool).write_text(DOWNLOADER)
        (stubs / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", STUB_LOG=str(log), STUB_SRV=str(served),
               DNI_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return env, log, served


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("name,size", [("wikitext2", "full"), ("wikitext103", "smoke")])
def test_dry_run_downloads_nothing_and_prints_a_valid_command(name, size, network, tmp_path):
    from fairseq import options

    env, log, _ = network
    proc = subprocess.run(["bash", f"recipes/{name}.sh", "--dry-run", "--size", size, "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == [] and not (tmp_path / "out").exists()
    assert "# dry run: would download" in proc.stdout and "wikitext.smerity.com" in proc.stdout
    argv = proc.stdout.strip().splitlines()[-1].split()[1:]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    assert (args.criterion, args.optimizer, args.lr_scheduler) == ("dni_cross_entropy", "alternating",
                                                                    "cosine_alternating")


@pytest.mark.parametrize("name,corpus", [("wikitext2", "WikiText-2"), ("wikitext103", "WikiText-103")])
def test_failed_download_is_one_line_saying_where_else_and_how(name, corpus, network, tmp_path):
    env, log, _ = network  # nothing served: every mirror answers 403, like the old S3 address
    proc = subprocess.run(["bash", f"recipes/{name}.sh", "--cpu", "--size", "smoke", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"recipes/{name}\.sh: error: could not get {corpus} from https://wikitext\.smerity\.com/\S+"
                        rf".*; any copy of .*, then pass its folder: bash recipes/{name}\.sh --data-dir DIR", last), last
    tried = calls(log)
    assert tried and all("s3.amazonaws.com" not in c for c in tried)  # never the dead address
    assert os.listdir(tmp_path / "out" / "download") == []  # no half-downloaded folder left behind


def fetch_wikitext2(env, out, expected):
    """fetch_corpus of the real recipes/wikitext2.sh (its mirrors), checked against ``expected``."""
    script = f"""source recipes/wikitext2.sh
set -euo pipefail
EXPECTED=({" ".join(f'"{e}"' for e in expected)})
fetch_corpus {out} {sys.executable} ."""
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture
def fake_wikitext2(tmp_path):
    """A tiny stand-in corpus, its EXPECTED lines (split, lines, tokens, md5), and writers for the
    mirrors' two forms: the archive wikitext-2-v1.zip and the plain files {split}.txt."""
    import hashlib
    import zipfile

    text = tmp_path / "fake"
    write_corpus(str(text), seed=5, sizes=(("train", 50), ("valid", 8), ("test", 9)), vocab=20)
    expected = []
    for split in ("train", "valid", "test"):
        data = (text / f"{split}.txt").read_bytes()
        lines = data.count(b"\n")
        expected.append(f"{split} {lines} {len(data.split()) + lines} {hashlib.md5(data).hexdigest()}")

    def serve_zip(served, corrupt=False):
        with zipfile.ZipFile(served / "wikitext-2-v1.zip", "w") as z:
            for split in ("train", "valid", "test"):
                data = (text / f"{split}.txt").read_bytes() + (b"one more line\n" if corrupt and split == "valid" else b"")
                z.writestr(f"wikitext-2/wiki.{split}.tokens", data)

    def serve_files(served):
        for split in ("train", "valid", "test"):
            (served / f"{split}.txt").write_bytes((text / f"{split}.txt").read_bytes())

    return expected, serve_zip, serve_files


def test_download_is_checked_and_falls_back_to_the_next_mirror(network, fake_wikitext2, tmp_path):
    env, log, served = network
    expected, serve_zip, serve_files = fake_wikitext2
    out = tmp_path / "out"

    # the author's archive arrives intact: its wiki.*.tokens files are checked and kept
    serve_zip(served)
    proc = fetch_wikitext2(env, out, expected)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{out}/download/wikitext-2"
    assert sorted(os.listdir(out / "download" / "wikitext-2")) == ["wiki.test.tokens", "wiki.train.tokens",
                                                                     "wiki.valid.tokens"]
    assert len(calls(log)) == 1
    # a second run finds the checked copy and downloads nothing
    assert fetch_wikitext2(env, out, expected).returncode == 0 and len(calls(log)) == 1

    # the archive arrives with a different valid split: refused, PyTorch's copy of the files is taken
    import shutil

    shutil.rmtree(out)
    serve_zip(served, corrupt=True)
    serve_files(served)
    proc = fetch_wikitext2(env, out, expected)
    assert proc.returncode == 0, proc.stderr
    assert "wiki.valid.tokens: 9 " in proc.stderr and "not the WikiText-2 this recipe expects" in proc.stderr
    assert sorted(os.listdir(out / "download" / "wikitext-2")) == ["test.txt", "train.txt", "valid.txt"]
    assert calls(log)[-3:] == [c for c in calls(log) if "raw.githubusercontent.com/pytorch/examples" in c]

    # every mirror delivers something else: one error line, nothing kept
    shutil.rmtree(out)
    (served / "valid.txt").write_bytes(b"tampered\n")
    proc = fetch_wikitext2(env, out, expected)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("recipes/wikitext2.sh: error: could not get WikiText-2")
    assert os.listdir(out / "download") == []
